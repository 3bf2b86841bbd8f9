"""The text stage's network bytes (subtitle look-ups, speech recognition's audio) in the
build's totals: carried over reruns in the text journal and added to `counts.fetched_bytes`
(pure, on a real output directory)."""

from lfvila_data.build import with_text_bytes
from lfvila_data.output.write import DONE, RETRY, OutputDir, journal_fetched_bytes, journal_status
from lfvila_data.progress import fetched_split
from lfvila_data.text.stage import TEXT_DIR, TextJournal, TextOutcome


def _run(out: OutputDir, outcomes: list[TextOutcome]) -> None:
    journal = TextJournal(out, journal_status(out, TEXT_DIR))
    for o in outcomes:
        journal.add(o)
    journal.flush()


def test_a_redone_video_carries_its_earlier_bytes_and_a_reused_one_is_not_counted_again(tmp_path):
    out = OutputDir(str(tmp_path))
    _run(out, [TextOutcome("net", "u", status=RETRY, fetched_bytes=700),  # the read failed half way
               TextOutcome("ok", "u", fetched_bytes=1_000),
               TextOutcome("local", "u")])
    assert journal_fetched_bytes(out, TEXT_DIR) == 1_700
    _run(out, [TextOutcome("net", "u", fetched_bytes=900)])  # the rerun redoes only `net`
    assert journal_status(out, TEXT_DIR) == {"net": DONE, "ok": DONE, "local": DONE}
    assert journal_fetched_bytes(out, TEXT_DIR) == 700 + 900 + 1_000
    _run(out, [])  # nothing left to redo: nothing fetched, nothing counted twice
    assert journal_fetched_bytes(out, TEXT_DIR) == 2_600
    assert journal_fetched_bytes(OutputDir(str(tmp_path / "none")), TEXT_DIR) == 0


def test_the_totals_and_their_split():
    counts = with_text_bytes({"fetched_bytes": 3 << 20, "download_bytes": 1 << 20}, 1 << 19)
    assert counts == {"fetched_bytes": (3 << 20) + (1 << 19), "text_fetched_bytes": 1 << 19,
                      "download_bytes": 1 << 20}
    assert fetched_split(counts["fetched_bytes"], counts["text_fetched_bytes"]) == \
        " = videos 3.0 MB + text 512.0 KB"
    assert fetched_split(3 << 20, 0) == ""
