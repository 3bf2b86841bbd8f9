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
import os
import queue
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lfvila_data.executor.base import TaskMap, crash_line
from lfvila_data.inputs import InputError, require, storage_problem_at
from lfvila_data.output import manifest as tables
from lfvila_data.output.fingerprint import content, reuse_or_clear
from lfvila_data.output.write import OutputDir
from lfvila_data.records import paragraph, relative_time, words_of
from lfvila_data.schemas import MANIFEST_SCHEMA, manifest_clips
from lfvila_data.shards.sizing import member_lengths
from lfvila_data.shards.stats import shard_stats

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
# what `stats` reads back of the shard manifest (not the keys and offsets)
STATS_COLUMNS = ["split", "shard", "video_id", "n_clips", "duration", "paragraph_words",
                 "clip_words", "text_source", "language"]


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
    """One shard to write: its file name and where its samples' rows are, in tar order:
    row ranges (URL, first, end) of the plan files under the output's `_plan/`, so that
    neither the driver nor a task holds more than a few shards' rows."""

    split: str
    name: str
    parts: tuple[tuple[str, int, int], ...]
    nsamples: int


@dataclass
class ShardRecord:
    """A written shard, as the index and the manifest need it. Its samples' byte offsets
    are in its done marker only: the driver keeps a record per shard without them (8 bytes
    a sample, ~300 MB at 8.5M in Python), and `shard_manifest` reads them a shard at a time."""

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


def sample_tar_bytes(row: dict, members: tuple[bytes, bytes] | None = None) -> int:
    """Bytes the sample's three members take in a tar, for packing shards by size
    (`members`: its json and txt bytes when the caller has them already)."""
    meta, text = members or sample_members(row)
    sizes = {"mp4": int(row["bytes"]), "json": len(meta), "txt": len(text)}
    return sum(member_bytes(len(member_name(row["key"], ext)), size) for ext, size in sizes.items())


def tar_sizes(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """`sample_tar_bytes` of every manifest row, and whether its json and txt fit in
    MAX_TEXT_MEMBER: computed over the whole table (`sizing.member_lengths`), the rows it
    cannot vouch for measured from their real members."""
    meta, text, exact = member_lengths(rows, BENCHMARK_TASKS, "pretraining")
    names = np.asarray(pc.fill_null(pc.utf8_length(rows["key"]), 0).to_numpy(zero_copy_only=False), np.int64) + 1
    videos = np.asarray(pc.fill_null(rows["bytes"], 0).to_numpy(zero_copy_only=False), np.int64)
    size = sum(_member_bytes(names + len(ext), data) for ext, data in (("mp4", videos), ("json", meta), ("txt", text)))
    slow = np.flatnonzero(~exact)
    for c in range(0, len(slow), _SIZE_CHUNK):
        at = slow[c:c + _SIZE_CHUNK]
        for i, row in zip(at, rows.take(pa.array(at)).to_pylist()):
            members = sample_members(row)
            meta[i], text[i] = map(len, members)
            size[i] = sample_tar_bytes(row, members)
    return size, np.maximum(meta, text) <= MAX_TEXT_MEMBER


def _member_bytes(name_len: np.ndarray, size: np.ndarray) -> np.ndarray:
    """`member_bytes` over arrays."""
    return np.where(name_len > 99, 3 * _BLOCK, _BLOCK) + -(-size // _BLOCK) * _BLOCK


def video_rank(video_id: str, seed: int) -> int:
    """`_video_rank` as a 64-bit number (its first 16 hex digits): the same order, in a
    numpy array of 8 bytes per video instead of a 40-character string."""
    return int(_video_rank(video_id, seed)[:16], 16)


def val_rank_limit(ranks: np.ndarray, counts: np.ndarray, cfg: ShardConfig) -> int:
    """`split_videos` over arrays (a video's rank and its sample count): the val split is
    the videos whose rank is below the returned limit."""
    n = len(ranks)
    if n < 2:
        return 0
    order = np.argsort(ranks, kind="stable")
    if cfg.val_count is not None:
        reached = np.cumsum(counts[order][:n - 1]) >= cfg.val_count
        take = 0 if cfg.val_count == 0 else (int(np.argmax(reached)) + 1 if reached.any() else n - 1)
    else:
        take = min(n - 1, round(cfg.val_fraction * n))
    return 0 if take == 0 else int(ranks[order[take - 1]]) + 1


class Packer:
    """`pack` as a stream: samples in, a shard's row range out whenever one is full."""

    def __init__(self, cfg: ShardConfig):
        self.cfg, self.count, self.used = cfg, 0, 2 * _BLOCK * 10

    def full(self, size: int) -> bool:
        """Whether a sample of `size` bytes starts a new shard (then counted into it)."""
        start = (self.cfg.samples_per_shard is not None and self.count >= self.cfg.samples_per_shard) or \
                (self.count > 0 and self.used + size > self.cfg.max_shard_bytes)
        if start:
            self.count, self.used = 0, 2 * _BLOCK * 10
        self.count += 1
        self.used += size
        return start


PLAN_DIR = "_plan"       # the ordered samples of every shard, read by the shard tasks
BUCKET_ROWS = 20_000     # samples per shuffle bucket: ~120 MB of manifest rows in Arrow
PLAN_GROUP_ROWS = 256    # Parquet row group of a plan file: a task reads only its own
_SIZE_CHUNK = 2048       # rows turned into Python at a time to size their json and txt


@dataclass
class ShardLayout:
    """The whole plan as the driver keeps it: shard row ranges, never the rows."""

    shards: list[ShardPlan]
    layout: str        # what decides every shard's bytes (see `_clear_stale`)
    duplicates: int    # samples dropped because an earlier input build has the key
    sources: list[str]
    text_too_large: int = 0  # samples left out: a json or txt member over MAX_TEXT_MEMBER


def _bucket_of(keys: list[str], seed: int, buckets: int) -> np.ndarray:
    """A seeded hash of each sample key into a bucket: the first step of the shuffle."""
    return np.fromiter((int.from_bytes(hashlib.sha1(f"{seed}:{k}".encode()).digest()[:8], "little")
                        % buckets for k in keys), dtype=np.int64, count=len(keys))


# what shard writing reads of a manifest row: not the paragraph, which it joins again from
# the clip texts (a third of a row's bytes, spilled, read and written twice by planning)
PLANNED_SCHEMA = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "paragraph"])


def _conform(t: pa.Table, build: str) -> pa.Table:
    """A build's manifest rows in PLANNED_SCHEMA (older builds lack some columns)."""
    cols = [t[f.name] if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in PLANNED_SCHEMA]
    try:
        return pa.Table.from_arrays(cols, schema=PLANNED_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{build!r}: the manifest has unexpected columns ({e})") from None


def _bucket_path(tmp: str, b: int) -> str:
    return f"{tmp}/bucket-{b:05d}.arrow"


class _BucketWriter:
    """One bucket's spill file: an Arrow IPC stream (lz4). Each input batch adds a slice
    of a few hundred rows to every bucket; as Parquet row groups those cost more CPU than
    the rest of planning at 4M samples and grow with the square of the samples (batches x
    buckets), while a stream message is a copy and a compression."""

    def __init__(self, path: str, schema: pa.Schema):
        self.file = pa.OSFile(path, "wb")
        self.writer = pa.ipc.new_stream(self.file, schema, options=pa.ipc.IpcWriteOptions(compression="lz4"))

    def write(self, t: pa.Table) -> None:
        self.writer.write_table(t)

    def close(self) -> None:
        self.writer.close()
        self.file.close()


def _read_bucket(path: str) -> pa.Table:
    with pa.OSFile(path, "rb") as f:
        return pa.ipc.open_stream(f).read_all()


def _spill_buckets(builds: list[tuple[str, list[str]]], cfg: ShardConfig, tmp: str,
                   bucket_rows: int) -> tuple[int, set[str]]:
    """Stream every build's manifest into seeded buckets (local spill files), each row
    tagged with its build and its video's rank. Returns (buckets, sources)."""
    total = 0
    for d, files in builds:
        fs, _ = fsspec.core.url_to_fs(d)
        for path in files:
            with fs.open(path, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
    n = max(1, -(-total // bucket_rows))
    schema = PLANNED_SCHEMA.append(pa.field("_build", pa.int32())).append(pa.field("_rank", pa.uint64()))
    writers: dict[int, _BucketWriter] = {}
    sources: set[str] = set()
    try:
        for bi, (d, files) in enumerate(builds):
            fs, _ = fsspec.core.url_to_fs(d)
            present = set(tables.read_schema(fs, files).names)
            columns = [c for c in PLANNED_SCHEMA.names if c in present]
            for batch in tables.iter_batches(fs, files, columns, batch_rows=min(65536, bucket_rows)):
                t = _conform(pa.Table.from_batches([batch]), d)
                ranks: dict[str, int] = {}
                vids = t["video_id"].to_pylist()
                rank = np.fromiter((ranks.setdefault(v, video_rank(v, cfg.seed)) if v not in ranks else ranks[v]
                                    for v in vids), dtype=np.uint64, count=len(vids))
                sources.update(s or "hdvila" for s in pc.unique(t["source"]).to_pylist())
                t = t.append_column("_build", pa.array(np.full(t.num_rows, bi, np.int32))) \
                     .append_column("_rank", pa.array(rank))
                bucket = _bucket_of(t["key"].to_pylist(), cfg.seed, n)
                order = np.argsort(bucket, kind="stable")
                edges = np.searchsorted(bucket[order], np.arange(n + 1))
                for b in np.flatnonzero(np.diff(edges)):
                    if b not in writers:
                        writers[b] = _BucketWriter(_bucket_path(tmp, b), schema)
                    writers[b].write(t.take(pa.array(order[edges[b]:edges[b + 1]])))
    finally:
        for w in writers.values():
            w.close()
    return n, sources


def _dedup(t: pa.Table) -> tuple[pa.Table, int]:
    """One row per key, the earliest input build's, in key order."""
    t = t.sort_by([("key", "ascending"), ("_build", "ascending")])
    if t.num_rows < 2:
        return t, 0
    keys = t["key"]
    first = pc.not_equal(keys.slice(1), keys.slice(0, t.num_rows - 1)).combine_chunks()
    keep = pa.concat_arrays([pa.array([True]), first])
    kept = t.filter(keep)
    return kept, t.num_rows - kept.num_rows


def _val_limit(buckets: int, cfg: ShardConfig, tmp: str) -> tuple[int, int]:
    """The val split's rank limit from every video's rank and sample count (8 + 8 bytes
    per video, not its rows), and the number of duplicate keys."""
    ranks, counts, dups = [], [], 0
    for b in range(buckets):
        path = _bucket_path(tmp, b)
        if not os.path.exists(path):
            continue
        t, d = _dedup(_read_bucket(path).select(["key", "_build", "_rank"]))
        dups += d
        per_video = t.group_by("_rank").aggregate([("key", "count")])
        ranks.append(per_video["_rank"].to_numpy())
        counts.append(per_video["key_count"].to_numpy())
    if not ranks:
        return 0, dups
    r, c = np.concatenate(ranks), np.concatenate(counts)
    uniq, inverse = np.unique(r, return_inverse=True)  # a video's samples sit in many buckets
    return val_rank_limit(uniq, np.bincount(inverse, weights=c).astype(np.int64), cfg), dups


def plan_shards(inputs: list[str], output: str, cfg: ShardConfig,
                bucket_rows: int = BUCKET_ROWS) -> ShardLayout:
    """Split (whole videos, by seeded rank), shuffle (seeded buckets, then a seeded
    permutation within each) and pack every sample of the input builds into shards,
    streaming: the driver holds one bucket at a time. Each split's samples are written in
    tar order to `_plan/<split>-<bucket>.parquet`; the same inputs and options write the
    same files and shards on every run."""
    builds = read_manifests(inputs)
    out = OutputDir(output)
    out.fs.makedirs(out.path(PLAN_DIR), exist_ok=True)
    layout = hashlib.sha256(json.dumps(content(cfg), sort_keys=True).encode())
    with tempfile.TemporaryDirectory(prefix="lfvila-shardplan-") as tmp:
        n, sources = _spill_buckets(builds, cfg, tmp, bucket_rows)
        limit, dups = _val_limit(n, cfg, tmp)
        shards: dict[str, list[ShardPlan]] = {s: [] for s in SPLITS}
        current: dict[str, list[list]] = {s: [] for s in SPLITS}  # open shard: [url, first, end]
        packers = {s: Packer(cfg) for s in SPLITS}
        too_large = 0

        def close(split: str) -> None:
            if current[split]:
                name = f"{split}-{len(shards[split]):06d}.tar"
                parts = tuple((u, a, e) for u, a, e in current[split])
                shards[split].append(ShardPlan(split, name, parts, sum(e - a for _, a, e in parts)))
                layout.update(f"{name};".encode())
                current[split] = []

        for b in range(n):
            path = _bucket_path(tmp, b)
            if not os.path.exists(path):
                continue
            t, _ = _dedup(_read_bucket(path))
            is_val = pc.less(t["_rank"], pa.scalar(limit, pa.uint64()))
            for split, rows in (("train", t.filter(pc.invert(is_val))), ("val", t.filter(is_val))):
                if not rows.num_rows:
                    continue
                salt = int.from_bytes(hashlib.sha1(split.encode()).digest()[:4], "little")
                rows = rows.take(np.random.default_rng([cfg.seed, salt, b]).permutation(rows.num_rows))
                rows = rows.set_column(rows.schema.get_field_index("_build"), "_build",
                                       pa.array([d for d, _ in builds]).take(rows["_build"]))
                rows = rows.drop_columns(["_rank"])
                # each sample's tar size for packing, and whether `verify` would accept its
                # members (one over MAX_TEXT_MEMBER keeps the sample out)
                sizes, fits = tar_sizes(rows)
                too_large += int((~fits).sum())
                rows = rows.filter(pa.array(fits, pa.bool_()))
                if not rows.num_rows:
                    continue
                kept = zip(sizes[fits].tolist(), (f"{k}:{n}:{b};" for k, n, b in zip(
                    rows["key"].to_pylist(), rows["bytes"].to_pylist(), rows["_build"].to_pylist())))
                rel = f"{PLAN_DIR}/{split}-{b:05d}.parquet"
                url = f"{out.url}/{rel}"
                for i, (size, entry) in enumerate(kept):
                    if packers[split].full(size):
                        close(split)
                    if not current[split] or current[split][-1][0] != url:
                        current[split].append([url, i, i])
                    current[split][-1][2] = i + 1
                    layout.update(entry.encode())
                local = Path(tmp) / f"plan-{split}-{b:05d}.parquet"
                pq.write_table(rows, str(local), row_group_size=PLAN_GROUP_ROWS, compression="zstd")
                tables.put_local(out, local, rel)
        for split in SPLITS:
            close(split)
    _remove_stale_plan_files(out, {p[0].rsplit("/", 1)[-1] for s in SPLITS for sp in shards[s] for p in sp.parts})
    return ShardLayout(shards["train"] + shards["val"], layout.hexdigest()[:20], dups, sorted(sources),
                       too_large)


def _remove_stale_plan_files(out: OutputDir, keep: set[str]) -> None:
    for path in out.list(PLAN_DIR, ""):  # also the temporary file of a killed run
        if path.rsplit("/", 1)[-1] not in keep:
            out.fs.rm(path)


def plan_rows(plan: ShardPlan) -> list[dict]:
    """A shard's rows as Python dicts, reading only the plan files' row groups it spans."""
    rows: list[dict] = []
    for url, first, end in plan.parts:
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            groups, at, offset = [], 0, None
            for g in range(pf.num_row_groups):
                size = pf.metadata.row_group(g).num_rows
                if at + size > first and at < end:
                    groups.append(g)
                    offset = at if offset is None else offset
                at += size
            t = pf.read_row_groups(groups)
        rows += t.slice(first - offset, end - first).to_pylist()
    return rows


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


def _write_members(sink: _Hashing, rows: list[dict], offsets: list[int]) -> None:
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
            _write_members(sink, plan_rows(plan), offsets)
        finally:
            md5sum = sink.hexdigest()  # also ends the hashing thread on failure
    if out.is_local:
        out.fs.mv(target, final)
    record = ShardRecord(plan.split, plan.name, plan.nsamples, sink.size, md5sum, offsets)
    out.write_json(f"_meta/{plan.name}.json", asdict(record))  # the done marker, last
    return replace(record, offsets=[])


def read_record(out: OutputDir, name: str) -> ShardRecord | None:
    """The done marker of a shard, if the shard is complete (marker and file agree)."""
    marker = f"_meta/{name}.json"
    if not out.exists(marker) or not out.exists(name):
        return None
    rec = ShardRecord(**json.loads(out.fs.cat_file(out.path(marker))))
    return rec if out.fs.size(out.path(name)) == rec.filesize else None


# ---------------------------------------------------------------------------------------
# the command


def read_manifests(inputs: list[str]) -> list[tuple[str, list[str]]]:
    """Each input build and its manifest files (`manifest/` parts, or the single
    `manifest.parquet` of older builds); a one-line error for an input that is not a build."""
    builds = []
    for d in inputs:
        d = d.rstrip("/")
        fs, root = fsspec.core.url_to_fs(d)
        files = tables.parquet_files(fs, root, "manifest")
        if not files:
            problem = storage_problem_at(fs, f"{root}/manifest")
            raise InputError(f"{d!r}: {problem}" if problem else f"{d!r} is not a build directory (no manifest)")
        builds.append((d, files))
    if not builds:
        raise InputError("no --input build directory given")
    return builds


def _text_or(value: object, default: str | None) -> str | None:
    """A string field of a manifest row; pandas turns an all-null column into NaN."""
    return value if isinstance(value, str) and value else default


SHARD_MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("offset", pa.int64()),
    ("index", pa.int32()), ("video_id", pa.string()), ("n_clips", pa.int32()),
    ("duration", pa.float64()), ("bytes", pa.int64()), ("paragraph_words", pa.int32()),
    ("clip_words", pa.list_(pa.int32())), ("text_source", pa.string()), ("language", pa.string()),
    ("dataset_split", pa.string())])


def shard_manifest(plans: list[ShardPlan], out: OutputDir) -> Iterator[pa.Table]:
    """The shard manifest's rows, one shard at a time (unsorted: `run_shard` sorts them),
    each shard's offsets read from its done marker."""
    for plan in plans:
        rec = ShardRecord(**json.loads(out.fs.cat_file(out.path(f"_meta/{plan.name}.json"))))
        rows = []
        for i, row in enumerate(plan_rows(plan)):
            rows.append({"key": row["key"], "split": plan.split, "shard": plan.name,
                         "offset": rec.offsets[i], "index": i, "video_id": row["video_id"],
                         "n_clips": len(row["clips"]), "duration": float(row["duration"]),
                         "bytes": int(row["bytes"]),
                         "paragraph_words": words_of(paragraph(c["text"] for c in row["clips"])),
                         "clip_words": [words_of(c["text"]) for c in row["clips"]],
                         "text_source": _text_or(row.get("text_source"), "metadata"),
                         "language": _text_or(row.get("language"), None),
                         "dataset_split": _text_or(row.get("split"), None)})
        yield pa.Table.from_pylist(rows, schema=SHARD_MANIFEST_SCHEMA)


def wids_index(split: str, records: list[ShardRecord]) -> dict:
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
            "shardlist": [{"url": r.name, "nsamples": r.nsamples, "filesize": r.filesize,
                           "md5sum": r.md5sum} for r in records]}


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
    out = OutputDir(output)
    out.fs.makedirs(out.root, exist_ok=True)
    layout = plan_shards(inputs, output, cfg)
    plans = layout.shards
    if not plans:
        raise InputError("the input builds hold no samples" + (
            f" whose text fits a {MAX_TEXT_MEMBER} byte member" if layout.text_too_large else ""))
    _clear_stale(out, layout.layout)
    records: dict[str, ShardRecord] = {}
    todo = []
    for p in plans:
        rec = read_record(out, p.name)
        if rec is not None:
            records[p.name] = replace(rec, offsets=[])
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
    tables.write_sorted(out, "manifest", shard_manifest(plans, out), SHARD_MANIFEST_SCHEMA, ["key"])
    stats = shard_stats(out.fs, out.root, STATS_COLUMNS)  # streamed, never the whole manifest
    stats["bytes"] = int(sum(r.filesize for r in records.values()))  # shard files, not videos
    stats["duplicate_keys_dropped"] = layout.duplicates
    stats["text_too_large_dropped"] = layout.text_too_large
    out.write_json("stats.json", stats)
    out.write_json("shard.json", {"inputs": list(inputs), "config": asdict(cfg),
                                  "source": layout.sources})
    return stats
