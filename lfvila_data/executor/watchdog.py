"""Kills a driver's marked child processes once the driver is gone (`kill -9` included).

Run as `python -I -S watchdog.py LFVILA_DRIVER=<token>` (standard library only, so it
starts in milliseconds) with its stdin a pipe from the driver: end of file means the
driver exited or died, and every process whose environment holds the marker is killed.
`threads.ChildReaper` starts it and uses `kill_marked` itself for an interrupted run."""
from __future__ import annotations

import os
import signal
import sys

MARK = "LFVILA_DRIVER"  # environment variable every child of a thread-run build inherits


def kill_marked(mark: bytes, spare: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """SIGKILL every process of this user whose environment has `mark` (NAME=VALUE), but
    this one and `spare`; returns their pids (a process exiting meanwhile is skipped)."""
    killed: list[int] = []
    me = os.getpid()
    if not os.path.isdir("/proc"):
        return killed  # no /proc (macOS): children are left to end on their closed pipes
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me or int(name) in spare:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            if mark in env.split(b"\0"):
                os.kill(int(name), signal.SIGKILL)
                killed.append(int(name))
        except OSError:
            continue  # gone, or another user's
    return killed


def main() -> None:
    mark = sys.argv[1].encode()
    sys.stdin.buffer.read()  # returns once the driver closed the pipe or died
    for _ in range(2):  # twice: a child spawned while the first pass ran
        kill_marked(mark)


if __name__ == "__main__":
    main()
