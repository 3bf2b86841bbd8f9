"""Planning from published clip-id groups (LF-VILA-8M's `lfvila8m_clipid.jsonl`): each line
is one sample, a JSON list of HD-VILA clip ids (or of objects with `clip_id`), and the
plan is exactly those groups, with their texts from the clip-text file.

Groups ride the same shuffle as metadata and text (`plan.join`): map tasks parse byte
ranges of the group files and hash each group by its first clip's video into the same
buckets, so a reduce task sees a video's clips, texts and groups together and no process
ever holds the whole group file. A group that breaks a rule is dropped whole (an official
sample with one clip missing is no longer that sample), as one ledger row (stage `plan`)
naming its first violation, checked in this order: line not a list of clip ids
(`bad_line`, `bad_clip_id`), clips of several videos (`mixed_videos`), clip numbers not
increasing (`clips_out_of_order`), a clip unknown in the metadata (`unknown_clip`), a clip
without text (`no_text`), a clip already in an earlier group of the files (`clip_in_two_groups`;
earlier = file order, then byte order). Groups are never chunked or filtered by
--min-clips/--max-clips/--max-gap: one group is one sample."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from lfvila_data.plan.join import (
    _failure_table,
    _nonblank_lines,
    _split,
    _split_failures,
    _write_parquet,
    bucket_of,
    count_drop,
)
from lfvila_data.records import (
    Clip,
    Failure,
    FailureCode,
    PlannedSample,
    Stage,
    parse_clip_id,
    sample_key,
    words_of,
)
from lfvila_data.schemas import PLAN_SCHEMA, sample_to_row
from lfvila_data.sources.hdvila import _short

GROUP_SCHEMA = pa.schema([("video_id", pa.string()), ("file_idx", pa.int32()), ("offset", pa.int64()),
                          ("clip_ids", pa.list_(pa.string()))])


def parse_group_line(line: str | bytes) -> list[str] | Failure:
    """The clip ids of one group line (a JSON list of clip-id strings or of objects with
    `clip_id`), or the ledger row saying why the line is not a group."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return _bad(None, None, FailureCode.BAD_LINE, f"malformed JSON ({exc.__class__.__name__}) in group "
                                                      f"line {_short(line)}")
    if not isinstance(obj, list) or not obj:
        return _bad(None, None, FailureCode.BAD_LINE, f"group line is not a non-empty JSON list: {_short(obj)}")
    ids = []
    for i, item in enumerate(obj):
        clip_id = item.get("clip_id") if isinstance(item, dict) else item
        if not isinstance(clip_id, str):
            return _bad(None, None, FailureCode.BAD_LINE, f"group item #{i} is neither a clip-id string nor an "
                                                          f"object with 'clip_id': {_short(item)}")
        if parse_clip_id(clip_id) is None:
            return _bad(None, None, FailureCode.BAD_CLIP_ID, f"group item #{i} {_short(clip_id)} is not "
                                                             "<video_id>.<k>.mp4 with k >= 1")
        ids.append(clip_id)
    return ids


def _bad(video_id: str | None, clip_id: str | None, code: FailureCode, reason: str) -> Failure:
    return Failure(video_id, clip_id, Stage.PLAN.value, code, reason)


def map_groups_range(file_idx: int, path: str, start: int, end: int, num_buckets: int,
                     task_no: int) -> tuple[list[dict], dict]:
    """Parse the group lines of one byte range into per-bucket group/failure tables; a
    group goes to the bucket of its first clip's video."""
    rows: dict[str, list] = {n: [] for n in GROUP_SCHEMA.names}
    buckets: list[int] = []
    failures: list[Failure] = []
    lines = 0
    for offset, line in _nonblank_lines(path, start, end):
        lines += 1
        parsed = parse_group_line(line)
        if isinstance(parsed, Failure):
            failures.append(Failure(parsed.video_id, parsed.clip_id, parsed.stage, parsed.code,
                                    f"{parsed.reason} (groups file #{file_idx}, byte {offset})"))
            continue
        video_id = parse_clip_id(parsed[0])[0]
        for name, value in zip(GROUP_SCHEMA.names, (video_id, file_idx, offset, parsed)):
            rows[name].append(value)
        buckets.append(bucket_of(video_id, num_buckets))
    g_parts = _split(pa.table(rows, schema=GROUP_SCHEMA), buckets, num_buckets)
    f_parts = _split_failures(failures, num_buckets, task_no)
    parts = [{"groups": g, "failures": f} for g, f in zip(g_parts, f_parts)]
    return parts, {"lines": lines, "clips": 0, "failures": len(failures)}


def check_group(ids: list[str], known: dict[str, Clip], claimed: set[str]) -> Failure | None:
    """The first rule a parsed group breaks (see the module doc for the order), or None."""
    parsed = [parse_clip_id(c) for c in ids]
    vid = parsed[0][0]
    where = f"group of {len(ids)} clips starting at {ids[0]}"
    for clip_id, (v, _) in zip(ids, parsed):
        if v != vid:
            return _bad(vid, clip_id, FailureCode.MIXED_VIDEOS, f"{where}: {clip_id} is of video {v!r}, "
                                                                f"not {vid!r}")
    for prev, (clip_id, (_, k)) in zip(parsed, list(zip(ids, parsed))[1:]):
        if k <= prev[1]:
            return _bad(vid, clip_id, FailureCode.CLIPS_OUT_OF_ORDER,
                        f"{where}: clip number {k} follows {prev[1]} (repeated or out of order)")
    for clip_id in ids:
        if clip_id not in known:
            return _bad(vid, clip_id, FailureCode.UNKNOWN_CLIP, f"{where}: {clip_id} is not in the metadata "
                                                                "(or its video or span was rejected)")
    for clip_id in ids:
        if not known[clip_id].text:
            return _bad(vid, clip_id, FailureCode.NO_TEXT, f"{where}: {clip_id} has no text")
    for clip_id in ids:
        if clip_id in claimed:
            return _bad(vid, clip_id, FailureCode.CLIP_IN_TWO_GROUPS,
                        f"{where}: {clip_id} is already in an earlier group")
    return None


def plan_groups(groups: pa.Table, urls: dict[str, str], clips: pa.Table,
                stats: Counter) -> tuple[list[PlannedSample], list[Failure]]:
    """One bucket's groups as samples, in file order; `clips` holds the bucket's known
    clips with their text (null when none), `urls` its videos. Counts go to `stats`."""
    cols = [clips.column(n).to_pylist() for n in ("clip_id", "k", "start", "end", "text")]
    known = {cid: Clip(cid, k, s, e, t) for cid, k, s, e, t in zip(*cols)}
    groups = groups.sort_by([("file_idx", "ascending"), ("offset", "ascending")])
    samples: list[PlannedSample] = []
    failures: list[Failure] = []
    claimed: set[str] = set()
    rejected: set[str] = set()
    for ids in groups.column("clip_ids").to_pylist():
        stats["groups_read"] += 1
        bad = check_group(ids, known, claimed)
        if bad is not None:
            failures.append(bad)
            stats[f"groups_rejected:{bad.code.value}"] += 1
            rejected.update(ids)
            continue
        claimed.update(ids)
        chosen = tuple(known[c] for c in ids)
        vid = parse_clip_id(ids[0])[0]
        samples.append(PlannedSample(key=sample_key(vid, chosen[0].k, chosen[-1].k), video_id=vid,
                                     url=urls[vid], start=chosen[0].start, end=chosen[-1].end, clips=chosen))
    stats["groups_planned"] += len(samples)
    _count_words(known, claimed, rejected, stats)
    return samples, failures


def _count_words(known: dict[str, Clip], claimed: set[str], rejected: set[str], stats: Counter) -> None:
    """The word account of a groups plan: every parsed text is in a sample, in a rejected
    group only, or in no group."""
    for cid, clip in known.items():
        words = words_of(clip.text)
        stats["words_parsed"] += words
        if cid in claimed:
            stats["words_in_samples"] += words
        elif clip.text:
            reason = "rejected_group" if cid in rejected else "not_in_groups"
            count_drop(stats, reason, clips=1, words=words, seconds=clip.end - clip.start)


def reduce_groups(bucket: int, group_parts: list[pa.Table], videos: pa.Table, clips: pa.Table,
                  failures: list[Failure], stats: Counter, out_dir: str) -> dict:
    """`reduce_bucket` for a groups plan: plan the bucket's groups and write its part files."""
    groups = pa.concat_tables(group_parts) if group_parts else GROUP_SCHEMA.empty_table()
    urls = dict(zip(videos.column("video_id").to_pylist(), videos.column("url").to_pylist()))
    samples, fails = plan_groups(groups, urls, clips, stats)
    for f in failures:  # group lines the map could not parse
        if f.stage == Stage.PLAN.value:
            stats["groups_read"] += 1
            stats[f"groups_rejected:{f.code.value}"] += 1
    failures = sorted(failures + fails, key=lambda f: (f.stage, f.video_id or "", f.clip_id or "", f.reason))
    with_samples = {s.video_id for s in samples}
    stats["videos"] += len(urls)
    stats["videos_with_samples"] += len(with_samples)
    stats["clips_total"] += clips.num_rows
    stats["samples"] = len(samples)
    stats["clips_in_samples"] = sum(len(s.clips) for s in samples)
    stats["seconds"] = sum(s.duration for s in samples)
    samples.sort(key=lambda s: s.key)
    _write_parquet(pa.Table.from_pylist([sample_to_row(s) for s in samples], schema=PLAN_SCHEMA),
                   out_dir, f"part-{bucket:05d}.parquet")
    _write_parquet(_failure_table(failures), out_dir, f"failures-{bucket:05d}.parquet")
    return {"counts": dict(stats), "failures_by_stage": dict(Counter(f.stage for f in failures))}
