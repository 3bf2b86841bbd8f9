"""Finalize parses the journal in bulk (Arrow's JSON reader) and merges its sorted runs a
batch at a time (output/write.py, output/manifest.py): the same files, byte for byte, as
parsing each payload with `json` into Python rows, on a journal with the awkward cases
(unicode, escapes, nulls, ties, failures, reruns, empty files, extra payload fields)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lfvila_data.output.manifest import ExternalSort, SortConfig
from lfvila_data.output.write import (
    DONE,
    FAILED,
    JOURNAL_SCHEMA,
    RETRY,
    Journal,
    OutputDir,
    VideoResult,
    _from_dicts,
    _from_json,
    finalize,
    iter_journal,
)
from tests.support.finished import simulate

TINY = SortConfig(run_bytes=16 * 1024, merge_group_bytes=2 * 1024, max_runs=4, chunk_rows=8, part_rows=24)
TEXTS = ["plain", "café crème", "emoji 😀 and 中文", 'a "quoted" \\ back\\slash', "tab\tnew\nline",
         '"downloads":{"x":1}', "}]}", ""]


def _row(vid: str, k: int, text: str, *, key: str | None = None) -> dict:
    clips = [{"clip_id": f"{vid}.{k + j}.mp4", "start": 5.0 * (k + j) + 0.1, "end": 5.0 * (k + j) + 4.9,
              "text": f"{text} {j}", "sentences": [{"text": f"{text} {j}", "start": 5.0 * (k + j), "end": 1e-7 * j}]}
             for j in range(1 + k % 3)]
    return {"key": key or f"{vid}_{k:05d}_{k + len(clips) - 1:05d}", "video_id": vid,
            "url": f"https://example.com/{vid}", "source": "local", "start": 5.0 * k, "end": 5.0 * k + 0.3,
            "n_clips": len(clips), "clips": clips, "paragraph": " ".join(c["text"] for c in clips),
            "video": OutputDir.video_rel(vid, key or vid), "fps": 29.97, "width": 640, "height": 360,
            "duration": 0.1 + 0.2 * k, "frames": 3 * k, "bytes": 1000 + k,
            "text_source": "asr" if k % 2 else "metadata", "language": None if k % 3 else "fr",
            "split": None, "qa": None if k % 4 else json.dumps({"q": text})}


def _journal(out: OutputDir) -> None:
    """Three journal runs: videos with unicode keys and texts, failures with nulls, a
    video retried then done, a failed one, one with no rows, and an empty file."""
    first = Journal(out, every_n=10**6)
    for i in range(40):
        vid = ["vid", "vidé", "v😀", "v中", "a}b", "x"][i % 6] + f"{i:03d}"
        text = TEXTS[i % len(TEXTS)]
        rows = [_row(vid, k, text) for k in range(1, 1 + i % 4)]
        fails = [{"video_id": vid, "clip_id": None if j else f"{vid}.9.mp4", "key": None, "stage": "cut",
                  "code": "clip_missing", "reason": f"missing {text}", "permanent": bool(j)} for j in range(i % 3)]
        status = [DONE, RETRY, FAILED][i % 7 % 3]
        first.add(VideoResult(vid, status, rows, fails, {r["key"]: 7 * len(r["key"]) for r in rows},
                              node=None if i % 5 == 0 else f"node-{i % 2}",
                              counts={"words": 3.0} if i % 2 else None,
                              stamps={f"videos/{vid}.mp4": f"{i}:1"} if i % 3 == 0 else {},
                              fetched_bytes=i * 11))
        if i % 13 == 12:
            first.flush()
    first.flush()
    second = Journal(out)  # a later run: retried videos done, one with the same key twice in a tie
    for i in range(0, 40, 7):
        vid = ["vid", "vidé", "v😀", "v中", "a}b", "x"][i % 6] + f"{i:03d}"
        rows = [_row(vid, 2, "again"), _row(vid, 3, "tie", key=f"{vid}_tie")]
        second.add(VideoResult(vid, DONE, rows, [], {rows[0]["key"]: 5}, node="node-9"))
    second.flush()
    out.write_table(f"{Journal.DIR}/9999999999999-empty-000000.parquet", JOURNAL_SCHEMA.empty_table())


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for name in ("manifest", "failures", "downloads") for p in sorted((root / name).iterdir())}


def test_bulk_finalize_writes_what_per_row_parsing_writes(tmp_path):
    a, b = OutputDir(str(tmp_path / "a")), OutputDir(str(tmp_path / "b"))
    _journal(a)
    _journal(b)
    entries = list(iter_journal(b))  # a plain list: payloads parsed by `json`, rows built by Arrow from dicts
    bulk = finalize(a, iter_journal(a), None, TINY)
    per_row = finalize(b, entries, None, TINY)
    assert bulk == per_row and bulk["samples_written"] > 40 and bulk["failures"] > 10
    assert len(list((tmp_path / "a" / "manifest").iterdir())) > 2
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # and both are the journal's latest rows, sorted: read back as users do
    rows = sorted((r for _, _, p in entries for r in p["rows"]), key=lambda r: r["key"])
    m = pd.read_parquet(tmp_path / "a" / "manifest")
    assert list(m.key) == [r["key"] for r in rows]
    assert [c["text"] for c in m.clips.iloc[-1]] == [c["text"] for c in rows[-1]["clips"]]
    assert set(m.paragraph) >= {r["paragraph"] for r in rows if "😀" in r["paragraph"]} != set()
    assert bulk["fetched_bytes"] == sum(p.get("fetched_bytes", 0) for _, _, p in entries)
    assert math.isclose(bulk["hours_written"], sum(r["duration"] for r in rows) / 3600, abs_tol=1e-4)


def test_payloads_arrow_rejects_are_parsed_by_json():
    """json.dumps writes NaN, which is not JSON: such a batch goes through `json`."""
    result = VideoResult("v1", DONE, [_row("v1", 1, "x") | {"fps": float("nan")}], [], {"v1_00001_00002": 3})
    bulk = _from_json(["v1"], [result.payload()])
    per_row = _from_dicts([("v1", json.loads(result.payload()))])
    assert math.isnan(bulk.manifest.column("fps")[0].as_py()) and math.isnan(per_row.manifest.column("fps")[0].as_py())
    assert bulk.manifest.drop_columns(["fps"]).equals(per_row.manifest.drop_columns(["fps"]))
    assert bulk.downloads.equals(per_row.downloads)


def test_the_merge_keeps_ties_in_the_order_rows_were_added():
    """Rows equal on the sort columns come out in the order they were added (run order,
    then row order), as a row-by-row merge gives them; nulls sort last."""
    schema = pa.schema([("key", pa.string()), ("n", pa.int64())])
    keys = ["b", None, "a", "é", "b", "a", None, "c"]
    tables = [pa.table({"key": [keys[(i + j) % len(keys)] for j in range(13)], "n": range(i * 13, i * 13 + 13)},
                       schema=schema) for i in range(20)]
    sorter = ExternalSort(schema, ["key"], SortConfig(run_bytes=300, merge_group_bytes=64, chunk_rows=10))
    for t in tables:
        sorter.add(t)
    assert len(sorter._runs) > 8
    got = pa.concat_tables(list(sorter.sorted_chunks()))
    assert got.equals(pa.concat_tables(tables).sort_by([("key", "ascending")]))


def test_the_simulated_journal_is_what_the_journal_writes(tmp_path):
    """tests/support/finished.py builds payloads as strings: each is byte for byte what
    VideoResult.payload writes for the same values, and the rows are consistent."""
    simulate(tmp_path, 400, seed=4, per_file=16)
    videos = 0
    for f in sorted((tmp_path / Journal.DIR).iterdir()):
        for e in pq.read_table(f).to_pylist():
            p = json.loads(e["payload"])
            videos += 1
            assert VideoResult(e["video_id"], e["status"], p["rows"], p["failures"], p["downloads"],
                               p["node"]).payload() == e["payload"]
            for r in p["rows"]:
                assert r["paragraph"] == " ".join(c["text"] for c in r["clips"]) and len(r["clips"]) == r["n_clips"]
                assert r["video"] == OutputDir.video_rel(e["video_id"], r["key"]) and p["downloads"][r["key"]] == r["bytes"]
    assert videos == 136  # 134 done videos of 3 samples (the last of 1), every 50th failed
