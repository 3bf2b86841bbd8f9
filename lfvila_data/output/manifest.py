"""Partitioned output tables (`manifest/`, `failures/`, `downloads/`, the shard manifest)
written without one process holding all their rows.

A full LF-VILA build has 8.5M samples of up to 32 clips with text: tens of GB as Arrow,
far more than a head node. Rows arrive in any order (journal files, shards); an external
sort puts them in order with bounded memory: rows are buffered up to `run_bytes`, sorted
and spilled to a local run file, and the runs are merged (a k-way merge on the sort
columns, rows gathered in chunks) into `part-00000.parquet`, `part-00001.parquet`, ...
of `part_rows` rows each, sorted within and across parts. The parts depend only on the
rows, never on how they were split into runs, so reruns write identical bytes.

Readers: `pandas.read_parquet("out/manifest")`, `pyarrow.dataset.dataset("out/manifest")`,
or `parquet_files`/`read_table` here, which also read a single-file `manifest.parquet`
written by older versions."""
from __future__ import annotations

import errno
import heapq
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PART_GLOB = "part-"
LEGACY_SUFFIX = ".parquet"


@dataclass(frozen=True)
class SortConfig:
    """Memory bounds of the external sort. The defaults keep a driver well under 2 GiB
    with 4 KB manifest rows (docs/performance.md)."""

    run_bytes: int = 256 * 1024**2     # rows buffered before a sorted run is spilled
    merge_group_bytes: int = 1024**2   # what the merge reads ahead per run (one row group)
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


def _sort_key(columns: list[list]) -> list[tuple]:
    """Python sort keys of rows, nulls last in each column as Arrow's sort_by puts them."""
    return [tuple((1, "") if v is None else (0, v) for v in row) for row in zip(*columns)]


class _Run:
    """One sorted spill file, read ahead a batch at a time for the merge."""

    def __init__(self, path: str, sort_by: list[str], batch_rows: int):
        self.path, self.sort_by, self.batch_rows = path, sort_by, batch_rows
        # pre_buffer=False: Arrow's default pre-buffering caches every range it has read
        # until the reader closes, which kept ~30 % of each run (its compressed bytes) for
        # the whole merge: 2.5 GiB at 1M samples
        self._rows = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows)
        self._buffer: pa.Table | None = None

    def sort_keys(self) -> Iterator[tuple]:
        for batch in pq.ParquetFile(self.path, pre_buffer=False).iter_batches(
                batch_size=self.batch_rows, columns=self.sort_by):
            yield from _sort_key([batch.column(c).to_pylist() for c in self.sort_by])

    def take(self, n: int) -> pa.Table:
        """The next n rows of the run."""
        parts = []
        while n:
            if self._buffer is None or not self._buffer.num_rows:
                self._buffer = pa.Table.from_batches([next(self._rows)])
            piece = self._buffer.slice(0, n)
            self._buffer = self._buffer.slice(piece.num_rows)
            parts.append(piece)
            n -= piece.num_rows
        return pa.concat_tables(parts)


class ExternalSort:
    """Rows added in any order, read back sorted by `sort_by` (which must order rows
    totally for byte-identical output) with memory bounded by `SortConfig`."""

    def __init__(self, schema: pa.Schema, sort_by: list[str], cfg: SortConfig | None = None):
        self.schema, self.sort_by, self.cfg = schema, sort_by, cfg or SortConfig()
        self._tmp = tempfile.TemporaryDirectory(prefix="lfvila-sort-")
        self._runs: list[tuple[str, int]] = []  # (file, rows per row group)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._buffer.append(table.select(self.schema.names).cast(self.schema))
        self._buffered += table.nbytes
        self.rows += table.num_rows
        if self._buffered >= self.cfg.run_bytes:
            self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        self._write_run([table.sort_by([(c, "ascending") for c in self.sort_by])])

    def _write_run(self, chunks: Iterable[pa.Table]) -> None:
        """A sorted run on local disk, in row groups of ~merge_group_bytes: the merge
        reads each run one row group at a time."""
        path = f"{self._tmp.name}/run-{uuid.uuid4().hex}.parquet"
        writer, group = None, 16
        for chunk in chunks:
            if writer is None:
                group = max(16, int(self.cfg.merge_group_bytes * chunk.num_rows / max(1, chunk.nbytes)))
                writer = pq.ParquetWriter(path, self.schema, compression="lz4")
            writer.write_table(chunk, row_group_size=group)
        if writer is not None:
            writer.close()
            self._runs.append((path, group))

    def _merge(self, runs: list[tuple[str, int]]) -> Iterator[pa.Table]:
        """The rows of sorted runs in order, `chunk_rows` at a time."""
        readers = [_Run(p, self.sort_by, group) for p, group in runs]
        merged = heapq.merge(*(_tagged(run.sort_keys(), i) for i, run in enumerate(readers)))
        order: list[int] = []
        for _key, i in merged:
            order.append(i)
            if len(order) == self.cfg.chunk_rows:
                yield _gather(readers, order)
                order = []
        if order:
            yield _gather(readers, order)
        for p, _ in runs:
            os.unlink(p)

    def sorted_chunks(self) -> Iterator[pa.Table]:
        """All rows in order, `chunk_rows` at a time; consumes the sorter. More runs than
        `max_runs` are first merged in groups into longer runs, so the read-ahead of the
        final merge stays max_runs row groups however big the table."""
        self._spill()
        try:
            while len(self._runs) > self.cfg.max_runs:
                group, self._runs = self._runs[:self.cfg.max_runs], self._runs[self.cfg.max_runs:]
                self._write_run(self._merge(group))
            if self._runs:
                yield from self._merge(self._runs)
        finally:
            self._tmp.cleanup()


def _tagged(keys: Iterator[tuple], run: int) -> Iterator[tuple[tuple, int]]:
    for key in keys:
        yield key, run


def _gather(runs: list[_Run], order: list[int]) -> pa.Table:
    """The rows the merge picked, in its order: each run's next rows, then interleaved."""
    which = np.asarray(order)
    counts = np.bincount(which, minlength=len(runs))
    pieces = [runs[i].take(int(c)) for i, c in enumerate(counts) if c]
    grouped = np.argsort(which, kind="stable")  # position in the concatenation -> output row
    inverse = np.empty_like(grouped)
    inverse[grouped] = np.arange(len(grouped))
    return pa.concat_tables(pieces).take(pa.array(inverse))


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
