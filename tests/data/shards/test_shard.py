"""`lfvila-data shard`: layout rules, then real shards from a real build, read back by
tarfile, webdataset, wids, Hugging Face datasets and Ray Data; determinism and resume."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.demo import make_corpus
from lfvila_data.executor.base import local_map
from lfvila_data.executor.pool import RayTasks
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from lfvila_data.shards.write import (
    ShardConfig,
    pack,
    plan_shards,
    run_shard,
    shuffled,
    split_videos,
    write_shard,
)


def test_split_is_by_video_and_seeded():
    counts = {f"v{i}": 1 + i % 3 for i in range(100)}
    val = split_videos(counts, ShardConfig(val_fraction=0.1))
    assert len(val) == 10 and val == split_videos(dict(reversed(list(counts.items()))),
                                                  ShardConfig(val_fraction=0.1))
    assert val != split_videos(counts, ShardConfig(val_fraction=0.1, seed=1))
    by_count = split_videos(counts, ShardConfig(val_count=20))
    assert sum(counts[v] for v in by_count) >= 20 > sum(counts[v] for v in by_count) - max(counts.values())
    assert split_videos({"a": 5}, ShardConfig(val_fraction=0.5)) == set()  # train never empty
    assert len(split_videos({"a": 1, "b": 1}, ShardConfig(val_count=10))) == 1
    assert split_videos(counts, ShardConfig(val_fraction=0.0)) == set()


def test_shuffle_and_pack():
    keys = [f"k{i:03d}" for i in range(50)]
    a = shuffled(keys, 0, "train")
    assert a == shuffled(list(reversed(keys)), 0, "train") and sorted(a) == keys and a != keys
    assert a != shuffled(keys, 1, "train")
    sizes = [(k, 100_000) for k in keys]
    assert [len(s) for s in pack(sizes, ShardConfig(samples_per_shard=20))] == [20, 20, 10]
    by_bytes = pack(sizes, ShardConfig(max_shard_bytes=1_000_000))
    assert all(len(s) <= 9 for s in by_bytes) and sum(map(len, by_bytes)) == 50
    assert pack([("big", 5_000_000)], ShardConfig(max_shard_bytes=1_000)) == [["big"]]


@pytest.fixture(scope="module")
def builds(tmp_path_factory, ray_module):
    """Two real builds of the demo corpus (two 'metadata parts')."""
    root = tmp_path_factory.mktemp("shardsrc")
    outs = []
    with MediaServer(root / "www") if (root / "www").mkdir() is None else None as srv:
        base = srv.url("").rstrip("/")
        for part, seed in (("b0", 0), ("b1", 1)):
            corpus = root / part
            corpus.mkdir()
            meta, text = make_corpus(corpus, base, videos=3, clips=8, seed=seed)
            for f in (corpus / "www").iterdir():  # serve both corpora from one root
                f.rename(root / "www" / f"{part}-{f.name}")
            meta.write_text(meta.read_text().replace(base + "/", f"{base}/{part}-")
                            .replace('"demo', f'"{part}demo'))
            text.write_text(text.read_text().replace('"demo', f'"{part}demo'))
            out = root / f"build-{part}"
            run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                                  plan=PlanConfig(max_clips=4),
                                  task=TaskContext(output=str(out), fetch=FetchConfig(retries=2, backoff=0.1))))
            outs.append(out)
    return outs


@pytest.fixture(scope="module")
def shards(builds, tmp_path_factory, ray_module):
    out = tmp_path_factory.mktemp("shards") / "s"
    stats = run_shard([str(b) for b in builds], str(out), ShardConfig(val_count=2, samples_per_shard=3),
                      write=RayTasks())
    return out, stats


def build_rows(builds) -> dict[str, dict]:
    rows = {}
    for b in builds:
        for r in pd.read_parquet(b / "manifest").to_dict("records"):
            rows[r["key"]] = dict(r, _build=b)
    return rows


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_layout_and_index(shards, builds):
    out, stats = shards
    rows = build_rows(builds)
    assert len(rows) == 12 and stats["samples"] == 12 and stats["videos"] == 6
    m = pd.read_parquet(out / "manifest")
    assert set(m.key) == set(rows)
    val_videos = set(m[m.split == "val"].video_id)
    assert val_videos and not val_videos & set(m[m.split == "train"].video_id)
    assert (m[m.split == "val"].shape[0]) >= 2
    for split in ("train", "val"):
        index = json.loads((out / f"{split}.json").read_text())
        assert index["__kind__"] == "wids-shard-index-v1"
        names = [s["url"] for s in index["shardlist"]]
        assert names == [f"{split}-{i:06d}.tar" for i in range(len(names))]
        for s in index["shardlist"]:
            assert s["md5sum"] == md5(out / s["url"])
            assert s["filesize"] == (out / s["url"]).stat().st_size
            assert s["nsamples"] == (m.shard == s["url"]).sum() <= 3
    d = stats["distributions"]
    assert d["clips_per_sample"]["mean"] == 4 and d["sample_duration_s"]["count"] == 12


def test_tarfile_reader_matches_the_build(shards, builds):
    out, _ = shards
    rows = build_rows(builds)
    m = pd.read_parquet(out / "manifest").set_index("key")
    seen = set()
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert len(members) % 3 == 0
            for i in range(0, len(members), 3):
                names = [x.name for x in members[i:i + 3]]
                key = names[0].rsplit(".", 1)[0]
                assert names == [f"{key}.mp4", f"{key}.json", f"{key}.txt"] and "." not in key
                assert members[i].offset == m.loc[key, "offset"] and m.loc[key, "shard"] == tar_path.name
                src = rows[key]
                video = tar.extractfile(members[i]).read()
                assert video == (src["_build"] / src["video"]).read_bytes()
                meta = json.loads(tar.extractfile(members[i + 1]).read(),
                                  parse_constant=lambda c: pytest.fail(f"{c} in json"))
                assert meta["key"] == key and meta["video_id"] == src["video_id"]
                assert meta["start"] == src["start"] and meta["duration"] == src["duration"]
                assert meta["clips"][0]["start"] == 0.0
                for c, s in zip(meta["clips"], src["clips"]):
                    assert c["source_start"] == s["start"] and c["text"] == s["text"]
                    # HD-VILA clips are one sentence each, with the clip's relative span
                    assert c["sentences"] == [{"text": c["text"], "start": c["start"], "end": c["end"]}]
                    assert c["start"] == pytest.approx(s["start"] - src["start"])
                text = tar.extractfile(members[i + 2]).read().decode()
                assert text == src["paragraph"]
                seen.add(key)
    assert seen == set(rows)


def test_offsets_stay_in_the_done_markers(shards, builds, tmp_path):
    """The driver keeps no per-sample offsets: `write_shard` returns its record without
    them, its done marker has them where the tar's samples start, and so has the manifest."""
    out, _ = shards
    m = pd.read_parquet(out / "manifest")
    markers = sorted((out / "_meta").glob("*.tar.json"))
    assert len(markers) == m.shard.nunique()
    for marker in markers:
        rec = json.loads(marker.read_text())
        with tarfile.open(out / rec["name"]) as tar:
            assert rec["offsets"] == [x.offset for x in tar.getmembers()[::3]]
        assert rec["offsets"] == m[m.shard == rec["name"]].sort_values("index").offset.tolist()
    plan = plan_shards([str(b) for b in builds], str(tmp_path), ShardConfig(samples_per_shard=3)).shards[0]
    rec = write_shard(plan, str(tmp_path))
    assert rec.offsets == [] and rec.nsamples == 3
    assert len(json.loads((tmp_path / "_meta" / f"{plan.name}.json").read_text())["offsets"]) == 3


def test_webdataset_reader(shards, builds):
    import webdataset as wds
    out, _ = shards
    rows = build_rows(builds)
    urls = [str(p) for p in sorted(out.glob("train-*.tar"))] + [str(p) for p in sorted(out.glob("val-*.tar"))]
    got = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        got[s["__key__"]] = s
        assert json.loads(s["json"])["key"] == s["__key__"]
        assert s["txt"].decode() == rows[s["__key__"]]["paragraph"]
        assert len(s["mp4"]) == rows[s["__key__"]]["bytes"]
    assert set(got) == set(rows)


def test_wids_reader(shards, builds):
    import wids
    out, _ = shards
    rows = build_rows(builds)
    m = pd.read_parquet(out / "manifest")
    keys = set()
    for split in ("train", "val"):
        ds = wids.ShardListDataset(str(out / f"{split}.json"), cache_dir=str(out.parent / "wids-cache"))
        assert len(ds) == (m.split == split).sum()
        for i in range(len(ds)):
            s = ds[i]
            key = s["__key__"]
            meta = s[".json"] if isinstance(s[".json"], dict) else json.loads(s[".json"].read())
            assert meta["key"] == key
            video = s[".mp4"].read() if hasattr(s[".mp4"], "read") else s[".mp4"]
            assert hashlib.md5(video).hexdigest() == hashlib.md5(
                (rows[key]["_build"] / rows[key]["video"]).read_bytes()).hexdigest()
            keys.add(key)
    assert keys == set(rows)


def test_huggingface_datasets_reader(shards, builds):
    datasets = pytest.importorskip("datasets")
    out, _ = shards
    rows = build_rows(builds)
    ds = datasets.load_dataset("webdataset", data_files={"train": str(out / "train-*.tar"),
                                                         "val": str(out / "val-*.tar")},
                               cache_dir=str(out.parent / "hf-cache"))
    ds = ds.cast_column("mp4", datasets.Video(decode=False))  # bytes, no torchcodec needed
    got = {}
    for split in ("train", "val"):
        for row in ds[split]:
            got[row["__key__"]] = row
            meta = row["json"]
            assert meta["key"] == row["__key__"] and len(meta["clips"]) == meta["n_clips"]
            assert row["txt"] == rows[row["__key__"]]["paragraph"]
            assert row["mp4"]["bytes"] == (rows[row["__key__"]]["_build"]
                                           / rows[row["__key__"]]["video"]).read_bytes()
    assert set(got) == set(rows)


def test_ray_data_reader(shards, builds):
    import ray
    out, _ = shards
    rows = build_rows(builds)
    ds = ray.data.read_webdataset(str(out), file_extensions=["tar"], decoder=None)
    got = {}
    for r in ds.iter_rows():
        got[r["__key__"]] = r
        assert json.loads(r["json"])["key"] == r["__key__"]
        assert len(r["mp4"]) == rows[r["__key__"]]["bytes"]
        assert r["txt"].decode() == rows[r["__key__"]]["paragraph"]
    assert set(got) == set(rows)


def test_identical_bytes_on_rerun_and_on_another_run_without_ray(shards, builds, tmp_path):
    out, _ = shards
    before = {p.name: md5(p) for p in out.glob("*.tar")}
    run_shard([str(b) for b in builds], str(out), ShardConfig(val_count=2, samples_per_shard=3), write=RayTasks())
    assert {p.name: md5(p) for p in out.glob("*.tar")} == before
    other = tmp_path / "again"  # the stage in this process: the same bytes
    run_shard([str(b) for b in builds], str(other), ShardConfig(val_count=2, samples_per_shard=3), write=local_map)
    assert {p.name: md5(p) for p in other.glob("*.tar")} == before
    assert {p.name: p.read_bytes() for p in (other / "manifest").iterdir()} == \
        {p.name: p.read_bytes() for p in (out / "manifest").iterdir()}


def test_kill_9_then_rerun_completes_identically(shards, builds, tmp_path):
    out, _ = shards
    reference = {p.name: md5(p) for p in out.glob("*.tar")}
    target = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lfvila_data.cli", "shard", "--input", str(builds[0]),
           "--input", str(builds[1]), "--output", str(target), "--val-count", "2",
           "--samples-per-shard", "3", "--executor", "ray"]  # on threads it ends before any kill
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(target.glob("_meta/*.tar.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the shard job ended before the kill"
    assert list(target.glob("_meta/*.tar.json")), "killed before any shard was written"
    assert not (target / "manifest").exists()  # the set was left incomplete
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: md5(p) for p in target.glob("*.tar")} == reference
    assert not list(target.rglob("*.tmp"))


def test_shard_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "shard", "--input", str(tmp_path),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a build directory" in r.stderr and "Traceback" not in r.stderr


def test_verify_our_shards_and_catch_corruption(shards, tmp_path):
    import shutil

    from lfvila_data.shards.verify import verify_shards
    out, _ = shards
    report = verify_shards(str(out))
    assert report.ok, report.render()
    assert report.samples == 12

    def broken(name: str, damage) -> set[str]:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        damage(copy / "train-000000.tar")
        return {p.check for p in verify_shards(str(copy), decode=False).problems}

    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def flip(p: Path) -> None:
        data = bytearray(p.read_bytes())
        data[2000] ^= 0xFF  # inside the first mp4
        p.write_bytes(bytes(data))

    def drop_txt(p: Path) -> None:
        with tarfile.open(p) as src:
            members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
        first_txt = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".txt"))
        with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as dst:
            for m, data in members[:first_txt] + members[first_txt + 1:]:
                dst.addfile(m, io.BytesIO(data))

    assert {"tar", "size", "md5"} <= broken("trunc", truncate)
    assert "md5" in broken("flip", flip)
    assert "members" in broken("drop", drop_txt)
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "verify", str(tmp_path / "drop"),
                        "--no-decode"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "members" in r.stdout


def test_json_times_lie_within_a_sample_file_shorter_than_its_span(tmp_path, ray_module):
    """The last clip's span runs 0.4 s past the end of its video (kept: within the cut's
    end tolerance), so the sample file is shorter than the planned span. In the shard json
    every clip and sentence time lies in [0, duration], the last clip ends at the last
    frame, verify finds nothing, and the manifest and `source_end` keep the source time."""
    from lfvila_data.shards.verify import verify_shards

    (tmp_path / "www").mkdir()
    with MediaServer(tmp_path / "www") as srv:
        meta, text = make_corpus(tmp_path, srv.url("").rstrip("/"), videos=1, clips=4)
        assert '"00:00:17.500"' in meta.read_text()  # the last clip ends 0.5 s before the video
        meta.write_text(meta.read_text().replace('"00:00:17.500"', '"00:00:18.400"'))
        build = tmp_path / "build"
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(build),
                              task=TaskContext(output=str(build), fetch=FetchConfig(retries=2, backoff=0.1))))
    [row] = pd.read_parquet(build / "manifest").to_dict("records")
    assert row["clips"][-1]["end"] == 18.4 and row["duration"] < 18.4 - row["start"]

    out = tmp_path / "shards"
    run_shard([str(build)], str(out), ShardConfig(val_count=0), write=local_map)
    report = verify_shards(str(out))
    assert report.ok, report.render()
    with tarfile.open(out / "train-000000.tar") as tar:
        meta_json = json.loads(tar.extractfile(f"{row['key']}.json").read())
    duration, clips = meta_json["duration"], meta_json["clips"]
    times = [t for c in clips for t in (c["start"], c["end"])]
    times += [t for c in clips for s in c["sentences"] for t in (s["start"], s["end"])]
    assert all(0 <= t <= duration for t in times)
    assert clips[-1]["end"] == clips[-1]["sentences"][-1]["end"] == duration
    assert clips[-1]["source_end"] == 18.4 and clips[0]["start"] == 0.0


def test_a_text_verify_would_reject_is_left_out_not_sharded(builds, tmp_path):
    """A build made with a huge --max-text-bytes holds a sample whose txt member would be
    over verify's limit: the writer leaves that sample out (counted in the stats) and
    `verify` accepts every shard it writes, on the same limit."""
    import shutil

    import pyarrow.parquet as pq

    from lfvila_data.shards.verify import verify_shards
    from lfvila_data.shards.write import MAX_TEXT_MEMBER

    build = tmp_path / "build"
    shutil.copytree(builds[0], build)
    table = pq.read_table(build / "manifest")
    rows = table.to_pylist()
    rows[0]["clips"][0]["text"] = "word " * (MAX_TEXT_MEMBER // 5 + 1)
    shutil.rmtree(build / "manifest")  # an older build's single manifest file, as a build of it
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), build / "manifest.parquet")
    out = tmp_path / "shards"
    stats = run_shard([str(build)], str(out), ShardConfig(val_count=0), write=local_map)
    assert stats["text_too_large_dropped"] == 1
    keys = set(pd.read_parquet(out / "manifest").key)
    assert keys == {r["key"] for r in rows[1:]}
    report = verify_shards(str(out), decode=False)
    assert report.ok, report.render()


def test_stats_json_is_that_of_the_whole_manifest_read_at_once(shards):
    """`shard` streams its manifest for stats.json (a batch at a time); the file is byte
    for byte what the whole table read at once gives (the code before the streaming)."""
    from lfvila_data.output import manifest as tables
    from lfvila_data.output.write import OutputDir
    from lfvila_data.shards.stats import shard_table_stats
    from lfvila_data.shards.write import STATS_COLUMNS

    out, _ = shards
    whole = shard_table_stats(tables.read_table(OutputDir(str(out)).fs, str(out), "manifest", STATS_COLUMNS))
    written = json.loads((out / "stats.json").read_text())
    whole.update({k: written[k] for k in ("bytes", "duplicate_keys_dropped", "text_too_large_dropped")})
    assert (out / "stats.json").read_text() == json.dumps(whole, indent=2, sort_keys=True) + "\n"
