"""Planning long-form samples before any download: join clip text to clip spans and cut
each video into runs of consecutive, nearly gap-free clips that all have text.

The join is a hash-partitioned shuffle, run by the executor it is handed (map tasks parse
byte ranges of the metadata and text files into `num_buckets` Arrow tables; reduce task i
joins bucket i and writes `plan/part-i` and `plan/failures-i`), so on a cluster no
process ever holds all clips or all texts. The per-video rule, `group_runs`, is pure."""
from __future__ import annotations

import json
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lfvila_data.executor.base import Shuffle
from lfvila_data.inputs import InputError, expand_paths, iter_line_ranges, read_lines_in_range, read_range, require
from lfvila_data.output.fingerprint import LAYOUT, content, fingerprint
from lfvila_data.plan.columnar import chunk_runs, in_order, normalized_word_counts, sample_keys, segment_sums
from lfvila_data.progress import ThrottledPrinter, to_stderr
from lfvila_data.records import (
    Clip,
    Failure,
    FailureCode,
    PlannedSample,
    Stage,
    VideoMeta,
    sample_key,
    words_of,
)
from lfvila_data.schemas import FAILURE_SCHEMA, PLAN_SCHEMA, sample_to_row
from lfvila_data.sources.hdvila_bulk import (
    parse_text_block,
    parse_text_lines,
    parse_video_block,
    parse_video_lines,
)

_VIDEO_SCHEMA = pa.schema([("video_id", pa.string()), ("url", pa.string()),
                           ("file_idx", pa.int32()), ("offset", pa.int64())])
_CLIP_SCHEMA = pa.schema([("video_id", pa.string()), ("file_idx", pa.int32()),
                          ("offset", pa.int64()), ("clip_id", pa.string()), ("k", pa.int32()),
                          ("start", pa.float64()), ("end", pa.float64())])
_TEXT_SCHEMA = pa.schema([("clip_id", pa.string()), ("text", pa.string()),
                          ("file_idx", pa.int32()), ("offset", pa.int64())])
_SUCCESS = "_SUCCESS.json"


@dataclass(frozen=True)
class PlanConfig:
    """How clips become samples, and how the planning shuffle is cut up.

    max_gap=3.0 s: HD-VILA clips are cut at ASR sentence boundaries, so consecutive
    sentences of one speaker are separated by pauses well under a second or two; a gap
    above ~3 s usually means a dropped segment, music or a scene change, and a 4-clip
    training window (~54 s) spanning it would pair text with unrelated footage.
    max_clips=32: about 7 minutes at the 13.4 s average clip, which bounds one sample's
    file size and fetch time while still leaving 29 start positions for a 4-clip window.
    num_buckets=None picks one bucket per 256 MiB of input (at least 1), which keeps a
    reduce task's share of clips and texts to a few hundred MB of memory.
    max_text_bytes=64 KiB: HD-VILA's clip texts are one ASR sentence (~30 words, ~200
    bytes); a text hundreds of times longer is not a caption of 13 s of video but junk or
    an attack, and max_clips such texts must still fit a shard member `verify` accepts."""

    min_clips: int = 4
    max_clips: int = 32
    max_gap: float = 3.0
    allow_local_files: bool = False
    num_buckets: int | None = field(default=None, metadata=LAYOUT)
    chunk_bytes: int = field(default=64 * 1024 * 1024, metadata=LAYOUT)
    max_text_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        require(1 <= self.min_clips <= self.max_clips,
                f"need 1 <= min_clips <= max_clips, got {self.min_clips}, {self.max_clips}")
        require(self.max_gap >= 0, f"max_gap must be >= 0 seconds, got {self.max_gap}")
        require(self.num_buckets is None or self.num_buckets >= 1,
                f"num_buckets must be >= 1, got {self.num_buckets}")
        require(self.chunk_bytes >= 1, f"chunk_bytes must be >= 1, got {self.chunk_bytes}")
        require(self.max_text_bytes >= 1, f"--max-text-bytes must be >= 1, got {self.max_text_bytes}")


@dataclass(frozen=True)
class PlanSummary:
    """Counts of one planning run, written to `plan/_SUCCESS.json`."""

    videos: int = 0
    videos_with_samples: int = 0
    clips_total: int = 0
    clips_in_samples: int = 0
    samples: int = 0
    hours: float = 0.0
    dropped_short_runs: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    texts_unique: int = 0
    texts_duplicate: int = 0
    texts_unused: int = 0
    # words_in_samples + the words of `dropped` = words_parsed (see DROP_REASONS)
    words_parsed: int = 0
    words_in_samples: int = 0
    dropped: dict[str, dict[str, float]] = field(default_factory=dict)
    # --groups: group lines read, planned as samples, and rejected by ledger code
    groups_read: int = 0
    groups_planned: int = 0
    groups_rejected: dict[str, int] = field(default_factory=dict)


# Why planning leaves words out of every sample; the keys of PlanSummary.dropped.
DROP_REASONS = {
    "short_run": "a run of consecutive clips shorter than min_clips (music, long pauses)",
    "short_tail_chunk": "the last max_clips chunk of a long run, shorter than min_clips",
    "no_text": "a clip without text (it breaks its run)",
    "outside_clips": "transcribed words outside every planned clip (hdvila --asr always: margins, gaps)",
    "past_video_end": "subtitle words after the end of the video",
    "wrong_language": "a subtitle file or transcript in another language than asked",
    "rejected_group": "--groups: a clip only in groups the ledger rejects",
    "not_in_groups": "--groups: a clip in no group",
    "unaligned_text": "a cue without word timings (or one timed word) longer than max_clip_seconds",
    "short_clip": "a clip shorter than 3 output frames with no neighbour to join within the limits",
    "text_too_long": "a clip text longer than max_text_bytes (it breaks its run)",
}
_DROP_UNITS = ("runs", "clips", "words", "seconds")


def count_drop(stats: Counter | None, reason: str, *, runs: int = 0, clips: int = 0, words: int = 0,
               seconds: float = 0.0) -> None:
    """Add what planning dropped for `reason` to `stats` (summed over videos and buckets)."""
    if stats is None:
        return
    for unit, n in zip(_DROP_UNITS, (runs, clips, words, seconds)):
        stats[f"dropped_{unit}:{reason}"] += n


def dropped_by_reason(counts: Counter) -> dict[str, dict[str, float]]:
    """`count_drop`'s flat counters as {reason: {runs, clips, words, hours}}, reasons sorted."""
    reasons = sorted({k.split(":", 1)[1] for k in counts if k.startswith("dropped_") and ":" in k})
    out = {}
    for r in reasons:
        got = {u: counts[f"dropped_{u}:{r}"] for u in _DROP_UNITS}
        out[r] = {"runs": got["runs"], "clips": got["clips"], "words": got["words"],
                  "hours": round(got["seconds"] / 3600, 6)}
    return out


def word_account_rows(plan: dict) -> list[tuple[str, str]]:
    """Where the parsed words went (a PlanSummary as a dict, e.g. build.json's "plan"), as
    rows for `--plan-only` and `stats`: in samples plus dropped by reason is words parsed.
    No rows for plans made before words were counted."""
    parsed = plan.get("words_parsed", 0)
    if not parsed and not plan.get("dropped"):
        return []
    kept = plan.get("words_in_samples", 0)
    rows = [("words parsed", f"{parsed:,}"),
            ("words in samples", f"{kept:,} ({100 * kept / max(parsed, 1):.1f} %)")]
    for reason, d in plan.get("dropped", {}).items():
        share = 100 * d["words"] / max(parsed, 1)
        rows.append((f"dropped: {reason}", f"{d['words']:,} words ({share:.1f} %), "
                                           f"{d['clips']:,} clips, {d['runs']:,} runs, {d['hours']:,.3f} h"))
    return rows


# ---------------------------------------------------------------------------------------
# the per-video rule


def group_runs(video: VideoMeta, texts: dict[str, str], cfg: PlanConfig,
               stats: Counter | None = None) -> tuple[list[PlannedSample], list[Failure]]:
    """Cut one video into samples of consecutive clips (k, k+1, ...), each gap at most
    max_gap and each clip with text; short runs are dropped and counted in `stats`."""
    samples: list[PlannedSample] = []
    failures: list[Failure] = []
    run: list[Clip] = []

    def close() -> None:
        for i in range(0, len(run), cfg.max_clips):
            chunk = run[i:i + cfg.max_clips]
            if len(chunk) < cfg.min_clips:
                if stats is not None:
                    stats["dropped_short_runs"] += 1
                count_drop(stats, "short_run" if i == 0 else "short_tail_chunk", runs=1, clips=len(chunk),
                           words=sum(words_of(c.text) for c in chunk),
                           seconds=sum(c.end - c.start for c in chunk))
                continue
            if stats is not None:
                stats["words_in_samples"] += sum(words_of(c.text) for c in chunk)
            samples.append(PlannedSample(
                key=sample_key(video.video_id, chunk[0].k, chunk[-1].k), video_id=video.video_id,
                url=video.url, start=chunk[0].start, end=chunk[-1].end, clips=tuple(chunk)))
        run.clear()

    for clip in sorted(video.clips, key=lambda c: c.k):
        text = texts.get(clip.clip_id)
        if not text or not text.strip():
            failures.append(Failure(video.video_id, clip.clip_id, Stage.TEXT.value, FailureCode.NO_TEXT,
                                    "no text for clip"))
            count_drop(stats, "no_text", clips=1, seconds=clip.end - clip.start)
            close()
            continue
        if (size := len(text.encode())) > cfg.max_text_bytes:
            failures.append(Failure(video.video_id, clip.clip_id, Stage.TEXT.value, FailureCode.TEXT_TOO_LONG,
                                    f"clip text of {size} bytes is longer than --max-text-bytes "
                                    f"{cfg.max_text_bytes}"))
            count_drop(stats, "text_too_long", clips=1, words=words_of(text), seconds=clip.end - clip.start)
            close()
            continue
        if run and (clip.k != run[-1].k + 1 or clip.start - run[-1].end > cfg.max_gap):
            close()
        run.append(replace(clip, text=text))
    close()
    return samples, failures


# ---------------------------------------------------------------------------------------
# map side: parse one byte range, split rows into buckets


def bucket_of(video_id: str, num_buckets: int) -> int:
    """Stable across processes and runs (unlike hash()), so a video's clips, its texts
    and its failures always meet in the same reduce task."""
    return zlib.crc32(video_id.encode()) % num_buckets


def _split(table: pa.Table, buckets: list[int] | np.ndarray, num_buckets: int) -> list[pa.Table]:
    ids = np.asarray(buckets, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=num_buckets))])
    ordered = _take(table, order) if len(order) else table
    return [ordered.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(num_buckets)]


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """`table.take(rows)`; string-view columns, for which Arrow has no take, by their 16-byte
    views (the bytes they point to are not copied)."""
    if not any(pa.types.is_string_view(t) for t in table.schema.types):
        return table.take(pa.array(rows))
    columns = []
    for column in table.columns:
        column = column.combine_chunks()
        if pa.types.is_string_view(column.type) and not column.null_count:
            buffers = column.buffers()
            views = np.frombuffer(buffers[1], np.uint8).reshape(-1, 16)[column.offset:column.offset + len(column)]
            column = pa.Array.from_buffers(column.type, len(rows), [None, pa.py_buffer(views[rows]), *buffers[2:]])
        elif pa.types.is_string_view(column.type):
            column = column.cast(pa.string()).take(pa.array(rows)).cast(column.type)
        else:
            column = column.take(pa.array(rows))
        columns.append(column)
    return pa.table(columns, schema=table.schema)


def _failure_table(failures: list[Failure]) -> pa.Table:
    """`Failure.to_row` of each, column by column (no `asdict` per row)."""
    return pa.table({
        "video_id": [f.video_id for f in failures], "clip_id": [f.clip_id for f in failures],
        "key": [f.key for f in failures], "stage": [f.stage for f in failures],
        "code": [f.code.value for f in failures], "reason": [f.reason for f in failures],
        "permanent": [f.permanent for f in failures]}, schema=FAILURE_SCHEMA)


def _coded_rows(video_ids: pa.Array, clip_ids: pa.Array | None, stage: Stage, code: FailureCode,
                reasons: pa.Array | str) -> pa.Table:
    """Ledger rows of one stage and code as columns (what `_failure_table` would give for
    the same `Failure`s; the reasons hold no URL, so `redact` leaves them as they are)."""
    n = len(video_ids)
    return pa.table({
        "video_id": video_ids, "clip_id": pa.nulls(n, pa.string()) if clip_ids is None else clip_ids,
        "key": pa.nulls(n, pa.string()), "stage": pa.array([stage.value] * n, pa.string()),
        "code": pa.array([code.value] * n, pa.string()),
        "reason": pa.array([reasons] * n, pa.string()) if isinstance(reasons, str) else reasons,
        "permanent": pa.array(np.ones(n, bool))}, schema=FAILURE_SCHEMA)


def _sorted_ledger(tables: list[pa.Table]) -> pa.Table:
    """The ledger rows sorted as the per-object path sorts `Failure`s: by (stage, video_id
    or "", clip_id or "", reason), stably, so equal keys keep their order."""
    table = pa.concat_tables(tables) if tables else FAILURE_SCHEMA.empty_table()
    if table.num_rows < 2:
        return table
    keys = pa.table({n: pc.fill_null(table.column(n), "") for n in ("stage", "video_id", "clip_id", "reason")})
    return table.take(pc.sort_indices(keys, [(n, "ascending") for n in keys.column_names]))


def _split_failures(failures: list[Failure], num_buckets: int, fallback: int) -> list[pa.Table]:
    buckets = [bucket_of(f.video_id, num_buckets) if f.video_id else fallback % num_buckets
               for f in failures]
    return _split(_failure_table(failures), buckets, num_buckets)


def _nonblank_lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    return ((o, ln) for o, ln in read_lines_in_range(path, start, end) if ln.strip())


def _crc32_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC32 = _crc32_table()


def crc32_each(values: pa.Array) -> np.ndarray:
    """zlib.crc32 of each string's UTF-8 bytes, one byte position at a time over all of
    them (ids are short), so hashing a block's ids costs no Python loop."""
    values = values.cast(pa.large_string())
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], np.int64, n + 1, values.offset)
    data = np.frombuffer(values.buffers()[2], np.uint8) if n and values.buffers()[2] else np.zeros(0, np.uint8)
    lengths = offsets[1:] - offsets[:-1]
    crc = np.full(n, 0xFFFFFFFF, np.uint32)
    for pos in range(int(lengths.max()) if n else 0):
        live = np.flatnonzero(lengths > pos)
        byte = data[offsets[live] + pos]
        crc[live] = _CRC32[(crc[live] ^ byte) & 0xFF] ^ (crc[live] >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def buckets_of(video_ids: pa.Array | pa.ChunkedArray, num_buckets: int) -> np.ndarray:
    """`bucket_of` for each id, hashing each distinct id once."""
    if isinstance(video_ids, pa.ChunkedArray):
        video_ids = video_ids.combine_chunks()
    codes = pc.dictionary_encode(video_ids)
    per_id = crc32_each(codes.dictionary).astype(np.int64) % num_buckets
    return per_id[codes.indices.to_numpy(zero_copy_only=False)]


def map_metadata_range(file_idx: int, path: str, start: int, end: int, num_buckets: int,
                       allow_local_files: bool, task_no: int, per_line: bool = False) -> tuple[list[dict], dict]:
    """Parse the video lines of one byte range into per-bucket video/clip/failure tables
    (in Arrow blocks, or line by line with `per_line`: the same tables, ~10x slower)."""
    if per_line:
        block = parse_video_lines(_nonblank_lines(path, start, end), allow_local_files=allow_local_files)
    else:
        pos, data = read_range(path, start, end)
        block = parse_video_block(data, pos, allow_local_files=allow_local_files)
        del data  # before the split copies the tables
    videos = block.videos.add_column(2, "file_idx", pa.array(np.full(block.videos.num_rows, file_idx, np.int32)))
    clips = block.clips.add_column(1, "file_idx", pa.array(np.full(block.clips.num_rows, file_idx, np.int32)))
    v_parts = _split(videos, buckets_of(videos.column("video_id"), num_buckets), num_buckets)
    c_parts = _split(clips, buckets_of(clips.column("video_id"), num_buckets), num_buckets)
    f_parts = _split_failures(block.failures, num_buckets, task_no)
    parts = [{"videos": v, "clips": c, "failures": f} for v, c, f in zip(v_parts, c_parts, f_parts)]
    return parts, {"lines": block.lines, "clips": clips.num_rows, "failures": len(block.failures)}


def map_text_range(file_idx: int, path: str, start: int, end: int, num_buckets: int,
                   task_no: int, per_line: bool = False) -> tuple[list[dict], dict]:
    """Parse the clip-text lines of one byte range into per-bucket text/failure tables."""
    if per_line:
        block = parse_text_lines(_nonblank_lines(path, start, end))
    else:  # texts as views into the range's bytes: copied once, into bucket order
        pos, data = read_range(path, start, end)
        block = parse_text_block(data, pos, views=True)
    texts = block.texts.add_column(2, "file_idx", pa.array(np.full(block.texts.num_rows, file_idx, np.int32)))
    t_parts = [t.cast(_TEXT_SCHEMA) for t in _split(texts, buckets_of(block.video_ids, num_buckets), num_buckets)]
    del texts
    f_parts = _split_failures(block.failures, num_buckets, task_no)
    parts = [{"texts": t, "failures": f} for t, f in zip(t_parts, f_parts)]
    return parts, {"lines": block.lines, "clips": 0, "failures": len(block.failures)}


# ---------------------------------------------------------------------------------------
# reduce side: join one bucket, group, write


def _concat(parts: list[dict], name: str, schema: pa.Schema) -> pa.Table:
    tables = [p[name] for p in parts if name in p]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _first_of_each(table: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """Rows sorted by (key, file_idx, offset); the first per key and the later ones."""
    table = table.sort_by([(key, "ascending"), ("file_idx", "ascending"), ("offset", "ascending")])
    col = table.column(key).combine_chunks()
    if len(col) == 0:
        return table, table
    mask = pa.concat_arrays([pa.array([True]), pc.not_equal(col[1:], col[:-1])])
    return table.filter(mask), table.filter(pc.invert(mask))


def _conflicting_texts(texts: pa.Table, dup_texts: pa.Table) -> dict[str, Failure]:
    """A ledger row per clip id whose later lines give another text than its first line:
    which one describes the clip is unknown, so neither is used. Repeats of the same text
    (a file listed twice, overlapping dumps) stay fine."""
    if not dup_texts.num_rows:
        return {}
    both = dup_texts.select(["clip_id", "text", "file_idx", "offset"]).join(
        texts.select(["clip_id", "text", "file_idx", "offset"]), keys="clip_id", right_suffix="_first")
    differ = both.filter(pc.fill_null(pc.not_equal(both.column("text"), both.column("text_first")), True))
    out: dict[str, Failure] = {}
    for clip_id, fi, off, fi0, off0 in zip(*(differ.column(n).to_pylist() for n in (
            "clip_id", "file_idx", "offset", "file_idx_first", "offset_first"))):
        out.setdefault(clip_id, Failure(
            clip_id[:clip_id.index(".")], clip_id, Stage.TEXT.value, FailureCode.CLIP_TEXT_CONFLICT,
            f"two different texts for the clip (text file #{fi0} byte {off0}, file #{fi} byte {off}); "
            "neither is used"))
    return out


def _too_long_texts(texts: pa.Table, max_bytes: int) -> dict[str, Failure]:
    """A ledger row per clip text longer than `max_bytes` (UTF-8)."""
    sizes = pc.binary_length(texts.column("text"))
    long = texts.filter(pc.fill_null(pc.greater(sizes, max_bytes), False))
    return {cid: Failure(cid[:cid.index(".")], cid, Stage.TEXT.value, FailureCode.TEXT_TOO_LONG,
                         f"clip text of {len(text.encode())} bytes is longer than --max-text-bytes {max_bytes}")
            for cid, text in zip(long.column("clip_id").to_pylist(), long.column("text").to_pylist())}


def _first_texts(texts: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The first line (by file, offset) of each clip id and the later ones, sorted by
    (clip_id, file, offset) like `_first_of_each`; without repeats, which is the rule,
    the table itself after one hash pass (no sort or copy of the texts)."""
    codes = pc.dictionary_encode(texts.column("clip_id").combine_chunks())
    if len(codes.dictionary) == texts.num_rows:
        return texts, texts.slice(0, 0)
    return _first_of_each(texts, "clip_id")


def _dup_video_rows(dup_videos: pa.Table) -> pa.Table:
    """The ledger rows of repeated video lines."""
    reasons = pc.binary_join_element_wise(
        "duplicate video line (file #", pc.cast(dup_videos.column("file_idx"), pa.string()), ", byte ",
        pc.cast(dup_videos.column("offset"), pa.string()), "); the first line is used", "")
    return _coded_rows(dup_videos.column("video_id").combine_chunks(), None, Stage.METADATA,
                       FailureCode.DUPLICATE, reasons.combine_chunks())


def _line_keys(table: pa.Table) -> np.ndarray:
    """(file_idx, offset) of each row as one int64 (offsets stay below 2**40 bytes)."""
    return (table.column("file_idx").to_numpy().astype(np.int64) << 40) | table.column("offset").to_numpy()


def reduce_bucket(bucket: int, parts: list[dict], cfg: PlanConfig, out_dir: str,
                  from_groups: bool = False, per_object: bool = False) -> dict:
    """Join bucket `bucket` of every map output, plan its videos (by our rule, or as the
    given groups), and write its part files; returns the counts the driver sums into the
    PlanSummary. `per_object` plans with `group_runs` on Python objects (the reference).

    The joins are lookups: videos are sorted by id (few), each clip gets its video's row
    by a hash probe and its text row by another, and the clips are ordered by (video row,
    k) on integers, so the texts are gathered once, into plan order."""
    stats: Counter = Counter()
    ledger = [_concat(parts, "failures", FAILURE_SCHEMA)]
    videos, dup_videos = _first_of_each(_concat(parts, "videos", _VIDEO_SCHEMA), "video_id")
    ledger.append(_dup_video_rows(dup_videos))
    clips = _concat(parts, "clips", _CLIP_SCHEMA)
    if dup_videos.num_rows:  # only the clips of each video's first line
        clips = clips.filter(pa.array(~np.isin(_line_keys(clips), _line_keys(dup_videos))))
    texts, dup_texts = _first_texts(_concat(parts, "texts", _TEXT_SCHEMA))
    group_parts = [p["groups"] for p in parts if "groups" in p]
    del parts
    stats["texts_unique"], stats["texts_duplicate"] = texts.num_rows, dup_texts.num_rows
    withheld = _conflicting_texts(texts, dup_texts)
    if from_groups:  # group_runs checks the length itself; a group needs the row here
        withheld |= _too_long_texts(texts, cfg.max_text_bytes)
    if withheld:
        texts = texts.filter(pc.invert(pc.is_in(texts.column("clip_id"), pa.array(list(withheld), pa.string()))))
        ledger.append(_failure_table(list(withheld.values())))
    video_row = pc.index_in(clips.column("video_id"), videos.column("video_id")).to_numpy(zero_copy_only=False)
    order = np.lexsort((clips.column("k").to_numpy(), video_row))
    text_row = pc.index_in(clips.column("clip_id"), texts.column("clip_id")).take(pa.array(order))
    clips = clips.take(pa.array(order)).append_column("text", texts.column("text").take(text_row))
    video_row = video_row[order]
    stats["texts_unused"] = texts.num_rows - (clips.num_rows - text_row.null_count)
    del texts, dup_texts
    if from_groups:
        from lfvila_data.plan.groups import reduce_groups

        failures = [Failure.from_row(r) for t in ledger for r in t.to_pylist()]
        return reduce_groups(bucket, group_parts, videos, clips, failures, stats, out_dir)

    if per_object:
        table, fails = _plan_per_object(videos, clips, cfg, stats, set(withheld))
        ledger.append(_failure_table(fails))
    else:
        table, fails_table = _plan_columnar(videos, clips, video_row, cfg, stats, set(withheld))
        ledger.append(fails_table)
    failures = _sorted_ledger(ledger)
    by_stage = dict(zip(*(c.to_pylist() for c in pc.value_counts(failures.column("stage")).flatten())))
    _write_parquet(table, out_dir, f"part-{bucket:05d}.parquet")
    _write_parquet(failures, out_dir, f"failures-{bucket:05d}.parquet")
    return {"counts": dict(stats), "failures_by_stage": by_stage}


def _plan_per_object(videos: pa.Table, clips: pa.Table, cfg: PlanConfig, stats: Counter,
                     withheld: set[str]) -> tuple[pa.Table, list[Failure]]:
    """The bucket's plan by `group_runs` on `Clip` objects, video by video: the reference
    `_plan_columnar` must equal. Clips in `withheld` already have a ledger row (their
    texts conflict), so they get no `no_text` row."""
    cols = {n: clips.column(n).to_pylist() for n in ("video_id", "clip_id", "k", "start", "end", "text")}
    samples: list[PlannedSample] = []
    failures: list[Failure] = []
    first_rows: list[int] = []  # row in `clips` of each sample's first clip
    i, n = 0, clips.num_rows
    for video_id, url in zip(videos.column("video_id").to_pylist(), videos.column("url").to_pylist()):
        j = i
        while j < n and cols["video_id"][j] == video_id:
            j += 1
        meta = VideoMeta(video_id, url, tuple(
            Clip(cols["clip_id"][x], cols["k"][x], cols["start"][x], cols["end"][x]) for x in range(i, j)))
        texts_of = {cols["clip_id"][x]: cols["text"][x] for x in range(i, j) if cols["text"][x] is not None}
        stats["words_parsed"] += sum(words_of(t) for t in texts_of.values())
        got, fails = group_runs(meta, texts_of, cfg, stats)
        fails = [f for f in fails if not (f.code is FailureCode.NO_TEXT and f.clip_id in withheld)]
        if got:
            row_of = {cols["clip_id"][x]: x for x in range(i, j)}
            first_rows += [row_of[s.clips[0].clip_id] for s in got]
        samples += got
        failures += fails
        stats["videos"] += 1
        stats["clips_total"] += j - i
        stats["videos_with_samples"] += bool(got)
        i = j
    stats["samples"] = len(samples)
    stats["clips_in_samples"] = sum(len(s.clips) for s in samples)
    stats["seconds"] = sum(s.duration for s in samples)
    n_clips = np.fromiter((len(s.clips) for s in samples), dtype=np.int64, count=len(samples))
    table = _plan_table(pa.array([s.key for s in samples], pa.string()),
                        pa.array([s.video_id for s in samples], pa.string()),
                        pa.array([s.url for s in samples], pa.string()),
                        np.asarray(first_rows, dtype=np.int64), n_clips, clips)
    return table, failures


def _plan_columnar(videos: pa.Table, clips: pa.Table, video_row: np.ndarray, cfg: PlanConfig, stats: Counter,
                   withheld: set[str]) -> tuple[pa.Table, pa.Table]:
    """The bucket's plan by `group_runs`'s rule over whole columns (plan.columnar):
    the same table, ledger rows (as a table) and counts as `_plan_per_object`, without a
    Python object per clip, sample or ledger row. `video_row` is each clip's row in
    `videos`."""
    vid = clips.column("video_id").combine_chunks()
    k = clips.column("k").to_numpy()
    start, end = clips.column("start").to_numpy(), clips.column("end").to_numpy()
    words = normalized_word_counts(clips.column("text"))  # map_text_range normalised them
    sizes = pc.fill_null(pc.binary_length(clips.column("text")), 0).to_numpy()
    too_long = (words > 0) & (sizes > cfg.max_text_bytes)
    has_text = (words > 0) & ~too_long
    new_video = np.ones(len(k), dtype=bool)
    new_video[1:] = video_row[1:] != video_row[:-1]
    chunks = chunk_runs(new_video, k, start, end, has_text, cfg.max_gap, cfg.max_clips)
    stats["words_parsed"] += int(words.sum())
    stats["videos"] += videos.num_rows
    stats["clips_total"] += clips.num_rows

    no_text = np.flatnonzero(words == 0)
    if len(no_text):
        count_drop(stats, "no_text", clips=len(no_text), seconds=in_order(0, (end[no_text] - start[no_text]).tolist()))
    clip_ids = clips.column("clip_id").combine_chunks()
    no_text_ids = clip_ids.take(pa.array(no_text, pa.int64()))
    listed = pc.invert(pc.is_in(no_text_ids, pa.array(sorted(withheld), pa.string())))
    ledger = [_coded_rows(vid.take(pa.array(no_text, pa.int64())).filter(listed), no_text_ids.filter(listed),
                          Stage.TEXT, FailureCode.NO_TEXT, "no text for clip")]
    long_rows = np.flatnonzero(too_long)
    if len(long_rows):
        count_drop(stats, "text_too_long", clips=len(long_rows), words=int(words[long_rows].sum()),
                   seconds=in_order(0, (end[long_rows] - start[long_rows]).tolist()))
        ledger.append(_failure_table([
            Failure(v, c, Stage.TEXT.value, FailureCode.TEXT_TOO_LONG,
                    f"clip text of {size} bytes is longer than --max-text-bytes {cfg.max_text_bytes}")
            for v, c, size in zip(vid.take(long_rows).to_pylist(), clip_ids.take(long_rows).to_pylist(),
                                  sizes[long_rows].tolist())]))

    keep = chunks.n >= cfg.min_clips
    word_cum = np.concatenate([[0], np.cumsum(words)])
    chunk_words = word_cum[chunks.first + chunks.n] - word_cum[chunks.first]
    for reason, which in (("short_run", ~keep & chunks.head), ("short_tail_chunk", ~keep & ~chunks.head)):
        if which.any():
            stats["dropped_short_runs"] += int(which.sum())
            seconds = segment_sums(end - start, chunks.first[which], chunks.n[which])
            count_drop(stats, reason, runs=int(which.sum()), clips=int(chunks.n[which].sum()),
                       words=int(chunk_words[which].sum()), seconds=in_order(0, seconds))
    first, n_clips = chunks.first[keep], chunks.n[keep]
    last = first + n_clips - 1
    stats["words_in_samples"] += int(chunk_words[keep].sum())
    sample_vid = vid.take(pa.array(first))
    stats["samples"] = len(first)
    stats["clips_in_samples"] = int(n_clips.sum())
    stats["seconds"] = sum((end[last] - start[first]).tolist())
    stats["videos_with_samples"] += len(np.unique(video_row[first]))
    urls = videos.column("url").combine_chunks().take(pa.array(video_row[first]))
    keys = sample_keys(sample_vid, k[first], k[last])
    return _plan_table(keys, sample_vid, urls, first, n_clips, clips), pa.concat_tables(ledger)


def _plan_table(keys: pa.Array, video_ids: pa.Array, urls: pa.Array, first_rows: np.ndarray,
                n_clips: np.ndarray, clips: pa.Table) -> pa.Table:
    """PLAN_SCHEMA table sorted by key; each sample's clips are a contiguous run of rows
    of the joined `clips` table (sorted by video, k), so they are gathered in Arrow
    rather than rebuilt from Python objects: once, in key order."""
    by_key = pc.sort_indices(keys).to_numpy()
    keys, video_ids, urls = keys.take(by_key), video_ids.take(by_key), urls.take(by_key)
    first_rows, n_clips = np.asarray(first_rows, dtype=np.int64)[by_key], np.asarray(n_clips)[by_key]
    offsets = np.concatenate([[0], np.cumsum(n_clips, dtype=np.int64)]).astype(np.int32)
    rows = np.repeat(first_rows - offsets[:-1], n_clips) + np.arange(offsets[-1])
    item = PLAN_SCHEMA.field("clips").type
    gathered = clips.take(pa.array(rows, pa.int64()))
    struct = pa.StructArray.from_arrays(
        [gathered.column(f.name).combine_chunks().cast(f.type) if f.name in gathered.column_names
         else pa.nulls(len(rows), f.type)  # HD-VILA clips: one sentence, the clip itself
         for f in item.value_type],
        fields=list(item.value_type))
    starts = clips.column("start").take(pa.array(first_rows, pa.int64())).combine_chunks()
    ends = clips.column("end").take(pa.array(first_rows + n_clips - 1, pa.int64())).combine_chunks()
    return pa.table({
        "key": keys, "video_id": video_ids, "url": urls, "start": starts, "end": ends,
        "duration": pc.subtract(ends, starts), "n_clips": n_clips.astype(np.int32),
        "clips": pa.ListArray.from_arrays(pa.array(offsets), struct, type=item),
        "text_source": pa.array(["metadata"] * len(keys), pa.string()),
        "language": pa.nulls(len(keys), pa.string()), "split": pa.nulls(len(keys), pa.string()),
        "qa": pa.nulls(len(keys), pa.string()),
    }, schema=PLAN_SCHEMA)


# ---------------------------------------------------------------------------------------
# files under out_dir/plan


def _plan_fs(out_dir: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(out_dir)
    return fs, root.rstrip("/") + "/plan"


def _write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, write: Callable) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        write(f)
    fs.mv(tmp, path)


def _write_parquet(table: pa.Table, out_dir: str, name: str) -> None:
    fs, plan_dir = _plan_fs(out_dir)
    fs.makedirs(plan_dir, exist_ok=True)
    _write_bytes_atomic(fs, f"{plan_dir}/{name}", lambda f: pq.write_table(table, f))


def _read_success(out_dir: str) -> dict | None:
    fs, plan_dir = _plan_fs(out_dir)
    if not fs.exists(f"{plan_dir}/{_SUCCESS}"):
        return None
    with fs.open(f"{plan_dir}/{_SUCCESS}", "rb") as f:
        return json.loads(f.read())


def _input_listing(paths: list[str]) -> list[list]:
    out = []
    for p in paths:
        fs, fpath = fsspec.core.url_to_fs(p)
        out.append([p, int(fs.size(fpath))])
    return out


def load_plan_summary(out_dir: str, *, metadata: list[str] | None = None,
                      text: list[str] | None = None, cfg: PlanConfig | None = None,
                      groups: list[str] | None = None) -> PlanSummary | None:
    """The summary of a finished plan, or None when there is none or when the given
    inputs (paths and sizes) or content settings differ, so a rerun knows to re-plan."""
    done = _read_success(out_dir)
    if done is None:
        return None
    if cfg is not None:
        want = content(cfg)
        if fingerprint({f: done["config"].get(f) for f in want}) != fingerprint(want):
            return None
    for name, patterns in (("metadata", metadata), ("text", text)):
        if patterns is not None and done["inputs"][name] != _input_listing(expand_paths(patterns)):
            return None
    if groups is not None and done["inputs"].get("groups", []) != _input_listing(expand_paths(groups) if groups else []):
        return None
    return PlanSummary(**done["summary"])


def iter_plan_parts(out_dir: str) -> Iterator[pa.Table]:
    """Each finished plan part in part order, so later stages stream the plan."""
    yield from _iter_parts(out_dir, "part")


def read_plan(out_dir: str) -> pa.Table:
    """The whole plan as one table (fine for tests and small builds)."""
    return pa.concat_tables(list(iter_plan_parts(out_dir)) or [PLAN_SCHEMA.empty_table()])


def read_plan_failures(out_dir: str) -> pa.Table:
    """All planning failures (metadata, text) as one ledger table."""
    return pa.concat_tables(list(_iter_parts(out_dir, "failures")) or [FAILURE_SCHEMA.empty_table()])


def _iter_parts(out_dir: str, prefix: str) -> Iterator[pa.Table]:
    done = _read_success(out_dir)
    if done is None:
        raise InputError(f"no finished plan under {out_dir!r} (plan/{_SUCCESS} is missing)")
    fs, plan_dir = _plan_fs(out_dir)
    schema = PLAN_SCHEMA if prefix == "part" else FAILURE_SCHEMA
    for b in range(done["num_buckets"]):
        with fs.open(f"{plan_dir}/{prefix}-{b:05d}.parquet", "rb") as f:
            yield pq.read_table(f, schema=schema)


# ---------------------------------------------------------------------------------------
# the driver


def _auto_buckets(total_bytes: int) -> int:
    return max(1, min(4096, -(-total_bytes // (256 * 1024 * 1024))))


def _clear_plan_dir(out_dir: str) -> None:
    fs, plan_dir = _plan_fs(out_dir)
    if fs.exists(f"{plan_dir}/{_SUCCESS}"):
        fs.rm(f"{plan_dir}/{_SUCCESS}")  # first, so a half-cleared plan is never "done"
    if fs.exists(plan_dir):
        for p in fs.ls(plan_dir, detail=False):
            name = p.rsplit("/", 1)[-1]
            if name.startswith(("part-", "failures-")) and ".parquet" in name:
                fs.rm(p)
    fs.makedirs(plan_dir, exist_ok=True)


def build_plan(metadata: list[str], text: list[str], out_dir: str, cfg: PlanConfig = PlanConfig(),
               *, shuffle: Shuffle, progress: Callable[[str], None] | None = None,
               groups: list[str] | None = None, per_line: bool = False, per_object: bool = False) -> PlanSummary:
    """Plan every sample of the inputs through `shuffle` (`executor.pool.RayShuffle` on a
    cluster, `executor.base.local_shuffle` in this process) and write the plan under
    out_dir/plan, marking it done with _SUCCESS.json last. With `groups` (clip-id group
    files, see plan.groups) the samples are exactly those groups. `per_line` parses every
    input line in Python and `per_object` plans each video with `group_runs` on Python
    objects (the references the Arrow parse and the columnar reduce must equal; for tests
    and benchmarks)."""
    meta_paths, text_paths = expand_paths(metadata), expand_paths(text)
    inputs = {"metadata": _input_listing(meta_paths), "text": _input_listing(text_paths)}
    group_paths = expand_paths(groups) if groups else []
    if groups:
        inputs["groups"] = _input_listing(group_paths)
    total = sum(size for _, size in inputs["metadata"] + inputs["text"] + inputs.get("groups", []))
    num_buckets = cfg.num_buckets or _auto_buckets(total)
    jobs = [("metadata", i, r) for i, p in enumerate(meta_paths) for r in iter_line_ranges(p, cfg.chunk_bytes)]
    jobs += [("text", i, r) for i, p in enumerate(text_paths) for r in iter_line_ranges(p, cfg.chunk_bytes)]
    jobs += [("groups", i, r) for i, p in enumerate(group_paths) for r in iter_line_ranges(p, cfg.chunk_bytes)]
    _clear_plan_dir(out_dir)
    show = ThrottledPrinter(5.0, progress or to_stderr)
    mapped = {"chunks": 0, "lines": 0}

    def on_map(stats: dict) -> None:
        mapped["chunks"] += 1
        mapped["lines"] += stats["lines"]
        show(f"plan: parsed {mapped['chunks']}/{len(jobs)} chunks, {mapped['lines']:,} lines",
             force=mapped["chunks"] == len(jobs))

    counts: Counter = Counter()
    by_stage: Counter = Counter()
    map_fn = partial(_map_chunk, num_buckets=num_buckets, allow_local_files=cfg.allow_local_files,
                     per_line=per_line)
    reduce_fn = partial(reduce_bucket, cfg=cfg, out_dir=out_dir, from_groups=bool(groups), per_object=per_object)
    for finished, result in enumerate(shuffle(map_fn, list(enumerate(jobs)), reduce_fn, num_buckets, on_map), 1):
        counts.update(result["counts"])
        by_stage.update(result["failures_by_stage"])
        show(f"plan: joined {finished}/{num_buckets} buckets, {counts['samples']:,} samples",
             force=finished == num_buckets)

    summary = PlanSummary(
        videos=counts["videos"], videos_with_samples=counts["videos_with_samples"],
        clips_total=counts["clips_total"], clips_in_samples=counts["clips_in_samples"],
        samples=counts["samples"], hours=round(counts["seconds"] / 3600, 6),  # layout-independent
        dropped_short_runs=counts["dropped_short_runs"], failures_by_stage=dict(sorted(by_stage.items())),
        texts_unique=counts["texts_unique"], texts_duplicate=counts["texts_duplicate"],
        texts_unused=counts["texts_unused"], words_parsed=counts["words_parsed"],
        words_in_samples=counts["words_in_samples"], dropped=dropped_by_reason(counts),
        groups_read=counts["groups_read"], groups_planned=counts["groups_planned"],
        groups_rejected={k.split(":", 1)[1]: v for k, v in sorted(counts.items())
                         if k.startswith("groups_rejected:")})
    record = {"summary": asdict(summary), "config": asdict(cfg), "num_buckets": num_buckets,
              "inputs": inputs}
    fs, plan_dir = _plan_fs(out_dir)
    _write_bytes_atomic(fs, f"{plan_dir}/{_SUCCESS}",
                        lambda f: f.write(json.dumps(record, indent=2).encode()))
    return summary


def _map_chunk(job: tuple[int, tuple[str, int, tuple[str, int, int]]], num_buckets: int,
               allow_local_files: bool, per_line: bool = False) -> tuple[list[dict], dict]:
    """The shuffle's map: one byte range of a metadata or text file, numbered `task_no`."""
    task_no, (kind, file_idx, (path, start, end)) = job
    if kind == "metadata":
        return map_metadata_range(file_idx, path, start, end, num_buckets, allow_local_files, task_no, per_line)
    if kind == "groups":
        from lfvila_data.plan.groups import map_groups_range

        return map_groups_range(file_idx, path, start, end, num_buckets, task_no)
    return map_text_range(file_idx, path, start, end, num_buckets, task_no, per_line)


class PlanWriter:
    """Writes a plan made outside `build_plan` (URL lists, local files, re-transcribed
    plans) part by part as whole videos arrive, in the same layout, so memory stays at one
    part however long the list. A video's samples always land in one part."""

    def __init__(self, out_dir: str, cfg: PlanConfig, samples_per_part: int = 50_000):
        _clear_plan_dir(out_dir)
        self.out_dir, self.cfg, self.samples_per_part = out_dir, cfg, samples_per_part
        self.samples: list[PlannedSample] = []
        self.failures: list[Failure] = []
        self.parts = 0
        self.videos_with_samples: set[str] = set()
        self.totals: Counter = Counter()
        self.by_stage: Counter = Counter()

    def add(self, samples: list[PlannedSample], failures: list[Failure]) -> None:
        """All samples and ledger rows of one or more whole videos."""
        self.samples += samples
        self.failures += failures
        if len(self.samples) >= self.samples_per_part:
            self._flush()

    def _flush(self) -> None:
        samples = sorted(self.samples, key=lambda s: s.key)
        failures = sorted(self.failures, key=lambda f: (f.stage, f.video_id or "", f.clip_id or "", f.reason))
        _write_parquet(pa.Table.from_pylist([sample_to_row(s) for s in samples], schema=PLAN_SCHEMA),
                       self.out_dir, f"part-{self.parts:05d}.parquet")
        _write_parquet(_failure_table(failures), self.out_dir, f"failures-{self.parts:05d}.parquet")
        self.parts += 1
        self.videos_with_samples.update(s.video_id for s in samples)
        self.totals["samples"] += len(samples)
        self.totals["clips"] += sum(len(s.clips) for s in samples)
        self.totals["seconds"] += sum(s.duration for s in samples)
        self.by_stage.update(f.stage for f in failures)
        self.samples, self.failures = [], []

    def close(self, inputs: dict, counts: Counter) -> PlanSummary:
        """Write the last part and the success record; the plan is finished from here."""
        if self.samples or self.failures or not self.parts:
            self._flush()
        summary = PlanSummary(
            videos=counts["videos"], videos_with_samples=len(self.videos_with_samples),
            clips_total=counts["clips_total"], clips_in_samples=self.totals["clips"],
            samples=self.totals["samples"], hours=round(self.totals["seconds"] / 3600, 6),
            dropped_short_runs=counts["dropped_short_runs"],
            failures_by_stage=dict(sorted(self.by_stage.items())), words_parsed=counts["words_parsed"],
            words_in_samples=counts["words_in_samples"], dropped=dropped_by_reason(counts))
        record = {"summary": asdict(summary), "config": asdict(self.cfg), "num_buckets": self.parts,
                  "inputs": inputs}
        fs, plan_dir = _plan_fs(self.out_dir)
        _write_bytes_atomic(fs, f"{plan_dir}/{_SUCCESS}",
                            lambda f: f.write(json.dumps(record, indent=2).encode()))
        return summary


def write_plan(out_dir: str, samples: list[PlannedSample], failures: list[Failure],
               cfg: PlanConfig, inputs: dict, counts: Counter) -> PlanSummary:
    """A small plan made in one process, written in one go (see PlanWriter)."""
    writer = PlanWriter(out_dir, cfg, samples_per_part=max(1, len(samples)))
    writer.add(samples, failures)
    return writer.close(inputs, counts)
