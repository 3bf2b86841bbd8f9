"""Every byte a fetch takes from the network passes one guard: a small HTTP proxy on
loopback that yt-dlp, ffmpeg and ffprobe are pointed at for one video.

Why a proxy: yt-dlp and ffmpeg each resolve names and follow redirects on their own, so a
check of the URL before the download proves nothing about the addresses they finally
connect to. Through the guard every connection, first request or redirect hop, names its
host to us; we resolve it once, refuse loopback, private, link-local (169.254.169.254),
shared, reserved and multicast addresses, and connect to the very address we checked
(pinned: a second, rebound DNS answer is never asked for). Plain http requests are sent
on with `Connection: close`, so one client connection is one checked request.

Being the only way out, it is also where downloads are bounded: bytes per attempt (the
page budget while yt-dlp reads metadata, the file-size cap while it downloads), an overall
deadline per video, and a minimum throughput. When a bound is hit every connection is
closed and the guard keeps the verdict, which the fetcher reports instead of whatever
yt-dlp or ffmpeg made of the closed connection."""
from __future__ import annotations

import base64
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Self
from urllib.parse import unquote, urlsplit

from lfvila_data.records import FailureCode, redact

ALLOW_ENV = "LFVILA_ALLOW_PRIVATE_ADDRESSES"
_HEAD_LIMIT = 64 * 1024  # bytes of a request head; more is not a request we send on
_HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}
# What the relay holds in hand. Every byte between the server and ffmpeg when ffmpeg drops a
# connection (after reading an index, at a seek, at a section's end) was served for nothing,
# so the guard's side of the relay stays small: its socket towards servers keeps the kernel's
# own (autotuned) receive buffer, the one ffmpeg would have alone, and the loopback leg holds
# little (ffmpeg's socket to us is small too: fetch._LOOPBACK_BUFFER). docs/performance.md,
# "Section downloads": a fixed 128 KiB buffer and 64 KiB in hand served 1.25x the bytes a
# section needs, 1.19x without a guard; 64 KiB in hand also made whole-file downloads 4x slower.
_CHUNK = 16 * 1024


def env_allows_private() -> bool:
    """Whether the environment lets fetches reach private addresses (the test suite
    sets it: its servers listen on loopback)."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def is_refused_address(ip: str) -> bool:
    """Whether an address is one a third-party URL must not make us reach: anything
    but a global unicast address (IPv4-mapped IPv6 judged as the IPv4 it maps)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (not addr.is_global or addr.is_multicast or addr.is_unspecified
            or addr.is_reserved or addr.is_loopback or addr.is_link_local)


def _allowed(ip: str, networks: tuple[str, ...]) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


def refused_host(url: str, allowed: tuple[str, ...] = ()) -> str | None:
    """Why a URL's host must not be fetched from (what its name resolves to here), or None.
    For URLs a tool reads without the guard; through the guard every hop is checked."""
    host = urlsplit(url).hostname
    if host is None:
        return f"no host in {redact(url)[:80]!r}"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None  # the tool reading it will fail to resolve it too
    bad = [i[4][0] for i in infos if is_refused_address(i[4][0]) and not _allowed(i[4][0], allowed)]
    return _refusal(host, bad[0]) if bad else None


def _refusal(host: str, ip: str) -> str:
    return (f"refused to fetch from {host} ({ip}): a loopback, private or link-local address "
            "(--allow-private-addresses to allow)")


class Verdict(NamedTuple):
    """Why the guard stopped a video's download: the ledger's reason, code and class."""

    reason: str
    code: FailureCode
    permanent: bool


@dataclass(frozen=True)
class GuardLimits:
    """The bounds of one video's download (FetchConfig fills them)."""

    allow_private: bool = False
    page_bytes: int = 32 * 1024**2      # per attempt while yt-dlp reads metadata
    file_bytes: int = 2 * 1024**3       # per attempt while it downloads
    deadline: float = 1800.0            # seconds for the whole video, retries included
    min_rate: float = 10_000.0          # bytes/s ...
    slow_window: float = 60.0           # ... measured over this many seconds of open connections
    connect_timeout: float = 20.0
    upstream: str | None = None         # the user's http proxy, which we connect through
    allowed_networks: tuple[str, ...] = ()  # private networks fetched from all the same (a mirror)


@dataclass
class ByteMeter:
    """Bytes from the network over every guard one job opened (speech recognition opens
    one to resolve a page URL and one to read the audio): each adds its `total_received`
    as it closes, however its work ended, so a failed job's bytes count too."""

    received: int = 0


class Guard:
    """`with Guard(limits) as g:` point clients at `g.url`; `g.verdict` says what it
    stopped; `meter`, when given, gets the bytes it let through when it closes."""

    def __init__(self, limits: GuardLimits, meter: ByteMeter | None = None):
        self.limits = limits
        self.meter = meter
        self.verdict: Verdict | None = None
        self.stopped = threading.Event()  # set with the verdict: a client may give up at once
        self.received = 0          # bytes from the network in this attempt
        self.total_received = 0    # ... in every attempt: what the video cost the network
        self.requests = 0          # connections the guard let through
        self._budget = limits.page_bytes
        self._budget_name = "page"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._window = (time.monotonic(), 0)
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        threading.Thread(target=self._accept, daemon=True, name="fetch-guard").start()
        threading.Thread(target=self._watch, daemon=True, name="fetch-guard-watch").start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._listener.close()
        self._close_all()
        if self.meter is not None:
            with self._lock:
                self.meter.received += self.total_received

    def attempt(self) -> None:
        """A new attempt: its bytes count from zero, starting in the page phase."""
        with self._lock:
            self.received = 0
            self._budget, self._budget_name = self.limits.page_bytes, "page"

    def downloading(self) -> None:
        """Metadata is read; from now on the file-size cap bounds the bytes."""
        with self._lock:
            self._budget, self._budget_name = self.limits.file_bytes, "file"

    def stop(self, verdict: Verdict) -> None:
        """Record why (the first reason wins) and close every connection."""
        with self._lock:
            if self.verdict is None:
                self.verdict = verdict
        self.stopped.set()
        self._close_all()

    # -- the proxy

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        # a small buffer towards the (loopback) client: when it drops a connection after a
        # seek, little more was read from the server than it took
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        self._track(client)
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method, target, version = (lines[0].decode("latin-1").split(" ") + ["", ""])[:3]
            host, port, origin = _target(method, target)
            if self.verdict is not None:
                return _reply(client, 403, self.verdict.reason)
            if host is None:
                self.stop(Verdict(f"refused a request for {redact(target)[:200]!r}: only http(s) is "
                                  "fetched", FailureCode.PRIVATE_ADDRESS, True))
                return _reply(client, 403, "scheme refused")
            try:
                upstream = self._connect(host, port)
            except _Refused as e:
                self.stop(Verdict(str(e), FailureCode.PRIVATE_ADDRESS, True))
                return _reply(client, 403, "address refused")
            except OSError as e:
                return _reply(client, 502, f"cannot connect to {host}:{port}: {e}")
            self._track(upstream)
            with self._lock:
                self.requests += 1
            kept = [ln for ln in lines[1:]
                    if ln.split(b":", 1)[0].strip().lower().decode("latin-1") not in _HOP_HEADERS]
            if self.limits.upstream is not None:  # the request as we got it, to the user's proxy
                auth = _proxy_authorization(self.limits.upstream)
                close = [] if method == "CONNECT" else [b"Connection: close"]
                upstream.sendall(b"\r\n".join([lines[0], *kept, *auth, *close]) + b"\r\n\r\n" + rest)
            elif method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                first = f"{method} {origin} {version}".encode("latin-1")
                upstream.sendall(b"\r\n".join([first, *kept, b"Connection: close"]) + b"\r\n\r\n" + rest)
            threading.Thread(target=_copy, args=(client, upstream), daemon=True).start()
            self._relay(upstream, client)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    self._untrack(s)

    def _connect(self, host: str, port: int) -> socket.socket:
        """A connection to `host` at an address we checked, or through the user's proxy
        after checking what the name resolves to here."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [info[4] for info in infos]
        if not self.limits.allow_private:
            bad = [a[0] for a in addresses
                   if is_refused_address(a[0]) and not _allowed(a[0], self.limits.allowed_networks)]
            if bad:
                raise _Refused(_refusal(host, bad[0]))
        if self.limits.upstream is not None:
            proxy = urlsplit(self.limits.upstream)
            return socket.create_connection((proxy.hostname, proxy.port or 80), self.limits.connect_timeout)
        error: OSError | None = None
        for family, _, _, _, address in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.limits.connect_timeout)
            try:
                sock.connect(address)  # the address checked above, never a new lookup
                sock.settimeout(None)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(f"no address for {host}")

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        """Server to client, counting every byte against the attempt's budget."""
        while True:
            data = src.recv(_CHUNK)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                self.received += len(data)
                self.total_received += len(data)
                start, count = self._window
                self._window = (start, count + len(data))
                over = self.received > self._budget
            if over:
                what = ("metadata responses (a page, not a video?) exceed" if self._budget_name == "page"
                        else "download exceeds the size cap of")
                return self.stop(Verdict(f"{what} {self._budget} bytes", FailureCode.TOO_LARGE, True))
            dst.sendall(data)

    def _watch(self) -> None:
        """The deadline and the minimum throughput, checked a few times a second."""
        lim = self.limits
        while not self._closed.wait(0.2):
            now = time.monotonic()
            if self.verdict is not None:
                continue
            if now - self._started > lim.deadline:
                self.stop(Verdict(f"the download took longer than the deadline of {lim.deadline:g} s",
                                  FailureCode.SLOW, False))
                continue
            with self._lock:
                start, count = self._window
                if not self._open:
                    self._window = (now, 0)  # idle is not slow
                    continue
                if now - start < lim.slow_window:
                    continue
                self._window = (now, 0)
            rate = count / (now - start)
            if rate < lim.min_rate:
                self.stop(Verdict(f"the server sent {rate:.0f} bytes/s for {now - start:.0f} s, below the "
                                  f"minimum of {lim.min_rate:g} bytes/s", FailureCode.SLOW, False))

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)
        if self.verdict is not None:
            _shut(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        _shut(sock)
        sock.close()

    def _close_all(self) -> None:
        with self._lock:
            socks = list(self._open)
        for s in socks:
            _shut(s)


class _Refused(Exception):
    pass


def _read_head(client: socket.socket) -> tuple[bytes | None, bytes]:
    """The request head (without its blank line) and whatever of the body came with it."""
    buf = b""
    client.settimeout(30)
    while b"\r\n\r\n" not in buf:
        data = client.recv(8192)
        if not data or len(buf) > _HEAD_LIMIT:
            return None, b""
        buf += data
    client.settimeout(None)
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _target(method: str, target: str) -> tuple[str | None, int, str]:
    """Host, port and origin-form path of a proxy request; host None when it is not
    http (CONNECT is how https and only https reaches us)."""
    if method == "CONNECT":
        parts = urlsplit(f"//{target}")
        return parts.hostname, parts.port or 443, ""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        return None, 0, ""
    return parts.hostname, parts.port or 80, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _proxy_authorization(proxy: str) -> list[bytes]:
    """The header that logs in to the user's proxy, from credentials in its URL."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return []
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return [f"Proxy-Authorization: Basic {token}".encode()]


def _reply(client: socket.socket, status: int, reason: str) -> None:
    """An error answer whose status line says why: yt-dlp puts that line in its message."""
    phrase = re.sub(r"[\x00-\x1f]", " ", reason)[:200]
    client.sendall(f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                   .encode("latin-1", "replace"))


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """Client to server (requests, and TLS in a tunnel), not counted."""
    try:
        while data := src.recv(64 * 1024):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_HIDDEN: dict[str, str] = {}
_hiding = [0, threading.Lock()]  # fetches running in this process; the lock guards both


@contextmanager
def no_proxy_bypass() -> Iterator[None]:
    """Hide `no_proxy` while fetches run: ffmpeg honours it, so a host listed there
    (typically localhost) would be reached directly, around the guard. Restored when the
    last concurrent fetch of the process ends (others, e.g. Ray's gRPC, may need it)."""
    with _hiding[1]:
        if _hiding[0] == 0:
            _HIDDEN.update({k: os.environ.pop(k) for k in ("no_proxy", "NO_PROXY") if k in os.environ})
        _hiding[0] += 1
    try:
        yield
    finally:
        with _hiding[1]:
            _hiding[0] -= 1
            if _hiding[0] == 0:
                os.environ.update(_HIDDEN)
                _HIDDEN.clear()
