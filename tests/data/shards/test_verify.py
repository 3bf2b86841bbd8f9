"""verify_shards on shard directories built by hand exactly per shards/README.md, then
broken one way at a time: each break must be found and named, and nothing may raise."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfvila_data.shards.verify import check_meta, check_txt, verify_shards

FPS = 3.0
WORDS = ["alpha", "beta gamma", "delta epsilon zeta", "eta"]


def make_mp4(path: Path, seconds: int) -> bytes:
    """A tiny real H.264 MP4 (64x48, 3 fps), as the build writes them."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc=d={seconds}:s=64x48:r={FPS:g}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
                    str(path)], check=True)
    return path.read_bytes()


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[int, bytes]:
    d = tmp_path_factory.mktemp("videos")
    return {s: make_mp4(d / f"{s}.mp4", s) for s in (2, 3)}


def make_sample(video_id: str, first: int, n_clips: int, mp4: bytes, seconds: float,
                key: str | None = None) -> dict:
    """A sample's three members: clips split the video evenly, times relative."""
    key = key or f"{video_id}_{first:05d}_{first + n_clips - 1:05d}"
    step, src0 = seconds / n_clips, 100.0 + first
    clips = [{"clip_id": f"{video_id}.{first + i}.mp4", "start": round(i * step, 6),
              "end": round((i + 1) * step, 6), "source_start": src0 + i * step,
              "source_end": src0 + (i + 1) * step, "text": WORDS[i % len(WORDS)]}
             for i in range(n_clips)]
    for c in clips:
        c["sentences"] = [{"text": c["text"], "start": c["start"], "end": c["end"]}]
    meta = {"key": key, "video_id": video_id, "url": f"https://example.com/{video_id}",
            "source": "hdvila", "start": src0, "end": src0 + seconds, "duration": float(seconds),
            "fps": FPS, "width": 64, "height": 48, "frames": int(seconds * FPS),
            "n_clips": n_clips, "clips": clips}
    return {"key": key, "mp4": mp4, "meta": meta, "txt": " ".join(c["text"] for c in clips)}


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def write_tar(path: Path, samples: list[dict], drop: tuple[str, str] | None = None) -> list[int]:
    """A shard with deterministic headers; returns each .mp4 header's offset.
    `drop` = (key, ext) leaves that one member out."""
    offsets = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for s in samples:
            offsets.append(tar.offset)
            members = {"mp4": s["mp4"], "json": json.dumps(s["meta"]).encode(),
                       "txt": s["txt"].encode()}
            for ext, data in members.items():
                if drop != (s["key"], ext):
                    tar.addfile(_info(f"{s['key']}.{ext}", len(data)), io.BytesIO(data))
    return offsets


def index_entry(path: Path, nsamples: int) -> dict:
    data = path.read_bytes()
    return {"url": path.name, "nsamples": nsamples, "filesize": len(data),
            "md5sum": hashlib.md5(data).hexdigest()}


def write_index(root: Path, split: str, entries: list[dict]) -> None:
    (root / f"{split}.json").write_text(json.dumps(
        {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
         "shardlist": entries}))


def reindex(root: Path) -> None:
    """Recompute filesize and md5 of every indexed shard (nsamples kept)."""
    for idx in root.glob("*.json"):
        doc = json.loads(idx.read_text())
        if doc.get("__kind__") == "wids-shard-index-v1":
            for e in doc["shardlist"]:
                e.update(index_entry(root / e["url"], e["nsamples"]))
            idx.write_text(json.dumps(doc))


def write_shard_dir(root: Path, layout: dict[str, list[list[dict]]],
                    drop: tuple[str, str] | None = None) -> None:
    """Shards, wids indexes, manifest.parquet and stats.json, per the contract."""
    root.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for split, shards in layout.items():
        entries = []
        for i, samples in enumerate(shards):
            path = root / f"{split}-{i:06d}.tar"
            offsets = write_tar(path, samples, drop)
            entries.append(index_entry(path, len(samples)))
            for j, (s, off) in enumerate(zip(samples, offsets)):
                if s["key"] in seen:
                    continue
                seen.add(s["key"])
                words = [len(c["text"].split()) for c in s["meta"]["clips"]]
                rows.append({"key": s["key"], "split": split, "shard": path.name, "offset": off,
                             "index": j, "video_id": s["meta"]["video_id"],
                             "n_clips": s["meta"]["n_clips"], "duration": s["meta"]["duration"],
                             "bytes": len(s["mp4"]), "paragraph_words": sum(words),
                             "clip_words": words})
        write_index(root, split, entries)
    schema = pa.schema([("key", pa.string()), ("split", pa.string()), ("shard", pa.string()),
                        ("offset", pa.int64()), ("index", pa.int32()), ("video_id", pa.string()),
                        ("n_clips", pa.int32()), ("duration", pa.float64()), ("bytes", pa.int64()),
                        ("paragraph_words", pa.int32()), ("clip_words", pa.list_(pa.int32()))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "manifest.parquet")
    (root / "stats.json").write_text(json.dumps({"samples": len(rows)}))


def standard_layout(videos: dict[int, bytes]) -> dict[str, list[list[dict]]]:
    """train: two shards (2 + 1 samples), val: one shard (1 sample); 4 samples, 3 videos."""
    a1 = make_sample("vidAAAAAAA1", 1, 4, videos[3], 3)
    a2 = make_sample("vidAAAAAAA1", 5, 4, videos[2], 2)
    b1 = make_sample("vidBBBBBBB2", 1, 5, videos[3], 3)
    c1 = make_sample("vidCCCCCCC3", 3, 4, videos[2], 2)
    return {"train": [[a1, b1], [a2]], "val": [[c1]]}


@pytest.fixture
def good(tmp_path, videos) -> Path:
    root = tmp_path / "shards"
    write_shard_dir(root, standard_layout(videos))
    return root


def checks(report) -> set[str]:
    return {p.check for p in report.problems}


def quiet(_line: str) -> None:
    pass


def verify(root: Path, decode: bool = False):
    return verify_shards(str(root), decode=decode, progress=quiet)


# ---------------------------------------------------------------------------------------


def test_good_set_verifies_ok(good):
    lines: list[str] = []
    report = verify_shards(str(good), decode=True, progress=lines.append)
    assert report.ok, report.render()
    assert (report.shards, report.samples) == (3, 4)
    assert report.bytes == sum(p.stat().st_size for p in good.glob("*.tar"))
    assert "OK" in report.render()
    assert len([ln for ln in lines if ".tar:" in ln]) == 3  # a line per shard


def test_truncated_shard(good):
    path = good / "train-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = verify(good)
    assert {"tar", "size", "md5", "nsamples"} <= checks(report)
    assert all(p.shard == "train-000000.tar" for p in report.problems if p.check != "manifest")


def test_truncated_at_member_boundary(good, videos):
    """tarfile stops quietly at a missing header: the end-of-archive check catches it."""
    path = good / "train-000000.tar"
    s = standard_layout(videos)["train"][0]
    offsets = write_tar(good / "probe.tar", s)
    (good / "probe.tar").unlink()
    path.write_bytes(path.read_bytes()[: offsets[1]])
    report = verify(good)
    tar_rows = [p for p in report.problems if p.check == "tar"]
    assert tar_rows and "end-of-archive" in tar_rows[0].message
    assert {"size", "md5", "nsamples"} <= checks(report)


def test_flipped_bytes_in_mp4_member(good):
    path = good / "train-000000.tar"
    data = bytearray(path.read_bytes())
    start = 512 * 3  # inside the first member's data (after its pax-free ustar header)
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    report = verify(good)
    assert checks(report) == {"md5"}
    assert report.problems[0].shard == "train-000000.tar"


def one_sample_layout(videos: dict[int, bytes]) -> dict[str, list[list[dict]]]:
    """Decoding costs ~0.4 s a sample: tests that decode keep to one."""
    return {"train": [[make_sample("vidCCCCCCC3", 3, 4, videos[2], 2)]]}


def test_corrupt_mp4_fails_decode(tmp_path, videos):
    """Bytes changed and the index updated to match: only decoding can tell."""
    good = tmp_path / "shards"
    write_shard_dir(good, one_sample_layout(videos))
    path = good / "train-000000.tar"
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 4:mdat + 8] = b"\x7f\xff\xff\xff"  # the first NAL unit's length
    path.write_bytes(bytes(data))
    reindex(good)
    report = verify(good, decode=True)
    assert checks(report) == {"decode"}, report.render()
    assert report.problems[0].key == "vidCCCCCCC3_00003_00006"
    assert verify(good, decode=False).ok


def test_dropped_txt_member(tmp_path, videos):
    root = tmp_path / "shards"
    write_shard_dir(root, standard_layout(videos), drop=("vidBBBBBBB2_00001_00005", "txt"))
    report = verify(root)
    assert checks(report) == {"members"}
    (p,) = report.problems
    assert (p.shard, p.key) == ("train-000000.tar", "vidBBBBBBB2_00001_00005")
    assert ".txt" in p.message


def test_index_nsamples_disagrees(good):
    doc = json.loads((good / "train.json").read_text())
    doc["shardlist"][0]["nsamples"] = 3
    (good / "train.json").write_text(json.dumps(doc))
    report = verify(good)
    assert checks(report) == {"nsamples"}
    assert "index says 3" in report.problems[0].message


def test_wrong_duration_in_json(tmp_path, videos):
    layout = one_sample_layout(videos)
    bad = layout["train"][0][0]
    bad["meta"]["duration"] = 5.0  # the video is 2 s; clips stay inside 5 s
    root = tmp_path / "shards"
    write_shard_dir(root, layout)
    report = verify(root, decode=True)
    assert checks(report) == {"duration"}
    assert report.problems[0].key == bad["key"]


def test_nan_in_json_is_not_json(tmp_path, videos):
    layout = one_sample_layout(videos)
    bad = layout["train"][0][0]
    bad["meta"]["language"] = float("nan")  # Python writes NaN; strict JSON readers refuse it
    root = tmp_path / "shards"
    write_shard_dir(root, layout)
    report = verify(root)
    assert checks(report) == {"json"} and "NaN is not JSON" in report.problems[0].message


def test_tar_not_in_index(good, videos):
    extra = make_sample("vidDDDDDDD4", 1, 4, videos[2], 2)
    write_tar(good / "train-000002.tar", [extra])
    report = verify(good)
    assert checks(report) == {"unindexed", "manifest"}
    assert report.shards == 4 and report.samples == 5  # read and checked all the same
    assert [p.shard for p in report.problems if p.check == "unindexed"] == ["train-000002.tar"]


def test_duplicate_key(tmp_path, videos):
    layout = standard_layout(videos)
    layout["train"][1].append(layout["train"][0][0])  # a1 again in the second shard
    root = tmp_path / "shards"
    write_shard_dir(root, layout)
    report = verify(root)
    assert checks(report) == {"duplicate"}
    (p,) = report.problems
    assert (p.shard, p.key) == ("train-000001.tar", "vidAAAAAAA1_00001_00004")
    assert "train-000000.tar" in p.message


def test_key_with_a_dot(tmp_path, videos):
    layout = standard_layout(videos)
    dotted = make_sample("vid.EEEEEE5", 1, 4, videos[2], 2)
    layout["train"][1].append(dotted)
    root = tmp_path / "shards"
    write_shard_dir(root, layout)
    report = verify(root)
    assert checks(report) == {"key"}
    assert report.problems[0].key == "vid.EEEEEE5_00001_00004"
    assert "dot" in report.problems[0].message


def test_manifest_disagrees(good):
    table = pq.read_table(good / "manifest.parquet").to_pylist()
    table[0]["offset"] += 512
    table[1]["split"] = "val"
    del table[2]
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(good / "manifest.parquet")),
                   good / "manifest.parquet")
    report = verify(good)
    assert checks(report) == {"manifest"}
    assert len(report.problems) == 3


def test_manifest_checked_in_key_order_sorted_or_not(good):
    """The manifest is merged with the samples read in key order: a partitioned manifest
    (sorted) is streamed, an older unsorted manifest.parquet goes through the external
    sort first; both give the same findings, and of duplicate rows the last counts."""
    schema = pq.read_schema(good / "manifest.parquet")
    rows = sorted(pq.read_table(good / "manifest.parquet").to_pylist(), key=lambda r: r["key"])
    rows[0]["offset"] += 512                                      # wrong offset
    rows.insert(1, dict(rows[1], shard="val-000000.tar"))         # a stale duplicate row, then the right one
    gone = rows.pop(-1)["key"]                                    # a sample not in the manifest
    rows.append(dict(rows[0], key="zzzzzzzzzzz_00001_00004"))     # a row of no sample
    (good / "manifest.parquet").unlink()
    (good / "manifest").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), good / "manifest" / "part-00000.parquet")
    found = [(p.shard, p.key, p.message) for p in verify(good).problems]
    assert found == [
        (None, None, "the manifest has 1 duplicate key row(s)"),
        (rows[0]["shard"], rows[0]["key"], (f"manifest offset {rows[0]['offset']}, "
                                            f"the .mp4 header is at {rows[0]['offset'] - 512}")),
        (rows[0]["shard"], "zzzzzzzzzzz_00001_00004", "key is in manifest.parquet but in no shard"),
        ("val-000000.tar", gone, "key is not in manifest.parquet"),
    ]
    (good / "manifest" / "part-00000.parquet").unlink()
    (good / "manifest").rmdir()
    unsorted = rows[-2:] + rows[:-2]  # the duplicate rows keep their order
    pq.write_table(pa.Table.from_pylist(unsorted, schema=schema), good / "manifest.parquet")
    assert [(p.shard, p.key, p.message) for p in verify(good).problems] == found


def test_missing_and_garbage_shards_never_raise(good):
    (good / "train-000001.tar").unlink()
    (good / "val-000000.tar").write_bytes(b"not a tar at all" * 100)
    report = verify(good)
    assert {"missing", "tar", "size", "md5", "nsamples", "manifest"} <= checks(report)
    assert "problem" in report.render()


def test_empty_dir_and_bad_manifest(tmp_path, good):
    report = verify(tmp_path / "nothing-here")
    assert not report.ok and checks(report) == {"index"}
    (good / "manifest.parquet").write_bytes(b"PAR1 garbage")
    assert checks(verify(good)) == {"manifest"}


def test_bad_index_is_a_problem(good):
    (good / "val.json").write_text("{not json")
    report = verify(good)
    assert "index" in checks(report) and "unindexed" in checks(report)


@pytest.mark.parametrize("edit, check, words", [
    (lambda m: m.pop("fps"), "json", "lacks field 'fps'"),
    (lambda m: m.update(width="64"), "json", "'width' is str"),
    (lambda m: m.update(n_clips=9), "json", "n_clips 9"),
    (lambda m: m.update(key="other_00001_00004"), "json", "differs from the member key"),
    (lambda m: m.update(video_id="vidBBBBBBB2"), "json", "key is of video 'vidAAAAAAA1'"),
    (lambda m: [c.update(start=c["source_start"], end=c["source_end"]) for c in m["clips"]], "bounds",
     "relative to the first frame"),
    (lambda m: m["clips"][0].update(end=3.5), "bounds", "within 0-3.000 s"),
    (lambda m: m["clips"][-1].update(end=3.02), "bounds", "clips[3] 2.250-3.020 s is not within"),
    (lambda m: m["clips"][-1]["sentences"][0].update(end=3.001), "bounds", "clips[3].sentences[0]"),
    (lambda m: m["clips"][0].update(start=-0.001), "bounds", "clips[0] -0.001-0.750 s"),
    (lambda m: m["clips"][1].update(end=m["clips"][1]["start"]), "clips", "does not end after"),
    (lambda m: m["clips"][2].update(start=0.1), "clips", "before clips[1]"),
    (lambda m: m["clips"][0].pop("sentences"), "json", "lacks field 'sentences'"),
    (lambda m: m["clips"][0]["sentences"][0].update(end=0.9), "sentences", "not inside the clip"),
    (lambda m: m["clips"][0]["sentences"][0].update(text="omega"), "sentences", "not its sentences"),
    (lambda m: m["clips"][0].update(sentences=[]), "sentences", "no sentences"),
    (lambda m: m["clips"][0]["sentences"].insert(0, {"text": 3, "start": 0, "end": 0.1}), "json",
     "'text' is int"),
])
def test_check_meta(videos, edit, check, words):
    s = make_sample("vidAAAAAAA1", 1, 4, videos[3], 3)
    assert check_meta(s["key"], s["meta"]) == []
    edit(s["meta"])
    found = check_meta(s["key"], s["meta"])
    assert found and found[0][0] == check and words in found[0][1], found


def test_check_txt(videos):
    s = make_sample("vidAAAAAAA1", 1, 4, videos[3], 3)
    assert check_txt(s["meta"], s["txt"].encode()) == []
    assert check_txt(s["meta"], b"alpha  beta gamma")
    assert check_txt(s["meta"], b"\xff\xfe")


def test_txt_mismatch_in_shard(tmp_path, videos):
    layout = standard_layout(videos)
    layout["train"][0][0]["txt"] = "something else"
    root = tmp_path / "shards"
    write_shard_dir(root, layout)
    assert checks(verify(root)) == {"txt"}
