"""Planning from published clip-id groups (--groups): the plan is exactly the good groups,
each bad group is one coded ledger row, through the in-process and the Ray shuffle, and the
planned samples go through a real build -> shard -> verify -> the model's loader."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lfvila_data.executor.base import local_shuffle
from lfvila_data.executor.pool import RayShuffle
from lfvila_data.plan.groups import parse_group_line
from lfvila_data.plan.join import PlanConfig, build_plan, load_plan_summary, read_plan, read_plan_failures
from lfvila_data.records import Failure, FailureCode
from tests.support.corpus import VideoSpec, even_spans, write_metadata

GOOD = [["v1.1.mp4", "v1.2.mp4", "v1.3.mp4", "v1.4.mp4", "v1.5.mp4"],  # more than --max-clips 4
        ["v1.6.mp4", "v1.7.mp4", "v1.9.mp4"],                          # objects; k=8 left out
        ["v2.4.mp4", "v2.5.mp4", "v2.6.mp4"],
        ["v3.1.mp4", "v3.2.mp4"]]                                      # clips of rejected groups only
LINES = [
    json.dumps(GOOD[0]),
    json.dumps([{"clip_id": c, "other": 1} for c in GOOD[1]]),
    json.dumps(["v1.5.mp4", "v1.10.mp4"]),           # clip_in_two_groups (v1.5 is in group 1)
    json.dumps(["v3.1.mp4", "v2.2.mp4"]),            # mixed_videos
    json.dumps(["v3.3.mp4", "v3.2.mp4"]),            # clips_out_of_order
    json.dumps(["v1.10.mp4", "v1.10.mp4"]),          # clips_out_of_order (repeated)
    json.dumps(["v3.4.mp4", "v3.9.mp4"]),            # unknown_clip (no such clip)
    json.dumps(["vZ.1.mp4", "vZ.2.mp4"]),            # unknown_clip (no such video)
    json.dumps(["v2.1.mp4", "v2.2.mp4", "v2.3.mp4"]),  # no_text (v2.3)
    '["v1.1.mp4", ',                                 # bad_line: malformed JSON
    "[]",                                            # bad_line: empty
    json.dumps([{"id": "v1.1.mp4"}]),                # bad_line: no clip_id
    json.dumps(["v1.x.mp4"]),                        # bad_clip_id
    json.dumps(GOOD[2]),
    json.dumps(GOOD[3]),
]
REJECTED = {"clip_in_two_groups": 1, "mixed_videos": 1, "clips_out_of_order": 2, "unknown_clip": 2,
            "no_text": 1, "bad_line": 3, "bad_clip_id": 1}


@pytest.fixture
def corpus(tmp_path):
    meta, text = write_metadata(tmp_path, [VideoSpec("v1", "https://x/v1", even_spans(10)),
                                           VideoSpec("v2", "https://x/v2", even_spans(6), no_text={3}),
                                           VideoSpec("v3", "https://x/v3", even_spans(5))])
    groups = tmp_path / "groups.jsonl"
    groups.write_text("\n".join(LINES) + "\n")
    return meta, text, groups


def clip_lists(out: Path) -> list[list[str]]:
    plan = pd.concat(pd.read_parquet(p) for p in sorted((out / "plan").glob("part-*.parquet")))
    return sorted([[c["clip_id"] for c in clips] for clips in plan.clips])


@pytest.mark.parametrize("line,want", [
    ('["a.1.mp4", "a.2.mp4"]', ["a.1.mp4", "a.2.mp4"]),
    ('[{"clip_id": "a.1.mp4"}, {"clip_id": "a.3.mp4", "span": [1, 2]}]', ["a.1.mp4", "a.3.mp4"]),
    ('["a.1.mp4", {"clip_id": "a.2.mp4"}]', ["a.1.mp4", "a.2.mp4"]),
    ('{"clip_id": "a.1.mp4"}', FailureCode.BAD_LINE),
    ('["a.1.mp4", 3]', FailureCode.BAD_LINE),
    ('["a.0.mp4"]', FailureCode.BAD_CLIP_ID),
    ("nope", FailureCode.BAD_LINE),
])
def test_parse_group_line(line, want):
    got = parse_group_line(line)
    assert (got.code if isinstance(got, Failure) else got) == want


@pytest.mark.parametrize("shuffle", ["local", "ray"])
def test_groups_plan_exactly_and_ledger_every_violation(corpus, tmp_path, shuffle, request):
    meta, text, groups = corpus
    if shuffle == "ray":
        request.getfixturevalue("ray_local")
    out = tmp_path / "out"
    cfg = PlanConfig(max_clips=4, num_buckets=3, chunk_bytes=64)  # many byte ranges of every file
    summary = build_plan([str(meta)], [str(text)], str(out), cfg, groups=[str(groups)],
                         shuffle=local_shuffle if shuffle == "local" else RayShuffle())

    assert clip_lists(out) == sorted(GOOD)
    plan = read_plan(str(out)).to_pandas()
    assert sorted(plan.key) == ["v1_00001_00005", "v1_00006_00009", "v2_00004_00006", "v3_00001_00002"]
    row = plan[plan.key == "v1_00006_00009"].iloc[0]
    assert [c["text"] for c in row.clips] == [f"Clip {k} of v1 says hello." for k in (6, 7, 9)]
    assert (row.start, row.end) == (1 + 5 * 4.5, 1 + 8 * 4.5 + 4)

    ledger = read_plan_failures(str(out)).to_pandas()
    plan_rows = ledger[ledger.stage == "plan"]
    assert dict(Counter(plan_rows.code)) == REJECTED
    assert set(ledger.stage) == {"plan"}  # the corpus itself is clean: no per-clip no_text rows
    assert plan_rows[plan_rows.code == "no_text"].clip_id.tolist() == ["v2.3.mp4"]
    assert plan_rows[plan_rows.code == "clip_in_two_groups"].clip_id.tolist() == ["v1.5.mp4"]
    assert sorted(plan_rows[plan_rows.code == "unknown_clip"].clip_id) == ["v3.9.mp4", "vZ.1.mp4"]

    assert (summary.groups_read, summary.groups_planned) == (len(LINES), len(GOOD))
    assert summary.groups_rejected == dict(sorted(REJECTED.items()))
    assert summary.samples == 4 and summary.clips_in_samples == 13
    dropped = sum(d["words"] for d in summary.dropped.values())
    assert summary.words_in_samples + dropped == summary.words_parsed == 6 * (10 + 5 + 5)
    assert summary.dropped["rejected_group"]["clips"] == 5  # v1.10, v2.1, v2.2, v3.3, v3.4
    assert load_plan_summary(str(out), metadata=[str(meta)], text=[str(text)], groups=[str(groups)]) == summary
    assert load_plan_summary(str(out), metadata=[str(meta)], text=[str(text)], groups=[]) is None


def test_plan_only_cli_prints_group_counts(corpus, tmp_path):
    meta, text, groups = corpus
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", "--metadata", str(meta),
                        "--text", str(text), "--groups", str(tmp_path / "group*.jsonl"), "--output", str(out),
                        "--plan-only"], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "groups read" in r.stdout and "clips_out_of_order: 2" in r.stdout
    assert clip_lists(out) == sorted(GOOD)
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", "--source", "youtube", "--input", "x",
                        "--groups", str(groups), "--output", str(out)], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--groups needs --source hdvila" in r.stderr


def test_groups_build_shards_verifies_and_loads(tmp_path, ray_local):
    """The groups, as planned, through a real build on loopback -> shard -> verify -> the
    model's loader, which takes a 4-clip window of the 7-clip sample."""
    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.localserver import MediaServer
    from lfvila_data.media.fetch import FetchConfig
    from lfvila_data.media.task import TaskContext
    from tests.support.endtoend import shard_verify_load
    from tests.support.media import make_timecoded_video

    www = tmp_path / "www"
    www.mkdir()
    for name in ("a", "b"):
        make_timecoded_video(www / f"{name}.mp4", 40, width=160, height=120, audio=False)
    want = [[f"vA.{k}.mp4" for k in range(1, 8)], ["vB.1.mp4", "vB.3.mp4"],
            ["vB.4.mp4", "vB.5.mp4", "vB.6.mp4", "vB.8.mp4"]]
    with MediaServer(www) as srv:
        meta, text = write_metadata(tmp_path / "meta", [VideoSpec("vA", srv.url("a.mp4"), even_spans(8)),
                                                        VideoSpec("vB", srv.url("b.mp4"), even_spans(8))])
        groups = tmp_path / "meta" / "groups.jsonl"
        groups.write_text("".join(json.dumps(g) + "\n" for g in [*want, ["vA.7.mp4", "vA.8.mp4"]]))
        out = tmp_path / "out"
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out), groups=(str(groups),),
                              plan=PlanConfig(max_clips=4),
                              task=TaskContext(output=str(out), fetch=FetchConfig(retries=0),
                                               workdir=str(tmp_path / "scratch"))))

    manifest = pd.read_parquet(out / "manifest")
    assert sorted(manifest.key) == ["vA_00001_00007", "vB_00001_00003", "vB_00004_00008"]
    assert sorted([c["clip_id"] for c in clips] for clips in manifest.clips) == sorted(want)
    assert pd.read_parquet(out / "failures").code.tolist() == ["clip_in_two_groups"]
    got = shard_verify_load([out], tmp_path, multi_sentence=False)
    assert got == {"samples": 3, "loaded": 2, "sentences": 13}
