"""A loopback HTTP server with Range support for local files: the demo serves its corpus
with it so the real yt-dlp section-download path runs offline, and the tests use it (with
its fault injection: fixed statuses, transient 503s) as their stand-in for the internet."""
from __future__ import annotations

import mimetypes
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Transfer:
    """One request and the body bytes sent for it (counted as they are written), so a
    test or benchmark can say which read cost what."""

    method: str
    name: str
    range: str | None
    sent: int = 0


class MediaServer:
    """`with MediaServer(root) as srv: srv.url("a.mp4")`."""

    def __init__(self, root: Path, *, ranges: bool = True):
        self.root = Path(root)
        self.ranges = ranges
        self.bytes_sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header) in order
        self.transfers: list[Transfer] = []  # the same requests, each with its body bytes
        self.fail_transient: dict[str, int] = {}   # path -> remaining 500 answers
        self.status: dict[str, int] = {}            # path -> fixed status (e.g. 404)
        # called with each request's path before it is answered (a test acts while a
        # download is in flight, e.g. kills the process downloading)
        self.on_request: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                # a small send buffer: bytes counted as sent are close to bytes the
                # client read, even when it drops a connection it did not drain
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
                super().setup()

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _fail(self, code: int):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool):
                name = self.path.split("?", 1)[0].lstrip("/")
                with server._lock:
                    server.requests[name] += 1
                    server.log.append((self.command, name, self.headers.get("Range")))
                    transfer = Transfer(self.command, name, self.headers.get("Range"))
                    server.transfers.append(transfer)
                    if server.fail_transient.get(name, 0) > 0:
                        server.fail_transient[name] -= 1
                        return self._fail(503)
                if server.on_request is not None:
                    server.on_request(name)
                if name in server.status:
                    return self._fail(server.status[name])
                path = (server.root / name).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    return self._fail(404)
                size = path.stat().st_size
                start, end = 0, size - 1
                rng = self.headers.get("Range")
                m = _RANGE.match(rng.strip()) if (rng and server.ranges) else None
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = int(m.group(2)) if m.group(2) else size - 1
                    else:
                        start = max(0, size - int(m.group(2)))
                    end = min(end, size - 1)
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(end - start + 1))
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as f:
                    f.seek(start)
                    left = end - start + 1
                    try:
                        while left > 0:
                            chunk = f.read(min(left, 16 * 1024))
                            if not chunk:
                                break
                            self.wfile.write(chunk)
                            left -= len(chunk)
                            with server._lock:
                                server.bytes_sent[name] += len(chunk)
                                transfer.sent += len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def __enter__(self) -> "MediaServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
