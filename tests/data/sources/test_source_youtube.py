"""`--source youtube`: URL lists, subtitle choice (human before automatic, languages in
order), and a real yt-dlp build against loopback web pages with <track> subtitles."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.inputs import InputError
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from lfvila_data.records import FailureCode
from lfvila_data.sources.youtube import (
    AUTO,
    HUMAN,
    available_tracks,
    choose_subtitles,
    parse_entry,
    read_video_list,
    url_video_id,
    youtube_id,
)
from lfvila_data.text.stage import TextOptions
from tests.support.media import decode_times, make_timecoded_video


def vtt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def numbered_vtt(n: int, every: float = 3.5, length: float = 3.0, first: float = 1.0) -> str:
    cues = [f"{vtt_time(first + every * i)} --> {vtt_time(first + every * i + length)}\n"
            f"This is sentence number {i + 1}.\n" for i in range(n)]
    return "WEBVTT\n\n" + "\n".join(cues)


# ------------------------------------------------------------------ pure logic


def test_ids_and_entries():
    assert youtube_id("https://www.youtube.com/watch?v=QMi8x8o55Ns&t=3") == "QMi8x8o55Ns"
    assert youtube_id("https://youtu.be/QMi8x8o55Ns") == "QMi8x8o55Ns"
    assert youtube_id("https://m.youtube.com/shorts/QMi8x8o55Ns") == "QMi8x8o55Ns"
    assert youtube_id("https://example.com/watch?v=QMi8x8o55Ns") is None
    ref, why = parse_entry("QMi8x8o55Ns")
    assert ref.video_id == "QMi8x8o55Ns" and ref.url == "https://www.youtube.com/watch?v=QMi8x8o55Ns"
    ref, _ = parse_entry("http://127.0.0.1:8000/talks/My Talk.html?x=1")
    assert ref.video_id.startswith("My_Talk-") and "." not in ref.video_id
    assert url_video_id("http://a/x.html") != url_video_id("http://b/x.html")
    for bad in ("", "file:///etc/passwd", "not a url", "javascript:alert(1)", 42):
        ref, why = parse_entry(bad)
        assert ref is None and why


def test_read_video_list_formats(tmp_path):
    ids = ["QMi8x8o55Ns", "abcdefghijk"]
    (tmp_path / "a.txt").write_text(f"# my list\n{ids[0]}\n\nhttps://youtu.be/{ids[1]}\nnot-a-url\n")
    (tmp_path / "b.csv").write_text(f"title,url\nx,{ids[0]}\ny,https://example.com/v.html\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"video_id": ids[1]}) + "\n{broken\n")
    pq.write_table(pa.table({"id": [ids[0], "zzzzzzzzzzz"]}), tmp_path / "d.parquet")
    refs, bad = read_video_list([str(tmp_path / n) for n in ("a.txt", "b.csv", "c.jsonl", "d.parquet")])
    assert [r.video_id for r in refs][:2] == ids  # first occurrence wins, no duplicates
    assert {r.video_id for r in refs} == {*ids, "zzzzzzzzzzz", url_video_id("https://example.com/v.html")}
    reasons = sorted(f.reason for f in bad)
    assert len(bad) == 2 and all(f.stage == "metadata" and f.code is FailureCode.BAD_LINE for f in bad)
    assert any("a.txt line 5" in r and "not-a-url" in r for r in reasons)
    assert any("c.jsonl line 2" in r and "bad json" in r for r in reasons)
    (tmp_path / "e.csv").write_text("name\nfoo\n")
    with pytest.raises(InputError, match="no column"):
        read_video_list([str(tmp_path / "e.csv")])


def _track(lang: str, ext: str = "vtt", tlang: str | None = None) -> dict:
    url = f"https://www.youtube.com/api/timedtext?v=x&lang={lang}&fmt={ext}"
    return {"ext": ext, "url": url + (f"&tlang={tlang}" if tlang else ""), "name": lang}


def test_choose_subtitles_prefers_human_then_language_order():
    info = {
        "subtitles": {"de": [_track("de")], "en-GB": [_track("en-GB", "srv3"), _track("en-GB", "srt")]},
        "automatic_captions": {"en": [_track("en", "json3"), _track("en")],
                               "fr": [_track("en", tlang="fr")]},
    }
    t = choose_subtitles(info, ["en"])
    assert (t.lang, t.kind, t.ext) == ("en-GB", HUMAN, "srt")  # human regional before automatic
    assert choose_subtitles(info, ["de", "en"]).lang == "de"
    t = choose_subtitles({"automatic_captions": info["automatic_captions"]}, ["en"])
    assert (t.lang, t.kind, t.ext) == ("en", AUTO, "vtt")
    # a machine translation of the automatic captions is never taken
    assert choose_subtitles({"automatic_captions": info["automatic_captions"]}, ["fr"]) is None
    assert choose_subtitles({"subtitles": {"en": [_track("en", "srv3")]}}, ["en"]) is None
    exact = {"subtitles": {"en-US": [_track("en-US")], "en": [_track("en")]}}
    assert choose_subtitles(exact, ["en"]).lang == "en"
    orig = {"automatic_captions": {"en": [_track("en")], "en-orig": [_track("en-orig")]}}
    assert choose_subtitles(orig, ["en-orig"]).lang == "en-orig"
    assert available_tracks(info) == ("subtitles:de", "subtitles:en-GB", "auto_captions:en")


# ------------------------------------------------------------------ real yt-dlp build


def page(video: str, tracks: dict[str, str]) -> str:
    items = "".join(f'<track kind="subtitles" src="{src}" srclang="{lang}" label="{lang}">'
                    for lang, src in tracks.items())
    return (f"<!DOCTYPE html><html><head><title>{video}</title></head><body><video controls>"
            f'<source src="{video}" type="video/mp4">{items}</video></body></html>')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    make_timecoded_video(root / "talk.mp4", 60, width=160, height=120)
    (root / "talk.en.vtt").write_text(numbered_vtt(16))
    (root / "talk.fr.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:03.000\nBonjour.\n")
    (root / "talk.html").write_text(page("talk.mp4", {"fr": "talk.fr.vtt", "en": "talk.en.vtt"}))
    (root / "french.html").write_text(page("talk.mp4", {"fr": "talk.fr.vtt"}))
    french = ["Bonjour à tous et merci d'être venus si nombreux ce soir.",
              "Nous allons parler de la réforme fiscale et de ce qu'elle change pour chacun.",
              "Les impôts doivent être plus justes, plus simples et mieux compris par tous.",
              "Voilà pourquoi nous proposons aujourd'hui une révolution fiscale."]
    (root / "jlm.vtt").write_text("WEBVTT\n\n" + "\n".join(
        f"{vtt_time(1 + 4 * i)} --> {vtt_time(4 + 4 * i)}\n{french[i % 4]}\n" for i in range(12)))
    (root / "mislabelled.html").write_text(page("talk.mp4", {"en": "jlm.vtt"}))
    (root / "garbage.vtt").write_bytes(b"\x00\xff\x10 nothing here")
    (root / "garbage.html").write_text(page("talk.mp4", {"en": "garbage.vtt"}))
    with MediaServer(root) as srv:
        yield root, srv


@pytest.fixture(scope="module")
def youtube_build(site, tmp_path_factory, ray_module):
    root, srv = site
    lst = tmp_path_factory.mktemp("list") / "videos.txt"
    names = ["talk", "french", "mislabelled", "garbage", "missing"]
    lst.write_text("\n".join(srv.url(f"{n}.html") for n in names) + "\nnot a url\n")
    out = tmp_path_factory.mktemp("yt") / "out"
    cfg = BuildConfig(metadata=(), text=(), output=str(out), source="youtube", inputs=(str(lst),),
                      plan=PlanConfig(max_clips=4), text_opts=TextOptions(langs=("en",)),
                      task=TaskContext(output=str(out), source="youtube",
                                       fetch=FetchConfig(retries=0, backoff=0.1)))
    record = run_build(cfg)
    ids = {n: url_video_id(srv.url(f"{n}.html")) for n in names}
    return out, cfg, ids, record


def test_youtube_build_samples(youtube_build):
    out, _cfg, ids, record = youtube_build
    m = pd.read_parquet(out / "manifest")
    # 16 cues of 3 s every 3.5 s: 5 clips of 3 sentences; one chunk of 4 clips, a tail of 1 dropped
    assert list(m.key) == [f"{ids['talk']}_00001_00004"]
    assert [len(c["sentences"]) for c in m.clips.iloc[0]] == [3, 3, 3, 3]
    assert (m.text_source == "subtitles").all() and (m.language == "en").all() and (m.source == "youtube").all()
    assert list(record["text_options"]["langs"]) == ["en"]
    for row in m.itertuples():
        times = decode_times(out / row.video)
        assert row.start - 0.25 <= times[0] <= row.start + 1 / 3
        for c in row.clips:
            assert " ".join(t["text"] for t in c["sentences"]) == c["text"]
            for t in c["sentences"]:  # cue i is at 1 + 3.5 i, 3 s long
                i = int(t["text"].split()[-1].rstrip(".")) - 1
                assert (t["start"], t["end"]) == pytest.approx((1.0 + 3.5 * i, 4.0 + 3.5 * i), abs=1e-3)


def test_youtube_build_ledger(youtube_build):
    out, _cfg, ids, _ = youtube_build
    f = pd.read_parquet(out / "failures")

    def reasons(name: str) -> list[str]:
        return f[f.video_id == ids[name]].reason.tolist()

    assert any("no subtitles or automatic captions in en" in r and "subtitles:fr" in r for r in reasons("french"))
    assert any("look like 'fr'" in r for r in reasons("mislabelled"))
    assert reasons("garbage") and f[f.video_id == ids["garbage"]].stage.tolist() == ["text"]
    missing = f[f.video_id == ids["missing"]]
    assert missing.stage.tolist() == ["download"] and "404" in missing.reason.iloc[0]
    assert missing.code.tolist() == ["not_found"]
    codes = {name: set(f[f.video_id == ids[name]].code) for name in ("french", "mislabelled", "garbage")}
    assert codes == {"french": {"no_subtitles"}, "mislabelled": {"wrong_language"},
                     "garbage": {"unusable_subtitles"}}
    assert missing.permanent.all()
    bad_line = f[f.stage == "metadata"]
    assert len(bad_line) == 1 and "not a url" in bad_line.reason.iloc[0] and bad_line.code.tolist() == ["bad_line"]


def test_youtube_build_counts_the_subtitle_look_ups_bytes(youtube_build, site):
    """build.json's `text_fetched_bytes`: the pages and subtitle files the look-ups read
    (every byte a build fetches is counted; the cut's are the rest of `fetched_bytes`).
    Subtitle files are read only by the look-ups; pages by the cut's yt-dlp as well."""
    _out, _cfg, _ids, record = youtube_build
    _root, srv = site
    counts = record["counts"]
    vtt = [t for t in srv.transfers if t.name.endswith(".vtt")]
    pages = [t for t in srv.transfers if t.name.endswith(".html")]
    text = counts["text_fetched_bytes"]
    assert vtt and sum(t.sent for t in vtt) < text <= sum(t.sent for t in vtt + pages) + 2048 * len(vtt + pages)
    assert counts["fetched_bytes"] - text > 0  # the video's sections


def test_youtube_rerun_uses_the_text_journal(youtube_build, site):
    out, cfg, _ids, _ = youtube_build
    _root, srv = site
    before = dict(srv.requests)
    manifest = pd.read_parquet(out / "manifest")
    run_build(cfg)
    assert srv.requests["talk.en.vtt"] == before["talk.en.vtt"]  # subtitles not fetched again
    assert srv.requests["missing.html"] == before["missing.html"]  # permanent failure not retried
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), manifest)
    # one more video in the list, other speed settings: only the new video is looked up
    root, _ = site
    (root / "again.html").write_text(page("talk.mp4", {"en": "talk.en.vtt"}))
    lst = Path(cfg.inputs[0])
    lst.write_text(lst.read_text() + srv.url("again.html") + "\n")
    run_build(replace(cfg, text_opts=replace(cfg.text_opts, concurrency=3)))
    assert srv.requests["talk.en.vtt"] == before["talk.en.vtt"] + 1
    m = pd.read_parquet(out / "manifest")
    assert set(m.video_id) == {manifest.video_id.iloc[0], url_video_id(srv.url("again.html"))}


def test_youtube_rerun_with_other_plan_buckets_keeps_the_text_journal(youtube_build, site):
    """--plan-buckets changes how planning is split, never its result: no look-up again."""
    out, cfg, _ids, _ = youtube_build
    _root, srv = site
    before = dict(srv.requests)
    manifest = pd.read_parquet(out / "manifest")
    run_build(replace(cfg, plan=replace(cfg.plan, num_buckets=5)))
    assert srv.requests["talk.en.vtt"] == before["talk.en.vtt"]
    assert srv.requests["talk.html"] == before["talk.html"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest"), manifest)


def test_subtitles_longer_than_the_video_are_recorded():
    from lfvila_data.text.clips import plan_subtitled_video

    samples, failures = plan_subtitled_video("vid", "u", numbered_vtt(16).encode(), "vtt", "en",
                                             PlanConfig(min_clips=1), duration=30.0)
    assert samples and max(s.end for s in samples) <= 31.0
    [f] = [f for f in failures if "past the end" in f.reason]
    assert f.stage == "text" and "video is 30.0 s" in f.reason and "subtitles longer than the video" in f.reason
    assert f.code is FailureCode.SUBTITLES_PAST_END


def test_subtitle_lookup_retries_transient_errors(site):
    from lfvila_data.text.stage import youtube_text

    _root, srv = site
    ref, _ = parse_entry(srv.url("talk.html"))
    opts = TextOptions(langs=("en",))
    srv.fail_transient["talk.html"] = 1
    got = youtube_text(ref, PlanConfig(max_clips=4), opts, FetchConfig(retries=1, backoff=0.05))
    assert got.samples and got.status == "done" and srv.fail_transient["talk.html"] == 0
    srv.fail_transient["talk.html"] = 1
    got = youtube_text(ref, PlanConfig(max_clips=4), opts, FetchConfig(retries=0))
    assert got.status == "retry" and not got.samples
    [f] = got.failures
    assert f.stage == "download" and not f.permanent and "503" in f.reason and f.code is FailureCode.NETWORK


def test_youtube_build_shards_verifies_and_loads(youtube_build, tmp_path):
    from tests.support.endtoend import shard_verify_load

    out = youtube_build[0]
    m = pd.read_parquet(out / "manifest")
    got = shard_verify_load([out], tmp_path)
    assert got["samples"] == len(m) and got["loaded"] == int((m.n_clips >= 4).sum())
