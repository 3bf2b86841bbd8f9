"""`group_runs` over whole columns: the reduce of the planning join cuts every video of a
bucket into samples with numpy over the clips sorted by (video, k), instead of building a
`Clip` per clip and a `PlannedSample` per sample in Python.

A clip starts a new run when it is its video's first, when the clip before it has no text,
when its k is not the previous k + 1, or when the gap to the previous clip's end exceeds
max_gap; runs are cut into chunks of max_clips; chunks shorter than min_clips are dropped.
That is the per-video rule of `plan.join.group_runs`, which stays the reference: the plan
files and summary both give are equal byte for byte (tests/data/plan/test_plan_reduce.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def normalized_word_counts(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`records.words_of` of each text (0 for null) whose whitespace is already
    normalised (`" ".join(t.split())`, as the clip-text parser leaves every text): single
    spaces between words, so a non-empty text has one word more than spaces. One pass
    over the bytes, where counting word starts took a tenth of the plan's CPU."""
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    parts = [_spaces_plus_one(c) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _spaces_plus_one(texts: pa.Array) -> np.ndarray:
    n = len(texts)
    counts = np.zeros(n, np.int64)
    width = np.dtype(np.int64 if pa.types.is_large_string(texts.type) else np.int32)
    offsets = np.frombuffer(texts.buffers()[1], width, n + 1, texts.offset * width.itemsize) if n else None
    if not n or offsets[-1] == offsets[0]:
        return counts
    spaces = np.frombuffer(texts.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] == ord(" ")
    nonempty = offsets[1:] > offsets[:-1]
    # empty texts own no bytes, so each non-empty text's bytes run to the next one's start
    # summed in uint16 when no text can hold 65,536 spaces: 3-4x less CPU than in int64
    wide = int((offsets[1:] - offsets[:-1]).max()) >= 2**16
    counts[nonempty] = np.add.reduceat(spaces, (offsets[:-1] - offsets[0])[nonempty],
                                       dtype=np.int64 if wide else np.uint16).astype(np.int64) + 1
    if texts.null_count:
        counts[~texts.is_valid().to_numpy(zero_copy_only=False)] = 0
    return counts


@dataclass(frozen=True)
class Chunks:
    """The max_clips pieces of every run, in clip-row order: `first` row, `n` clips, and
    `head` (the run's first piece: a short head is a short run, a short other a tail)."""

    first: np.ndarray
    n: np.ndarray
    head: np.ndarray

    def rows(self, keep: np.ndarray) -> np.ndarray:
        """Clip rows of the chunks selected by `keep`, chunk after chunk."""
        first, n = self.first[keep], self.n[keep]
        offsets = np.concatenate([[0], np.cumsum(n)])
        return np.repeat(first - offsets[:-1], n) + np.arange(offsets[-1])


def chunk_runs(new_video: np.ndarray, k: np.ndarray, start: np.ndarray, end: np.ndarray,
               has_text: np.ndarray, max_gap: float, max_clips: int) -> Chunks:
    """Runs of consecutive clips with text (clips sorted by video, then k; `new_video`
    marks each video's first clip), cut into chunks of at most max_clips."""
    text_rows = np.flatnonzero(has_text)
    if len(text_rows) == 0:
        empty = np.zeros(0, np.int64)
        return Chunks(empty, empty, np.zeros(0, dtype=bool))
    breaks = np.ones(len(k), dtype=bool)
    breaks[1:] = (new_video[1:] | ~has_text[:-1] | (k[1:] != k[:-1] + 1)
                  | (start[1:] - end[:-1] > max_gap))
    run_first = text_rows[breaks[text_rows]]
    # text rows of one run are consecutive rows, so a run ends where the next one starts
    # or where its rows stop having text
    run_of = np.cumsum(breaks[text_rows]) - 1
    run_len = np.bincount(run_of, minlength=len(run_first))
    pieces = -(-run_len // max_clips)
    run_idx = np.repeat(np.arange(len(run_first)), pieces)
    piece_no = np.arange(len(run_idx)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    first = run_first[run_idx] + piece_no * max_clips
    n = np.minimum(max_clips, run_len[run_idx] - piece_no * max_clips)
    return Chunks(first.astype(np.int64), n.astype(np.int64), piece_no == 0)


def segment_sums(values: np.ndarray, first: np.ndarray, n: np.ndarray) -> list:
    """Python's `sum` of each segment values[first:first+n], in segment order: the same
    floats the per-object path adds (summation order matters to the last bit)."""
    listed = values.tolist()
    return [sum(listed[a:a + m]) for a, m in zip(first.tolist(), n.tolist())]


def in_order(total: float, values: list) -> float:
    """`total` plus each value in turn, as a counter adds them one call at a time."""
    for v in values:
        total += v
    return total


def sample_keys(video_ids: pa.Array, first_k: np.ndarray, last_k: np.ndarray) -> pa.Array:
    """`records.sample_key` of each (video, first k, last k)."""
    def padded(ks: np.ndarray) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pa.array(ks, pa.int64()), pa.string()), width=5, padding="0")
    return pc.binary_join_element_wise(video_ids, padded(first_k), padded(last_k), "_")
