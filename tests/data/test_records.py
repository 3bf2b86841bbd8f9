"""The records and their codecs: the sample key, failure codes, and plan row <->
PlannedSample <-> manifest row round trips on rows as Arrow and pandas give them back."""
from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from lfvila_data.media.cut import Probe
from lfvila_data.media.fetch import FetchError, fetch_code
from lfvila_data.records import (
    Clip,
    Failure,
    FailureCode,
    PlannedSample,
    TimedText,
    paragraph,
    parse_sample_key,
    relative_time,
    sample_key,
)
from lfvila_data.schemas import (
    FAILURE_SCHEMA,
    MANIFEST_SCHEMA,
    PLAN_SCHEMA,
    manifest_row,
    manifest_row_to_sample,
    plan_row_to_sample,
    sample_to_row,
)
from tests.support.realdata import ROOT

# --- the sample key -------------------------------------------------------------------

@pytest.mark.parametrize("video_id, first, last", [
    ("QMi8x8o55Ns", 1, 12), ("a_00001_00002", 3, 4), ("x-_-9", 99999, 123456), ("v", 7, 7)])
def test_sample_key_round_trip(video_id, first, last):
    key = sample_key(video_id, first, last)
    assert "." not in key and parse_sample_key(key) == (video_id, first, last)


@pytest.mark.parametrize("key", [
    "QMi8x8o55Ns", "QMi8x8o55Ns_00001", "QMi8x8o55Ns_1_2", "a.b_00001_00002", "a/b_00001_00002",
    "_00001_00002", "QMi8x8o55Ns_00001_00002.mp4", "QMi8x8o55Ns_0000a_00002", None, 5])
def test_parse_sample_key_rejects(key):
    assert parse_sample_key(key) is None


def test_paragraph_and_relative_time():
    assert paragraph(["a b", None, "", "c"]) == "a b c"
    assert relative_time(12.5, 10.0) == 2.5
    assert relative_time(9.9999999, 10.0) == 0.0          # never before the first frame
    assert relative_time(20.3, 10.0, limit=10.1) == 10.1   # never past the last
    assert relative_time(10.1234567, 10.0) == 0.123457


# --- failures -------------------------------------------------------------------------

def test_failure_code_is_from_the_closed_set():
    f = Failure("v", None, "text", "no_text", "no text for clip")
    assert f.code is FailureCode.NO_TEXT
    with pytest.raises(ValueError):
        Failure("v", None, "text", "no text for clip", "no text for clip")  # reason in the code's place


def test_failure_row_round_trip_through_json_arrow_and_pandas():
    fails = [Failure("v", "v.3.mp4", "text", FailureCode.NO_TEXT, "no text for clip"),
             Failure("w", None, "cut", FailureCode.CUT_FAILED, "ffmpeg: x", False, key="w_00001_00004")]
    rows = [json.loads(json.dumps(f.to_row())) for f in fails]  # as a journal stores them
    assert rows[0]["code"] == "no_text" and [Failure.from_row(r) for r in rows] == fails
    table = pa.Table.from_pylist([f.to_row() for f in fails], schema=FAILURE_SCHEMA)
    assert [Failure.from_row(r) for r in table.to_pylist()] == fails
    assert [Failure.from_row(r) for r in table.to_pandas().to_dict("records")] == fails


def test_failure_rows_of_older_journals_have_no_code():
    old = {"video_id": "v", "clip_id": None, "stage": "download", "reason": "HTTP 404", "permanent": True}
    f = Failure.from_row(old)  # a build resumed from a journal written before codes
    assert f.code is FailureCode.UNCLASSIFIED and f.reason == "HTTP 404" and f.permanent


def test_every_code_is_documented_in_one_line_and_in_the_readme():
    source = (ROOT / "lfvila_data" / "records.py").read_text()
    outputs = (ROOT / "README.md").read_text().split("### Outputs", 1)[1].split("\n### ", 1)[0]
    for code in FailureCode:
        assert re.search(rf'^    {code.name} = "{code.value}" +# \S', source, re.MULTILINE), code
        assert f"`{code.value}`" in outputs, code


@pytest.mark.parametrize("message, permanent, code", [
    ("HTTP Error 404: Not Found", True, FailureCode.NOT_FOUND),
    ("HTTP Error 410: Gone", True, FailureCode.NOT_FOUND),
    ("Private video. Sign in if you've been granted access to this video", True, FailureCode.UNAVAILABLE),
    ("HTTP Error 403: Forbidden", True, FailureCode.UNAVAILABLE),
    ("Unsupported URL: https://example.com/page", True, FailureCode.BAD_URL),
    ("the URL does not serve a readable video: moov atom not found", True, FailureCode.NOT_A_VIDEO),
    ("download exceeds the size cap of 100 bytes", True, FailureCode.TOO_LARGE),
    ("HTTP Error 503: Service Unavailable", False, FailureCode.NETWORK),
    ("HTTP Error 429: Too Many Requests", False, FailureCode.NETWORK),
    ("Connection reset by peer", False, FailureCode.NETWORK),
])
def test_download_errors_get_a_code(message, permanent, code):
    e = FetchError(message, permanent)
    assert fetch_code(message) is code and e.code is code
    assert FetchError(message, permanent, FailureCode.BAD_URL).code is FailureCode.BAD_URL


# --- plan row <-> PlannedSample <-> manifest row --------------------------------------

def _sample() -> PlannedSample:
    """One HD-VILA clip (no sentences of its own) and one of two sentences."""
    return PlannedSample(
        key=sample_key("vid_x", 4, 5), video_id="vid_x", url="https://example.com/v.mp4",
        start=10.25, end=30.0, text_source="subtitles", language="en",
        clips=(Clip("vid_x.4.mp4", 4, 10.25, 18.5, "One clip."),
               Clip("vid_x.5.mp4", 5, 18.5, 30.0, "Two. Sentences.",
                    (TimedText("Two.", 18.5, 20.125), TimedText("Sentences.", 21.0, 30.0)))))


def _readbacks(rows: list[dict], schema: pa.Schema) -> list[list[dict]]:
    table = pa.Table.from_pylist(rows, schema=schema)
    return [table.to_pylist(), table.to_pandas().to_dict("records")]  # pandas: numpy arrays


def test_plan_row_round_trip_as_arrow_and_pandas_return_it():
    s = _sample()
    for rows in _readbacks([sample_to_row(s)], PLAN_SCHEMA):
        assert plan_row_to_sample(rows[0]) == s


def test_manifest_row_round_trip_as_arrow_and_pandas_return_it():
    s = _sample()
    media = Probe(0.0, 19.75, 320, 240, "h264", 3.0, False, 59)
    row = manifest_row(s, "videos/vi/x.mp4", media, 1234, "local")
    assert row["paragraph"] == "One clip. Two. Sentences." and row["duration"] == 19.75
    assert row["clips"][0]["sentences"] == [{"text": "One clip.", "start": 10.25, "end": 18.5}]
    for rows in _readbacks([row], MANIFEST_SCHEMA):
        back = manifest_row_to_sample(rows[0])
        assert back == s
        assert manifest_row(back, "videos/vi/x.mp4", media, 1234, "local") == row
