"""Shard planning sizes members over whole tables (`sizing.member_lengths`, `tar_sizes`):
the sizes must be those of the real json and txt members byte for byte, on hostile text
and floats too, the rows the arithmetic cannot vouch for measured from the members."""
from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from lfvila_data.schemas import MANIFEST_SCHEMA
from lfvila_data.shards.sizing import float_len, member_lengths, relative
from lfvila_data.shards.write import BENCHMARK_TASKS, sample_members, sample_tar_bytes, tar_sizes

HOSTILE = ['say "hi"', "back\\slash", "tab\there", "new\nline", "nul\x00bell\x07esc\x1b", "\x08\x0c\r\x1f",
           "café", "中文字幕", "emoji 😀 ok", "\u2028sep\u2029", "del\x7f", "", " ", "  two  spaces ", "plain words"]
FLOATS = [0.0, -0.0, 5.0, 12.345, 1e-4, 5e-5, 1e-7, 0.0000005, 2.5e-6, 12.345678901234, 1 / 3, 1e15,
          1e17, 123456789.123456, 29.97003, float("nan"), float("inf"), -3.25, 7.0000005]


def _row(rng: random.Random, hostile: bool, i: int) -> dict:
    pick = (lambda xs: rng.choice(xs)) if hostile else (lambda xs: xs[-1])
    start = rng.choice(FLOATS[:15]) if hostile and rng.random() < 0.1 else round(rng.uniform(0, 3000), 3)
    n = rng.randint(0 if hostile else 1, 6)
    clips, t = [], start
    for k in range(n):
        s = rng.choice(FLOATS) if hostile and rng.random() < 0.05 else round(t, 3)
        e = round(s + rng.uniform(1, 9), rng.choice([3] * 12 + [7]) if hostile else 3)
        text = pick(HOSTILE + [None]) if hostile and rng.random() < 0.7 else "a man is cutting onions"
        if hostile and rng.random() < 0.1:
            sentences = rng.choice([None, [], [{"text": pick(HOSTILE + [None]), "start": rng.choice(FLOATS),
                                                "end": e}, {"text": "x", "start": s, "end": e}]])
        else:
            sentences = [{"text": text, "start": s, "end": e}]
        clips.append({"clip_id": rng.choice([f"vid{i}.{k + 1}.mp4", 'odd "id"', None]) if hostile else f"vid{i}.{k + 1}.mp4",
                      "start": s, "end": e, "text": text, "sentences": sentences})
        t = e
    duration = rng.choice(FLOATS[:15] + [None]) if hostile and rng.random() < 0.1 else round(t - start, 6)
    source = rng.choice([None, "", "hdvila", "didemo", "how2qa", "youtube"]) if hostile else "hdvila"
    return {"key": ("k" * rng.choice([5, 97, 98, 120]) if hostile else "vid") + f"_{i:05d}_{i + 3:05d}",
            "video_id": pick(HOSTILE) if hostile else f"vid{i}", "url": f"https://x/{pick(HOSTILE)}",
            "source": source, "start": start, "end": rng.choice(FLOATS) if hostile and rng.random() < 0.1 else round(t, 3),
            "n_clips": n, "clips": clips, "paragraph": "", "video": "v.mp4",
            "fps": rng.choice(FLOATS + [None, 30.0]) if hostile and rng.random() < 0.1 else 29.97003,
            "width": 1280, "height": rng.choice([720, -1, 10 ** 9]) if hostile else 720,
            "duration": duration, "frames": rng.choice([None, 0, 7, 123456]) if hostile else 150,
            "bytes": rng.randint(0, 10 ** 10), "text_source": pick([None, "", "asr", "metadata"]),
            "language": pick([None, "", "en", 'q"'] if hostile else [None]),
            "split": pick([None, "", "val"]) if hostile else None,
            "qa": rng.choice([None, "", '[{"question": "why?"}]']) if hostile and rng.random() < 0.1 else None}


def _real(row: dict) -> tuple[int, int] | None:
    """The real members' lengths, None when the real members cannot be made (NaN, None)."""
    try:
        return tuple(map(len, sample_members(row)))
    except (ValueError, TypeError):
        return None


@pytest.mark.parametrize("hostile", [False, True])
def test_member_lengths_match_the_real_members(hostile):
    rng = random.Random(3)
    rows = [_row(rng, hostile, i) for i in range(600)]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    meta, text, exact = member_lengths(table, BENCHMARK_TASKS, "pretraining")
    real = [_real(r) for r in rows]
    for i in np.flatnonzero(exact):
        assert real[i] == (meta[i], text[i]), (i, rows[i])
    assert all(r is not None for r, e in zip(real, exact) if e)  # a row that raises is never vouched for
    if hostile:  # both paths taken, and every kind of hostile text among the vouched rows
        assert 0.1 < exact.mean() < 0.9
        vouched = {c["text"] for i in np.flatnonzero(exact) for c in rows[i]["clips"]}
        assert {'say "hi"', "back\\slash", "nul\x00bell\x07esc\x1b", "中文字幕", "emoji 😀 ok"} <= vouched
    else:
        assert exact.all()  # a plain manifest never takes the slow path
    # and what planning uses: the tar bytes of every row whose members can be made
    ok = [i for i, r in enumerate(real) if r is not None]
    sizes, fits = tar_sizes(table.take(pa.array(ok)))
    assert sizes.tolist() == [sample_tar_bytes(rows[i]) for i in ok] and fits.all()


def test_float_len_is_repr_or_not_vouched():
    x = np.array(FLOATS + [0.1, 0.25, 100.5, 99999.999999, 4.000001])
    length, ok = float_len(x)
    for v, n, good in zip(x, length, ok):
        if good:
            assert n == len(repr(float(v))), v
    assert ok.sum() == 13 and not ok[FLOATS.index(12.345678901234)] and not ok[FLOATS.index(5e-5)]


def test_relative_is_relative_time_or_not_vouched():
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(0, 5000, 2000).round(3), rng.uniform(0, 5000, 2000), [10.0000005, 0.0000015]])
    origin = np.concatenate([rng.uniform(0, 5000, 4000).round(3), [10.0, 0.0]])
    limit = rng.uniform(0, 100, len(t)).round(6)
    rel, ok = relative(t, origin, limit)
    assert ok.mean() > 0.99
    for a, o, lim, r, good in zip(t, origin, limit, rel, ok):
        expect = min(max(0.0, round(float(a) - float(o), 6)), float(lim))
        if good:
            assert r == expect and math.copysign(1, r) == math.copysign(1, expect)
