"""`--source local`: local videos with sidecar subtitles become the same long-form
samples, with text from the subtitles aligned to the video."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from lfvila_data.sources.local import find_subtitles, find_videos, local_video_id
from lfvila_data.text.clips import ClipConfig, sentences_to_clips
from lfvila_data.text.sentences import Sentence
from tests.support.media import decode_times, make_timecoded_video
from tests.support.realdata import SUBTITLES as REAL_SUBS


def vtt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def test_sentences_merge_into_clips():
    def s(a, b, text):
        return Sentence(text, a, b, ())
    sentences = [s(0, 3, "One."), s(3.2, 6, "Two."), s(6.1, 9.5, "Three."), s(12, 25, "Long one."),
                 s(25.5, 27, "Short.")]
    clips = sentences_to_clips(sentences, "v", ClipConfig(min_duration=8, max_duration=20, join_gap=1.5))
    assert [(c.k, c.start, c.end, c.text) for c in clips] == [
        (1, 0, 9.5, "One. Two. Three."), (2, 12, 25, "Long one."), (3, 25.5, 27, "Short.")]
    assert [c.clip_id for c in clips] == ["v.1.mp4", "v.2.mp4", "v.3.mp4"]
    assert [(t.text, t.start, t.end) for t in clips[0].sentences] == [
        ("One.", 0, 3), ("Two.", 3.2, 6), ("Three.", 6.1, 9.5)]
    assert clips[1].sentence_rows(origin=10) == [{"text": "Long one.", "start": 2, "end": 15}]


def test_sidecar_lookup_and_ids(tmp_path):
    v = tmp_path / "My Talk (2020).mp4"
    v.write_bytes(b"x")
    assert find_subtitles(v, ["en"]) is None
    (tmp_path / "My Talk (2020).vtt").write_text("WEBVTT\n")
    assert find_subtitles(v, ["en"]) == (tmp_path / "My Talk (2020).vtt", None)
    (tmp_path / "My Talk (2020).en.srt").write_text("1\n")
    assert find_subtitles(v, ["fr", "en"]) == (tmp_path / "My Talk (2020).en.srt", "en")
    vid = local_video_id(v)
    assert vid.startswith("My_Talk_2020-") and "." not in vid and vid == local_video_id(v)
    assert local_video_id(tmp_path / "a" / "x.mp4") != local_video_id(tmp_path / "b" / "x.mp4")


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("local")
    lib = root / "library"
    lib.mkdir()
    make_timecoded_video(lib / "talk.mp4", 90, width=160, height=120)
    cues = []
    for i in range(25):  # a sentence every 3.5 s, 3 s long
        a = 1.0 + 3.5 * i
        cues.append(f"{vtt_time(a)} --> {vtt_time(a + 3.0)}\nThis is sentence number {i + 1}.\n")
    (lib / "talk.en.vtt").write_text("WEBVTT\n\n" + "\n".join(cues))
    make_timecoded_video(lib / "captions.mp4", 60, width=160, height=120)
    shutil.copy(REAL_SUBS / "yt-auto_en_macbook-air-cooling.en.vtt", lib / "captions.en.vtt")
    make_timecoded_video(lib / "silent.mp4", 10, width=160, height=120, audio=False)
    make_timecoded_video(lib / "garbage.mp4", 10, width=160, height=120)
    (lib / "garbage.vtt").write_bytes(b"\x00\x01 not subtitles at all")
    out = root / "out"
    plan = PlanConfig(max_clips=4, allow_local_files=True)
    task = TaskContext(output=str(out), fetch=FetchConfig(allow_local_files=True))
    run_build(BuildConfig(metadata=(), text=(), output=str(out), source="local",
                          inputs=(str(lib),), plan=plan, task=task))
    return out, lib


def test_local_build_samples_and_text(local_build):
    out, lib = local_build
    m = pd.read_parquet(out / "manifest")
    talk = m[m.video_id == local_video_id((lib / "talk.mp4").resolve())]
    # 25 cues of 3 s every 3.5 s: clips of 3 sentences (10 s), chunks of 4 clips, a tail of 1 dropped
    assert [k.split("_", 1)[1] for k in talk.key] == ["00001_00004", "00005_00008"]
    assert (talk.text_source == "subtitles").all() and (talk.language == "en").all()
    assert [len(c["sentences"]) for row in talk.itertuples() for c in row.clips] == [3] * 8
    first = talk.iloc[0]
    assert first.clips[0]["text"].startswith("This is sentence number 1.")
    assert first.start == pytest.approx(1.0)
    for row in talk.itertuples():
        times = decode_times(out / row.video)
        assert row.start - 0.25 <= times[0] <= row.start + 1 / 3
        assert all(row.start <= c["start"] < c["end"] <= row.end for c in row.clips)
        for c in row.clips:  # every sentence keeps its own span: cue i is at 1 + 3.5i, 3 s long
            assert " ".join(t["text"] for t in c["sentences"]) == c["text"]
            for t in c["sentences"]:
                i = int(t["text"].split()[-1].rstrip(".")) - 1
                assert (t["start"], t["end"]) == pytest.approx((1.0 + 3.5 * i, 4.0 + 3.5 * i), abs=1e-3)
    assert max(len(c["sentences"]) for c in first.clips) >= 2  # merged clips keep every sentence
    caps = m[m.video_id == local_video_id((lib / "captions.mp4").resolve())]
    assert len(caps) == 1 and caps.n_clips.iloc[0] == 4 and (caps.text_source == "auto_captions").all()
    assert (caps.end <= 60.5).all()


def test_local_build_ledger(local_build):
    out, lib = local_build
    f = pd.read_parquet(out / "failures")
    silent = f[f.video_id == local_video_id((lib / "silent.mp4").resolve())]
    assert "no subtitles" in silent.reason.iloc[0] and silent.code.tolist() == ["no_subtitles"]
    garbage = f[f.video_id == local_video_id((lib / "garbage.mp4").resolve())]
    assert garbage.stage.tolist() == ["text"] and "unusable subtitles" in garbage.reason.iloc[0]
    assert garbage.code.tolist() == ["unusable_subtitles"]
    caps = f[f.video_id == local_video_id((lib / "captions.mp4").resolve())]
    # captions run past the 60 s video: one text-stage row for the video (issue 9 item 5),
    # not a probe-stage row per clip planned beyond the end
    assert caps.stage.tolist() == ["text"] and caps.code.tolist() == ["subtitles_past_end"]
    assert "video is 60.0 s" in caps.reason.iloc[0]
    assert not (f.stage == "probe").any()
    words = json.loads((out / "build.json").read_text())["plan"]["dropped"]["past_video_end"]["words"]
    assert words > 0  # the words past the end are counted, not lost


def test_media_duration(tmp_path):
    from lfvila_data.media.cut import media_duration

    make_timecoded_video(tmp_path / "v.mp4", 7, width=64, height=48)
    assert media_duration(tmp_path / "v.mp4") == pytest.approx(7.0, abs=0.1)
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video")
    assert media_duration(tmp_path / "junk.mp4") is None
    assert media_duration(tmp_path / "missing.mp4") is None


def test_local_build_shards_verifies_and_loads(local_build, tmp_path):
    """The regression of the shard crash: clips of several sentences, read back as pandas
    gives them, through shard -> verify -> the model's loader."""
    from tests.support.endtoend import shard_verify_load

    out, _ = local_build
    m = pd.read_parquet(out / "manifest")
    got = shard_verify_load([out], tmp_path)
    assert got["samples"] == len(m) and got["loaded"] == int((m.n_clips >= 4).sum())


def test_symlinked_video_takes_sidecars_beside_the_link(tmp_path):
    store, named = tmp_path / "store", tmp_path / "named"
    store.mkdir()
    named.mkdir()
    target = store / "abc123.mp4"
    target.write_bytes(b"x")
    link = named / "talk.mp4"
    link.symlink_to(target)
    assert find_subtitles(link, ["en"]) is None
    (store / "abc123.vtt").write_text("WEBVTT\n")  # only the target has some: the fallback
    assert find_subtitles(link, ["en"]) == (store / "abc123.vtt", None)
    (named / "talk.fr.vtt").write_text("WEBVTT\n")  # beside the link wins, any language
    assert find_subtitles(link, ["en", "fr"]) == (named / "talk.fr.vtt", "fr")
    # a link and its target are one video: the path with sidecars beside it
    assert find_videos([str(tmp_path)]) == [link]
    (store / "abc123.vtt").unlink()
    (named / "talk.fr.vtt").unlink()
    assert find_videos([str(named), str(store)]) == [link]  # neither has any: sorted first


def test_symlinked_video_build_reads_the_links_subtitles(tmp_path, ray_local):
    """Issue 9 item 4: a video given as a symlink to a file in another folder, with its
    sidecar beside the link (and another beside the target), is built from the link's."""
    store, lib = tmp_path / "store", tmp_path / "library"
    store.mkdir()
    lib.mkdir()
    make_timecoded_video(store / "abc123.mp4", 40, width=160, height=120)
    link = lib / "talk.mp4"
    link.symlink_to(store / "abc123.mp4")

    def vtt(word: str) -> str:
        return "WEBVTT\n\n" + "\n".join(f"{vtt_time(1 + 3.5 * i)} --> {vtt_time(4 + 3.5 * i)}\n"
                                        f"{word} sentence number {i + 1}.\n" for i in range(10))
    (lib / "talk.en.vtt").write_text(vtt("Link"))
    (store / "abc123.en.vtt").write_text(vtt("Target"))
    out = tmp_path / "out"
    plan = PlanConfig(min_clips=2, max_clips=4, allow_local_files=True)
    run_build(BuildConfig(metadata=(), text=(), output=str(out), source="local", inputs=(str(lib),),
                          plan=plan, task=TaskContext(output=str(out),
                                                      fetch=FetchConfig(allow_local_files=True))))
    m = pd.read_parquet(out / "manifest")
    assert len(m) == 1 and m.paragraph.str.startswith("Link sentence number 1.").iloc[0]
    assert not m.paragraph.str.contains("Target").any()
    assert (m.video_id == local_video_id(link)).all()  # the id is the path the user gave
    assert len(pd.read_parquet(out / "failures")) == 0
