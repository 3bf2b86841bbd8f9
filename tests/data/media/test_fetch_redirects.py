"""A server that redirects a video URL to a scheme we never fetch (file://): a permanent,
coded failure, not a crash that every rerun retries."""
from __future__ import annotations

import http.server
import threading

import pytest

from lfvila_data.media.fetch import FetchConfig, Fetcher, FetchError
from lfvila_data.records import FailureCode


@pytest.fixture
def redirecting():
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "file:///etc/hostname")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v.mp4"
    server.shutdown()


def test_redirect_to_file_url_is_a_permanent_bad_url(redirecting, tmp_path):
    with pytest.raises(FetchError) as e:
        Fetcher(FetchConfig(retries=2, backoff=0.01), tmp_path)("vid", redirecting, [(1.0, 5.0)])
    assert e.value.permanent and e.value.code == FailureCode.BAD_URL
    assert "redirected to a URL we do not fetch" in e.value.reason
