"""The output directory: sample files, the journal that makes reruns resume, and the
final manifest, failure ledger and build.json.

Every file is written under a temporary name and renamed. Results reach the journal in
small batches (one Parquet file per flush, renamed into place), so a job killed at any
point loses at most the batch in memory, and those samples' files are found on disk and
reused by the next run."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    import pyarrow as pa

    from lfvila_data.output.manifest import SortConfig

# numpy, pyarrow and the schemas are imported where a table is made or read, never at
# import: a Ray cut worker imports this module for VideoResult and OutputDir only, and
# they cost it ~0.3 CPU-s per worker process (docs/performance.md, "through Ray").


@cache
def _arrow_schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA

    return {
        "DOWNLOAD_SCHEMA": pa.schema([("video_id", pa.string()), ("key", pa.string()),
                                      ("download_bytes", pa.int64()), ("node", pa.string())]),
        "JOURNAL_SCHEMA": pa.schema([("video_id", pa.string()), ("status", pa.string()),
                                     ("payload", pa.string())]),
        # what finalize reads of a payload with Arrow's JSON reader; `downloads` (an object
        # keyed by sample key, which Arrow cannot read as a map) is decoded on its own
        "PAYLOAD_SCHEMA": pa.schema([("rows", pa.list_(pa.struct(list(MANIFEST_SCHEMA)))),
                                     ("failures", pa.list_(pa.struct(list(FAILURE_SCHEMA)))),
                                     ("node", pa.string()), ("fetched_bytes", pa.int64())]),
    }


def __getattr__(name: str) -> Any:
    """DOWNLOAD_SCHEMA, JOURNAL_SCHEMA, PAYLOAD_SCHEMA, built on first use (PEP 562)."""
    if name in ("DOWNLOAD_SCHEMA", "JOURNAL_SCHEMA", "PAYLOAD_SCHEMA"):
        return _arrow_schemas()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    # every byte fetched for the video, all runs (`downloads` has only written samples' shares)
    fetched_bytes: int = 0

    def payload(self) -> str:
        extra = {"counts": self.counts} if self.counts is not None else {}
        extra |= {"stamps": self.stamps} if self.stamps else {}
        extra |= {"fetched_bytes": self.fetched_bytes} if self.fetched_bytes else {}
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
        import pyarrow as pa
        import pyarrow.parquet as pq

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
        import pyarrow as pa

        table = pa.table({"video_id": [r.video_id for r in self.buffer],
                          "status": [r.status for r in self.buffer],
                          "payload": [r.payload() for r in self.buffer]},
                         schema=_arrow_schemas()["JOURNAL_SCHEMA"])
        self.out.write_table(f"{self.dir}/{self.run}-{self.seq:06d}.parquet", table)
        self.seq += 1
        self.buffer.clear()


def read_journal(out: OutputDir, dir: str = Journal.DIR) -> dict[str, tuple[str, dict]]:
    """Latest (status, payload) per video over all runs, in the order they were written."""
    import pyarrow.parquet as pq

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
    import pyarrow.parquet as pq

    status: dict[str, str] = {}
    for name in out.list(dir, ".parquet"):
        with out.fs.open(name, "rb") as f:
            table = pq.read_table(f, columns=["video_id", "status"])
        status.update(zip(table.column("video_id").to_pylist(), table.column("status").to_pylist()))
    return status


class JournalEntries:
    """Each video's latest journal entry, one journal file in memory at a time: a first
    pass reads only the ids (into Arrow, a few bytes per entry) to find which entry is
    the latest. Iterated, it gives (video, status, payload); `tables()` gives the same
    entries as Arrow tables with the payloads unparsed, for readers that parse them in
    bulk (finalize)."""

    def __init__(self, out: OutputDir, dir: str = Journal.DIR):
        self.out, self.dir = out, dir

    def tables(self) -> Iterator[pa.Table]:
        """JOURNAL_SCHEMA tables of the latest entries, a journal file at a time."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.out.list(self.dir, ".parquet")
        ids, ords = [], []
        for i, name in enumerate(names):
            with self.out.fs.open(name, "rb") as f:
                col = pq.read_table(f, columns=["video_id"]).column("video_id").combine_chunks()
            ids.append(col)
            ords.append(np.arange(len(col), dtype=np.int64) + (i << 32))
        if not names:
            return
        entries = pa.table({"video_id": pa.concat_arrays(ids), "ord": np.concatenate(ords)})
        latest = np.sort(entries.group_by("video_id").aggregate([("ord", "max")])
                         .column("ord_max").to_numpy())
        del entries, ids, ords
        for i, name in enumerate(names):
            lo, hi = np.searchsorted(latest, [i << 32, (i + 1) << 32])
            if lo == hi:
                continue
            with self.out.fs.open(name, "rb") as f:
                table = pq.read_table(f)
            rows = latest[lo:hi] - (i << 32)
            # usually every entry of a file is its video's latest: no copy then
            yield table if len(rows) == table.num_rows else table.take(pa.array(rows))

    def __iter__(self) -> Iterator[tuple[str, str, dict]]:
        for table in self.tables():
            for vid, status, payload in zip(*(table.column(c).to_pylist() for c in
                                              ("video_id", "status", "payload"))):
                yield vid, status, json.loads(payload)


def iter_journal(out: OutputDir, dir: str = Journal.DIR) -> JournalEntries:
    """(video, status, payload) of each video's latest entry (JournalEntries)."""
    return JournalEntries(out, dir)


def payload_fetched_bytes(payloads):
    """Each journal payload's `fetched_bytes` (null where it has none), found in the text
    without parsing it: the key is the last one `VideoResult.payload` writes, and a JSON
    string cannot hold `fetched_bytes":` (its quotes are escaped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.extract_regex(payloads, r'"fetched_bytes":(?P<n>\d+)\}$')
    return pc.struct_field(found, "n").cast(pa.int64())


def journal_fetched_bytes(out: OutputDir, dir: str = Journal.DIR) -> int:
    """The sum of the latest entries' `fetched_bytes` (each carries its video's earlier runs)."""
    import pyarrow.compute as pc

    return sum(pc.sum(payload_fetched_bytes(t.column("payload"))).as_py() or 0
               for t in JournalEntries(out, dir).tables())


# the output tables: partitioned folders of Parquet parts (output/manifest.py), each sorted
# by columns that order its rows totally, so the files are the same whatever order videos
# finished in and however often the job was resumed
MANIFEST, FAILURES, DOWNLOADS = "manifest", "failures", "downloads"
TABLE_ORDER = {MANIFEST: ["key"],
               FAILURES: ["video_id", "clip_id", "stage", "reason", "key", "code", "permanent"],
               DOWNLOADS: ["video_id", "key", "download_bytes", "node"]}

PARSE_BYTES = 16 * 1024**2  # payload text parsed at once
FLUSH_ROWS = 256  # the hours total is summed in groups of this many rows, as it always was
_DECODER = json.JSONDecoder()


@dataclass
class _Entries:
    """The output rows of a batch of journal entries."""

    manifest: pa.Table
    failures: pa.Table
    downloads: pa.Table
    rows_per_video: list[int]
    fetched_bytes: int


def _from_dicts(entries: list[tuple[str, dict]]) -> _Entries:
    """The rows of parsed payloads (any journal iterable, and payloads Arrow rejects)."""
    import pyarrow as pa

    from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA

    downloads = [{"video_id": vid, "key": k, "download_bytes": b, "node": p.get("node")}
                 for vid, p in entries for k, b in p["downloads"].items()]
    return _Entries(pa.Table.from_pylist([r for _, p in entries for r in p["rows"]], schema=MANIFEST_SCHEMA),
                    pa.Table.from_pylist([f for _, p in entries for f in p["failures"]], schema=FAILURE_SCHEMA),
                    pa.Table.from_pylist(downloads, schema=_arrow_schemas()["DOWNLOAD_SCHEMA"]),
                    [len(p["rows"]) for _, p in entries],
                    sum(p.get("fetched_bytes", 0) for _, p in entries))


def _downloads(payload: str) -> dict:
    """A payload's `downloads` object alone. The first `"downloads":` in the text is its
    key: a string's own quotes are escaped, so only a key can end that way, and the rows
    and failures before it have no such key."""
    at = payload.find('"downloads":')
    return {} if at < 0 else _DECODER.raw_decode(payload, at + len('"downloads":'))[0]


def _from_json(vids: list[str], payloads: list[str]) -> _Entries:
    """The rows of payloads parsed in bulk by Arrow (columns straight from the JSON, no
    Python row per sample); what Arrow rejects (e.g. a NaN) goes through `json`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pajson

    from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA

    try:
        # one thread, 4 MiB blocks: the least CPU per byte (threads only add overhead here)
        parsed = pajson.read_json(
            io.BytesIO("\n".join(payloads).encode()),
            read_options=pajson.ReadOptions(use_threads=False,
                                            block_size=max(4 * 1024**2, 4 * max(map(len, payloads)) + 1)),
            parse_options=pajson.ParseOptions(explicit_schema=_arrow_schemas()["PAYLOAD_SCHEMA"],
                                              unexpected_field_behavior="ignore"))
    except pa.ArrowInvalid:
        return _from_dicts([(vid, json.loads(p)) for vid, p in zip(vids, payloads)])
    rows = parsed.column("rows")
    table = {}
    for name, lists, schema in (("m", rows, MANIFEST_SCHEMA), ("f", parsed.column("failures"), FAILURE_SCHEMA)):
        table[name] = pa.concat_tables([schema.empty_table()] + [
            pa.Table.from_struct_array(pc.list_flatten(chunk)).cast(schema) for chunk in lists.chunks])
    dl: dict[str, list] = {"video_id": [], "key": [], "download_bytes": [], "node": []}
    for vid, payload, node in zip(vids, payloads, parsed.column("node").to_pylist()):
        for k, b in _downloads(payload).items():
            dl["video_id"].append(vid)
            dl["key"].append(k)
            dl["download_bytes"].append(b)
            dl["node"].append(node)
    return _Entries(table["m"], table["f"], pa.table(dl, schema=_arrow_schemas()["DOWNLOAD_SCHEMA"]),
                    pc.list_value_length(rows).fill_null(0).to_pylist(),
                    pc.sum(parsed.column("fetched_bytes")).as_py() or 0)


def _entry_batches(journal: Iterable[tuple[str, str, dict]]) -> Iterator[_Entries]:
    """The journal's rows in batches: payload text parsed in bulk when the journal is
    read from its files, else the entries' dicts a few hundred rows at a time."""
    if isinstance(journal, JournalEntries):
        vids: list[str] = []
        payloads: list[str] = []
        size = 0
        for table in journal.tables():
            vids += table.column("video_id").to_pylist()
            more = table.column("payload").to_pylist()
            payloads += more
            size += sum(map(len, more))
            if size >= PARSE_BYTES:
                yield _from_json(vids, payloads)
                vids, payloads, size = [], [], 0
        if payloads:
            yield _from_json(vids, payloads)
        return
    batch: list[tuple[str, dict]] = []
    rows = 0
    for vid, _status, payload in journal:
        batch.append((vid, payload))
        rows += len(payload["rows"])
        if rows >= FLUSH_ROWS:  # a few MB of Python rows at a time
            yield _from_dicts(batch)
            batch, rows = [], 0
    if batch:
        yield _from_dicts(batch)


def finalize(out: OutputDir, journal: Iterable[tuple[str, str, dict]],
             plan_failures: pa.Table | None, sort: SortConfig | None = None) -> dict:
    """Write manifest/, failures/ and downloads/ (partitioned, sorted); return counts.

    The journal is streamed (`iter_journal`, whose payloads Arrow parses in bulk) and
    every table goes through an external sort, so no process holds all rows: an
    8.5M-sample build fits a small head node."""
    import pyarrow.compute as pc

    from lfvila_data.output.manifest import SortConfig, SortGroup, write_parts
    from lfvila_data.schemas import FAILURE_SCHEMA, MANIFEST_SCHEMA

    tables = {MANIFEST: MANIFEST_SCHEMA, FAILURES: FAILURE_SCHEMA,
              DOWNLOADS: _arrow_schemas()["DOWNLOAD_SCHEMA"]}
    group = SortGroup(sort)  # one run_bytes budget for the three tables together
    sorters = {n: group.sort(schema, TABLE_ORDER[n]) for n, schema in tables.items()}
    stages: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    totals = {"duration": 0.0, "bytes": 0, "download_bytes": 0, "fetched_bytes": 0}

    def add_failures(ledger: pa.Table) -> None:
        stages.update(ledger.column("stage").to_pylist())
        codes.update(ledger.column("code").to_pylist())
        sorters[FAILURES].add(ledger)

    if plan_failures is not None and plan_failures.num_rows:
        add_failures(plan_failures)
    # durations are summed in groups closed at the first video that brings a group to
    # FLUSH_ROWS rows, as finalize always summed them, so hours_written stays the same float
    group: list[float] = []
    for entries in _entry_batches(journal):
        sorters[MANIFEST].add(entries.manifest)
        add_failures(entries.failures)
        sorters[DOWNLOADS].add(entries.downloads)
        totals["bytes"] += sum(int(b) for b in entries.manifest.column("bytes").to_pylist())
        totals["download_bytes"] += pc.sum(entries.downloads.column("download_bytes")).as_py() or 0
        totals["fetched_bytes"] += entries.fetched_bytes
        durations, at = entries.manifest.column("duration").to_pylist(), 0
        for n in entries.rows_per_video:
            group += durations[at:at + n]
            at += n
            if len(group) >= FLUSH_ROWS:
                totals["duration"] += sum(group)
                group = []
    totals["duration"] += sum(group)
    cfg = sort or SortConfig()
    counts = {n: write_parts(out, n, sorters[n].sorted_chunks(), tables[n], cfg.part_rows)
              for n in tables}
    return {"samples_written": counts[MANIFEST],
            "hours_written": round(totals["duration"] / 3600, 4),
            "video_bytes": int(totals["bytes"]),
            "failures": counts[FAILURES], "failures_by_stage": dict(sorted(stages.items())),
            "failures_by_code": dict(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "download_bytes": int(totals["download_bytes"]),
            # everything taken from the network, for samples that failed later too
            "fetched_bytes": int(totals["fetched_bytes"])}
