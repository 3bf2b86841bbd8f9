"""`s3://` inputs and outputs through fsspec, against a real S3 API (moto's server on
loopback, the `s3` fixture of conftest.py): metadata read from a bucket, sample videos and
the manifest written to one, and a rerun that resumes from what the bucket holds."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import pandas as pd
import pytest

from lfvila_data.localserver import MediaServer
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import decode_times, make_timecoded_video


def test_build_from_and_to_s3(s3, tmp_path):
    fs, env = s3
    www = tmp_path / "www"
    www.mkdir()
    for i in range(2):
        make_timecoded_video(www / f"s{i}.mp4", 24, width=160, height=120)
    with MediaServer(www) as srv:
        videos = [VideoSpec(f"s3vid{i}", srv.url(f"s{i}.mp4"), even_spans(5)) for i in range(2)]
        meta, text = write_metadata(tmp_path / "meta", videos)
        fs.put_file(str(meta), "lfvila-test/hdvila/hdvila_part0.jsonl")
        fs.put_file(str(text), "lfvila-test/hdvila/hdvila_clip_text.jsonl")
        cmd = [sys.executable, "-m", "lfvila_data.cli", "build",
               "--metadata", "s3://lfvila-test/hdvila/hdvila_part*.jsonl",
               "--text", "s3://lfvila-test/hdvila/hdvila_clip_text.jsonl",
               "--output", "s3://lfvila-test/out", "--workdir", str(tmp_path / "scratch")]
        run_env = {**os.environ, **env}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env)
        assert r.returncode == 0, r.stderr[-3000:]
        fs.invalidate_cache()
        opts = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
        m = pd.read_parquet("s3://lfvila-test/out/manifest", storage_options=opts)
        assert list(m.key) == ["s3vid0_00001_00005", "s3vid1_00001_00005"]
        local = tmp_path / "v.mp4"
        fs.get_file(f"lfvila-test/out/{m.video[0]}", str(local))
        times = decode_times(local)
        assert m.start[0] - 0.25 <= times[0] <= m.start[0] + 1 / 3
        assert pd.read_parquet("s3://lfvila-test/out/failures", storage_options=opts).empty
        # a rerun after losing the journal finds the samples in the bucket: nothing fetched
        # (a plain rerun trusts the journal: tests/data/test_build.py, the same code on local disk)
        fs.rm("lfvila-test/out/_journal", recursive=True)
        srv.requests.clear()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sum(srv.requests.values()) == 0
        fs.invalidate_cache()
        again = pd.read_parquet("s3://lfvila-test/out/manifest", storage_options=opts)
        pd.testing.assert_frame_equal(again, m)
    # shards from the build in the bucket, into the bucket
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "shard", "--input",
                        "s3://lfvila-test/out", "--output", "s3://lfvila-test/shards",
                        "--val-count", "1"], capture_output=True, text=True, timeout=600, env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    fs.invalidate_cache()
    index = json.loads(fs.cat_file("lfvila-test/shards/train.json"))
    shard = index["shardlist"][0]
    data = fs.cat_file(f"lfvila-test/shards/{shard['url']}")
    assert len(data) == shard["filesize"] and hashlib.md5(data).hexdigest() == shard["md5sum"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert len(names) == 3 * shard["nsamples"] and names[0].endswith(".mp4")
    sm = pd.read_parquet("s3://lfvila-test/shards/manifest", storage_options=opts)
    assert set(sm.key) == set(m.key) and set(sm.split) == {"train", "val"}


class _Denied(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request as S3 does for a missing permission."""

    def _deny(self):
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                b"<Message>Access Denied</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _deny

    def log_message(self, *args):
        pass


@pytest.fixture
def denied():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _cli(args, env, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # no ~/.aws of the machine running the tests; the endpoint is always loopback
    run_env = {**clean, "HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-east-1", **env}
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", *args], capture_output=True, text=True,
                       timeout=300, env=run_env, check=False)
    return r.returncode, r.stderr.strip().splitlines()


def test_storage_problems_are_one_line_errors(s3, denied, tmp_path):
    """No credentials, no bucket, no permission: one line naming the problem, exit 2, no
    traceback, for build (inputs and output) and shard (input and output)."""
    fs, env = s3
    meta, text = write_metadata(tmp_path / "meta", [VideoSpec("vid", "http://127.0.0.1:9/v.mp4", even_spans(5))])
    fs.put_file(str(meta), "lfvila-test/in/meta.jsonl")
    fs.put_file(str(text), "lfvila-test/in/text.jsonl")
    build = ["build", "--metadata", str(meta), "--text", str(text), "--workdir", str(tmp_path / "w")]
    s3_in = ["build", "--metadata", "s3://lfvila-test/in/meta.jsonl", "--text", "s3://lfvila-test/in/text.jsonl",
             "--output", str(tmp_path / "o"), "--workdir", str(tmp_path / "w")]
    endpoint = {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}
    keys = {**endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    refused = {"AWS_ENDPOINT_URL": denied, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    cases = [
        (build + ["--output", "s3://lfvila-test/out"], endpoint, "no credentials for s3"),
        (s3_in, endpoint, "no credentials for s3"),
        (["shard", "--input", "s3://lfvila-test/out", "--output", str(tmp_path / "s")], endpoint,
         "no credentials for s3"),
        (["shard", "--input", "s3://no-such-bucket/out", "--output", str(tmp_path / "s")], keys,
         "the bucket does not exist"),
        (build + ["--output", "s3://lfvila-test/out"], refused, "denied"),
        (["shard", "--input", "s3://lfvila-test/out", "--output", str(tmp_path / "s")], refused, "denied"),
    ]
    for args, extra, expected in cases:
        code, lines = _cli(args, extra, tmp_path)
        assert code == 2 and len(lines) == 1 and expected in lines[0].lower(), (args, extra, lines[-20:])
        assert lines[0].startswith("lfvila-data: error:")



@pytest.mark.parametrize("code,status", [("InternalError", 500), ("ServiceUnavailable", 503),
                                         ("SlowDown", 503), ("BadGateway", 502)])
def test_s3_5xx_on_the_output_is_an_output_error(code, status):
    """What s3fs raises for a 5xx its retries did not cure is the output failing, as a full
    disk is (`is_output_error`): a transient output_full row, and the build stops at the
    first one with exit 3 (tests/data/output/test_disk_full.py shows that path)."""
    import botocore.exceptions
    from s3fs.errors import translate_boto_error

    from lfvila_data.output.write import is_output_error

    err = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "We encountered an internal error. Please try again."},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    assert is_output_error(translate_boto_error(err))
    assert not is_output_error(translate_boto_error(botocore.exceptions.ClientError(
        {"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."},
         "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")))
