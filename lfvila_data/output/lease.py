"""An exclusive lease on an output, so that two jobs never write into one.

Two builds into one `--output` interleave journals and overwrite each other's files, and
both exit 0. A job therefore holds `_lease.json` in the output for as long as it writes:
who holds it (owner, host, pid), since when, and a heartbeat a thread refreshes every
`every_s` seconds. A second job refuses to start. A lease is stale, and taken over, when
its heartbeat is older than `timeout_s` or, on the same host, its pid is dead (a job
killed with -9 cannot remove it).

Local outputs take the lease with O_CREAT|O_EXCL, which only one process can win. Object
stores have no such create, so there the job writes its lease, reads it back, and checks
it again before every journal flush and before finalize (`check`): a job that lost its
lease stops instead of writing over the one that took it."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import psutil

from lfvila_data.inputs import InputError
from lfvila_data.output.write import OutputDir, OutputStopped

LEASE = "_lease.json"


class LeaseHeld(InputError):
    """Another live job holds the output: the second one refuses in one line."""


class LeaseLost(OutputStopped):
    """This job's lease was taken over (its heartbeat stalled past the timeout, or someone
    removed it): it stops rather than write over the new holder's work."""


@dataclass(frozen=True)
class LeaseInfo:
    """What `_lease.json` holds."""

    owner: str      # the command that holds it (build, shard)
    host: str
    pid: int
    started: float  # epoch seconds
    heartbeat: float
    token: str      # unique per job: tells our lease from a newer one
    pid_started: float = 0.0  # the process's start time: a reused pid is not the holder

    def describe(self, url: str) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (f"{url} is in use by {self.owner} on {self.host} pid {self.pid} since {since}; "
                "wait for it to finish, or use another output")


def _started(pid: int) -> float:
    """When a process started (0.0 if unknown): with the pid it names one process, since
    pids are reused (32768 of them go round in an hour of a busy machine)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return 0.0


def _pid_alive(pid: int, started: float = 0.0) -> bool:
    """Whether the process that took the lease still runs: its pid exists, is not a zombie
    and, when the lease recorded it, started when that process did."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or abs(proc.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. another user's live process
        return True


def _parse(data: bytes, mtime: Callable[[], float]) -> LeaseInfo:
    """A lease file's record; one that cannot be read names an unknown job whose heartbeat
    is the file's time, so it turns stale like any other."""
    try:
        return LeaseInfo(**json.loads(data))
    except (ValueError, TypeError):
        t = mtime()
        return LeaseInfo("an unknown job", "?", 0, t, t, "")


def _move_aside(path: Path, stale: LeaseInfo) -> None:
    """Remove a stale lease. Of two jobs taking it over, the later one may move the
    winner's new lease instead: it then puts that one back."""
    aside = path.with_name(f"{LEASE}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _parse(aside.read_bytes(), time.time)
    if moved.token != stale.token:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink()


class OutputLease:
    """Hold the output's lease: `with OutputLease(out, "build"):` or acquire/release."""

    def __init__(self, out: OutputDir, owner: str, timeout_s: float = 120.0, every_s: float = 10.0):
        self.out, self.owner, self.timeout_s, self.every_s = out, owner, timeout_s, every_s
        self.token = uuid.uuid4().hex
        self.info: LeaseInfo | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def read(self) -> LeaseInfo | None:
        """The lease as the output holds it now; None when there is none."""
        try:
            return _parse(self.out.fs.cat_file(self.out.path(LEASE)), self._mtime)
        except FileNotFoundError:
            return None

    def _mtime(self) -> float:
        try:
            return float(self.out.fs.modified(self.out.path(LEASE)).timestamp())
        except (FileNotFoundError, NotImplementedError):
            return time.time()

    def is_stale(self, info: LeaseInfo) -> bool:
        if time.time() - info.heartbeat > self.timeout_s:
            return True
        return info.host == socket.gethostname() and not _pid_alive(info.pid, info.pid_started)

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the job that holds it."""
        now = time.time()
        info = LeaseInfo(self.owner, socket.gethostname(), os.getpid(), now, now, self.token,
                         _started(os.getpid()))
        for _ in range(5):
            held = self.read()
            if held is not None and not self.is_stale(held):
                raise LeaseHeld(held.describe(self.out.url))
            if self._create(info, replace=held):
                self.info = info
                self._thread = threading.Thread(target=self._beat, name="lfvila-lease", daemon=True)
                self._thread.start()
                return
        raise LeaseHeld(f"{self.out.url}: could not take the output's lease (another job is "
                        "starting on it)")

    def _create(self, info: LeaseInfo, replace: LeaseInfo | None) -> bool:
        """Write our lease unless another job got there first; True when it is ours."""
        data = json.dumps(asdict(info)).encode()
        if self.out.is_local:
            path = self.out.local_path(LEASE)
            path.parent.mkdir(parents=True, exist_ok=True)
            claim = path.with_name(f"{LEASE}.{self.token}.claim")
            claim.write_bytes(data)  # complete before anyone can see it
            try:
                if replace is not None:
                    _move_aside(path, replace)
                os.link(claim, path)  # atomic, and fails when a lease exists
                return True
            except FileExistsError:
                return False
            finally:
                claim.unlink(missing_ok=True)
        self.out.write_bytes(LEASE, data)
        time.sleep(0.5)  # let a racing writer land, then see whose lease stayed
        held = self.read()
        return held is not None and held.token == self.token

    def check(self) -> None:
        """Raise LeaseLost when the output's lease is no longer ours."""
        if self.lost is None:
            held = self.read()
            if held is None or held.token != self.token:
                self.lost = (f"lost the lease on {self.out.url}: "
                             + (f"{held.owner} on {held.host} pid {held.pid} took it over"
                                if held else "its lease file was removed")
                             + "; stopped without writing more")
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                try:
                    self.check()
                except LeaseLost:
                    return
                except OSError:
                    continue  # the output cannot be read now (a 5xx, a failing disk): the build says so
                assert self.info is not None
                self.info = LeaseInfo(**(asdict(self.info) | {"heartbeat": time.time()}))
                try:
                    self.out.write_bytes(LEASE, json.dumps(asdict(self.info)).encode())
                except OSError:
                    pass  # a full disk: the next beat tries again; the build reports the disk

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.info is None:
            return
        with self._lock:
            try:
                held = self.read()
                if held is not None and held.token == self.token:
                    self.out.fs.rm(self.out.path(LEASE))
            except OSError:
                pass  # an output failing now keeps the lease: stale once this job is gone (dead pid, no beat)
            self.info = None
