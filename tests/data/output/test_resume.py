"""A rerun's view of the journal (`output/resume.py`): which videos it skips and what it
hands the others, and that reading it never holds the journal (docs/reliability.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from lfvila_data.media.task import file_stamp
from lfvila_data.output.resume import read_resume
from lfvila_data.output.write import DONE, FAILED, RETRY, Journal, OutputDir, VideoResult, iter_journal


def _result(out: OutputDir, vid: str, status: str, files: int = 1, failures: int = 0,
            stamped: bool = True, fetched: int = 0) -> VideoResult:
    """A journaled video whose `files` sample files exist as written."""
    rows, stamps = [], {}
    for i in range(files):
        rel = out.video_rel(vid, f"{vid}_{i}")
        path = out.local_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (100 + i))
        rows.append({"video": rel, "bytes": 100 + i})
        if stamped:
            stamps[rel] = file_stamp(out.fs.info(out.path(rel)))
    fails = [{"code": "clip_missing", "clip_id": f"{vid}.{i}"} for i in range(failures)]
    return VideoResult(vid, status, rows, fails, {}, stamps=stamps, fetched_bytes=fetched)


def test_a_rerun_skips_finished_videos_whose_files_are_unchanged(tmp_path):
    out = OutputDir(str(tmp_path))
    journal = Journal(out)
    results = [
        _result(out, "aa-done", DONE, files=2, fetched=7),
        _result(out, "ab-cut", DONE, files=2),                # a file truncated since
        _result(out, "ac-unstamped", DONE, stamped=False),    # an older journal: size only
        _result(out, "ad-short", DONE, stamped=False),        # ... and its size changed
        _result(out, "ae-failed", FAILED, files=0, fetched=3),
        _result(out, "af-retry", RETRY, fetched=5),
        _result(out, "ag-lossy", DONE, failures=1),           # done, lost a clip
        _result(out, "ah-gone", DONE),                        # its file removed
    ]
    for r in results:
        journal.add(r)
    journal.flush()
    journal.add(_result(out, "af-retry", DONE, fetched=9))  # a later run finished it
    journal.flush()
    with open(out.local_path(out.video_rel("ab-cut", "ab-cut_1")), "r+b") as f:
        f.truncate(50)
    out.local_path(out.video_rel("ad-short", "ad-short_0")).write_bytes(b"y" * 7)
    os.remove(out.local_path(out.video_rel("ah-gone", "ah-gone_0")))

    resume = read_resume(out, retry_failed=False)
    assert resume.journaled == 8
    assert resume.skip.to_pylist() == ["aa-done", "ac-unstamped", "ae-failed", "af-retry", "ag-lossy"]
    # the videos to redo get their stamps (the task reuses their unchanged files) and bytes
    assert sorted(resume.stamps) == ["ab-cut", "ah-gone"]
    assert len(resume.stamps["ab-cut"]) == 2
    assert resume.fetched == {}

    again = read_resume(out, retry_failed=True)
    assert again.skip.to_pylist() == ["aa-done", "ac-unstamped", "af-retry"]
    assert sorted(again.stamps) == ["ab-cut", "ag-lossy", "ah-gone"]
    assert again.fetched == {"ae-failed": 3}


def test_an_empty_output_resumes_nothing(tmp_path):
    resume = read_resume(OutputDir(str(tmp_path)), retry_failed=False)
    assert (resume.journaled, len(resume.skip), resume.stamps, resume.fetched) == (0, 0, {}, {})


CHILD = """
import json, sys, tracemalloc
from pathlib import Path
from lfvila_data.output.resume import read_resume
from lfvila_data.output.write import OutputDir
from tests.support.finished import simulate
simulate(Path(sys.argv[2]), 20, seed=1)  # imports warm before the measurement
read_resume(OutputDir(sys.argv[2]), retry_failed=False)
tracemalloc.start()
resume = read_resume(OutputDir(sys.argv[1]), retry_failed=False)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "skip": len(resume.skip)}))
"""


def _measure(build, tmp_path, samples: int) -> tuple[dict, int]:
    """Resume's peak memory over a simulated finished build whose sample files exist
    (empty sparse files of the journaled sizes, so every finished video is skipped)."""
    out = OutputDir(str(build))
    videos = 0
    for _vid, _status, payload in iter_journal(out):
        videos += 1
        for row in payload["rows"]:
            path = out.local_path(row["video"])
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(row["bytes"])
    r = subprocess.run([sys.executable, "-c", CHILD, str(build), str(tmp_path / f"warm-{samples}")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["skip"] == videos  # done and failed videos alike
    journal = sum(pq.read_table(p).nbytes for p in (build / Journal.DIR).glob("*.parquet"))
    return got, journal


def test_resume_memory_does_not_grow_with_the_journal(finished_builds, tmp_path):
    small, small_bytes = _measure(finished_builds[500], tmp_path, 500)
    big, big_bytes = _measure(finished_builds[2000], tmp_path, 2000)
    assert big_bytes - small_bytes > 60 * 2**20
    # Python's peak allocation (tracemalloc: exact, unlike RSS): the journal read into
    # dicts (before) grew +82 MiB for these +63 MiB of journal; resume keeps 24 bytes per
    # sample file and one journal file at a time: +0.2 MiB
    assert big["peak"] - small["peak"] < (big_bytes - small_bytes) / 8, (small, big, small_bytes, big_bytes)
