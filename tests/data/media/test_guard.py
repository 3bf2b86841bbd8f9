"""The fetch guard against hostile URLs and servers, with real yt-dlp and ffmpeg: private
addresses refused on every hop (proved on loopback only: the servers count the requests
that reached them), credentials kept out of errors and the manifest, and every download
bounded in bytes, time and rate."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from lfvila_data.localserver import MediaServer
from lfvila_data.media.cut import Probe
from lfvila_data.media.fetch import FetchConfig, Fetcher, FetchError
from lfvila_data.media.guard import ALLOW_ENV, Guard, GuardLimits, is_refused_address
from lfvila_data.records import Clip, Failure, FailureCode, PlannedSample, redact
from lfvila_data.schemas import manifest_row
from tests.support.media import make_timecoded_video


class HostileServer:
    """A loopback server whose paths misbehave: `/forever` streams a video type without
    Content-Length, `/drip` sends one byte a second, `/page` an endless HTML page,
    `/to?<location>` redirects there. It counts requests and bytes sent per path."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def setup(self):  # bytes counted as sent are close to bytes the client read
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
                super().setup()

            def do_GET(self):
                name, _, query = self.path.lstrip("/").partition("?")
                server.requests[name] += 1
                if name == "to":
                    self.send_response(302)
                    self.send_header("Location", query)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ctype = {"forever": "video/mp4", "drip": "video/mp4", "page": "text/html"}.get(name)
                if ctype is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.end_headers()
                chunk = {"forever": b"\0" * 65536, "drip": b"x",
                         "page": b"<p>" + b"endless page " * 5000 + b"</p>\n"}[name]
                try:
                    while not server.stop.is_set():
                        self.wfile.write(chunk)
                        server.bytes_sent[name] += len(chunk)
                        if name == "drip":
                            server.stop.wait(1.0)
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{path}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    make_timecoded_video(root / "v.mp4", 20, width=160, height=120, gop=25)
    with MediaServer(root) as srv:
        yield srv


@pytest.fixture
def refusing(monkeypatch):
    """Fetch configs built in this test refuse private addresses, as outside the tests."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)


def test_address_classes():
    for ip in ("127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
               "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"):
        assert is_refused_address(ip), ip
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):  # classified, never contacted
        assert not is_refused_address(ip), ip


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_and_never_requested(media, tmp_path, refusing, monkeypatch, host):
    media.requests.clear()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # would send ffmpeg around the guard
    url = media.url("v.mp4").replace("127.0.0.1", host)
    with pytest.raises(FetchError) as e:
        Fetcher(FetchConfig(retries=2, backoff=0.05), tmp_path)("v", url, [(1, 3)])
    assert e.value.code is FailureCode.PRIVATE_ADDRESS and e.value.permanent
    assert "--allow-private-addresses" in e.value.reason
    assert media.requests["v.mp4"] == 0  # refused before any connection, not retried
    assert os.environ["no_proxy"] == "127.0.0.1,localhost"  # hidden only while fetching


def test_redirect_to_a_refused_address_is_refused_after_the_allowed_hop(media, tmp_path, refusing):
    """127.0.0.1 stands for an allowed host (an allowlisted network), 127.0.0.2 for a
    private one it redirects to; no byte of the target is fetched."""
    with HostileServer("127.0.0.2") as inner, HostileServer("127.0.0.1") as outer:
        cfg = FetchConfig(retries=1, backoff=0.05, allowed_networks=("127.0.0.1/32",))
        with pytest.raises(FetchError) as e:
            Fetcher(cfg, tmp_path)("v", outer.url("to?" + inner.url("forever")), [(1, 3)])
        assert outer.requests["to"] == 1 and inner.requests["forever"] == 0
    assert e.value.code is FailureCode.PRIVATE_ADDRESS and e.value.permanent and "127.0.0.2" in e.value.reason
    # the same redirect where private addresses are allowed is followed
    media.requests.clear()
    with HostileServer("127.0.0.1") as outer:
        got = Fetcher(FetchConfig(allow_private_addresses=True), tmp_path)(
            "v", outer.url("to?" + media.url("v.mp4")), [(1, 3)])
    assert got.sections and media.requests["v.mp4"] >= 1


def test_redirect_to_a_file_url_is_a_permanent_refusal(tmp_path):
    secret = tmp_path / "secret.mp4"
    make_timecoded_video(secret, 5, width=160, height=120)
    with HostileServer() as srv:
        with pytest.raises(FetchError) as e:
            Fetcher(FetchConfig(retries=2, backoff=0.05), tmp_path / "w")(
                "v", srv.url(f"to?file://{secret}"), [(1, 3)])
        assert srv.requests["to"] == 1  # permanent: not retried
    assert e.value.permanent and e.value.code is FailureCode.PRIVATE_ADDRESS and "file" in e.value.reason


def test_credentials_never_reach_errors_or_the_manifest(media, tmp_path):
    url = media.url("gone.mp4").replace("http://", "http://alice:s3cret@")
    with pytest.raises(FetchError) as e:
        Fetcher(FetchConfig(retries=0), tmp_path)("v", url, [(1, 3)])
    assert "s3cret" not in e.value.reason and "s3cret" not in str(e.value)
    with HostileServer() as srv, pytest.raises(FetchError) as e:  # yt-dlp names the redirect target
        Fetcher(FetchConfig(retries=0), tmp_path)("v", srv.url("to?file://alice:s3cret@localhost/x.mp4"), [(1, 3)])
    assert "s3cret" not in str(e.value) and "file://***@localhost" in e.value.reason
    assert redact("see https://u:p@h.example/x and http://tok@h/y") == "see https://***@h.example/x and http://***@h/y"
    sample = PlannedSample("v_00001_00001", "v", "https://alice:s3cret@h.example/v.mp4", 0.0, 2.0,
                           (Clip("v.1.mp4", 1, 0.0, 2.0, "hi"),))
    row = manifest_row(sample, "videos/v.mp4", Probe(0.0, 2.0, 160, 120, "h264", 3.0, False, 6), 10, "hdvila")
    assert row["url"] == "https://***@h.example/v.mp4"
    # any ledger row, e.g. a metadata line quoting its URL
    fail = Failure("v", None, "metadata", FailureCode.BAD_URL, "'url' 'ftp://alice:s3cret@h/v.mp4' is not http(s)")
    assert "s3cret" not in str(fail.to_row()) and "ftp://***@h/v.mp4" in fail.reason


def test_endless_stream_without_length_stops_at_the_size_cap(tmp_path):
    cap = 2 * 1024**2
    with HostileServer() as srv:
        with pytest.raises(FetchError) as e:
            Fetcher(FetchConfig(sections=False, max_filesize=cap, retries=2, backoff=0.05, deadline=120),
                    tmp_path)("v", srv.url("forever"), [(1, 3)])
        sent, requests = srv.bytes_sent["forever"], srv.requests["forever"]
    assert e.value.code is FailureCode.TOO_LARGE and e.value.permanent
    assert requests <= 2  # the metadata look, then the download; permanent: no retry
    assert sent < 3 * cap  # what the guard let through, plus socket buffers
    assert not any((tmp_path / "v").glob("*")) if (tmp_path / "v").exists() else True


def test_drip_feed_is_stopped_by_the_minimum_rate(tmp_path):
    cfg = FetchConfig(sections=False, min_rate=1000, slow_window=2.0, deadline=60, retries=3, backoff=0.05)
    start = time.monotonic()
    with HostileServer() as srv:
        with pytest.raises(FetchError) as e:
            Fetcher(cfg, tmp_path)("v", srv.url("drip"), [(1, 3)])
        sent = srv.bytes_sent["drip"]
    assert e.value.code is FailureCode.SLOW and not e.value.permanent  # a later run retries
    assert "bytes/s" in e.value.reason and sent < 60
    assert time.monotonic() - start < cfg.deadline  # stopped by the rate, not the deadline


def test_deadline_bounds_a_video_whatever_its_rate(tmp_path):
    cfg = FetchConfig(sections=False, min_rate=0, deadline=4.0, retries=3, backoff=0.05)
    start = time.monotonic()
    with HostileServer() as srv, pytest.raises(FetchError) as e:
        Fetcher(cfg, tmp_path)("v", srv.url("drip"), [(1, 3)])
    assert e.value.code is FailureCode.SLOW and not e.value.permanent and "deadline" in e.value.reason
    assert time.monotonic() - start < 30  # the deadline, not the server, ended it


def test_endless_page_is_bounded_by_the_page_budget(tmp_path):
    budget = 1024**2
    with HostileServer() as srv:
        with pytest.raises(FetchError) as e:
            Fetcher(FetchConfig(max_page_bytes=budget, retries=2, backoff=0.05, deadline=120),
                    tmp_path)("v", srv.url("page"), [(1, 3)])
        sent, requests = srv.bytes_sent["page"], srv.requests["page"]
    assert e.value.code is FailureCode.TOO_LARGE and e.value.permanent and "page" in e.value.reason
    assert requests == 1 and sent < 3 * budget


def test_the_users_proxy_is_used_after_the_check(media, tmp_path, refusing):
    """--proxy: the guard checks the host, then goes through the user's proxy (here a
    second guard that allows everything, standing in for a corporate proxy)."""
    with Guard(GuardLimits(allow_private=True)) as users_proxy:
        with pytest.raises(FetchError) as e:
            Fetcher(FetchConfig(proxy=users_proxy.url, retries=0), tmp_path)("v", media.url("v.mp4"), [(1, 3)])
        assert e.value.code is FailureCode.PRIVATE_ADDRESS and users_proxy.requests == 0
        media.requests.clear()
        cfg = FetchConfig(proxy=users_proxy.url, allowed_networks=("127.0.0.1/32",))
        got = Fetcher(cfg, tmp_path)("v", media.url("v.mp4"), [(1, 3)])
        assert got.sections and users_proxy.requests >= 2 and media.requests["v.mp4"] >= 1


def test_the_audio_read_of_speech_recognition_goes_through_the_guard(media, refusing):
    """`stream_audio` (what the ASR actor reads a resolved media URL with) gets the fetch
    guard's refusals: a loopback URL is never requested, a redirect from an allowed host
    to a refused one is refused after the allowed hop, and with private addresses allowed
    the same audio is read through the guard."""
    from lfvila_data.media.audio import AudioError, stream_audio

    media.requests.clear()
    with pytest.raises(AudioError) as e:
        list(stream_audio(media.url("v.mp4"), [(1, 3)]))
    assert e.value.code is FailureCode.PRIVATE_ADDRESS and e.value.permanent
    assert media.requests["v.mp4"] == 0
    with HostileServer("127.0.0.2") as inner, HostileServer("127.0.0.1") as outer:
        with pytest.raises(AudioError) as e:
            list(stream_audio(outer.url("to?" + inner.url("forever")), [(1, 3)],
                              guard=GuardLimits(allowed_networks=("127.0.0.1/32",))))
        assert outer.requests["to"] >= 1 and inner.requests["forever"] == 0
    assert e.value.code is FailureCode.PRIVATE_ADDRESS and e.value.permanent and "127.0.0.2" in str(e.value)
    chunks = list(stream_audio(media.url("v.mp4"), [(1, 3)], guard=GuardLimits(allow_private=True)))
    assert sum(c.duration for c in chunks) == pytest.approx(2.0, abs=0.01) and media.requests["v.mp4"] >= 1


def test_an_audio_read_over_the_size_cap_fails_instead_of_ending_early(media):
    """The guard closing the connection at the size cap is a failure, never a short read:
    ffmpeg took the closed connection for the input's end and exited 0 with the audio it
    had (0.9 of 16 s here), and without spans it retried the refused connection for ~20 s
    (`-reconnect`) before it failed; it is now ended as soon as the guard stops."""
    from lfvila_data.media.audio import AudioError, stream_audio

    size = (media.root / "v.mp4").stat().st_size
    for spans in ([(2.0, 18.0)], None):
        with pytest.raises(AudioError) as e:
            list(stream_audio(media.url("v.mp4"), spans, guard=GuardLimits(allow_private=True,
                                                                           file_bytes=size // 4)))
        assert e.value.code is FailureCode.TOO_LARGE and e.value.permanent, spans
