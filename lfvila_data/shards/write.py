"""`lfvila-data shard`: pack built samples into WebDataset tar shards (see
shards/README.md, the contract).

The layout (split by video, seeded shuffle, packing into shards) is computed up front by
pure functions, so every run of the same inputs and options gives the same shards; each
shard is then written by one Ray task that streams the sample files into the tar with
deterministic headers, under a temporary name, and records it as done last."""
from __future__ import annotations

import hashlib
import io
import json
import math
import queue
import tarfile
import threading
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from lfvila_data.executor.base import TaskMap, crash_line
from lfvila_data.inputs import InputError, require, storage_problem_at
from lfvila_data.output.fingerprint import content, reuse_or_clear
from lfvila_data.output.write import OutputDir
from lfvila_data.records import paragraph, relative_time, words_of
from lfvila_data.schemas import manifest_clips
from lfvila_data.shards.stats import shard_table_stats

SPLITS = ("train", "val")
# the json's `task`: what a sample is for, by the source that built it
TASKS = ("pretraining", "retrieval", "qa")
BENCHMARK_TASKS = {"activitynet": "retrieval", "didemo": "retrieval", "queryd": "retrieval", "condensed-movies": "retrieval",
                   "how2qa": "qa", "violin": "qa", "activitynet-qa": "qa"}
MEMBER_EXTS = ("mp4", "json", "txt")  # a sample's members, in tar order
_BLOCK = 512
_COPY = 4 * 1024 * 1024
_PART = 16 * 1024 * 1024  # write buffer; on S3 the multipart part size (>= 5 MiB)
# a json or txt member larger than this is a problem: `verify` rejects it, so the writer
# leaves out the samples that would need one (a build made with a large --max-text-bytes)
MAX_TEXT_MEMBER = 16 * 1024 * 1024


@dataclass(frozen=True)
class ShardConfig:
    """How samples are split and packed; the defaults aim at ~1 GB shards."""

    val_fraction: float = 0.01
    val_count: int | None = None       # samples in val (whole videos), instead of the fraction
    seed: int = 0
    samples_per_shard: int | None = None
    max_shard_bytes: int = 1_000_000_000

    def __post_init__(self) -> None:
        require(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        require(self.val_count is None or self.val_count >= 0, f"--val-count must be >= 0, got {self.val_count}")
        require(self.samples_per_shard is None or self.samples_per_shard >= 1,
                f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")
        require(self.max_shard_bytes >= 1, f"--max-shard-bytes must be >= 1, got {self.max_shard_bytes}")


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its file name and its samples' rows, in tar order."""

    split: str
    name: str
    rows: tuple[dict, ...]


@dataclass
class ShardRecord:
    """A written shard, as the index and the manifest need it."""

    split: str
    name: str
    nsamples: int
    filesize: int
    md5sum: str
    offsets: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# pure layout


def _video_rank(video_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{video_id}".encode()).hexdigest()


def split_videos(samples_per_video: dict[str, int], cfg: ShardConfig) -> set[str]:
    """The videos of the val split: whole videos in seeded-hash order."""
    order = sorted(samples_per_video, key=lambda v: (_video_rank(v, cfg.seed), v))
    if len(order) < 2:
        return set()
    limit = len(order) - 1  # never leave train empty
    val: list[str] = []
    if cfg.val_count is not None:
        total = 0
        for v in order[:limit]:
            if total >= cfg.val_count:
                break
            val.append(v)
            total += samples_per_video[v]
    else:
        val = order[:min(limit, round(cfg.val_fraction * len(order)))]
    return set(val)


def shuffled(keys: list[str], seed: int, split: str) -> list[str]:
    """A seeded permutation of the keys, independent of their input order."""
    keys = sorted(keys)
    salt = int.from_bytes(hashlib.sha1(split.encode()).digest()[:4], "little")
    perm = np.random.default_rng([seed, salt]).permutation(len(keys))
    return [keys[i] for i in perm]


def member_bytes(name_len: int, size: int) -> int:
    """Bytes one member takes in a tar: header (+ PAX header for long names) and data."""
    header = _BLOCK * (3 if name_len > 99 else 1)
    return header + math.ceil(size / _BLOCK) * _BLOCK


def pack(sizes: list[tuple[str, int]], cfg: ShardConfig) -> list[list[str]]:
    """Cut an ordered list of (key, tar bytes) into shards by count and by size."""
    shards: list[list[str]] = []
    current: list[str] = []
    used = 2 * _BLOCK * 10  # end-of-archive blocks (tarfile pads to a 10 KiB record)
    for key, size in sizes:
        full = (cfg.samples_per_shard is not None and len(current) >= cfg.samples_per_shard) or \
               (current and used + size > cfg.max_shard_bytes)
        if full:
            shards.append(current)
            current, used = [], 2 * _BLOCK * 10
        current.append(key)
        used += size
    if current:
        shards.append(current)
    return shards


def member_name(key: str, ext: str) -> str:
    """A tar member's name: WebDataset groups a sample's members by the name up to the
    first dot, which is why keys have none."""
    return f"{key}.{ext}"


def sample_json(row: dict) -> dict:
    """The `{key}.json` member: clip and sentence times relative to the sample video's
    first frame and within [0, duration], so each names a frame the file has (a file cut
    to whole frames, or from a video that ends early, can be shorter than its planned
    span); the `source_*` times and the manifest keep the planned source times."""
    start, duration = float(row["start"]), float(row["duration"])
    clips = [{"clip_id": c.clip_id, "start": relative_time(c.start, start, duration),
              "end": relative_time(c.end, start, duration), "source_start": c.start,
              "source_end": c.end, "text": c.text, "sentences": c.sentence_rows(start, duration)}
             for c in manifest_clips(row)]
    # QA samples alone carry their questions: other samples' json stays byte for byte as it was
    qa = {"qa": json.loads(row["qa"])} if _text_or(row.get("qa"), None) else {}
    return {"key": row["key"], "video_id": row["video_id"], "url": row["url"],
            "source": row.get("source") or "hdvila", "start": start, "end": row["end"],
            "duration": row["duration"], "fps": row["fps"], "width": int(row["width"]),
            "height": int(row["height"]), "frames": int(row.get("frames") or 0),
            "n_clips": len(clips), "clips": clips,
            "text_source": _text_or(row.get("text_source"), "metadata"),
            "language": _text_or(row.get("language"), None),
            "task": BENCHMARK_TASKS.get(row.get("source") or "hdvila", "pretraining"),
            "split": _text_or(row.get("split"), None)} | qa


def sample_members(row: dict) -> tuple[bytes, bytes]:
    """The json and txt member bytes of a sample (deterministic serialisation)."""
    meta = json.dumps(sample_json(row), ensure_ascii=False, sort_keys=True, allow_nan=False).encode()
    text = paragraph(c["text"] for c in row["clips"]).encode()
    return meta, text


def text_fits(row: dict) -> bool:
    """True when the sample's json and txt members are within MAX_TEXT_MEMBER."""
    return max(len(m) for m in sample_members(row)) <= MAX_TEXT_MEMBER


def sample_tar_bytes(row: dict) -> int:
    """Bytes the sample's three members take in a tar, for packing shards by size."""
    meta, text = sample_members(row)
    sizes = {"mp4": int(row["bytes"]), "json": len(meta), "txt": len(text)}
    return sum(member_bytes(len(member_name(row["key"], ext)), size) for ext, size in sizes.items())


def plan_shards(manifest: pd.DataFrame, cfg: ShardConfig) -> list[ShardPlan]:
    """Split, shuffle and pack every sample of the manifest into shards."""
    counts = manifest.groupby("video_id").size().to_dict()
    val = split_videos(counts, cfg)
    rows = {r["key"]: r for r in manifest.to_dict("records")}
    plans: list[ShardPlan] = []
    for split in SPLITS:
        keys = [k for k, r in rows.items() if (r["video_id"] in val) == (split == "val")]
        order = shuffled(keys, cfg.seed, split)
        groups = pack([(k, sample_tar_bytes(rows[k])) for k in order], cfg)
        plans += [ShardPlan(split, f"{split}-{i:06d}.tar", tuple(rows[k] for k in g))
                  for i, g in enumerate(groups)]
    return plans


# ---------------------------------------------------------------------------------------
# writing one shard


class _Hashing(io.RawIOBase):
    """A write-only stream that passes bytes on and keeps their count and MD5. The MD5
    runs on its own thread (hashlib releases the GIL), overlapping the copy's I/O."""

    def __init__(self, sink):
        self.sink, self.size = sink, 0
        self._md5 = hashlib.md5()
        self._chunks: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._hash, daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._md5.update(chunk)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        chunk = bytes(b)  # the caller may reuse its buffer; the hasher reads later
        self._chunks.put(chunk)
        self.sink.write(chunk)
        self.size += len(chunk)
        return len(chunk)

    def hexdigest(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return self._md5.hexdigest()


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def _write_members(sink: _Hashing, rows: tuple[dict, ...], offsets: list[int]) -> None:
    """The tar itself: per sample the mp4 (streamed from its build), the json, the txt.
    Plain "w" mode writes straight through (no 10 KiB stream buffer); big copy buffers
    keep Python out of the byte path."""
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT,
                      copybufsize=_COPY) as tar:
        for row in rows:
            meta, text = sample_members(row)
            offsets.append(tar.offset)
            src_fs, src_path = fsspec.core.url_to_fs(f"{row['_build'].rstrip('/')}/{row['video']}")
            with src_fs.open(src_path, "rb", block_size=_COPY) as video:
                tar.addfile(_info(member_name(row["key"], "mp4"), int(row["bytes"])), video)
            tar.addfile(_info(member_name(row["key"], "json"), len(meta)), io.BytesIO(meta))
            tar.addfile(_info(member_name(row["key"], "txt"), len(text)), io.BytesIO(text))


def write_shard(plan: ShardPlan, output: str) -> ShardRecord:
    """Stream the plan's samples into `output/plan.name`: mp4 from its build directory
    (never whole in memory), then json and txt. Temporary name, then rename."""
    out = OutputDir(output)
    final = out.path(plan.name)
    target = final if not out.is_local else f"{final}.{uuid.uuid4().hex[:8]}.tmp"
    offsets: list[int] = []
    out.fs.makedirs(out.root, exist_ok=True)
    with out.fs.open(target, "wb", block_size=_PART) as raw:
        sink = _Hashing(raw)
        try:
            _write_members(sink, plan.rows, offsets)
        finally:
            md5sum = sink.hexdigest()  # also ends the hashing thread on failure
    if out.is_local:
        out.fs.mv(target, final)
    record = ShardRecord(plan.split, plan.name, len(plan.rows), sink.size, md5sum, offsets)
    out.write_json(f"_meta/{plan.name}.json", asdict(record))  # the done marker, last
    return record


def read_record(out: OutputDir, name: str) -> ShardRecord | None:
    """The done marker of a shard, if the shard is complete (marker and file agree)."""
    marker = f"_meta/{name}.json"
    if not out.exists(marker) or not out.exists(name):
        return None
    rec = ShardRecord(**json.loads(out.fs.cat_file(out.path(marker))))
    return rec if out.fs.size(out.path(name)) == rec.filesize else None


# ---------------------------------------------------------------------------------------
# the command


def read_manifests(inputs: list[str]) -> tuple[pd.DataFrame, int]:
    """All build manifests, each row knowing its build directory; duplicate keys (the same
    sample in two builds) keep the first build's row. Returns (rows, duplicates)."""
    frames = []
    for d in inputs:
        path = f"{d.rstrip('/')}/manifest.parquet"
        fs, p = fsspec.core.url_to_fs(path)
        if not fs.exists(p):
            problem = storage_problem_at(fs, p)
            raise InputError(f"{d!r}: {problem}" if problem else f"{d!r} is not a build directory (no manifest.parquet)")
        with fs.open(p, "rb") as f:
            df = pd.read_parquet(f)
        frames.append(df.assign(_build=d.rstrip("/")))
    if not frames:
        raise InputError("no --input build directory given")
    df = pd.concat(frames, ignore_index=True)
    dups = int(df.key.duplicated().sum())
    return df.drop_duplicates("key", keep="first").reset_index(drop=True), dups


def _text_or(value: object, default: str | None) -> str | None:
    """A string field of a manifest row; pandas turns an all-null column into NaN."""
    return value if isinstance(value, str) and value else default


def shard_manifest(plans: list[ShardPlan], records: dict[str, ShardRecord]) -> pa.Table:
    rows = []
    for plan in plans:
        rec = records[plan.name]
        for i, row in enumerate(plan.rows):
            rows.append({"key": row["key"], "split": plan.split, "shard": plan.name,
                         "offset": rec.offsets[i], "index": i, "video_id": row["video_id"],
                         "n_clips": len(row["clips"]), "duration": float(row["duration"]),
                         "bytes": int(row["bytes"]),
                         "paragraph_words": words_of(paragraph(c["text"] for c in row["clips"])),
                         "clip_words": [words_of(c["text"]) for c in row["clips"]],
                         "text_source": _text_or(row.get("text_source"), "metadata"),
                         "language": _text_or(row.get("language"), None),
                         "dataset_split": _text_or(row.get("split"), None)})
    schema = pa.schema([("key", pa.string()), ("split", pa.string()), ("shard", pa.string()),
                        ("offset", pa.int64()), ("index", pa.int32()), ("video_id", pa.string()),
                        ("n_clips", pa.int32()), ("duration", pa.float64()), ("bytes", pa.int64()),
                        ("paragraph_words", pa.int32()), ("clip_words", pa.list_(pa.int32())),
                        ("text_source", pa.string()), ("language", pa.string()),
                        ("dataset_split", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema).sort_by("key")


def wids_index(split: str, records: list[ShardRecord]) -> dict:
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
            "shardlist": [{"url": r.name, "nsamples": r.nsamples, "filesize": r.filesize,
                           "md5sum": r.md5sum} for r in records]}


def _layout_id(plans: list[ShardPlan], cfg: ShardConfig) -> str:
    """What decides every shard's bytes: the content settings and each shard's samples
    (hashed as a stream: a plan may list millions of samples)."""
    h = hashlib.sha256(json.dumps(content(cfg), sort_keys=True).encode())
    for p in plans:
        h.update(p.name.encode())
        for r in p.rows:
            h.update(f"{r['key']}:{r['bytes']}:{r['_build']};".encode())
    return h.hexdigest()[:20]


def _clear_stale(out: OutputDir, layout: str) -> None:
    """A different layout makes every old shard wrong: remove them before writing."""
    def clear() -> None:
        for name in out.list("", ".tar") + out.list("_meta", ".json"):
            out.fs.rm(name)
    reuse_or_clear(out, "_meta/LAYOUT", layout, clear)


def run_shard(inputs: list[str], output: str, cfg: ShardConfig, *, write: TaskMap,
              on_progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Plan every shard, write the unfinished ones through `write` (`executor.pool.RayTasks`
    on a cluster, `executor.base.local_map` in this process), then the index files, the
    manifest and the stats. Returns the stats."""
    manifest, dups = read_manifests(inputs)
    fits = [text_fits(r) for r in manifest.to_dict("records")]
    manifest = manifest[fits] if fits else manifest
    if manifest.empty:
        raise InputError("the input builds hold no samples" + (
            f" whose text fits a {MAX_TEXT_MEMBER} byte member" if fits else ""))
    out = OutputDir(output)
    out.fs.makedirs(out.root, exist_ok=True)
    plans = plan_shards(manifest, cfg)
    _clear_stale(out, _layout_id(plans, cfg))
    records: dict[str, ShardRecord] = {}
    todo = []
    for p in plans:
        rec = read_record(out, p.name)
        if rec is not None:
            records[p.name] = rec
        else:
            todo.append(p)
    failed: list[str] = []
    for done in write(partial(write_shard, output=output), todo):
        if done.error is None:
            records[done.item.name] = done.value
        else:  # one bad shard must not stop the rest
            failed.append(f"{done.item.name}: {crash_line(done.error)}")
        if on_progress:
            on_progress(len(records), len(plans), sum(r.filesize for r in records.values()))
    if failed:
        raise InputError(f"{len(failed)} shard(s) could not be written (rerun to retry): "
                         + "; ".join(failed[:3]))
    for split in SPLITS:
        recs = [records[p.name] for p in plans if p.split == split]
        if recs:
            out.write_json(f"{split}.json", wids_index(split, recs))
        elif out.exists(f"{split}.json"):
            out.fs.rm(out.path(f"{split}.json"))
    table = shard_manifest(plans, records)
    out.write_table("manifest.parquet", table)
    stats = shard_table_stats(table)
    stats["bytes"] = int(sum(r.filesize for r in records.values()))  # shard files, not videos
    stats["duplicate_keys_dropped"] = dups
    stats["text_too_large_dropped"] = len(fits) - sum(fits)
    out.write_json("stats.json", stats)
    out.write_json("shard.json", {"inputs": list(inputs), "config": asdict(cfg),
                                  "source": sorted(set(manifest.get("source", pd.Series(["hdvila"]))))})
    return stats
