"""`lfvila-data verify`: read every shard of a shard directory and check it against the
contract in shards/README.md.

A shard is read once, sequentially (tar stream mode), with its MD5 computed on the way;
members are grouped by key into samples, each sample's json/txt is checked against the
contract, the index and the manifest, and (optionally) its mp4 is decoded by ffmpeg in a
small thread pool. Nothing a shard contains makes this raise: every finding is a
`Problem` row of the report, named by the check that found it (see CHECKS)."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from lfvila_data.media.cut import INPUT_GUARD, MediaError, probe
from lfvila_data.output import manifest as tables
from lfvila_data.progress import human_bytes, human_time
from lfvila_data.records import paragraph, parse_sample_key
from lfvila_data.shards.write import MAX_TEXT_MEMBER, MEMBER_EXTS, TASKS

# The check names a Problem can carry, and what each means.
CHECKS = {
    "index": "a split index (train.json/val.json) is unreadable or malformed",
    "missing": "a shard listed in an index does not exist",
    "size": "shard size differs from the index filesize",
    "md5": "shard MD5 differs from the index md5sum",
    "tar": "the tar is truncated or corrupt",
    "unindexed": "a .tar in the directory is listed in no index",
    "members": "a sample is not exactly {key}.mp4, {key}.json, {key}.txt",
    "key": "a key is not <video_id>_<first clip>_<last clip> (no dot, only [A-Za-z0-9_-])",
    "duplicate": "a key appears more than once in the shard set",
    "nsamples": "samples in a shard differ from the index nsamples",
    "json": "the json does not parse, lacks a field, has a wrong type or disagrees with its key",
    "clips": "clip times are not ordered, or a clip does not end after it starts",
    "bounds": "a clip or sentence time lies outside [0, duration] of the sample video",
    "sentences": "a clip's sentences are not ordered, inside the clip, or do not make up its text",
    "txt": "the txt is not the clip texts joined by single spaces",
    "manifest": "manifest.parquet disagrees with the shards (keys, shard, split, offset)",
    "decode": "ffmpeg cannot decode the mp4 without errors",
    "duration": "the decoded duration differs from the json duration",
}
INDEX_NAMES = ("train.json", "val.json")
INDEX_KIND = "wids-shard-index-v1"
DURATION_SLACK = 0.05  # seconds, on top of one frame
DECODE_TIMEOUT = 1800.0
PROGRESS_EVERY_S = 5.0

_STR, _NUM, _INT, _LIST = "string", "number", "int", "list"
SAMPLE_FIELDS = {"key": _STR, "video_id": _STR, "url": _STR, "source": _STR,
                 "start": _NUM, "end": _NUM, "duration": _NUM, "fps": _NUM,
                 "width": _INT, "height": _INT, "frames": _INT, "n_clips": _INT, "clips": _LIST}
CLIP_FIELDS = {"clip_id": _STR, "start": _NUM, "end": _NUM, "source_start": _NUM,
               "source_end": _NUM, "text": _STR, "sentences": _LIST}
SENTENCE_FIELDS = {"text": _STR, "start": _NUM, "end": _NUM}
SENTENCE_SLACK = 0.002  # seconds: times are rounded to the microsecond on both sides


@dataclass(frozen=True)
class Problem:
    """One finding: where (shard, key), which check found it, and what a person should know."""

    shard: str | None
    key: str | None
    check: str
    message: str


@dataclass
class VerifyReport:
    """What verify read and what it found; `ok` when nothing was found."""

    shard_dir: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per check, so a report of thousands of rows still reads at a glance."""
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.check] = out.get(p.check, 0) + 1
        return out

    def render(self, limit: int = 40) -> str:
        """A short human report: totals, problems per check, the first `limit` rows."""
        head = (f"verify {self.shard_dir}: {self.shards} shards, {self.samples} samples, "
                f"{human_bytes(self.bytes)}")
        if self.ok:
            return f"{head}: OK"
        lines = [f"{head}: {len(self.problems)} problem(s)"]
        lines += [f"  {check:<10} {n}" for check, n in sorted(self.counts().items())]
        lines.append("")
        for p in self.problems[:limit]:
            lines.append(f"  {p.shard or '-'}  {p.key or '-'}  [{p.check}] {p.message}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ShardEntry:
    """A shard to read: its file name and what its index says (None when unindexed)."""

    url: str
    split: str | None
    nsamples: int | None = None
    filesize: int | None = None
    md5sum: str | None = None


@dataclass
class Sample:
    """The members of one key as read from the tar: json/txt bytes, mp4 in a temp file."""

    key: str
    shard: str
    split: str | None
    offset: int | None = None
    mp4: Path | None = None
    data: dict[str, bytes] = field(default_factory=dict)
    exts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# pure checks of one sample


def _type_ok(value: object, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    return isinstance(value, list)


def _field_errors(obj: dict, spec: dict[str, str], where: str) -> list[str]:
    errors = []
    for name, kind in spec.items():
        if name not in obj:
            errors.append(f"{where}lacks field {name!r}")
        elif not _type_ok(obj[name], kind):
            errors.append(f"{where}field {name!r} is {type(obj[name]).__name__} "
                          f"{str(obj[name])[:40]!r}, expected {kind}")
    return errors


def _not_json(name: str) -> None:
    """Python's json reads NaN and Infinity; strict readers (JS, serde, jq) reject them."""
    raise ValueError(f"{name} is not JSON (strict readers reject it)")


def check_meta(key: str, meta: object) -> list[tuple[str, str]]:
    """(check, message) for a parsed {key}.json: fields and types, then clip times."""
    if not isinstance(meta, dict):
        return [("json", f"json is a {type(meta).__name__}, not an object")]
    errors = [("json", e) for e in _field_errors(meta, SAMPLE_FIELDS, "")]
    clips = meta.get("clips") if isinstance(meta.get("clips"), list) else []
    for i, c in enumerate(clips):
        if not isinstance(c, dict):
            errors.append(("json", f"clips[{i}] is not an object"))
        else:
            errors += [("json", e) for e in _field_errors(c, CLIP_FIELDS, f"clips[{i}] ")]
            for j, t in enumerate(c.get("sentences") if isinstance(c.get("sentences"), list) else []):
                where = f"clips[{i}].sentences[{j}] "
                errors += ([("json", e) for e in _field_errors(t, SENTENCE_FIELDS, where)]
                           if isinstance(t, dict) else [("json", f"{where}is not an object")])
    if errors:
        return errors
    if meta["key"] != key:
        errors.append(("json", f"json key {meta['key']!r} differs from the member key"))
    parsed = parse_sample_key(key)
    if parsed is not None and parsed[0] != meta["video_id"]:
        errors.append(("json", f"key is of video {parsed[0]!r}, json says video_id {meta['video_id']!r}"))
    errors += [("json", e) for e in _task_errors(meta)]
    if meta["n_clips"] != len(clips):
        errors.append(("json", f"n_clips {meta['n_clips']} but {len(clips)} clips"))
    if meta["duration"] <= 0 or meta["fps"] <= 0 or meta["width"] <= 0 or meta["height"] <= 0:
        errors.append(("json", "duration, fps, width and height must be positive"))
        return errors
    return (errors + [("clips", m) for m in _clip_time_errors(clips)]
            + [("bounds", m) for m in _bound_errors(clips, meta["duration"])]
            + [("sentences", m) for i, c in enumerate(clips) for m in _sentence_errors(i, c)])


def _task_errors(meta: dict) -> list[str]:
    """`task` and `split` (absent in shards older than them): a known task, and the
    dataset split as a string or null."""
    errors = []
    if "task" in meta and meta["task"] not in TASKS:
        errors.append(f"task {str(meta['task'])[:40]!r} is not one of {', '.join(TASKS)}")
    if meta.get("split") is not None and not (isinstance(meta["split"], str) and meta["split"]):
        errors.append(f"split {str(meta['split'])[:40]!r} is not a non-empty string or null")
    if meta.get("task") == "qa" or "qa" in meta:
        errors += _qa_errors(meta.get("qa"))
    return errors


def _qa_errors(qa: object) -> list[str]:
    """A QA sample's questions: each a `qid` and a `question`, its candidate `answers`
    (strings, or null) with the right one's index as `label`, or a `label` alone
    (entailment: 1 true, 0 false), or an `answer` string (open answers)."""
    if not isinstance(qa, list) or not qa:
        return ["a qa sample needs a non-empty qa list"]
    errors = []
    for i, q in enumerate(qa):
        where = f"qa[{i}] "
        if not isinstance(q, dict) or not isinstance(q.get("qid"), str) or not isinstance(q.get("question"), str) \
                or not q["question"]:
            errors.append(f"{where}needs a qid and a non-empty question")
            continue
        answers, label, answer = q.get("answers"), q.get("label"), q.get("answer")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            errors.append(f"{where}label {str(label)[:20]!r} is not an integer")
        elif answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)
                                      or not isinstance(label, int) or not 0 <= label < len(answers)):
            errors.append(f"{where}answers must be strings with label the index of the right one")
        elif answer is not None and not isinstance(answer, str):
            errors.append(f"{where}answer is not a string")
        elif label is None and answer is None:
            errors.append(f"{where}has neither a label nor an answer")
    return errors


def _sentence_errors(i: int, clip: dict) -> list[str]:
    """Sentences lie inside their clip in time order and their texts make the clip text."""
    sents = clip["sentences"]
    if not sents:  # a clip without text (a QA video without subtitles) has none
        return [f"clips[{i}] has no sentences"] if clip["text"] else []
    errors, prev = [], float("-inf")
    for j, t in enumerate(sents):
        if not (clip["start"] - SENTENCE_SLACK <= t["start"] <= t["end"] <= clip["end"] + SENTENCE_SLACK):
            errors.append(f"clips[{i}].sentences[{j}] {t['start']:.3f}-{t['end']:.3f} s is not "
                          f"inside the clip {clip['start']:.3f}-{clip['end']:.3f} s")
        if t["start"] < prev - SENTENCE_SLACK:
            errors.append(f"clips[{i}].sentences[{j}] starts before the sentence before it")
        prev = t["start"]
    joined = " ".join(t["text"] for t in sents)
    if joined.strip() != clip["text"].strip():
        errors.append(f"clips[{i}] text is not its sentences joined by spaces: {clip['text'][:60]!r}")
    return errors


def _clip_time_errors(clips: list[dict]) -> list[str]:
    """Clips come in time order and each ends after it starts."""
    errors, prev = [], float("-inf")
    for i, c in enumerate(clips):
        s, e = c["start"], c["end"]
        if not s < e:
            errors.append(f"clips[{i}] {s:.3f}-{e:.3f} s does not end after it starts")
        if s < prev:
            errors.append(f"clips[{i}] starts at {s:.3f} s, before clips[{i - 1}]")
        prev = s
    return errors


def _bound_errors(clips: list[dict], duration: float) -> list[str]:
    """Every clip and sentence time names an instant of the sample video: relative to its
    first frame (source times would lie past the end) and no later than its duration."""
    spans = [(f"clips[{i}]", c) for i, c in enumerate(clips)]
    spans += [(f"clips[{i}].sentences[{j}]", t) for i, c in enumerate(clips)
              for j, t in enumerate(c["sentences"])]
    return [f"{where} {t['start']:.3f}-{t['end']:.3f} s is not within 0-{duration:.3f} s "
            f"(times are relative to the first frame)"
            for where, t in spans if not 0 <= t["start"] <= t["end"] <= duration]


def check_txt(meta: dict, txt: bytes) -> list[str]:
    """The paragraph must be the clip texts joined by single spaces."""
    try:
        text = txt.decode("utf-8")
    except UnicodeDecodeError as e:
        return [f"txt is not UTF-8: {e}"]
    texts = [c["text"] for c in meta["clips"]]
    if text in (paragraph(texts), paragraph(t.strip() for t in texts)):
        return []
    return [f"txt ({len(text)} chars) is not the {len(texts)} clip texts joined by spaces: "
            f"{text[:60]!r}"]


def check_members(sample: Sample) -> list[tuple[str, str]]:
    """(check, message) for the key itself and the set of members it came with."""
    out = []
    if "." in sample.key:
        out.append(("key", f"key {sample.key!r} has a dot: WebDataset would split it at "
                           f"{sample.key.split('.', 1)[0]!r}"))
    elif parse_sample_key(sample.key) is None:
        out.append(("key", f"key {sample.key!r} is not <video_id>_<first clip>_<last clip> "
                           f"of [A-Za-z0-9_-]"))
    for ext in MEMBER_EXTS:
        n = sample.exts.count(ext)
        if n == 0:
            out.append(("members", f"no {sample.key}.{ext} member"))
        elif n > 1:
            out.append(("members", f"{n} {sample.key}.{ext} members"))
    for ext in sorted(set(sample.exts) - set(MEMBER_EXTS)):
        out.append(("members", f"unexpected member {sample.key}.{ext}"))
    return out


# ---------------------------------------------------------------------------------------
# decoding


def decode_problems(path: Path, meta: dict | None) -> list[tuple[str, str]]:
    """Decode the whole mp4 (ffmpeg -xerror) and compare its duration with the json's."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-xerror", *INPUT_GUARD,
           "-i", str(path), "-f", "null", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=DECODE_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [("decode", f"ffmpeg did not finish within {DECODE_TIMEOUT:.0f} s")]
    err = [ln.strip() for ln in res.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if res.returncode != 0 or err:
        first = err[0][:200] if err else "no message"
        return [("decode", f"ffmpeg exit {res.returncode}, {len(err)} error line(s): {first}")]
    try:
        got = probe(path)
    except (MediaError, ValueError, KeyError, TypeError) as e:  # whatever the file makes ffprobe say
        return [("decode", f"ffprobe: {e}")]
    if not meta or not _type_ok(meta.get("duration"), _NUM) or not _type_ok(meta.get("fps"), _NUM) \
            or meta["fps"] <= 0:
        return []
    tol = 1.0 / meta["fps"] + DURATION_SLACK
    if abs(got.duration - meta["duration"]) > tol:
        return [("duration", f"video is {got.duration:.3f} s, json says {meta['duration']:.3f} s "
                             f"(tolerance {tol:.3f} s)")]
    return []


class DecodePool:
    """Decode mp4s on a few threads while the tar is read; at most 2 per worker wait."""

    def __init__(self, workers: int, sink: Callable[[Sample, list[tuple[str, str]]], None]):
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.limit = 2 * max(1, workers)
        self.sink = sink
        self.pending: list[tuple[Sample, dict | None, Future]] = []

    def submit(self, sample: Sample, meta: dict | None) -> None:
        self.pending.append((sample, meta, self.pool.submit(decode_problems, sample.mp4, meta)))
        while len(self.pending) > self.limit:
            self._finish(self.pending.pop(0))

    def drain(self) -> None:
        while self.pending:
            self._finish(self.pending.pop(0))

    def _finish(self, item: tuple[Sample, dict | None, Future]) -> None:
        sample, _, fut = item
        try:
            self.sink(sample, fut.result())
        finally:
            if sample.mp4 is not None:
                sample.mp4.unlink(missing_ok=True)

    def close(self) -> None:
        self.drain()
        self.pool.shutdown()


# ---------------------------------------------------------------------------------------
# reading a shard


class _HashingReader(io.RawIOBase):
    """A read-only stream that keeps the MD5 and count of every byte read through it."""

    def __init__(self, src):
        self.src, self.md5, self.size = src, hashlib.md5(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.src.read(len(b))
        n = len(data)
        b[:n] = data
        self.md5.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        """Read what is left, so MD5 and size cover the whole file however the tar ended."""
        while chunk := self.src.read(1 << 20):
            self.md5.update(chunk)
            self.size += len(chunk)


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dst: Path | None) -> bytes | None:
    """The member's bytes (json/txt), or its data copied to `dst` (mp4)."""
    f = tar.extractfile(m)
    if f is None:
        return None
    if dst is not None:
        with open(dst, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        return None
    return f.read()


class ShardReader:
    """Reads one shard and hands each complete sample on; tar-level problems are rows."""

    def __init__(self, entry: ShardEntry, tmp: Path, decode: bool,
                 report: Callable[[str | None, str, str], None],
                 on_sample: Callable[[Sample], None], tick: Callable[[int], None]):
        self.entry, self.tmp, self.decode = entry, tmp, decode
        self.report, self.on_sample, self.tick = report, on_sample, tick
        self.samples = 0

    def read(self, fs, path: str) -> int:
        """Stream the tar; returns the bytes read (the file size)."""
        with fs.open(path, "rb") as raw:
            src = _HashingReader(raw)
            end = self._read_tar(src)
            src.drain()
        if end is not None:
            self._check_end(fs, path, end)
        self._check_index(src)
        return src.size

    def _read_tar(self, src: _HashingReader) -> int | None:
        """Group members into samples; the offset where the end marker should be, or None."""
        current: Sample | None = None
        try:
            with tarfile.open(fileobj=src, mode="r|") as tar:
                for m in tar:
                    current = self._member(tar, m, current)
                if current is not None:
                    self._emit(current)
                    current = None
                return tar.offset
        except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as e:
            where = f" in sample {current.key}" if current is not None else ""
            self.report(current.key if current else None, "tar",
                        f"cannot read the tar after {src.size} bytes{where}: {str(e) or type(e).__name__}")
            if current is not None and current.mp4 is not None:
                current.mp4.unlink(missing_ok=True)
            return None

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, current: Sample | None) -> Sample | None:
        stem, dot, ext = m.name.rpartition(".")
        if not m.isreg() or not dot:
            self.report(None, "members", f"member {m.name!r} is not a regular {{key}}.ext file")
            return current
        if current is None or stem != current.key:
            if current is not None:
                self._emit(current)
            current = Sample(stem, self.entry.url, self.entry.split)
        current.exts.append(ext)
        if ext == "mp4" and current.offset is None:
            current.offset = m.offset
            if self.decode:
                current.mp4 = self.tmp / f"{self.samples}-{len(current.exts)}.mp4"
                _read_member(tar, m, current.mp4)
        elif ext in ("json", "txt") and ext not in current.data:
            if m.size > MAX_TEXT_MEMBER:
                self.report(current.key, "members", f"{m.name} is {human_bytes(m.size)}: too large")
            else:
                current.data[ext] = _read_member(tar, m, None) or b""
        return current

    def _emit(self, sample: Sample) -> None:
        self.samples += 1
        self.tick(self.samples)
        self.on_sample(sample)

    def _check_end(self, fs, path: str, end: int) -> None:
        """tarfile stops quietly at a bad or truncated header: require the zero end blocks."""
        with fs.open(path, "rb") as f:
            f.seek(end)
            tail = f.read(1024)
        if len(tail) < 1024 or tail.strip(b"\0"):
            self.report(None, "tar", f"no valid header or end-of-archive marker at byte {end} "
                                     f"(truncated or corrupt)")

    def _check_index(self, src: _HashingReader) -> None:
        e = self.entry
        if e.filesize is not None and src.size != e.filesize:
            self.report(None, "size", f"{src.size} bytes, index says {e.filesize}")
        if e.md5sum is not None and src.md5.hexdigest() != e.md5sum.lower():
            self.report(None, "md5", f"MD5 {src.md5.hexdigest()}, index says {e.md5sum}")
        if e.nsamples is not None and self.samples != e.nsamples:
            self.report(None, "nsamples", f"{self.samples} samples, index says {e.nsamples}")


# ---------------------------------------------------------------------------------------
# the shard set


def _index_entries(fs, root: str, name: str, split: str) -> tuple[list[ShardEntry], list[str]]:
    """The shards an index lists, and what is wrong with the index itself."""
    try:
        doc = json.loads(fs.cat_file(f"{root}/{name}"))
    except (OSError, ValueError) as e:
        return [], [f"{name} is not readable JSON: {e}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("shardlist"), list):
        return [], [f"{name} has no shardlist"]
    errors = [] if doc.get("__kind__") == INDEX_KIND else [f"{name} __kind__ is not {INDEX_KIND!r}"]
    entries = []
    spec = {"url": _STR, "nsamples": _INT, "filesize": _INT, "md5sum": _STR}
    for i, s in enumerate(doc["shardlist"]):
        where = f"{name} shardlist[{i}] "
        bad = _field_errors(s, spec, where) if isinstance(s, dict) else [f"{where}is not an object"]
        if not bad and (s["url"].startswith("/") or ".." in s["url"].split("/") or "://" in s["url"]):
            bad = [f"{where}url {s['url']!r} is not relative to the index"]
        if bad:
            errors += bad
            continue
        entries.append(ShardEntry(s["url"], split, s["nsamples"], s["filesize"], s["md5sum"]))
    return entries, errors


def _split_indexes(fs, root: str) -> list[tuple[str, str]]:
    """(file name, split) of every index: train.json and val.json, plus any other wids index."""
    out = []
    for path in sorted(fs.glob(f"{root}/*.json")):
        name = path.rsplit("/", 1)[-1]
        if name in INDEX_NAMES:
            out.append((name, name[:-5]))
        elif name not in ("stats.json", "shard.json"):
            try:
                if json.loads(fs.cat_file(path)).get("__kind__") == INDEX_KIND:
                    out.append((name, name[:-5]))
            except (OSError, ValueError, AttributeError):
                pass
    return out


MANIFEST_COLUMNS = ["key", "split", "shard", "offset"]


def _manifest_rows(fs, root: str) -> tuple[Callable[[], Iterator[tuple]] | None, str | None]:
    """The manifest's (key, split, shard, offset) rows in key order, streamed (`manifest/`
    parts or an older `manifest.parquet`; one not sorted by key goes through the external
    sort): None when there is none or it is unreadable, then with the reason. A first pass
    reads the four columns a batch at a time, so a bad file is found before any check."""
    files = tables.parquet_files(fs, root, "manifest")
    if not tables.has_table(fs, root, "manifest"):
        return None, None
    ordered, last = True, None
    try:
        for batch in tables.iter_batches(fs, files, MANIFEST_COLUMNS):
            keys = batch.column("key")
            if keys.null_count or pc.cast(batch.column("offset"), pa.int64()).null_count:
                raise ValueError("a key or offset is null")
            if len(keys):
                ordered = ordered and (last is None or keys[0].as_py() >= last) and \
                    not pc.any(pc.less(keys[1:], keys[:-1])).as_py()
                last = keys[-1].as_py()
    except Exception as e:  # any unreadable or ill-typed parquet is a finding, not a crash
        return None, f"the manifest is not readable: {e}"

    def batches() -> Iterator[pa.Table]:
        for batch in tables.iter_batches(fs, files, MANIFEST_COLUMNS):
            yield pa.Table.from_batches([batch]).set_column(3, "offset", pc.cast(batch.column("offset"), pa.int64()))

    def rows() -> Iterator[tuple]:
        chunks: Iterable[pa.Table] = batches()
        if not ordered:
            sorter = None
            for t in chunks:
                sorter = sorter or tables.ExternalSort(t.schema, ["key"])
                sorter.add(t)
            chunks = sorter.sorted_chunks() if sorter else []
        for t in chunks:
            yield from zip(*(t.column(c).to_pylist() for c in MANIFEST_COLUMNS))
    return rows, None


class _Read:
    """Every sample read, in order: (key, shard, split, offset), compact (Arrow columns,
    one table per shard): duplicates and the manifest are checked at the end against it,
    sorted by key, instead of holding the keys and the manifest in dicts."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.rows: list[tuple] = []

    def add(self, sample: Sample) -> None:
        self.rows.append((sample.key, sample.shard, sample.split, sample.offset))

    def end_shard(self) -> None:
        if self.rows:
            cols = list(zip(*self.rows))
            self.tables.append(pa.table({"key": pa.array(cols[0], pa.string()),
                                         "shard": pa.array(cols[1], pa.string()).dictionary_encode(),
                                         "split": pa.array(cols[2], pa.string()).dictionary_encode(),
                                         "offset": pa.array(cols[3], pa.int64())}))
            self.rows = []

    def by_key(self) -> Iterator[tuple[str, list[tuple]]]:
        """(key, its samples in reading order), keys in order (a stable sort)."""
        self.end_shard()
        if not self.tables:
            return
        t = pa.concat_tables(self.tables, promote_options="permissive")
        self.tables = []
        t = t.take(pc.sort_indices(t, sort_keys=[("key", "ascending")]))
        group: list[tuple] = []
        for b in t.to_batches(max_chunksize=8192):
            for row in zip(*(b.column(c).to_pylist() for c in ("key", "shard", "split", "offset"))):
                if group and row[0] != group[0][0]:
                    yield group[0][0], group
                    group = []
                group.append(row)
        if group:
            yield group[0][0], group


class Verifier:
    """Holds the state of one verify run: the report, keys seen, the manifest, the pool."""

    def __init__(self, shard_dir: str, decode: bool, progress: Callable[[str], None],
                 workers: int):
        self.shard_dir = shard_dir.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.shard_dir)
        self.decode, self.progress, self.workers = decode, progress, workers
        self.report = VerifyReport(shard_dir)
        self.read = _Read()
        self.shard: str | None = None
        self._last_tick = time.monotonic()

    def problem(self, shard: str | None, key: str | None, check: str, message: str) -> None:
        self.report.problems.append(Problem(shard, key, check, message))

    def run(self) -> VerifyReport:
        entries = self._entries()
        manifest, err = _manifest_rows(self.fs, self.root)
        if err:
            self.problem(None, None, "manifest", err)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lfvila-verify-") as tmp:
            pool = DecodePool(self.workers, self._decoded) if self.decode else None
            try:
                for i, entry in enumerate(entries, 1):
                    self._shard(entry, Path(tmp), pool)
                    self.progress(f"verify: [{i}/{len(entries)}] {entry.url}: "
                                  f"{self.report.samples} samples, {human_bytes(self.report.bytes)}, "
                                  f"{len(self.report.problems)} problems, "
                                  f"elapsed {human_time(time.monotonic() - started)}")
            finally:
                if pool is not None:
                    pool.close()
        self._check_keys(manifest)
        self.report.problems.sort(key=lambda p: (p.shard or "", p.key or "", p.check))
        return self.report

    def _entries(self) -> list[ShardEntry]:
        """Indexed shards in index order, then every unindexed .tar (a problem each)."""
        entries: list[ShardEntry] = []
        for name, split in _split_indexes(self.fs, self.root):
            found, errors = _index_entries(self.fs, self.root, name, split)
            for e in errors:
                self.problem(None, None, "index", e)
            entries += found
        if not entries and not any(self.fs.exists(f"{self.root}/{n}") for n in INDEX_NAMES):
            self.problem(None, None, "index", f"no {' or '.join(INDEX_NAMES)} in {self.shard_dir}")
        listed: dict[str, ShardEntry] = {}
        for e in entries:
            if e.url in listed:
                self.problem(e.url, None, "index", "shard is listed more than once in the indexes")
            else:
                listed[e.url] = e
        for path in sorted(self.fs.glob(f"{self.root}/*.tar")):
            name = path.rsplit("/", 1)[-1]
            if name not in listed:
                self.problem(name, None, "unindexed", "shard is in no index (train.json/val.json)")
                listed[name] = ShardEntry(name, None)
        return list(listed.values())

    def _shard(self, entry: ShardEntry, tmp: Path, pool: DecodePool | None) -> None:
        path = f"{self.root}/{entry.url}"
        self.shard = entry.url
        if not self.fs.exists(path):
            self.problem(entry.url, None, "missing", "shard listed in the index does not exist")
            return
        self.report.shards += 1
        reader = ShardReader(entry, tmp, self.decode,
                             lambda key, check, msg: self.problem(entry.url, key, check, msg),
                             lambda s: self._sample(s, pool), self._tick)
        self.report.bytes += reader.read(self.fs, path)
        self.read.end_shard()
        if pool is not None:
            pool.drain()

    def _tick(self, n: int) -> None:
        now = time.monotonic()
        if now - self._last_tick >= PROGRESS_EVERY_S:
            self._last_tick = now
            self.progress(f"verify: {self.shard}: {n} samples read")

    def _sample(self, sample: Sample, pool: DecodePool | None) -> None:
        """All checks of one sample; the mp4 goes to the decode pool."""
        self.report.samples += 1
        add = lambda check, msg: self.problem(sample.shard, sample.key, check, msg)  # noqa: E731
        for check, msg in check_members(sample):
            add(check, msg)
        self.read.add(sample)
        meta = self._meta(sample, add)
        if pool is not None and sample.mp4 is not None:
            pool.submit(sample, meta)

    def _meta(self, sample: Sample, add: Callable[[str, str], None]) -> dict | None:
        """The parsed json when it passes its own checks (then the txt is checked too)."""
        if "json" not in sample.data:
            return None
        try:
            meta = json.loads(sample.data["json"].decode("utf-8"), parse_constant=_not_json)
        except (UnicodeDecodeError, ValueError) as e:
            add("json", f"json does not parse: {e}")
            return None
        errors = check_meta(sample.key, meta)
        for check, msg in errors:
            add(check, msg)
        if any(check == "json" for check, _ in errors):
            return None
        if "txt" in sample.data:
            for msg in check_txt(meta, sample.data["txt"]):
                add("txt", msg)
        return meta

    def _check_keys(self, manifest: Callable[[], Iterator[tuple]] | None) -> None:
        """Duplicate keys, and the samples read against the manifest (both in key order,
        merged): a key in no manifest row, in another shard, split or offset, and manifest
        keys in no shard. Of duplicate manifest rows the last counts."""
        rows = manifest() if manifest is not None else iter(())
        dup = 0

        def last_per_key() -> Iterator[tuple]:
            nonlocal dup
            prev = None
            for row in rows:
                if prev is not None and row[0] == prev[0]:
                    dup += 1
                elif prev is not None:
                    yield prev
                prev = row
            if prev is not None:
                yield prev

        listed = last_per_key()
        m = next(listed, None)
        for key, samples in self.read.by_key():
            while m is not None and m[0] < key:
                self.problem(m[2], m[0], "manifest", "key is in manifest.parquet but in no shard")
                m = next(listed, None)
            first = samples[0][1]
            for _, shard, _, _ in samples[1:]:
                self.problem(shard, key, "duplicate", f"key also in {first}")
            if manifest is None:
                continue
            if m is None or m[0] != key:
                for _, shard, _, _ in samples:
                    self.problem(shard, key, "manifest", "key is not in manifest.parquet")
                continue
            _, split, shard, offset = m
            for _, s_shard, s_split, s_offset in samples:
                if s_shard != first:  # a duplicate in another shard: reported once already
                    continue
                if shard != s_shard:
                    self.problem(s_shard, key, "manifest", f"manifest puts it in shard {shard}")
                if s_split is not None and split != s_split:
                    self.problem(s_shard, key, "manifest", f"manifest puts it in split {split}, the index in {s_split}")
                if s_offset is not None and offset != s_offset:
                    self.problem(s_shard, key, "manifest",
                                 f"manifest offset {offset}, the .mp4 header is at {s_offset}")
            m = next(listed, None)
        while m is not None:
            self.problem(m[2], m[0], "manifest", "key is in manifest.parquet but in no shard")
            m = next(listed, None)
        if dup:
            self.problem(None, None, "manifest", f"the manifest has {dup} duplicate key row(s)")

    def _decoded(self, sample: Sample, problems: list[tuple[str, str]]) -> None:
        for check, msg in problems:
            self.problem(sample.shard, sample.key, check, msg)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def verify_shards(shard_dir: str, *, decode: bool = True,
                  progress: Callable[[str], None] | None = None,
                  workers: int | None = None) -> VerifyReport:
    """Check a shard directory against the contract, so readers never meet a bad shard.

    `progress` gets a line per shard (and every few seconds within one); None prints them
    to stderr. `workers` decode threads (default: the CPUs, at most 8)."""
    workers = workers or min(8, os.cpu_count() or 1)
    return Verifier(shard_dir, decode, progress or _stderr, workers).run()
