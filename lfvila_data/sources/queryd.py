"""`--source queryd`: QuerYD (its audio descriptions, `raw_captions_combined_filtered[-v2].pkl`
and `times_captions_combined_filtered[-v2].pkl`, or the same as `.json`) as a
paragraph-to-video retrieval benchmark; planning is `sources.benchmark`'s.

Both files map a video id (`video-` + the 11-character YouTube id) to a list in the
same order: the descriptions (each a string, or a list of its words) and their
`[start, end]` seconds. The files have no duration: a sample ends at the local file's
end, else at its last description's. Videos are fetched by YouTube id, or read from
`--video-dir` files named by YouTube id (with or without `video-`); split files
(`train_list.txt`, `val_list.txt`, `test_list.txt`) list ids with `video-`. Without a
split file every sample's split is `all`.

The pickles are read by an unpickler that builds only plain containers, numbers,
strings and numpy arrays, so a crafted file cannot run code."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import fsspec

from lfvila_data.inputs import InputError
from lfvila_data.records import Failure, FailureCode, TimedText, is_safe_video_id
from lfvila_data.sources.benchmark import (
    YOUTUBE_URL,
    AnnotatedVideo,
    BenchmarkFormat,
    load_json,
    metadata_failure,
    number,
    unsafe_id,
)

PREFIX = "video-"
# what numpy arrays and scalars pickle to, and nothing else
_NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
          ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
          ("numpy", "ndarray"), ("numpy", "dtype")}


def queryd_id(name: str) -> str:
    """QuerYD's `video-__5k7e0f3r4` and a file `__5k7e0f3r4.mp4` both name YouTube's `__5k7e0f3r4`."""
    return name[len(PREFIX):] if name.startswith(PREFIX) and len(name) > len(PREFIX) else name


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it holds a {module}.{name}, not plain lists and strings")


def _plain(x: object) -> object:
    """numpy arrays and scalars as lists and Python numbers."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def load_mapping(path: str) -> dict:
    """A `.pkl` or `.json` file of video id -> list, or one line saying why it is not."""
    if Path(path).suffix.lower() == ".pkl":
        with fsspec.open(path, "rb") as f:
            try:
                data = _plain(_PlainUnpickler(io.BytesIO(f.read())).load())
            except Exception as e:  # noqa: BLE001 - any unpickling error is a bad input file
                raise InputError(f"annotation file {path!r} is not a QuerYD pickle: {e}") from None
    else:
        data = load_json(path)
    if not isinstance(data, dict):
        raise InputError(f"annotation file {path!r} is not a mapping of video id to a list")
    return data


def caption_text(caption: object) -> str:
    """A description as a string: QuerYD stores some as their list of words."""
    if isinstance(caption, list) and all(isinstance(w, str) for w in caption):
        caption = " ".join(caption)
    return " ".join(caption.split()) if isinstance(caption, str) else ""


def parse_video(vid: str, captions: object, times: object) -> tuple[AnnotatedVideo | None, list[Failure]]:
    """One video's descriptions and their spans, or the row saying why not."""
    if not is_safe_video_id(vid):
        return None, [unsafe_id(vid)]
    if not isinstance(captions, list) or not isinstance(times, list) or len(captions) != len(times):
        return None, [metadata_failure(vid, FailureCode.BAD_LINE, "descriptions and times must be lists of "
                                       "the same length")]
    segments, failures = [], []
    for i, (caption, span) in enumerate(zip(captions, times)):
        text = caption_text(caption)
        if not text:
            failures.append(metadata_failure(vid, FailureCode.NO_TEXT, f"description {i + 1} is empty; dropped"))
            continue
        a, b = (number(span[0]), number(span[1])) if isinstance(span, list) and len(span) == 2 else (None, None)
        if a is None or b is None or a < 0 or b <= a:
            failures.append(metadata_failure(vid, FailureCode.BAD_SPAN, f"description {i + 1} span "
                                             f"{str(span)[:40]} is not [start, end] with 0 <= start < end; dropped"))
            continue
        segments.append(TimedText(text, a, b))
    return AnnotatedVideo(vid, None, tuple(segments), "all", YOUTUBE_URL.format(queryd_id(vid))), failures


def read_queryd(paths: list[str]) -> tuple[list[AnnotatedVideo], list[Failure]]:
    """Every video of the description files, with the times of the times files."""
    kinds = {"raw_captions": {}, "times_captions": {}}
    for path in paths:
        kind = next((k for k in kinds if Path(path).name.startswith(k)), None)
        if kind is None:
            raise InputError(f"--source queryd reads raw_captions*.pkl and times_captions*.pkl (or .json), "
                             f"not {Path(path).name!r}")
        for vid, value in load_mapping(path).items():
            kinds[kind].setdefault(str(vid), value)
    captions, times = kinds["raw_captions"], kinds["times_captions"]
    if not captions or not times:
        raise InputError("--source queryd needs both a raw_captions and a times_captions file")
    videos, failures = [], []
    for vid, caps in captions.items():
        if vid not in times:
            failures.append(metadata_failure(vid if is_safe_video_id(vid) else None, FailureCode.BAD_LINE,
                                             "no times for this video's descriptions"))
            continue
        video, fails = parse_video(vid, caps, times[vid])
        failures += fails
        if video is not None:
            videos.append(video)
    return videos, failures


QUERYD = BenchmarkFormat("queryd", read_queryd, queryd_id)
