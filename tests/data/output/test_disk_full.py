"""A full output disk (a real, small tmpfs), or an `s3://` output answering 5xx: the build
stops at the first sample that cannot be written, with one error line and exit code 3,
records nothing as a permanent failure and leaves no temporary files; a rerun after
freeing space (or once S3 answers again) makes every sample."""
from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading

import pandas as pd
import pytest

from lfvila_data.output.write import OutputDir, read_journal
from tests.data.output.conftest import VIDEOS
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.tmpfs import small_tmpfs


@pytest.fixture
def small_disk(tmp_path):
    """An output on a 32 KiB tmpfs: room for the plan and a few samples, not for all (4 of
    the 8 videos are fetched before it fills; at 48 KiB, since the cut's defaults write
    smaller files, all 8 were)."""
    with small_tmpfs(tmp_path / "out", "32k") as mnt:
        yield mnt


def test_full_output_stops_the_build_and_a_rerun_completes(site, tmp_path, small_disk):
    out, cmd = small_disk, site.build_cmd(small_disk, tmp_path / "work", "--download-concurrency", "1")
    site.server.requests.clear()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 3, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and f"the output {out} cannot be written" in errors[0]
    assert "No space left on device" in errors[0] and "rerun the same command" in errors[0]
    assert len(site.server.requests) < VIDEOS, r.stderr  # stopped early, not after failing every video
    assert not (out / "manifest").exists()
    journal = read_journal(OutputDir(str(out)))
    journaled = [f for _, payload in journal.values() for f in payload["failures"]]
    assert not [f for f in journaled if f["permanent"]]
    # the video the disk stopped was fetched too: its bytes count (issue 15 item 4)
    assert all(payload.get("fetched_bytes", 0) > 0 for _, payload in journal.values()), journal
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".part"))]

    subprocess.run(["mount", "-o", "remount,size=8m", str(out)], check=True)  # space freed
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(pd.read_parquet(out / "manifest").key) == site.keys
    assert pd.read_parquet(out / "failures").empty


class _FailingS3(socketserver.ThreadingTCPServer):
    """A loopback relay in front of moto's S3 that, once `fail_after` sample videos were
    written through it, answers every request with 503 SlowDown (reads too: an endpoint in
    trouble) until `failing` is cleared.

    One request per connection: the request goes on with `Connection: close`, so moto
    closes after its reply and the relay needs no framing of bodies or replies (botocore's
    chunked uploads included); a refused request's body is read before the reply."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, fail_after: int) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.videos_left = fail_after
        self.failing = False
        self.refused = 0
        self.refused_videos: set[str] = set()  # sample files whose write was refused
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def refuse(self, method: str, path: str) -> bool:
        with self.lock:
            if not self.failing and method in ("PUT", "POST") and "/videos/" in path:
                self.videos_left -= 1
                self.failing = self.videos_left <= 0  # this one goes through, what follows fails
                return False
            self.refused += self.failing
            if self.failing and method in ("PUT", "POST") and "/videos/" in path:
                self.refused_videos.add(path.split("?")[0])
            return self.failing


class _Relay(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        head = [self.rfile.readline(65537)]
        while head[-1] not in (b"\r\n", b"\n", b""):
            head.append(self.rfile.readline(65537))
        if not head[0].strip():
            return
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.decode("latin-1").partition(":") for ln in head[1:-1])}
        method, path = head[0].decode("latin-1").split()[:2]
        if self.server.refuse(method, path):
            self._drain(headers)
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>")
            self.wfile.write(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), b"" if method == "HEAD" else body))
            return
        kept = [ln for ln in head[1:-1] if ln.split(b":")[0].strip().lower() not in (b"connection", b"keep-alive")]
        with socket.create_connection(self.server.upstream) as up:
            up.sendall(b"".join([head[0], *kept, b"Connection: close\r\n\r\n"]))
            threading.Thread(target=self._pump, args=(up,), daemon=True).start()
            while data := up.recv(65536):
                self.wfile.write(data)

    def _pump(self, up: socket.socket) -> None:
        """The request's body, as it comes, until the reply is over and either side closes."""
        try:
            while data := self.rfile.read1(65536):
                up.sendall(data)
        except OSError:
            pass

    def _drain(self, headers: dict[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue":
            return  # the body waits for a 100 that never comes; the 503 ends the request
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while (size := int(self.rfile.readline().split(b";")[0] or b"0", 16)) > 0:
                self.rfile.read(size + 2)
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            self.rfile.read(int(headers.get("content-length", "0")))


@pytest.fixture
def failing_s3(s3):
    fs, env = s3
    relay = _FailingS3(env["AWS_ENDPOINT_URL"], fail_after=1)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    yield fs, env, relay
    relay.shutdown()
    relay.server_close()


def test_s3_5xx_on_the_output_stops_the_build_and_a_rerun_completes(site, tmp_path, failing_s3):
    """An `s3://` output whose endpoint answers 503 to everything after the first sample
    video: exit 3 with the output's line (not a traceback: the lease's heartbeat and its
    release read the output too), early, nothing journaled as permanent; once S3 answers
    again the same command makes every sample. botocore is left one retry
    (AWS_MAX_ATTEMPTS=2) to keep it short."""
    fs, env, relay = failing_s3
    run_env = {**os.environ, **env, "AWS_ENDPOINT_URL": relay.url, "AWS_RETRY_MODE": "standard",
               "AWS_MAX_ATTEMPTS": "2"}
    videos = 3  # of the site's, to keep two builds cheap
    meta, text = write_metadata(tmp_path / "meta", [VideoSpec(f"vid{i}", site.server.url(f"v{i}.mp4"),
                                                               even_spans(5)) for i in range(videos)])
    cmd = [sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(meta), "--text", str(text),
           "--output", "s3://lfvila-test/out", "--workdir", str(tmp_path / "work"), "--download-concurrency", "1"]
    site.server.requests.clear()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=run_env)
    assert r.returncode == 3, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "the output s3://lfvila-test/out cannot be written" in errors[0], r.stderr[-3000:]
    assert "rerun the same command" in errors[0] and "Traceback" not in r.stderr
    assert relay.refused and len(relay.refused_videos) < videos - 1, r.stderr[-3000:]  # stopped at the first
    fs.invalidate_cache()
    assert not fs.exists("lfvila-test/out/manifest")
    journaled = [f for _, payload in read_journal(OutputDir("s3://lfvila-test/out")).values()
                 for f in payload["failures"]]
    assert not [f for f in journaled if f["permanent"]]

    relay.failing, relay.videos_left = False, 10**9  # S3 answers again
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    opts = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
    m = pd.read_parquet("s3://lfvila-test/out/manifest", storage_options=opts)
    assert list(m.key) == site.keys[:videos]
    assert pd.read_parquet("s3://lfvila-test/out/failures", storage_options=opts).empty
    for video in m.video:
        assert fs.info(f"lfvila-test/out/{video}")["size"] > 0
