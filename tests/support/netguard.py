"""Keep every test's traffic on loopback, even when the code under test is wrong.

The strong form moves the whole test process into a network namespace of its own before any
thread, Ray worker, ffmpeg or browser starts: only `lo` exists there, so nothing it or its
children do can reach another address (no route, no DNS). That needs CAP_SYS_ADMIN (CI runs
as root). Without it, a guard inside this Python process refuses connections and datagrams
to anything but loopback and Unix sockets; child processes are then not covered, and the
pytest header says so.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _bring_up_loopback() -> None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _unshare_network() -> str | None:
    """Enter a new network namespace; None on success, else why not."""
    if _threads() != 1:  # a namespace switch moves only the calling thread
        return f"{_threads()} threads already running"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return os.strerror(ctypes.get_errno())
    _bring_up_loopback()
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address) -> None:
    if not isinstance(address, tuple):  # AF_UNIX paths, abstract sockets
        return
    host = address[0]
    infos = socket.getaddrinfo(host, None) if not is_loopback(host) else []
    if not is_loopback(host) and not all(is_loopback(i[4][0]) for i in infos):
        raise PermissionError(f"test traffic must stay on loopback, refused {host!r}")


def _guard_sockets() -> None:
    connect, connect_ex, sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto

    def guarded_connect(self, address):
        _check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(address)
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _check(args[-1])
        return sendto(self, data, *args)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.socket.sendto = guarded_sendto


def isolate() -> str:
    """Isolate this process (and, in the strong form, its children); say how."""
    why = _unshare_network()
    if why is None:
        return "network: own namespace, loopback only (this process and every child)"
    _guard_sockets()
    return f"network: loopback-only guard in the test process only (no namespace: {why})"
