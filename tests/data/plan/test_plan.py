"""Planning rules (group_runs), and the plan built by the Ray shuffle on a local Ray and
by the in-process one (the same plan)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.executor.base import local_shuffle
from lfvila_data.executor.pool import RayShuffle
from lfvila_data.inputs import InputError
from lfvila_data.plan.join import (
    PlanConfig,
    PlanSummary,
    build_plan,
    group_runs,
    iter_plan_parts,
    load_plan_summary,
    read_plan,
    read_plan_failures,
)
from lfvila_data.records import Clip, Failure, FailureCode, VideoMeta, sample_key
from lfvila_data.schemas import FAILURE_SCHEMA, PLAN_SCHEMA, plan_row_to_sample, sample_to_row
from lfvila_data.sources.hdvila import parse_text_line, parse_video_line

CFG = PlanConfig(min_clips=2, max_clips=3, max_gap=2.0)


def video(*clips: tuple[int, float, float], vid: str = "v1") -> VideoMeta:
    return VideoMeta(vid, f"https://x/{vid}", tuple(Clip(f"{vid}.{k}.mp4", k, s, e) for k, s, e in clips))


def texts_for(v: VideoMeta, missing: tuple[int, ...] = ()) -> dict[str, str]:
    return {c.clip_id: f"sentence {c.k}." for c in v.clips if c.k not in missing}


def runs(samples) -> list[list[int]]:
    return [[c.k for c in s.clips] for s in samples]


# --- PlanConfig -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(min_clips=0), dict(min_clips=5, max_clips=4),
                                    dict(max_gap=-1), dict(max_gap=float("nan")),
                                    dict(num_buckets=0), dict(chunk_bytes=0)])
def test_plan_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        PlanConfig(**kwargs)


def test_plan_config_defaults():
    cfg = PlanConfig()
    assert (cfg.min_clips, cfg.max_clips, cfg.max_gap, cfg.allow_local_files) == (4, 32, 3.0, False)
    assert cfg.chunk_bytes == 64 * 1024 * 1024


# --- group_runs -----------------------------------------------------------------------

def test_sample_fields():
    v = video((1, 10.0, 12.0), (2, 12.5, 15.0), (3, 15.0, 20.0))
    samples, failures = group_runs(v, texts_for(v), CFG)
    assert failures == []
    [s] = samples
    assert (s.key, s.video_id, s.url, s.start, s.end) == (sample_key("v1", 1, 3), "v1", "https://x/v1", 10.0, 20.0)
    assert s.clips == tuple(Clip(f"v1.{k}.mp4", k, a, b, f"sentence {k}.")
                            for k, a, b in [(1, 10.0, 12.0), (2, 12.5, 15.0), (3, 15.0, 20.0)])


def test_missing_k_breaks_the_run():
    v = video((1, 0, 1), (2, 1, 2), (4, 2, 3), (5, 3, 4))
    assert runs(group_runs(v, texts_for(v), CFG)[0]) == [[1, 2], [4, 5]]


def test_gap_over_max_gap_breaks_the_run_and_equal_gap_does_not():
    v = video((1, 0, 1), (2, 3, 4), (3, 6.01, 7), (4, 7, 8))
    assert runs(group_runs(v, texts_for(v), CFG)[0]) == [[1, 2], [3, 4]]


@pytest.mark.parametrize("bad_text", [None, "", "  \n"])
def test_clip_without_text_fails_and_breaks_the_run(bad_text):
    v = video((1, 0, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4), (5, 4, 5))
    texts = texts_for(v, missing=(3,))
    if bad_text is not None:
        texts["v1.3.mp4"] = bad_text
    samples, failures = group_runs(v, texts, CFG)
    assert runs(samples) == [[1, 2], [4, 5]]
    assert failures == [Failure("v1", "v1.3.mp4", "text", FailureCode.NO_TEXT, "no text for clip")]


def test_short_runs_are_dropped_and_counted():
    v = video((1, 0, 1), (3, 1, 2), (4, 2, 3), (6, 3, 4))
    stats: Counter = Counter()
    samples, failures = group_runs(v, texts_for(v), CFG, stats)
    assert runs(samples) == [[3, 4]] and failures == []
    assert stats["dropped_short_runs"] == 2


@pytest.mark.parametrize("n,expected,dropped", [
    (6, [[1, 2, 3], [4, 5, 6]], 0),
    (7, [[1, 2, 3], [4, 5, 6]], 1),      # a 1-clip tail is under min_clips
    (8, [[1, 2, 3], [4, 5, 6], [7, 8]], 0),
])
def test_long_runs_are_cut_into_max_clips_chunks(n, expected, dropped):
    v = video(*[(k, k, k + 1) for k in range(1, n + 1)])
    stats: Counter = Counter()
    samples, _ = group_runs(v, texts_for(v), CFG, stats)
    assert runs(samples) == expected and stats["dropped_short_runs"] == dropped
    assert [s.key for s in samples] == [sample_key("v1", r[0], r[-1]) for r in expected]


def test_clips_are_taken_in_k_order():
    v = video((3, 2, 3), (1, 0, 1), (2, 1, 2))
    assert runs(group_runs(v, texts_for(v), CFG)[0]) == [[1, 2, 3]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2), st.floats(0, 4), st.floats(0.1, 5), st.booleans()),
                max_size=40),
       st.integers(1, 4), st.integers(0, 4), st.floats(0, 3))
def test_group_runs_invariants(steps, min_clips, extra, max_gap):
    cfg = PlanConfig(min_clips=min_clips, max_clips=min_clips + extra, max_gap=max_gap)
    k, t, clips, texts = 0, 0.0, [], {}
    for dk, gap, dur, has_text in steps:
        k, start = k + dk, t + gap
        t = start + dur
        clips.append((k, start, t))
        if has_text:
            texts[f"v1.{k}.mp4"] = "words"
    v = video(*clips)
    samples, failures = group_runs(v, texts, cfg)
    used = [c.k for s in samples for c in s.clips]
    assert len(used) == len(set(used))
    assert {f.clip_id for f in failures} == {c.clip_id for c in v.clips if c.clip_id not in texts}
    for s in samples:
        assert cfg.min_clips <= len(s.clips) <= cfg.max_clips
        assert (s.start, s.end) == (s.clips[0].start, s.clips[-1].end)
        for a, b in zip(s.clips, s.clips[1:]):
            assert b.k == a.k + 1 and b.start - a.end <= cfg.max_gap
        assert all(c.text == "words" for c in s.clips)
    # maximal runs: a run ends only at a break, so consecutive samples of one run are full
    for a, b in zip(samples, samples[1:]):
        joined = b.clips[0].k == a.clips[-1].k + 1 and b.clips[0].start - a.clips[-1].end <= cfg.max_gap
        assert not joined or len(a.clips) == cfg.max_clips


def test_plan_row_round_trip():
    v = video((1, 0.5, 1.25), (2, 1.5, 2.0))
    [s], _ = group_runs(v, texts_for(v), CFG)
    table = pa.Table.from_pylist([sample_to_row(s)], schema=PLAN_SCHEMA)
    row = table.to_pylist()[0]
    assert row["duration"] == 1.5 and row["n_clips"] == 2
    assert plan_row_to_sample(row) == s


# --- build_plan on Ray ----------------------------------------------------------------

def span(t: float) -> str:
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"


def write_inputs(root: Path) -> tuple[list[str], list[str]]:
    """Three metadata files (with bad lines), two text files (with a duplicate)."""
    meta_lines: list[list[str]] = [[], [], []]
    text_lines: list[list[str]] = [[], []]
    for v in range(60):
        vid = f"vid{v:03d}x"
        t, clips = 0.0, []
        for k in range(1, 12 + v % 7):
            gap = 5.0 if k % 9 == 0 else 0.3
            clips.append({"clip_id": f"{vid}.{k}.mp4", "span": [span(t), span(t + 4 + k % 3)]})
            t += 4 + k % 3 + gap
            if (v * 7 + k) % 23:
                text_lines[(v + k) % 2].append(json.dumps({"clip_id": f"{vid}.{k}.mp4", "text": f"{vid} says {k}."}))
        if v % 10 == 3:
            clips[4]["span"] = ["soon", "later"]
        meta_lines[v % 3].append(json.dumps({"video_id": vid, "url": f"https://www.youtube.com/watch?v={vid}",
                                             "clip": clips}))
    meta_lines[0] += ["{not json", "", json.dumps({"video_id": "../x", "url": "https://h/x", "clip": []}),
                      json.dumps({"video_id": "a/b", "url": "https://h/x", "clip": []}),
                      json.dumps({"video_id": "local1", "url": "file:///etc/passwd",
                                  "clip": [{"clip_id": "local1.1.mp4", "span": [0, 1]}]})]
    meta_lines[2].append(meta_lines[1][0].replace("https://", "http://"))  # duplicate video line
    # one clip id with three different texts: a conflict, none is used
    text_lines[0][5:5] = [json.dumps({"clip_id": "vid000x.1.mp4", "text": "first of three"}), "garbage", ""]
    text_lines[1].insert(0, json.dumps({"clip_id": "vid000x.1.mp4", "text": "another text"}))
    text_lines[1].append(json.dumps({"clip_id": "orphan.1.mp4", "text": "nobody's clip"}))
    meta_paths, text_paths = [], []
    for i, lines in enumerate(meta_lines):
        (root / f"hdvila_part{i}.jsonl").write_text("\n".join(lines) + ("\n" if i != 1 else ""))
        meta_paths.append(str(root / f"hdvila_part{i}.jsonl"))
    for i, lines in enumerate(text_lines):
        (root / f"text{i}.jsonl").write_text("\r\n".join(lines) + "\r\n")
        text_paths.append(str(root / f"text{i}.jsonl"))
    return meta_paths, text_paths


def plan_directly(meta_paths, text_paths, cfg):
    """The same plan in one process, from the pure helpers."""
    videos, failures, texts = {}, [], {}
    for path in meta_paths:
        for line in Path(path).read_bytes().split(b"\n"):
            if line.strip():
                v, fails = parse_video_line(line, allow_local_files=cfg.allow_local_files)
                failures += fails
                if v and v.video_id in videos:
                    failures.append(Failure(v.video_id, None, "metadata", FailureCode.DUPLICATE, "duplicate"))
                elif v:
                    videos[v.video_id] = v
    for path in text_paths:
        for line in Path(path).read_bytes().split(b"\n"):
            if line.strip():
                parsed = parse_text_line(line)
                if isinstance(parsed, Failure):
                    failures.append(parsed)
                else:
                    texts.setdefault(parsed[0], set()).add(parsed[1])
    conflicts = {c for c, t in texts.items() if len(t) > 1}
    failures += [Failure(c.split(".")[0], c, "text", FailureCode.CLIP_TEXT_CONFLICT, "two") for c in conflicts]
    texts = {c: t.pop() for c, t in texts.items() if c not in conflicts}
    samples = []
    for v in videos.values():
        got, fails = group_runs(v, texts, cfg)
        samples += got
        failures += [f for f in fails if f.clip_id not in conflicts]
    return sorted(samples, key=lambda s: s.key), failures


def failure_ids(failures) -> list[tuple]:
    return sorted((f.video_id or "", f.clip_id or "", f.stage, f.code) for f in failures)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("hdvila"))


REF_CFG = PlanConfig(min_clips=4, max_clips=6, max_gap=2.0, num_buckets=3, chunk_bytes=700)


_REFERENCE: dict = {}


@pytest.fixture
def reference(ray_local, inputs, tmp_path_factory):
    """One plan of the inputs (glob for the metadata, ranges smaller than a line), built
    once per module and shared."""
    meta_paths, text_paths = inputs
    if meta_paths[0] in _REFERENCE:
        return _REFERENCE[meta_paths[0]]
    out = tmp_path_factory.mktemp("reference")
    messages: list[str] = []
    summary = build_plan([str(Path(meta_paths[0]).parent / "hdvila_part*.jsonl")], text_paths,
                         str(out), REF_CFG, shuffle=RayShuffle(), progress=messages.append)
    _REFERENCE[meta_paths[0]] = out, summary, messages
    return _REFERENCE[meta_paths[0]]


def test_build_plan_matches_the_pure_rules(inputs, reference):
    meta_paths, text_paths = inputs
    tmp_path, summary, messages = reference
    cfg = REF_CFG
    expected, expected_failures = plan_directly(meta_paths, text_paths, cfg)

    table = read_plan(str(tmp_path))
    assert table.schema == PLAN_SCHEMA
    assert [plan_row_to_sample(r) for r in table.sort_by("key").to_pylist()] == expected
    failures = read_plan_failures(str(tmp_path))
    assert failures.schema == FAILURE_SCHEMA
    got_failures = [Failure.from_row(r) for r in failures.to_pylist()]
    assert failure_ids(got_failures) == failure_ids(expected_failures)

    reasons = {(f.video_id, f.clip_id): f.reason for f in got_failures}
    all_reasons = " | ".join(f.reason for f in got_failures)
    for words in ("unsafe 'video_id' '../x'", "unsafe 'video_id' 'a/b'", "malformed JSON", "'garbage'"):
        assert words in all_reasons
    assert "is not http(s)" in reasons[("local1", None)]
    assert "duplicate video line" in reasons[("vid001x", None)]
    codes = Counter(f.code for f in got_failures)
    assert codes[FailureCode.UNSAFE_ID] == 2 and codes[FailureCode.BAD_LINE] >= 2
    assert {f.code for f in got_failures if (f.video_id, f.clip_id) == ("local1", None)} == {FailureCode.BAD_URL}
    assert {f.code for f in got_failures if (f.video_id, f.clip_id) == ("vid001x", None)} == {FailureCode.DUPLICATE}
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert not [k for k in by_key if k.startswith("vid000x_00001_")]  # its first clip has no text
    assert "two different texts" in reasons[("vid000x", "vid000x.1.mp4")]
    assert codes[FailureCode.CLIP_TEXT_CONFLICT] == 1
    assert by_key["vid001x_00001_00006"]["url"].startswith("https://")

    assert summary.samples == len(expected) == table.num_rows
    assert summary.clips_in_samples == sum(len(s.clips) for s in expected)
    assert summary.hours == pytest.approx(sum(s.duration for s in expected) / 3600, abs=1e-6)
    assert summary.videos == 60 and summary.videos_with_samples == len({s.video_id for s in expected})
    # unused: the orphan and the texts of the 6 clips whose span failed to parse
    assert summary.texts_duplicate == 2 and summary.texts_unused == 7
    assert sum(summary.failures_by_stage.values()) == len(expected_failures)
    assert summary.dropped_short_runs > 0
    # every word of the joined clip texts is in a sample or dropped with its reason
    dropped = summary.dropped
    assert summary.words_in_samples == sum(len(c.text.split()) for s in expected for c in s.clips)
    assert summary.words_in_samples + sum(d["words"] for d in dropped.values()) == summary.words_parsed
    assert dropped["short_run"]["runs"] + dropped.get("short_tail_chunk", {}).get("runs", 0) \
        == summary.dropped_short_runs
    assert any("chunks" in m for m in messages) and any("buckets" in m for m in messages)
    assert load_plan_summary(str(tmp_path)) == summary


@pytest.mark.parametrize("num_buckets,chunk_bytes,on_ray", [
    (1, 10_000_000, True), (7, 613, True), (None, 4096, True), (1, 10_000_000, False), (7, 613, False)])
def test_build_plan_layout_and_executor_do_not_change_the_result(inputs, reference, tmp_path, num_buckets,
                                                                 chunk_bytes, on_ray):
    meta_paths, text_paths = inputs
    ref = reference[0]
    cfg = PlanConfig(min_clips=4, max_clips=6, max_gap=2.0, num_buckets=num_buckets, chunk_bytes=chunk_bytes)
    shuffle = RayShuffle(max_in_flight=2) if on_ray else local_shuffle
    build_plan(meta_paths, text_paths, str(tmp_path / "b"), cfg, shuffle=shuffle, progress=lambda m: None)
    assert read_plan(str(ref)).sort_by("key").equals(read_plan(str(tmp_path / "b")).sort_by("key"))
    sort = [(c, "ascending") for c in ("stage", "video_id", "clip_id", "reason")]
    assert read_plan_failures(str(ref)).sort_by(sort).equals(
        read_plan_failures(str(tmp_path / "b")).sort_by(sort))
    assert load_plan_summary(str(ref)) == load_plan_summary(str(tmp_path / "b"))


def test_parts_are_sorted_and_rerun_replaces_old_parts(inputs, tmp_path):
    meta_paths, text_paths = inputs
    out = str(tmp_path)
    build_plan(meta_paths, text_paths, out, PlanConfig(num_buckets=5, chunk_bytes=2000), shuffle=local_shuffle,
               progress=print)
    for part in iter_plan_parts(out):
        keys = part.column("key").to_pylist()
        assert keys == sorted(keys)
    build_plan(meta_paths, text_paths, out, PlanConfig(num_buckets=2, chunk_bytes=2000), shuffle=local_shuffle,
               progress=print)
    assert len(list(iter_plan_parts(out))) == 2
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) == [
        "_SUCCESS.json", "failures-00000.parquet", "failures-00001.parquet",
        "part-00000.parquet", "part-00001.parquet"]


def test_load_plan_summary_knows_when_to_replan(inputs, tmp_path):
    meta_paths, text_paths = inputs
    out = str(tmp_path / "out")
    assert load_plan_summary(out) is None
    with pytest.raises(InputError):
        read_plan(out)
    cfg = PlanConfig(num_buckets=2, chunk_bytes=5000)
    summary = build_plan(meta_paths, text_paths, out, cfg, shuffle=local_shuffle, progress=print)
    assert isinstance(summary, PlanSummary)
    same = dict(metadata=meta_paths, text=text_paths)
    assert load_plan_summary(out, cfg=PlanConfig(num_buckets=9, chunk_bytes=1), **same) == summary
    assert load_plan_summary(out, cfg=PlanConfig(max_gap=1.0), **same) is None
    assert load_plan_summary(out, cfg=cfg, metadata=meta_paths[:2], text=text_paths) is None
    Path(text_paths[1]).write_bytes(Path(text_paths[1]).read_bytes())  # same size: still valid
    assert load_plan_summary(out, cfg=cfg, **same) == summary


def test_local_files_when_allowed(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"video_id": "loc", "url": "file:///v.mp4", "clip": [
        {"clip_id": f"loc.{k}.mp4", "span": [k, k + 1]} for k in range(1, 5)]}) + "\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"clip_id": f"loc.{k}.mp4", "text": "hi"}) + "\n"
                                              for k in range(1, 5)))
    args = ([str(tmp_path / "m.jsonl")], [str(tmp_path / "t.jsonl")])
    assert build_plan(*args, str(tmp_path / "no"), PlanConfig(num_buckets=1), shuffle=local_shuffle,
                      progress=print).samples == 0
    summary = build_plan(*args, str(tmp_path / "yes"), PlanConfig(num_buckets=1, allow_local_files=True),
                         shuffle=local_shuffle, progress=print)
    assert summary.samples == 1 and read_plan(str(tmp_path / "yes")).column("url").to_pylist() == ["file:///v.mp4"]


def test_missing_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(InputError):
        build_plan([str(tmp_path / "none*.jsonl")], [str(tmp_path / "t.jsonl")], str(tmp_path), shuffle=local_shuffle)


def test_plan_writer_streams_parts_with_whole_videos(tmp_path):
    from collections import Counter

    from lfvila_data.plan.join import PlanWriter, read_plan, read_plan_failures
    from lfvila_data.records import Clip, Failure, PlannedSample

    def samples(vid: str, n: int) -> list[PlannedSample]:
        return [PlannedSample(f"{vid}_{i:05d}_{i:05d}", vid, "u", float(i), i + 1.0,
                              (Clip(f"{vid}.{i}.mp4", i, float(i), i + 1.0, "t"),)) for i in range(1, n + 1)]

    writer = PlanWriter(str(tmp_path), PlanConfig(), samples_per_part=3)
    writer.add(samples("vidB", 2), [Failure("vidB", None, "text", FailureCode.NO_TEXT, "x")])
    writer.add(samples("vidA", 2), [])   # 4 samples >= 3: part 0 holds both videos whole
    writer.add(samples("vidC", 1), [])
    summary = writer.close({"x": 1}, Counter(videos=4, clips_total=5))
    plan_dir = tmp_path / "plan"
    assert sorted(p.name for p in plan_dir.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    table = read_plan(str(tmp_path))
    assert table.column("key").to_pylist() == sorted(table.column("key").to_pylist()[:4]) + ["vidC_00001_00001"]
    assert (summary.samples, summary.videos_with_samples, summary.clips_in_samples) == (5, 3, 5)
    assert summary.failures_by_stage == {"text": 1} and read_plan_failures(str(tmp_path)).num_rows == 1
