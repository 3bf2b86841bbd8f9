"""`lfvila-data build --source hdvila` end to end: generated videos served over loopback
HTTP, HD-VILA metadata with every kind of bad input, then the manifest, the ledger,
frame-exact boundaries, resume, retries and kill -9."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.localserver import MediaServer
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import decode_times, make_timecoded_video

EXPECTED_KEYS = ["vidA_00001_00006", "vidA_00008_00012", "vidB_00001_00005",
                 "vidD_00001_00004", "vidF_00001_00006", "vidH_00004_00008", "vidK_00001_00005"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A loopback 'internet' with good, broken and hostile videos, and their metadata."""
    root = tmp_path_factory.mktemp("site")
    www = root / "www"
    www.mkdir()
    a = make_timecoded_video(www / "a.mp4", 60, width=320, height=240, gop=50)
    make_timecoded_video(www / "b.webm", 30, width=241, height=427, codec="vp9", audio=False)
    make_timecoded_video(www / "d.mp4", 20, width=320, height=240)
    make_timecoded_video(www / "k.mp4", 30, width=160, height=120, fps=30)
    data = a.read_bytes()
    (www / "f.mp4").write_bytes(data[: len(data) // 2])            # truncated download
    (www / "g.mp4").write_bytes(os.urandom(4096) + data[4096:])    # corrupt header
    (www / "e.mp4").write_text("<html>this is not a video</html>\n" * 100)
    shutil.copy(a, www / "h.mp4")
    srv = MediaServer(www).__enter__()
    overlapping = even_spans(8)
    overlapping[2] = (overlapping[1][1] - 1.0, overlapping[2][1])  # clip 3 starts inside clip 2
    videos = [
        VideoSpec("vidA", srv.url("a.mp4"), even_spans(12), no_text={7}),
        VideoSpec("vidB", srv.url("b.webm"), even_spans(5, length=4.8, gap=0.2, first=0.5)),
        VideoSpec("vidC", srv.url("gone.mp4"), even_spans(4)),
        VideoSpec("vidD", srv.url("d.mp4"), even_spans(6)),
        VideoSpec("vidE", srv.url("e.mp4"), even_spans(4)),
        VideoSpec("vidF", srv.url("f.mp4"), even_spans(12)),
        VideoSpec("vidG", srv.url("g.mp4"), even_spans(4)),
        VideoSpec("vidH", srv.url("h.mp4"), overlapping),
        VideoSpec("vidK", srv.url("k.mp4"), even_spans(5)),
        VideoSpec("vidU", "http://127.0.0.1:9/unreachable.mp4", even_spans(4)),
    ]
    hostile = [
        VideoSpec("../evil", srv.url("a.mp4"), even_spans(4)).meta_line(),
        json.dumps({"video_id": "a/b", "url": srv.url("a.mp4"),
                    "clip": [{"clip_id": "a/b.1.mp4", "span": ["00:00:01.000", "00:00:02.000"]}]}),
        VideoSpec("vidL", "file:///etc/passwd", even_spans(4)).meta_line(),
        '{"video_id": "vidM", "url": ',
        json.dumps({"video_id": "vidN", "clip": []}),
    ]
    meta, text = write_metadata(root / "meta", videos, extra_meta=hostile)
    yield {"root": root, "srv": srv, "meta": meta, "text": text, "videos": videos}
    srv.__exit__(None, None, None)


def config(site, out: Path, **kw) -> BuildConfig:
    task = TaskContext(output=str(out), fetch=FetchConfig(retries=0, backoff=0.05),
                       cut=CutConfig(), workdir=str(site["root"] / "scratch"))
    return BuildConfig(metadata=(str(site["meta"]),), text=(str(site["text"]),), output=str(out),
                       plan=PlanConfig(), task=task, **kw)


def ledger(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "failures")


def reasons(df: pd.DataFrame, video_id: str) -> str:
    return " | ".join(df[df.video_id == video_id].reason)


@pytest.fixture(scope="module")
def built(site, tmp_path_factory, ray_module):
    """The first build, with vidK's server failing transiently all along."""
    out = tmp_path_factory.mktemp("build") / "out"
    srv = site["srv"]
    srv.fail_transient["k.mp4"] = 10**6
    sent, requests = sum(srv.bytes_sent.values()), sum(srv.requests.values())
    try:
        record = run_build(config(site, out))
    finally:
        srv.fail_transient.clear()
    site["first_build_sent"] = sum(srv.bytes_sent.values()) - sent  # body bytes the server sent
    site["first_build_requests"] = sum(srv.requests.values()) - requests
    return out, record


def test_manifest(built, site):
    out, record = built
    m = pd.read_parquet(out / "manifest")
    assert list(m.key) == [k for k in EXPECTED_KEYS if k != "vidK_00001_00005"]
    assert m.key.is_unique and not m.key.str.contains(r"\.").any()
    for col in ("key", "video_id", "url", "start", "end", "clips", "paragraph", "video", "fps",
                "width", "height", "duration"):
        assert col in m.columns
    a = m.set_index("key").loc["vidA_00001_00006"]
    assert [c["clip_id"] for c in a.clips] == [f"vidA.{k}.mp4" for k in range(1, 7)]
    assert a.start == 1.0 and a.end == pytest.approx(27.5)
    assert a.paragraph == " ".join(c["text"] for c in a.clips)
    assert a.clips[0]["text"] == "Clip 1 of vidA says hello."
    assert (a.fps, a.width, a.height) == (3.0, 320, 240)
    assert a.duration == pytest.approx(26.5, abs=0.34)
    b = m.set_index("key").loc["vidB_00001_00005"]
    assert (b.width, b.height) == (136, 240)  # portrait, odd source size
    d = m.set_index("key").loc["vidD_00001_00004"]
    assert d.end == pytest.approx(18.5)
    assert record["counts"]["samples_written"] == 6


def test_sample_videos_are_exact(built):
    out, _ = built
    m = pd.read_parquet(out / "manifest")
    for row in m.itertuples():
        path = out / row.video
        assert path.is_file() and path.stat().st_size == row.bytes
        times = decode_times(path)
        assert abs(len(times) - (row.end - row.start) * 3) <= 1
        assert row.start - 0.25 <= times[0] <= row.start + 1 / 3, row.key
        assert row.end - 1 <= times[-1] <= row.end, row.key


def test_ledger_names_every_problem(built):
    out, _ = built
    f = ledger(out)
    assert set(f.columns) >= {"video_id", "clip_id", "stage", "reason"}
    assert "no text" in reasons(f, "vidA") and f[f.video_id == "vidA"].clip_id.tolist() == ["vidA.7.mp4"]
    c = f[f.video_id == "vidC"]
    assert c.stage.tolist() == ["download"] and "404" in c.reason.iloc[0] and c.clip_id.isna().all()
    d = f[f.video_id == "vidD"]
    assert d.clip_id.tolist() == ["vidD.5.mp4", "vidD.6.mp4"] and "beyond the end" in reasons(f, "vidD")
    assert "does not serve a readable video" in reasons(f, "vidE")
    assert "beyond the end" in reasons(f, "vidF") and len(f[f.video_id == "vidF"]) == 6
    assert "does not serve a readable video" in reasons(f, "vidG")
    assert f[f.video_id == "vidH"].stage.tolist() == ["metadata"] and "overlap" in reasons(f, "vidH").lower()
    u = f[f.video_id == "vidU"]
    assert u.stage.tolist() == ["download"] and "refused" in u.reason.iloc[0].lower()
    assert not u.permanent.any()
    k = f[f.video_id == "vidK"]
    assert "503" in reasons(f, "vidK") and not k.permanent.any()
    meta = f[f.stage == "metadata"]
    joined = " | ".join(meta.reason)
    assert "../evil" in joined and "a/b" in joined and "file:///etc/passwd" in joined
    assert "malformed JSON" in joined and "url" in joined
    codes = {vid: set(g.code) for vid, g in f.groupby("video_id")}
    assert (codes["vidA"], codes["vidC"], codes["vidD"], codes["vidE"]) == (
        {"no_text"}, {"not_found"}, {"past_media_end"}, {"not_a_video"})
    assert (codes["vidF"], codes["vidG"], codes["vidH"], codes["vidU"], codes["vidK"]) == (
        {"past_media_end"}, {"not_a_video"}, {"overlapping_clip"}, {"network"}, {"network"})
    assert {"unsafe_id", "bad_url", "bad_line"} <= set(meta.code)


def test_nothing_written_outside_output(built, site):
    out, _ = built
    root = site["root"]
    for base in (root, out, out.parent):
        assert not list(base.rglob("*evil*")) and not list(base.parent.glob("*evil*"))
    written = {p.relative_to(out).parts[0] for p in out.rglob("*")}
    assert written <= {"videos", "plan", "_journal", "_fit", "_media", "manifest", "failures",
                       "downloads", "build.json"}
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp"))
    assert not list((root / "scratch").rglob("*.*"))  # downloads are cleaned up


def test_build_json_and_downloads(built):
    out, _ = built
    info = json.loads((out / "build.json").read_text())
    assert info["plan_config"]["min_clips"] == 4 and info["plan_config"]["max_gap"] == 3.0
    assert info["cut"]["fps"] == 3.0 and info["counts"]["samples_written"] == 6
    assert info["plan"]["samples"] == 11
    ledger_codes = pd.read_parquet(out / "failures").code.value_counts().to_dict()
    assert info["counts"]["failures_by_code"] == ledger_codes and ledger_codes["past_media_end"] == 8
    dl = pd.read_parquet(out / "downloads")
    assert set(dl.key) == set(pd.read_parquet(out / "manifest").key)
    assert (dl.download_bytes > 0).all() and info["counts"]["download_bytes"] == dl.download_bytes.sum()


def test_every_byte_fetched_is_counted(built, site):
    """downloads/ holds the written samples' shares; build.json also counts what the network
    gave for samples and videos that failed later (past the media's end, not a video, 503s),
    so fetched > needed; fetched is at most what the server sent plus its headers (less when
    a client hung up on bytes already in the server's socket buffer)."""
    out, _ = built
    counts = json.loads((out / "build.json").read_text())["counts"]
    sent, requests = site["first_build_sent"], site["first_build_requests"]
    assert 0 < counts["fetched_bytes"] <= sent + 2048 * requests
    # vidD and vidF were fetched whole and cut nothing; vidE's html page was read too
    assert counts["fetched_bytes"] - counts["download_bytes"] > (site["root"] / "www" / "d.mp4").stat().st_size


def test_rerun_retries_only_transient_failures(built, site):
    out, _ = built
    srv = site["srv"]
    before = pd.read_parquet(out / "manifest")
    srv.requests.clear()
    run_build(config(site, out))
    # vidK failed with 503s before: retried now and done; permanent failures are not retried
    assert srv.requests["k.mp4"] >= 1
    assert srv.requests["gone.mp4"] == 0 and srv.requests["e.mp4"] == 0
    assert srv.requests["a.mp4"] == 0  # finished videos are not fetched again
    after = pd.read_parquet(out / "manifest")
    assert list(after.key) == EXPECTED_KEYS
    pd.testing.assert_frame_equal(after[after.key != "vidK_00001_00005"].reset_index(drop=True), before)
    assert "vidK" not in set(ledger(out).video_id)
    srv.requests.clear()
    run_build(config(site, out, retry_failed=True))
    assert srv.requests["gone.mp4"] == 1 and srv.requests["d.mp4"] >= 1  # vidD lost clips
    assert srv.requests["a.mp4"] == 0  # vidA's missing text is a plan failure: nothing to retry
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), after)


def test_lost_journal_reuses_finished_files(built, site):
    """Files written before a crash that never reached the journal are reused, not redone."""
    out, _ = built
    expected = pd.read_parquet(out / "manifest")
    shutil.rmtree(out / "_journal")
    site["srv"].requests.clear()
    run_build(config(site, out))
    assert site["srv"].requests["a.mp4"] == 0 and site["srv"].requests["k.mp4"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), expected)


def test_lost_journal_reuses_files_of_trimmed_samples(built, site):
    """vidD and vidF are shorter than their metadata: their samples are trimmed and written
    under the fitted key. Without the journal, a rerun finds those files (and the clips
    they lost) without downloading or cutting again."""
    out, _ = built
    expected, failures = pd.read_parquet(out / "manifest"), ledger(out)
    assert {"vidD_00001_00004", "vidF_00001_00006"} <= set(expected.key)
    shutil.rmtree(out / "_journal")
    site["srv"].requests.clear()
    run_build(config(site, out))
    assert site["srv"].requests["d.mp4"] == 0 and site["srv"].requests["f.mp4"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), expected)
    pd.testing.assert_frame_equal(ledger(out), failures)


def cli(site, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lfvila_data.cli", "build", "--source", "hdvila",
            "--metadata", str(site["meta"]), "--text", str(site["text"]), "--output", str(out),
            "--retries", "0", "--workdir", str(site["root"] / "scratch-cli"), *extra]


def _kill_when(cmd: list[str], ready, timeout: float = 240) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("when", ["planned", "first-sample"])
def test_kill_9_then_rerun_gives_the_same_manifest(built, site, tmp_path, when):
    out = tmp_path / "out"
    reference = pd.read_parquet(built[0] / "manifest")
    if when == "planned":
        ready = lambda: (out / "plan" / "_SUCCESS.json").exists()
    else:
        ready = lambda: any((out / "videos").rglob("*.mp4"))
    _kill_when(cli(site, out), ready)
    assert not (out / "manifest").exists()
    done = subprocess.run(cli(site, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "build of" in done.stdout and "samples written" in done.stdout
    m = pd.read_parquet(out / "manifest")
    pd.testing.assert_frame_equal(m.drop(columns="video"), reference.drop(columns="video"))
    assert not list(out.rglob("*.part"))
    assert sorted(p.name for p in (out / "videos").rglob("*")  if p.is_file()) == \
        sorted(f"{k}.mp4" for k in EXPECTED_KEYS)


def test_cli_errors_are_one_line(site, tmp_path):
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", *args],
                           capture_output=True, text=True, timeout=300)
        return r.returncode, r.stderr.strip()

    code, err = run("--output", str(tmp_path / "o"))
    assert code == 2 and "--metadata and --text" in err and "Traceback" not in err
    code, err = run("--metadata", str(tmp_path / "none*.jsonl"), "--text", str(site["text"]),
                    "--output", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err and "none" in err and len(err.splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run("--metadata", str(site["meta"]), "--text", str(site["text"]),
                    "--output", str(blocker / "o"))
    assert code == 2 and "not writable" in err and len(err.splitlines()) == 1
    code, err = run("--metadata", str(site["meta"]), "--text", str(site["text"]),
                    "--output", str(tmp_path / "o"), "--height", "241")
    assert code == 2 and "even" in err


def test_plan_only_prints_the_totals(site, tmp_path):
    r = subprocess.run(cli(site, tmp_path / "p", "--plan-only"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samples planned" in r.stdout and "hours planned" in r.stdout
    assert not (tmp_path / "p" / "videos").exists()
    plan = pd.concat(pd.read_parquet(f) for f in sorted((tmp_path / "p" / "plan").glob("part-*.parquet")))
    assert len(plan) == 11


def test_hdvila_build_shards_verifies_and_loads(built, tmp_path):
    """build -> shard -> verify -> the model's loader; HD-VILA clips are one sentence each."""
    from tests.support.endtoend import shard_verify_load

    m = pd.read_parquet(built[0] / "manifest")  # earlier tests may have rerun the build
    got = shard_verify_load([built[0]], tmp_path, multi_sentence=False)
    assert got == {"samples": len(m), "loaded": int((m.n_clips >= 4).sum()), "sentences": int(m.n_clips.sum())}


def test_scratch_is_one_folder_per_output(tmp_path):
    """Two builds on one machine fetching the same video id into different outputs once
    shared (and deleted) each other's downloads in one scratch folder."""
    a = TaskContext(output=str(tmp_path / "a")).scratch()
    b = TaskContext(output=str(tmp_path / "b")).scratch()
    assert a != b and a.parent == b.parent
    assert TaskContext(output=str(tmp_path / "a") + "/").scratch() == a
    assert TaskContext(output="s3://bucket/a", workdir=str(tmp_path)).scratch().parent == tmp_path
