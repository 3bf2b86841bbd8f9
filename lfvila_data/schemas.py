"""The Arrow schemas of the files stages hand on (plan parts, manifest, failure ledger)
and the codecs between their rows and the records of `records.py`, in one place so that
a column is named, typed and read the same way by every stage.

Readers get rows as Arrow's `to_pylist` or pandas' `to_dict("records")` give them: list
columns may arrive as numpy arrays and numbers as numpy scalars, so the decoders never
test a list for truth and convert numbers with float()/int()."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lfvila_data.records import Clip, PlannedSample, TimedText, _text_or_none, parse_clip_id, redact

if TYPE_CHECKING:
    from lfvila_data.media.cut import Probe

# The schemas are built on first use (PEP 562), so a process that only builds rows (a Ray
# cut worker: `manifest_row`) never imports pyarrow, ~0.2 CPU-s per worker process.
_ARROW_NAMES = ("SENTENCE_TYPE", "PLAN_CLIP_TYPE", "PLAN_SCHEMA", "CLIP_TYPE", "MANIFEST_SCHEMA",
               "FAILURE_SCHEMA")


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    # A sentence inside a clip with its own span (source seconds).
    SENTENCE_TYPE = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
    # Plan clips keep k and only the sentences of multi-sentence clips (HD-VILA: empty).
    PLAN_CLIP_TYPE = pa.struct([("clip_id", pa.string()), ("k", pa.int32()), ("start", pa.float64()),
                                ("end", pa.float64()), ("text", pa.string()),
                                ("sentences", pa.list_(SENTENCE_TYPE))])
    PLAN_SCHEMA = pa.schema([
        ("key", pa.string()), ("video_id", pa.string()), ("url", pa.string()),
        ("start", pa.float64()), ("end", pa.float64()), ("duration", pa.float64()),
        ("n_clips", pa.int32()), ("clips", pa.list_(PLAN_CLIP_TYPE)),
        ("text_source", pa.string()), ("language", pa.string()), ("split", pa.string()), ("qa", pa.string()),
    ])
    # Manifest clips always list their sentences (a single-sentence clip is its own sentence).
    CLIP_TYPE = pa.struct([("clip_id", pa.string()), ("start", pa.float64()),
                           ("end", pa.float64()), ("text", pa.string()),
                           ("sentences", pa.list_(SENTENCE_TYPE))])
    MANIFEST_SCHEMA = pa.schema([
        ("key", pa.string()), ("video_id", pa.string()), ("url", pa.string()),
        ("source", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
        ("n_clips", pa.int32()), ("clips", pa.list_(CLIP_TYPE)), ("paragraph", pa.string()),
        ("video", pa.string()), ("fps", pa.float64()), ("width", pa.int32()),
        ("height", pa.int32()), ("duration", pa.float64()), ("frames", pa.int32()),
        ("bytes", pa.int64()), ("text_source", pa.string()), ("language", pa.string()),
        ("split", pa.string()), ("qa", pa.string()),
    ])
    # The ledger: the plan's failure parts and failures.parquet (records.Failure.to_row).
    FAILURE_SCHEMA = pa.schema([
        ("video_id", pa.string()), ("clip_id", pa.string()), ("key", pa.string()),
        ("stage", pa.string()), ("code", pa.string()), ("reason", pa.string()),
        ("permanent", pa.bool_()),
    ])
    return {name: value for name, value in locals().items() if name in _ARROW_NAMES}


def __getattr__(name: str) -> Any:
    if name in _ARROW_NAMES:
        globals().update(_arrow_types())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _timed(rows) -> tuple[TimedText, ...]:
    return tuple(TimedText(t["text"], float(t["start"]), float(t["end"]))
                 for t in (() if rows is None else rows))


def sample_to_row(sample: PlannedSample) -> dict:
    """One plan-parquet row (PLAN_SCHEMA) of a planned sample."""
    return {"key": sample.key, "video_id": sample.video_id, "url": sample.url,
            "start": sample.start, "end": sample.end, "duration": sample.end - sample.start,
            "n_clips": len(sample.clips),
            "clips": [{"clip_id": c.clip_id, "k": c.k, "start": c.start, "end": c.end,
                       "text": c.text, "sentences": [{"text": t.text, "start": t.start, "end": t.end}
                                                     for t in c.sentences]}
                      for c in sample.clips],
            "text_source": sample.text_source, "language": sample.language, "split": sample.split,
            "qa": sample.qa}


def plan_row_to_sample(row: dict) -> PlannedSample:
    """The PlannedSample of one plan-parquet row, for stages that read the plan."""
    clips = tuple(Clip(c["clip_id"], int(c["k"]), float(c["start"]), float(c["end"]), c["text"],
                       _timed(c.get("sentences")))
                  for c in row["clips"])
    return PlannedSample(key=row["key"], video_id=row["video_id"], url=row["url"],
                         start=float(row["start"]), end=float(row["end"]), clips=clips,
                         text_source=row.get("text_source") or "metadata",
                         language=row.get("language"), split=_text_or_none(row.get("split")),
                         qa=_text_or_none(row.get("qa")))


def manifest_row(sample: PlannedSample, rel: str, out: Probe, nbytes: int, source: str) -> dict:
    """One manifest row (MANIFEST_SCHEMA); built the same way for fresh cuts and for
    files found on rerun. Times stay source times."""
    return {
        "key": sample.key, "video_id": sample.video_id, "url": redact(sample.url), "source": source,
        "start": sample.start, "end": sample.end, "n_clips": len(sample.clips),
        "clips": [{"clip_id": c.clip_id, "start": c.start, "end": c.end, "text": c.text,
                   "sentences": c.sentence_rows()} for c in sample.clips],
        "paragraph": sample.paragraph, "video": rel, "fps": round(out.fps, 6),
        "width": out.width, "height": out.height, "duration": round(out.duration, 6),
        "frames": out.nb_frames or 0, "bytes": nbytes,
        "text_source": sample.text_source, "language": sample.language, "split": sample.split,
        "qa": sample.qa,
    }


def manifest_clips(row: dict) -> tuple[Clip, ...]:
    """The clips of a manifest row with their sentences as written (none in a build older
    than sentence spans); k comes from the clip id, or the clip's position for an id not
    of the `<video>.<k>.mp4` form."""
    clips = []
    for i, c in enumerate(row["clips"]):
        parsed = parse_clip_id(c["clip_id"])
        clips.append(Clip(c["clip_id"], parsed[1] if parsed else i + 1, float(c["start"]),
                          float(c["end"]), c["text"], _timed(c.get("sentences"))))
    return tuple(clips)


def manifest_row_to_sample(row: dict) -> PlannedSample:
    """The PlannedSample a manifest row was written from (its file facts left out). A clip
    whose one sentence is the clip itself gets none, as in the plan."""
    clips = tuple(replace(c, sentences=()) if c.sentences == (TimedText(c.text, round(c.start, 6),
                                                                        round(c.end, 6)),) else c
                  for c in manifest_clips(row))
    return PlannedSample(key=row["key"], video_id=row["video_id"], url=row["url"],
                         start=float(row["start"]), end=float(row["end"]), clips=clips,
                         text_source=row.get("text_source") or "metadata",
                         language=row.get("language"), split=_text_or_none(row.get("split")),
                         qa=_text_or_none(row.get("qa")))
