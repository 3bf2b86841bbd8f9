"""A simulated finished build: the media journal a real build leaves (samples of 4..32
clips of ~5 s with texts, a failed video now and then), written as `Journal` files, with
no video. Finalize and shard planning run on it at any size (tests, bench_finalize)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa

from lfvila_data.output.write import JOURNAL_SCHEMA, Journal, OutputDir
from lfvila_data.records import sample_key

WORDS = ("a", "man", "is", "cutting", "the", "onions", "on", "a", "wooden", "board", "then",
         "he", "adds", "them", "to", "the", "pan", "while", "the", "camera", "shows", "the",
         "kitchen", "and", "a", "woman", "talks", "about", "the", "recipe", "for", "the",
         "dinner")


def _texts(rng: random.Random, words: tuple[int, int], n: int = 4096) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def _payload(vid: str, rng: random.Random, texts: list[str], samples: int) -> str:
    """A journal payload as `VideoResult.payload` serialises it, built as a string: the
    same bytes at a fraction of the cost of dicts and json.dumps."""
    rows, downloads, k = [], [], 1
    for _ in range(samples):
        n = rng.randint(4, 32)  # LF-VILA: 4..32 HD-VILA clips of ~5 s
        t0 = k * 5.0
        clips, chosen = [], []
        for j in range(n):
            s, text = t0 + 5.0 * j, texts[rng.randrange(len(texts))]
            chosen.append(text)
            clips.append(f'{{"clip_id":"{vid}.{k + j}.mp4","start":{s},"end":{s + 5.0},"text":"{text}",'
                         f'"sentences":[{{"text":"{text}","start":{s},"end":{s + 5.0}}}]}}')
        key = sample_key(vid, k, k + n - 1)
        size = rng.randint(2_000_000, 40_000_000)
        rows.append(f'{{"key":"{key}","video_id":"{vid}","url":"https://www.youtube.com/watch?v={vid}",'
                    f'"source":"hdvila","start":{t0},"end":{t0 + 5.0 * n},"n_clips":{n},'
                    f'"clips":[{",".join(clips)}],"paragraph":"{" ".join(chosen)}",'
                    f'"video":"{OutputDir.video_rel(vid, key)}","fps":30.0,"width":1280,"height":720,'
                    f'"duration":{5.0 * n},"frames":{150 * n},"bytes":{size},"text_source":"metadata",'
                    f'"language":null,"split":null}}')
        downloads.append(f'"{key}":{size}')
        k += n + 3
    return (f'{{"rows":[{",".join(rows)}],"failures":[],"downloads":{{{",".join(downloads)}}},'
            f'"node":"node-1"}}')


def simulate(build: Path, samples: int, seed: int = 0, per_video: int = 3, per_file: int = 64,
             words: tuple[int, int] = (8, 24)) -> int:
    """Journal `samples` samples, `per_video` per video, every 50th video failed (a ledger
    row), `per_file` videos per journal file as the Journal flushes them, `words` words
    per clip text. The same seed gives the same videos whatever `per_file`. Returns the
    number of videos."""
    shutil.rmtree(build, ignore_errors=True)
    out = OutputDir(str(build))
    rng = random.Random(seed)
    texts = _texts(rng, words)
    batch: dict[str, list] = {"video_id": [], "status": [], "payload": []}
    written = videos = files = 0
    while written < samples:
        vid = f"v{rng.getrandbits(56):014x}"[:11]
        if videos % 50 == 49:
            fail = {"video_id": vid, "clip_id": None, "key": None, "stage": "fetch", "code": "video_unavailable",
                    "reason": "HTTP Error 404: Not Found", "permanent": True}
            status, payload = "failed", json.dumps({"rows": [], "failures": [fail], "downloads": {}, "node": None},
                                                   separators=(",", ":"))
        else:
            n = min(per_video, samples - written)
            status, payload = "done", _payload(vid, rng, texts, n)
            written += n
        videos += 1
        for c, v in zip(batch, (vid, status, payload)):
            batch[c].append(v)
        if len(batch["video_id"]) == per_file or written >= samples:
            out.write_table(f"{Journal.DIR}/{0:013d}-sim-{files:06d}.parquet",
                            pa.table(batch, schema=JOURNAL_SCHEMA))
            files += 1
            batch = {c: [] for c in batch}
    return videos


def finished_pair(root: Path) -> dict[int, Path]:
    """Two simulated finished builds of 500 and 2,000 samples of long texts (~20 and
    ~85 MB of manifest as Arrow), finalized: the memory tests of the end of a build
    (finalize, shard planning, resume, stats) compare one with the other."""
    from lfvila_data.output.manifest import SortConfig
    from lfvila_data.output.write import finalize, iter_journal

    builds = {}
    for samples in (500, 2000):
        builds[samples] = build = root / f"build-{samples}"
        simulate(build, samples, seed=7, words=(120, 200), per_file=8)
        out = OutputDir(str(build))
        finalize(out, iter_journal(out), None, SortConfig(run_bytes=8 * 2**20, part_rows=1024, chunk_rows=128))
    return builds
