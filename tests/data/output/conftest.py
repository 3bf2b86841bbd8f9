"""A small loopback site of generated videos and its HD-VILA metadata, and the build
command line, for the tests that run real builds as subprocesses (leases, full disks,
kills); and a real S3 API on loopback (moto's server) for `s3://` outputs."""
from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from lfvila_data.localserver import MediaServer
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import make_timecoded_video

VIDEOS = 8


@dataclass
class Site:
    server: MediaServer
    meta: Path
    text: Path
    keys: list[str]

    def build_cmd(self, output: Path | str, workdir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(self.meta),
                "--text", str(self.text), "--output", str(output), "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    www = root / "www"
    www.mkdir()
    for i in range(VIDEOS):
        make_timecoded_video(www / f"v{i}.mp4", 30, width=320, height=240, audio=False)
    with MediaServer(www) as srv:
        videos = [VideoSpec(f"vid{i}", srv.url(f"v{i}.mp4"), even_spans(5)) for i in range(VIDEOS)]
        meta, text = write_metadata(root / "meta", videos)
        yield Site(srv, meta, text, [f"vid{i}_00001_00005" for i in range(VIDEOS)])



@pytest.fixture
def s3(tmp_path):
    """A moto S3 server on loopback with an empty bucket `lfvila-test`, and the environment
    that points boto at it. Moto keeps its buckets per process, so each use starts from a
    reset state (another test's bucket would otherwise still be there)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"),
                           timeout=30).close()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
    fs.mkdir("lfvila-test")
    yield fs, env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
