"""A simulated finished build: the media journal a real build leaves (samples of 4..32
clips of ~5 s with texts, a failed video now and then), written as `Journal` files, with
no video. Finalize and shard planning run on it at any size (tests, bench_finalize)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from lfvila_data.output.write import JOURNAL_SCHEMA, Journal, OutputDir

WORDS = ("a", "man", "is", "cutting", "the", "onions", "on", "a", "wooden", "board", "then",
         "he", "adds", "them", "to", "the", "pan", "while", "the", "camera", "shows", "the",
         "kitchen", "and", "a", "woman", "talks", "about", "the", "recipe", "for", "the",
         "dinner")


def _texts(rng: random.Random, words: tuple[int, int], n: int = 4096) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


BLOCK = 4096  # videos drawn at a time: the same seed gives the same videos whatever per_file


def _pieces(texts: list[str], clips: int) -> tuple[list[str], list[str], list[str]]:
    """The parts of a clip's JSON that depend only on its number k or only on its text,
    built once: a clip is then `{"clip_id":"` + video + head[k] + middle[text] + tail[k]."""
    head = [f'.{k}.mp4","start":{5.0 * k},"end":{5.0 * k + 5.0},"text":"' for k in range(clips)]
    middle = [f'{t}","sentences":[{{"text":"{t}","start":' for t in texts]
    tail = [f'{5.0 * k},"end":{5.0 * k + 5.0}}}]}}' for k in range(clips)]
    return head, middle, tail


def _payloads(vids: list[str], samples: list[int], n: list[list[int]], size: list[list[int]],
              picks: list[list[list[int]]], texts: list[str]) -> list[str]:
    """The journal payloads of done videos (`samples` samples each; the i-th of a video
    has n[i] clips, size[i] bytes and texts picks[i]) as `VideoResult.payload` serialises
    them, built as strings from pieces made once: the same bytes as dicts and json.dumps
    at a fraction of the cost."""
    head, middle, tail = _pieces(texts, max(samples, default=0) * 36 + 1)
    payloads = []
    for vid, m, clip_counts, sizes, texts_of in zip(vids, samples, n, size, picks):
        rows, downloads, k = [], [], 1
        for c, nbytes, picked in zip(clip_counts[:m], sizes, texts_of):
            picked = picked[:c]
            clips = ",".join([f'{{"clip_id":"{vid}{head[k + j]}{middle[t]}{tail[k + j]}'
                              for j, t in enumerate(picked)])
            key = f"{vid}_{k:05d}_{k + c - 1:05d}"  # records.sample_key
            rows.append(f'{{"key":"{key}","video_id":"{vid}","url":"https://www.youtube.com/watch?v={vid}",'
                        f'"source":"hdvila","start":{5.0 * k},"end":{5.0 * (k + c)},"n_clips":{c},'
                        f'"clips":[{clips}],"paragraph":"{" ".join([texts[t] for t in picked])}",'
                        f'"video":"videos/{vid[:2]}/{key}.mp4","fps":30.0,"width":1280,"height":720,'
                        f'"duration":{5.0 * c},"frames":{150 * c},"bytes":{nbytes},"text_source":"metadata",'
                        f'"language":null,"split":null}}')
            downloads.append(f'"{key}":{nbytes}')
            k += c + 3
        payloads.append(f'{{"rows":[{",".join(rows)}],"failures":[],"downloads":{{{",".join(downloads)}}},'
                        f'"node":"node-1"}}')
    return payloads


def simulate(build: Path, samples: int, seed: int = 0, per_video: int = 3, per_file: int = 64,
             words: tuple[int, int] = (8, 24)) -> int:
    """Journal `samples` samples, `per_video` per video, every 50th video failed (a ledger
    row), `per_file` videos per journal file as the Journal flushes them, `words` words
    per clip text. The same seed gives the same videos whatever `per_file`. Returns the
    number of videos."""
    shutil.rmtree(build, ignore_errors=True)
    out = OutputDir(str(build))
    texts = _texts(random.Random(seed), words)
    rng = np.random.default_rng(seed)
    written = videos = files = 0
    pending: list[pa.Table] = []
    while written < samples:
        failed = (videos + np.arange(BLOCK)) % 50 == 49
        count = np.where(failed, 0, per_video)
        reached = written + np.cumsum(count)
        last = int(np.searchsorted(reached, samples))  # the video that reaches `samples`
        if last < BLOCK:
            count[last] -= int(reached[last]) - samples
            failed, count = failed[:last + 1], count[:last + 1]
        # drawn for a whole block whatever `samples`: a smaller build is a prefix of a bigger one
        vids = [f"v{v:010x}" for v in rng.integers(0, 2**40, BLOCK).tolist()][:len(count)]
        n = rng.integers(4, 33, (BLOCK, per_video))[:len(count)][~failed]  # LF-VILA: 4..32 clips of ~5 s
        size = rng.integers(2_000_000, 40_000_001, (BLOCK, per_video))[:len(count)][~failed]
        picks = rng.integers(0, len(texts), (BLOCK, per_video, 32))[:len(count)][~failed]
        done = iter(_payloads([v for v, f in zip(vids, failed) if not f], count[~failed].tolist(),
                              n.tolist(), size.tolist(), picks.tolist(), texts))
        payloads = [_failed(v) if f else next(done) for v, f in zip(vids, failed)]
        pending.append(pa.table({"video_id": vids, "status": ["failed" if f else "done" for f in failed],
                                 "payload": _strings(payloads)}, schema=JOURNAL_SCHEMA))
        written += int(count.sum())
        videos += len(count)
        table = pa.concat_tables(pending)
        whole = table.num_rows - table.num_rows % per_file if written < samples else table.num_rows
        for at in range(0, whole, per_file):
            out.write_table(f"{Journal.DIR}/{0:013d}-sim-{files:06d}.parquet", table.slice(at, per_file))
            files += 1
        pending = [table.slice(whole)]
    return videos


def _strings(values: list[str]) -> pa.Array:
    """A string array of long strings from their bytes in one buffer: a few times
    cheaper than pa.array's conversion string by string."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


def _failed(vid: str) -> str:
    fail = {"video_id": vid, "clip_id": None, "key": None, "stage": "fetch", "code": "video_unavailable",
            "reason": "HTTP Error 404: Not Found", "permanent": True}
    return json.dumps({"rows": [], "failures": [fail], "downloads": {}, "node": None}, separators=(",", ":"))


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
