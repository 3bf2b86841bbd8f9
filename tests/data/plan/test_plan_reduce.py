"""The columnar reduce (plan.columnar) gives the plan of `group_runs` on Python objects,
byte for byte: the part files, the ledger files and the summary, on a corpus with every
edge case of the rule (and of the text caps: conflicting texts, too long texts), and its
word count is `words_of` on any text."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfvila_data.executor.base import local_shuffle
from lfvila_data.plan.columnar import normalized_word_counts
from lfvila_data.plan.join import PlanConfig, build_plan
from lfvila_data.records import words_of

# blank in Python's eyes (no words: no text), or words around odd whitespace
_TEXTS = ["Hello there.", "", "   ", "\u3000", "\x1c\x1f", "\u2028", "\u00a0", "tab\there  twice",
          "caf\u00e9 \u00fcber", "sep\x1cchar", "nel\x85x", "nbsp\u00a0here", "zero\x00byte", "emoji \U0001f600"]


def _span(ms: int) -> str:
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _video(vid: str, gaps_ms: list[int], no_text: set[int] = frozenset(), blank: set[int] = frozenset(),
           shuffle: random.Random | None = None, duplicate: int | None = None) -> tuple[str, list[str]]:
    """One metadata line (clip k+1 starts gaps_ms[k] after clip k ends, 2.5 s clips) and the
    text lines of its clips, leaving out `no_text` and giving `blank` a whitespace text."""
    clips, t = [], 1000
    for k, gap in enumerate([0] + gaps_ms, 1):
        t += gap
        clips.append({"clip_id": f"{vid}.{k}.mp4", "span": [_span(t), _span(t + 2500)]})
        t += 2500
    if duplicate is not None:
        clips.append(dict(clips[duplicate]))
    if shuffle is not None:
        shuffle.shuffle(clips)  # unsorted clip numbers: the parser sorts by k
    texts = [json.dumps({"clip_id": f"{vid}.{k}.mp4", "text": (" \u3000 " if k in blank else f"words {k} of {vid}")})
             for k in range(1, len(gaps_ms) + 2) if k not in no_text]
    return json.dumps({"video_id": vid, "url": f"https://x/{vid}", "clip": clips}), texts


def corpus(root: Path, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Videos made for the rule's edges (max_gap 3 s, min 4, max 32), then random ones."""
    r = random.Random(seed)
    edge = [
        _video("gap_exact", [3000] * 5),                     # a gap of exactly max_gap joins
        _video("gap_over", [0, 0, 3001, 0, 0, 0]),           # one ms more breaks the run
        _video("exact_min", [0, 0, 0]),                      # exactly min_clips
        _video("one_short", [0, 0]),                         # min_clips - 1
        _video("exact_max", [0] * 31),                       # exactly max_clips: one chunk
        _video("max_plus_min", [0] * 35),                    # 32 + a tail of 4
        _video("max_plus_short", [0] * 33),                  # 32 + a short tail of 2
        _video("two_max", [0] * 63),                         # 64: two chunks
        _video("mid_missing", [0] * 9, no_text={5}),         # a clip without text mid-run
        _video("mid_blank", [0] * 9, blank={4, 6}),          # blank texts mid-run
        _video("long_text", [0] * 9, no_text={3, 7}),        # texts below
        _video("all_missing", [0] * 4, no_text={1, 2, 3, 4, 5}),
        _video("unsorted", [0] * 7, shuffle=r),
        _video("duplicate", [0] * 6, duplicate=2),           # the same clip twice (a ledger row)
        _video("first_last_missing", [0] * 6, no_text={1, 7}),
    ]
    meta = [line for line, _ in edge]
    text = [t for _, texts in edge for t in texts]
    text.append(json.dumps({"clip_id": "exact_min.2.mp4", "text": "a second text line"}))  # conflicts
    text.append(text[text.index(json.dumps({"clip_id": "gap_exact.3.mp4", "text": "words 3 of gap_exact"}))])
    text.append(json.dumps({"clip_id": "long_text.3.mp4", "text": "x " * 40_000}))  # too long (80 KB)
    text.append(json.dumps({"clip_id": "long_text.7.mp4", "text": " " * 70_000}))   # blank however long
    text.append(json.dumps({"clip_id": "nowhere.1.mp4", "text": "a text of no video"}))
    for v in range(80):
        vid = f"r{seed}_{v:03d}"
        line, texts = _video(vid, [r.choice([0, 500, 2999, 3000, 3001, 9000]) for _ in range(r.randint(0, 40))],
                             no_text={k for k in range(1, 42) if r.random() < 0.06},
                             blank={k for k in range(1, 42) if r.random() < 0.03})
        meta.append(line)
        text += [t.replace("words", r.choice(_TEXTS)) for t in texts]
    meta.append(meta[3].replace("https://", "http://"))  # a second line of a video
    meta.append(json.dumps({"video_id": "no_clips", "url": "https://x/no_clips", "clip": []}))
    r.shuffle(meta)
    paths = [root / "meta0.jsonl", root / "meta1.jsonl", root / "text.jsonl", root / "groups.jsonl"]
    half = len(meta) // 2
    paths[0].write_text("\n".join(meta[:half]) + "\n")
    paths[1].write_text("\n".join(meta[half:]) + "\n")
    paths[2].write_text("\n".join(text) + "\n")
    groups = [[f"exact_max.{k}.mp4" for k in range(1, 9)], ["mid_missing.4.mp4", "mid_missing.5.mp4"],
              ["gap_over.2.mp4", "gap_over.1.mp4"], [f"two_max.{k}.mp4" for k in range(10, 60)]]
    paths[3].write_text("\n".join(json.dumps(g) for g in groups) + "\n")
    return [str(paths[0]), str(paths[1])], [str(paths[2])], [str(paths[3])]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "plan").iterdir())}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cfg,groups", [
    (PlanConfig(num_buckets=3), False),
    (PlanConfig(min_clips=2, max_clips=3, max_gap=0.5, num_buckets=2, chunk_bytes=40_000,
                max_text_bytes=22), False),
    (PlanConfig(min_clips=1, max_clips=1, max_gap=0.0, num_buckets=1), False),
    (PlanConfig(num_buckets=2), True),
])
def test_columnar_reduce_and_per_object_give_the_same_plan_files(tmp_path, seed, cfg, groups):
    meta, text, group_files = corpus(tmp_path, seed)
    summaries = [build_plan(meta, text, str(tmp_path / f"out-{per_object}"), cfg, shuffle=local_shuffle,
                            progress=lambda m: None, groups=group_files if groups else None,
                            per_object=per_object) for per_object in (True, False)]
    assert summaries[0] == summaries[1]
    reference, columnar = _files(tmp_path / "out-True"), _files(tmp_path / "out-False")
    assert list(reference) == list(columnar)
    for name in reference:
        assert reference[name] == columnar[name], name
    summary = summaries[0]
    assert summary.samples == 2 if groups else summary.samples > 10
    if not groups:
        assert {"no_text", "short_run"} <= set(summary.dropped) or cfg.min_clips == 1
        assert summary.failures_by_stage["text"] > 20 and summary.failures_by_stage["metadata"] >= 2
        assert "text_too_long" in summary.dropped


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.one_of(st.none(), st.text(alphabet=st.sampled_from(
    list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000\u200b\x00ab.é😀")), max_size=12)), max_size=40),
    offset=st.integers(0, 3))
def test_normalized_word_counts_are_words_of(texts, offset):
    """A text as the clip-text parser leaves it (whitespace normalised) has the words
    `records.words_of` gives it, so the summary's word account is the same on either path."""
    texts = [None if t is None else " ".join(t.split()) for t in texts]
    values = pa.array(["pad"] * offset + texts, pa.string()).slice(offset)
    assert list(normalized_word_counts(values)) == [words_of(t) for t in texts]
    chunked = pa.chunked_array([values.slice(0, len(texts) // 2), values.slice(len(texts) // 2)], pa.string())
    assert list(normalized_word_counts(chunked)) == [words_of(t) for t in texts]


def test_word_counts_of_a_text_with_more_spaces_than_uint16_holds():
    """Words are summed in uint16 only while no text is 65,536 bytes long, so a text of
    70,001 words (too long for a sample, but still counted as dropped) is counted exactly."""
    texts = pa.array(["a " * 70_000 + "a", "x y", None, ""], pa.string())
    assert list(normalized_word_counts(texts)) == [70_001, 2, 0, 0]
