"""CPU seconds of a command and everything it starts, Ray's workers included.

`resource.getrusage(RUSAGE_CHILDREN)`, `time` and similar tools count only children that
were waited for. Ray's raylet ignores SIGCHLD and its workers are not our children, so a
build through Ray showed 3.3 CPU-s where its process tree used 16-19. Two honest ways:

- a cgroup (as root): the command runs in a fresh cpuacct (cgroup v1) or cpu (v2) group,
  whose counter includes every process that ever ran in it, exited or not;
- otherwise psutil, polling the command's process tree every `poll_s` and keeping each
  process's last seen user+system time; a process that lives less than one poll is
  missed, so this reads low (the method is reported with the figure).

    from proctree import run_measured
    m = run_measured(["lfvila-data", "build", ...])
    print(m.wall_s, m.cpu_s, m.method)
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

V1 = Path("/sys/fs/cgroup/cpuacct")
V2 = Path("/sys/fs/cgroup")


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    method: str  # "cgroup-v1", "cgroup-v2" or "psutil-poll"
    returncode: int
    stdout: str
    stderr: str


def _cgroup() -> tuple[Path, str] | None:
    """A new, empty cgroup that counts CPU, or None where we may not make one."""
    name = f"lfvila-bench-{uuid.uuid4().hex[:8]}"
    for root, kind in ((V1, "cgroup-v1"), (V2, "cgroup-v2")):
        counter = "cpuacct.usage" if kind == "cgroup-v1" else "cpu.stat"
        if not (root / counter).exists() and not (root / "cgroup.controllers").exists():
            continue
        try:
            (root / name).mkdir()
        except OSError:
            continue
        if (root / name / counter).exists():
            return root / name, kind
        (root / name).rmdir()
    return None


def _cgroup_cpu_s(group: Path, kind: str) -> float:
    if kind == "cgroup-v1":
        return int((group / "cpuacct.usage").read_text()) / 1e9
    stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) / 1e6


def _remove_cgroup(group: Path) -> None:
    """Move what is left (a stray daemon) out, then remove the group."""
    for _ in range(50):
        procs = (group / "cgroup.procs").read_text().split()
        if not procs:
            break
        for pid in procs:
            try:
                (group.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        time.sleep(0.1)
    try:
        group.rmdir()
    except OSError:
        pass


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | None = None,
                 poll_s: float = 0.02, use_cgroup: bool = True) -> Measured:
    """Run `cmd` to the end; wall time and the CPU of its whole process tree."""
    group = _cgroup() if use_cgroup else None
    if group is not None:
        path, kind = group
        # the child joins the group before it execs, so nothing it starts escapes
        def join() -> None:
            (path / "cgroup.procs").write_text(str(os.getpid()))

        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                           preexec_fn=join, check=False)
        wall = time.perf_counter() - t0
        # Ray's processes may outlive the driver by a moment: wait until the group is idle
        for _ in range(100):
            if not (path / "cgroup.procs").read_text().split():
                break
            time.sleep(0.1)
        cpu = _cgroup_cpu_s(path, kind)
        _remove_cgroup(path)
        return Measured(wall, cpu, kind, p.returncode, p.stdout, p.stderr)
    return _run_polled(cmd, env=env, cwd=cwd, poll_s=poll_s)


def _run_polled(cmd: list[str], *, env: dict | None, cwd: str | None, poll_s: float) -> Measured:
    seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> last user+system
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    root = psutil.Process(p.pid)
    sid = os.getsid(p.pid)

    def poll() -> None:
        procs = [root]
        try:
            procs += root.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        # Ray re-parents its workers to the raylet; they stay in the build's session
        for q in psutil.process_iter(["pid"]):
            try:
                if os.getsid(q.pid) == sid:
                    procs.append(q)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        for q in procs:
            try:
                t = q.cpu_times()
                seen[(q.pid, q.create_time())] = t.user + t.system
            except psutil.Error:
                continue

    import threading
    done = threading.Event()

    def poller() -> None:
        while not done.is_set():
            poll()
            time.sleep(poll_s)

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    for _ in range(50):  # the session's stragglers (Ray's agents) until they exit
        poll()
        if not any(os.getsid(q.pid) == sid for q in _alive(psutil.process_iter(["pid"]))):
            break
        time.sleep(0.1)
    done.set()
    thread.join()
    return Measured(wall, sum(seen.values()), "psutil-poll", p.returncode, out, err)


def _alive(procs) -> list:
    out = []
    for q in procs:
        try:
            os.getsid(q.pid)
            out.append(q)
        except (ProcessLookupError, PermissionError):
            continue
    return out
