"""A synthetic finished build: the media journal a full build leaves (samples of realistic
clip counts and texts, some failures, downloads), written as the real `Journal` writes it,
with no video. For finalize and shard planning at any size (tests, bench_finalize)."""
from __future__ import annotations

import random

from lfvila_data.output.write import DONE, FAILED, Journal, OutputDir, VideoResult
from lfvila_data.records import paragraph, sample_key

WORDS = ("a man is cutting the onions on a wooden board then he adds them to the pan while "
         "the camera shows the kitchen and a woman talks about the recipe for the dinner").split()


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))


def video_result(i: int, rng: random.Random, samples: int) -> VideoResult:
    """One video's journal entry: `samples` samples of 4..32 clips of ~5 s each, or a
    failed video (every 50th) with a ledger row and no sample."""
    vid = f"v{rng.getrandbits(56):014x}"[:11]
    if i % 50 == 49:
        failure = {"video_id": vid, "clip_id": None, "key": None, "stage": "fetch",
                   "code": "video_unavailable", "reason": "HTTP Error 404: Not Found",
                   "permanent": True}
        return VideoResult(vid, FAILED, [], [failure], {})
    rows, downloads, k = [], {}, 1
    for _ in range(samples):
        n = rng.randint(4, 32)
        clips, t0 = [], k * 5.0
        for j in range(n):
            s = t0 + 5.0 * j
            text = _text(rng)
            clips.append({"clip_id": f"{vid}.{k + j}.mp4", "start": s, "end": s + 5.0, "text": text,
                          "sentences": [{"text": text, "start": s, "end": s + 5.0}]})
        key = sample_key(vid, k, k + n - 1)
        size = rng.randint(2_000_000, 40_000_000)
        rows.append({"key": key, "video_id": vid, "url": f"https://www.youtube.com/watch?v={vid}",
                     "source": "hdvila", "start": t0, "end": t0 + 5.0 * n, "n_clips": n,
                     "clips": clips, "paragraph": paragraph(c["text"] for c in clips),
                     "video": OutputDir.video_rel(vid, key), "fps": 30.0, "width": 1280,
                     "height": 720, "duration": 5.0 * n, "frames": 150 * n, "bytes": size,
                     "text_source": "metadata", "language": None, "split": None})
        downloads[key] = size
        k += n + 3
    return VideoResult(vid, DONE, rows, [], downloads, node="node-1")


def write_finished_build(url: str, samples: int, seed: int = 0, per_video: int = 3,
                         every_n: int = 64) -> int:
    """Journal `samples` samples (three per video) under `url`; returns the journal's
    video count. Deterministic for a seed."""
    rng = random.Random(seed)
    journal = Journal(OutputDir(url), every_s=1e9, every_n=every_n)
    written = videos = 0
    while written < samples:
        result = video_result(videos, rng, min(per_video, samples - written))
        journal.add(result)
        written += len(result.rows)
        videos += 1
    journal.flush()
    return videos
