"""Partitioned output tables (`manifest/`, `failures/`, `downloads/`, the shard manifest)
written without one process holding all their rows.

A full LF-VILA build has 8.5M samples of up to 32 clips with text: tens of GB as Arrow,
far more than a head node. Rows arrive in any order (journal files, shards); an external
sort puts them in order with bounded memory: rows are buffered up to `run_bytes`, sorted
and spilled to a local run file (Arrow IPC), and the runs are merged a batch at a time
(a k-way merge bounded by the batch that ends first, sorted in Arrow) into `part-00000.parquet`, `part-00001.parquet`, ...
of `part_rows` rows each, sorted within and across parts. The parts depend only on the
rows, never on how they were split into runs, so reruns write identical bytes.

Readers: `pandas.read_parquet("out/manifest")`, `pyarrow.dataset.dataset("out/manifest")`,
or `parquet_files`/`read_table` here, which also read a single-file `manifest.parquet`
written by older versions."""
from __future__ import annotations

import bisect
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PART_GLOB = "part-"
LEGACY_SUFFIX = ".parquet"


@dataclass(frozen=True)
class SortConfig:
    """Memory bounds of the external sort. The defaults keep a driver well under 2 GiB
    with 4 KB manifest rows (docs/performance.md)."""

    run_bytes: int = 256 * 1024**2     # rows buffered before a sorted run is spilled
    merge_group_bytes: int = 1024**2   # what the merge reads ahead per run (one record batch)
    max_runs: int = 64                 # runs merged at once (more: merged in passes)
    chunk_rows: int = 4096             # rows per gather and per Parquet row group
    part_rows: int = 1_000_000         # rows per output part (a multiple of chunk_rows)


def parquet_files(fs, root: str, name: str) -> list[str]:
    """The Parquet files of table `name` under `root`: the parts of `name/`, or the single
    `name.parquet` of older outputs; [] when there is neither."""
    folder = f"{root.rstrip('/')}/{name}"
    if fs.isdir(folder):
        return sorted(p for p in fs.ls(folder, detail=False)
                      if p.rsplit("/", 1)[-1].startswith(PART_GLOB) and p.endswith(".parquet"))
    legacy = f"{folder}{LEGACY_SUFFIX}"
    return [legacy] if fs.exists(legacy) else []


def has_table(fs, root: str, name: str) -> bool:
    folder = f"{root.rstrip('/')}/{name}"
    return fs.isdir(folder) or fs.exists(f"{folder}{LEGACY_SUFFIX}")


def read_schema(fs, files: list[str]) -> pa.Schema:
    with fs.open(files[0], "rb") as f:
        return pq.read_schema(f)


def read_table(fs, root: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of a (partitioned or single-file) table, for readers that need them all."""
    tables = []
    for path in parquet_files(fs, root, name):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    if not tables:
        raise FileNotFoundError(f"{root}/{name}")
    return pa.concat_tables(tables)


def iter_batches(fs, files: list[str], columns: list[str] | None = None,
                 batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """The rows of the files in order, a batch at a time."""
    for path in files:
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


# ---------------------------------------------------------------------------------------
# the external sort


class _NullLast:
    """Python's stand-in for a null sort value: after every value, as Arrow sorts nulls."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NullLast)

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return not isinstance(other, _NullLast)

    def __le__(self, other: object) -> bool:
        return isinstance(other, _NullLast)

    def __ge__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


NULL_LAST = _NullLast()


def _sort_keys(table: pa.Table, sort_by: list[str]) -> list:
    """Python sort keys of a sorted batch's rows, ordered as Arrow's sort_by orders them
    (nulls last in each column): plain values for one column, tuples for several. Only
    the merge's binary searches compare them, a few per batch."""
    cols = []
    for c in sort_by:
        col = table.column(c)
        values = col.to_pylist()
        cols.append([NULL_LAST if v is None else v for v in values] if col.null_count else values)
    return cols[0] if len(cols) == 1 else list(zip(*cols))


class _Run:
    """One sorted spill file (Arrow IPC, lz4), read a record batch at a time for the merge."""

    def __init__(self, path: str, sort_by: list[str]):
        self.sort_by = sort_by
        self._reader = pa.ipc.open_file(pa.OSFile(path))
        self._next = 0
        self.table = pa.table({})
        self.keys: list = []
        self.pos = 0

    def load(self) -> bool:
        """The run's next batch as the current one (with its sort keys); False at its end."""
        while self._next < self._reader.num_record_batches:
            batch = self._reader.get_batch(self._next)
            self._next += 1
            if batch.num_rows:
                self.table = pa.Table.from_batches([batch])
                self.keys, self.pos = _sort_keys(self.table, self.sort_by), 0
                return True
        self._reader = None
        return False


class SortGroup:
    """Sorts filled side by side (finalize's manifest, failures and downloads) that share
    one `run_bytes` budget: when their buffers together reach it, the largest spills.
    Alone, each would buffer up to `run_bytes`, and a small table (downloads: ~60 bytes
    a sample) would stay in memory until the end of the build, so the driver's peak
    grew with the build (1,023 MiB at 1M samples, 1,327 MiB at 4M) instead of staying
    that of one spill."""

    def __init__(self, cfg: SortConfig | None = None):
        self.cfg = cfg or SortConfig()
        self.sorts: list[ExternalSort] = []
        self.peak = 0  # the most bytes the group's buffers held at once

    def sort(self, schema: pa.Schema, sort_by: list[str]) -> ExternalSort:
        return ExternalSort(schema, sort_by, self.cfg, group=self)

    def added(self) -> None:
        buffered = sum(s._buffered for s in self.sorts)
        self.peak = max(self.peak, buffered)
        if buffered >= self.cfg.run_bytes:
            max(self.sorts, key=lambda s: s._buffered)._spill()


class ExternalSort:
    """Rows added in any order, read back sorted by `sort_by` (which must order rows
    totally for byte-identical output) with memory bounded by `SortConfig`."""

    def __init__(self, schema: pa.Schema, sort_by: list[str], cfg: SortConfig | None = None,
                 group: SortGroup | None = None):
        self.schema, self.sort_by, self.cfg = schema, sort_by, cfg or SortConfig()
        self._tmp = tempfile.TemporaryDirectory(prefix="lfvila-sort-")
        self._runs: list[str] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0
        self._group = group
        if group is not None:
            group.sorts.append(self)

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._buffer.append(table.select(self.schema.names).cast(self.schema))
        self._buffered += table.nbytes
        self.rows += table.num_rows
        if self._group is not None:
            self._group.added()
        elif self._buffered >= self.cfg.run_bytes:
            self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        self._write_run([table.sort_by([(c, "ascending") for c in self.sort_by])])

    def _write_run(self, chunks: Iterable[pa.Table]) -> None:
        """A sorted run on local disk: an Arrow IPC file (lz4) of record batches of
        ~merge_group_bytes, which the merge reads one at a time. IPC, not Parquet: runs are
        read once, and IPC costs a fraction of Parquet's encoding and decoding."""
        path = f"{self._tmp.name}/run-{uuid.uuid4().hex}.arrow"
        writer, group = None, 16
        for chunk in chunks:
            if writer is None:
                group = max(16, int(self.cfg.merge_group_bytes * chunk.num_rows / max(1, chunk.nbytes)))
                writer = pa.ipc.new_file(path, self.schema,
                                         options=pa.ipc.IpcWriteOptions(compression="lz4"))
            for batch in chunk.to_batches(max_chunksize=group):
                writer.write_batch(batch)
        if writer is not None:
            writer.close()
            self._runs.append(path)

    def _merge(self, runs: list[str]) -> Iterator[pa.Table]:
        """The rows of sorted runs in order, `chunk_rows` at a time, merged a batch at a
        time: the run whose current batch ends first (ties: the earlier run) bounds what
        is safe to emit; every run's rows up to that bound (found by binary search) are
        gathered and sorted stably, so ties keep run order, as a row-by-row merge would."""
        readers = [r for r in (_Run(p, self.sort_by) for p in runs) if r.load()]
        order = [(c, "ascending") for c in self.sort_by]
        pending: list[pa.Table] = []
        held = 0
        while readers:
            b = min(range(len(readers)), key=lambda i: (readers[i].keys[-1], i))
            bound = readers[b].keys[-1]
            pieces = []
            for i, run in enumerate(readers):
                if i == b:
                    hi = len(run.keys)
                else:  # earlier runs' rows equal to the bound go first, later runs' after it
                    hi = (bisect.bisect_right if i < b else bisect.bisect_left)(run.keys, bound, run.pos)
                if hi > run.pos:
                    pieces.append(run.table.slice(run.pos, hi - run.pos))
                    run.pos = hi
            merged = pa.concat_tables(pieces)
            if len(pieces) > 1:
                merged = merged.take(pc.sort_indices(merged, sort_keys=order))
            pending.append(merged)
            held += merged.num_rows
            readers = [r for r in readers if r.pos < len(r.keys) or r.load()]
            while held >= self.cfg.chunk_rows or (held and not readers):
                table = pa.concat_tables(pending)
                n = min(held, self.cfg.chunk_rows)
                yield table.slice(0, n).combine_chunks()
                pending, held = [table.slice(n)], held - n
        for p in runs:
            os.unlink(p)

    def sorted_chunks(self) -> Iterator[pa.Table]:
        """All rows in order, `chunk_rows` at a time; consumes the sorter. More runs than
        `max_runs` are first merged in groups into longer runs, so the read-ahead of the
        final merge stays max_runs batches however big the table."""
        self._spill()
        try:
            while len(self._runs) > self.cfg.max_runs:
                group, self._runs = self._runs[:self.cfg.max_runs], self._runs[self.cfg.max_runs:]
                self._write_run(self._merge(group))
            if self._runs:
                yield from self._merge(self._runs)
        finally:
            self._tmp.cleanup()


# ---------------------------------------------------------------------------------------
# writing parts


def _listing(fs, folder: str) -> list[str]:
    fs.invalidate_cache(folder)  # object stores cache listings; parts were just written
    try:
        return fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []


def put_local(out, local: Path, rel: str) -> None:
    """Move a finished local part into place: a rename on local outputs (the temporary name
    starts with a dot, which readers of the folder skip), one upload to object stores."""
    if out.is_local:
        dst = out.local_path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local, dst)
        except OSError as e:  # another file system: copy next to it first, then rename
            if e.errno != errno.EXDEV:
                raise
            tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dst)
            local.unlink()
    else:
        out.fs.put_file(str(local), out.path(rel))
        local.unlink(missing_ok=True)


def write_parts(out, name: str, chunks: Iterable[pa.Table], schema: pa.Schema,
                part_rows: int) -> int:
    """Write sorted chunks as `name/part-NNNNN.parquet` of `part_rows` rows each (at least
    one part, so an empty table still has a schema); remove parts of an earlier, longer
    run and an older single `name.parquet`. Returns the row count."""
    folder = out.path(name)
    out.fs.makedirs(folder, exist_ok=True)
    for stale in _listing(out.fs, folder):
        if stale.rsplit("/", 1)[-1].startswith("."):
            out.fs.rm(stale)
    tmp_dir = Path(folder) if out.is_local else Path(tempfile.mkdtemp(prefix="lfvila-part-"))
    rows, part, in_part, writer, local = 0, 0, 0, None, None

    def close() -> None:
        nonlocal writer, part, in_part
        writer.close()
        put_local(out, local, f"{name}/part-{part:05d}.parquet")
        writer, part, in_part = None, part + 1, 0

    for chunk in chunks:
        while chunk.num_rows:
            if writer is None:
                local = tmp_dir / f".part-{part:05d}.{uuid.uuid4().hex[:8]}.tmp"
                writer = pq.ParquetWriter(str(local), schema, compression="zstd")
            piece = chunk.slice(0, part_rows - in_part)
            writer.write_table(piece, row_group_size=max(1, piece.num_rows))
            chunk = chunk.slice(piece.num_rows)
            rows, in_part = rows + piece.num_rows, in_part + piece.num_rows
            if in_part == part_rows:
                close()
    if writer is not None:
        close()
    if part == 0:
        local = tmp_dir / f".part-00000.{uuid.uuid4().hex[:8]}.tmp"
        pq.write_table(schema.empty_table(), str(local), compression="zstd")
        put_local(out, local, f"{name}/part-00000.parquet")
        part = 1
    for path in _listing(out.fs, folder):
        base = path.rsplit("/", 1)[-1]
        if base.startswith(PART_GLOB) and base.endswith(".parquet") and int(base[5:10]) >= part:
            out.fs.rm(path)
    if out.exists(f"{name}{LEGACY_SUFFIX}"):
        out.fs.rm(out.path(f"{name}{LEGACY_SUFFIX}"))
    if not out.is_local:
        os.rmdir(tmp_dir)
    return rows


def write_sorted(out, name: str, tables: Iterable[pa.Table], schema: pa.Schema,
                 sort_by: list[str], cfg: SortConfig | None = None) -> int:
    """Sort the rows of `tables` with bounded memory and write them as `name/part-*`."""
    cfg = cfg or SortConfig()
    sorter = ExternalSort(schema, sort_by, cfg)
    for t in tables:
        sorter.add(t)
    return write_parts(out, name, sorter.sorted_chunks(), schema, cfg.part_rows)
