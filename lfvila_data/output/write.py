"""The output directory: sample files, the journal that makes reruns resume, and the
final manifest, failure ledger and build.json.

Every file is written under a temporary name and renamed. Results reach the journal in
small batches (one Parquet file per flush, renamed into place), so a job killed at any
point loses at most the batch in memory, and those samples' files are found on disk and
reused by the next run."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA

DOWNLOAD_SCHEMA = pa.schema([("video_id", pa.string()), ("key", pa.string()),
                             ("download_bytes", pa.int64()), ("node", pa.string())])
JOURNAL_SCHEMA = pa.schema([("video_id", pa.string()), ("status", pa.string()),
                            ("payload", pa.string())])

# A video's journal status: done (every sample written or failed for good), failed
# (nothing more to do unless --retry-failed), retry (a transient failure: retried on rerun).
DONE, FAILED, RETRY = "done", "failed", "retry"

# Errors of the output itself, never of one video: a full disk, a quota, a failing disk.
# A rerun after fixing them must redo the work, so they are transient, and the build stops
# at the first one instead of failing every remaining video the same way.
# An object store's 5xx is the same class: s3fs raises OSError(EREMOTEIO) for InternalError,
# OSError(EBUSY) for ServiceUnavailable and SlowDown (after its own retries), EIO otherwise.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EREMOTEIO, errno.EBUSY})
OUTPUT_ERROR_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Input/output error|"
                               r"\b(?:InternalError|ServiceUnavailable|SlowDown)\b")


class OutputStopped(Exception):
    """The output cannot take more writes (full, over quota, failing, lease lost): the
    build stops with this one-line message; a rerun after fixing it resumes."""


def is_output_error(err: BaseException) -> bool:
    """Whether an exception (or a tool's message inside it) is the output failing."""
    return (isinstance(err, OSError) and err.errno in OUTPUT_ERRNOS) or \
        bool(OUTPUT_ERROR_TEXT.search(str(err)))


# a local output with less free space than this is full for our purposes: ffmpeg's own
# message for a failed write is often only "Error initializing output stream", or it
# exits 0 leaving a truncated file, so the disk is asked instead of the message
NEARLY_FULL_BYTES = 1024**2


def output_space_problem(out: OutputDir) -> str | None:
    """"No space left" with the free bytes, when a local output has (almost) none: a cut
    that failed then failed because of the disk, not the video. Object stores never fill
    up this way."""
    if not out.is_local:
        return None
    try:
        free = shutil.disk_usage(out.root).free
    except OSError:
        return None
    return f"No space left on device (the output has {free:,} bytes free)" if free < NEARLY_FULL_BYTES else None


@dataclass
class VideoResult:
    """What one video produced: manifest rows, ledger rows, downloaded bytes per key."""

    video_id: str
    status: str
    rows: list[dict]
    failures: list[dict]
    downloads: dict[str, int]
    node: str | None = None  # the Ray node that cut the video
    # the text stage's planning counts (words parsed, dropped by reason), summed into the plan
    counts: dict[str, float] | None = None
    # sample file -> its size and mtime when written (media/task.file_stamp): a rerun
    # redoes a file that changed since
    stamps: dict[str, str] = field(default_factory=dict)

    def payload(self) -> str:
        extra = {"counts": self.counts} if self.counts is not None else {}
        extra |= {"stamps": self.stamps} if self.stamps else {}
        return json.dumps({"rows": self.rows, "failures": self.failures,
                           "downloads": self.downloads, "node": self.node, **extra},
                          separators=(",", ":"))


class OutputDir:
    """Paths and atomic writes under the build output (a local dir or an fsspec URL)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                   else (self.fs.protocol,))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @staticmethod
    def video_rel(video_id: str, key: str) -> str:
        """Where a sample's video goes: two-character fan-out keeps directories small."""
        return f"videos/{video_id[:2]}/{key}.mp4"

    def local_path(self, rel: str) -> Path:
        assert self.is_local, "only for local outputs"
        return Path(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def put_file(self, local: Path, rel: str) -> None:
        """Move a finished local file into place (atomic rename or a single upload)."""
        if self.is_local:
            dst = self.local_path(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, dst)
        else:
            self.fs.put_file(str(local), self.path(rel))
            local.unlink(missing_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        except BaseException:
            try:  # a full disk must not also keep the half-written temp file
                self.fs.rm(tmp)
            except OSError:
                pass
            raise

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def list(self, rel_dir: str, suffix: str) -> list[str]:
        try:
            names = self.fs.ls(self.path(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(suffix))


class Journal:
    """Append-only record of finished videos, flushed in batches."""

    DIR = "_journal"

    def __init__(self, out: OutputDir, every_s: float = 5.0, every_n: int = 64, dir: str = DIR,
                 guard: Callable[[], None] | None = None):
        self.out, self.every_s, self.every_n, self.dir = out, every_s, every_n, dir
        self.guard = guard  # called before every write (the output lease's check)
        self.buffer: list[VideoResult] = []
        self.last = time.monotonic()
        self.run = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:6]}"
        self.seq = 0

    def add(self, result: VideoResult) -> None:
        self.buffer.append(result)
        if len(self.buffer) >= self.every_n or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffer:
            return
        if self.guard is not None:
            self.guard()
        table = pa.table({"video_id": [r.video_id for r in self.buffer],
                          "status": [r.status for r in self.buffer],
                          "payload": [r.payload() for r in self.buffer]}, schema=JOURNAL_SCHEMA)
        self.out.write_table(f"{self.dir}/{self.run}-{self.seq:06d}.parquet", table)
        self.seq += 1
        self.buffer.clear()


def read_journal(out: OutputDir, dir: str = Journal.DIR) -> dict[str, tuple[str, dict]]:
    """Latest (status, payload) per video over all runs, in the order they were written."""
    latest: dict[str, tuple[str, dict]] = {}
    for name in out.list(dir, ".parquet"):
        with out.fs.open(name, "rb") as f:
            table = pq.read_table(f)
        for vid, status, payload in zip(*(table.column(c).to_pylist() for c in
                                          ("video_id", "status", "payload"))):
            latest[vid] = (status, json.loads(payload))
    return latest


def journal_status(out: OutputDir, dir: str = Journal.DIR) -> dict[str, str]:
    """The latest status of each journaled video, without reading the payloads."""
    status: dict[str, str] = {}
    for name in out.list(dir, ".parquet"):
        with out.fs.open(name, "rb") as f:
            table = pq.read_table(f, columns=["video_id", "status"])
        status.update(zip(table.column("video_id").to_pylist(), table.column("status").to_pylist()))
    return status


def iter_journal(out: OutputDir, dir: str = Journal.DIR) -> Iterator[tuple[str, str, dict]]:
    """(video, status, payload) of each video's latest entry, one journal file in memory
    at a time: a first pass reads only the ids to find which entry is the latest."""
    names = out.list(dir, ".parquet")
    latest: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(names):
        with out.fs.open(name, "rb") as f:
            ids = pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()
        for j, vid in enumerate(ids):
            latest[vid] = (i, j)
    for i, name in enumerate(names):
        with out.fs.open(name, "rb") as f:
            table = pq.read_table(f)
        for j, (vid, status, payload) in enumerate(zip(*(table.column(c).to_pylist() for c in
                                                         ("video_id", "status", "payload")))):
            if latest.get(vid) == (i, j):
                yield vid, status, json.loads(payload)


def finalize(out: OutputDir, journal: dict[str, tuple[str, dict]],
             plan_failures: pa.Table | None) -> dict:
    """Write manifest.parquet, failures.parquet and downloads.parquet; return counts.

    Rows are sorted (manifest by key, ledger by video and clip) so the files are the same
    whatever order videos finished in and however often the job was resumed."""
    rows, failures, downloads = [], [], []
    for vid, (_status, payload) in journal.items():
        rows.extend(payload["rows"])
        failures.extend(payload["failures"])
        downloads.extend({"video_id": vid, "key": k, "download_bytes": b,
                          "node": payload.get("node")}
                         for k, b in payload["downloads"].items())
    rows.sort(key=lambda r: r["key"])
    manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    ledger = pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA)
    if plan_failures is not None and plan_failures.num_rows:
        plan_rows = plan_failures.to_pylist()
        ledger = pa.concat_tables([pa.Table.from_pylist(plan_rows, schema=FAILURE_SCHEMA), ledger])
    ledger = ledger.sort_by([("video_id", "ascending"), ("clip_id", "ascending"),
                             ("stage", "ascending"), ("reason", "ascending")])
    out.write_table("manifest.parquet", manifest)
    out.write_table("failures.parquet", ledger)
    out.write_table("downloads.parquet", pa.Table.from_pylist(downloads, schema=DOWNLOAD_SCHEMA))
    stages: dict[str, int] = {}
    for s in ledger.column("stage").to_pylist():
        stages[s] = stages.get(s, 0) + 1
    codes: dict[str, int] = {}
    for c in ledger.column("code").to_pylist():
        codes[c] = codes.get(c, 0) + 1
    return {"samples_written": manifest.num_rows,
            "hours_written": round(sum(manifest.column("duration").to_pylist()) / 3600, 4),
            "video_bytes": int(sum(manifest.column("bytes").to_pylist())),
            "failures": ledger.num_rows, "failures_by_stage": stages,
            "failures_by_code": dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "download_bytes": int(sum(d["download_bytes"] for d in downloads))}
