"""Speech recognition inside `build`: `--asr auto` for videos without subtitles (local and
youtube sources) and `--source hdvila --asr always`, with a tiny random Whisper saved to
disk and loaded by path, so the real loading, actor pool and batching run. Its words are
meaningless: these tests check the plumbing (source times, samples, ledger)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.inputs import InputError
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import DROP_REASONS, PlanConfig, dropped_by_reason
from lfvila_data.records import Clip, FailureCode, PlannedSample
from lfvila_data.sources.local import local_video_id
from lfvila_data.sources.youtube import url_video_id
from lfvila_data.text.asr import AsrConfig
from lfvila_data.text.stage import TextOptions, retext_video
from lfvila_data.text.subtitles import Word
from tests.support.asr_model import build_tiny_whisper
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.endtoend import shard_verify_load
from tests.support.media import make_timecoded_video
from tests.data.sources.test_source_youtube import numbered_vtt, page


def test_retext_video_assigns_words_by_midpoint():
    # clip k spans [10k, 10k + 9]
    clips = tuple(Clip(f"v.{k}.mp4", k, 10.0 * k, 10.0 * k + 9, f"metadata {k}") for k in range(1, 7))
    sample = PlannedSample("v_00001_00006", "v", "u", 10.0, 69.0, clips)
    words = [Word("straddles", 18.2, 19.4),   # midpoint 18.8: clip 1, clamped to end at 19
             Word("hello.", 20.2, 20.8), Word("two", 31.0, 31.5), Word("three", 41.0, 41.2),
             Word("four", 51.0, 51.4), Word("between", 59.3, 59.8)]  # midpoint in no clip
    stats: Counter = Counter()
    got, fails = retext_video([sample], words, "en", PlanConfig(min_clips=2), stats)
    assert [(f.clip_id, f.stage) for f in fails] == [("v.6.mp4", "asr")]
    assert "heard no words" in fails[0].reason and fails[0].code is FailureCode.ASR_NO_WORDS
    [s] = got
    assert (s.key, s.text_source, s.language) == ("v_00001_00005", "asr", "en")
    assert [c.text for c in s.clips] == ["straddles", "hello.", "two", "three", "four"]
    assert (s.clips[0].sentences[0].start, s.clips[0].sentences[0].end) == (18.2, 19.0)
    assert [(c.start, c.end) for c in s.clips] == [(c.start, c.end) for c in clips[:5]]
    # every word heard is in the sample or dropped with its reason
    dropped = dropped_by_reason(stats)
    assert (stats["words_parsed"], stats["words_in_samples"]) == (6, 5)
    assert dropped["outside_clips"]["words"] == 1 and dropped["no_text"]["clips"] == 1


def check_word_account(plan: dict) -> None:
    """words in samples + dropped by reason = words parsed, for the transcript's words."""
    assert plan["words_parsed"] > 0 and plan["words_in_samples"] > 0
    assert plan["words_in_samples"] + sum(d["words"] for d in plan["dropped"].values()) == plan["words_parsed"]
    assert set(plan["dropped"]) <= set(DROP_REASONS)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


# The random model's words come in bursts a few seconds apart: allow wider gaps.
PLAN = PlanConfig(max_clips=4, max_gap=10.0)


def asr_opts(model, mode="auto", **kw) -> TextOptions:
    return TextOptions(langs=("en",), asr=mode,
                       asr_config=AsrConfig(model=str(model), language="en", batch_size=2, **kw))


def check_asr_samples(m: pd.DataFrame, duration: float) -> None:
    assert len(m) >= 1 and (m.text_source == "asr").all() and (m.language == "en").all()
    for row in m.itertuples():
        assert 0 <= row.start < row.end <= duration
        for c in row.clips:
            assert c["text"] and " ".join(t["text"] for t in c["sentences"]) == c["text"]
            assert all(c["start"] - 1e-6 <= t["start"] <= t["end"] <= c["end"] + 1e-6 for t in c["sentences"])


def test_local_asr_auto(tmp_path, whisper, ray_module):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_timecoded_video(lib / "speech.mp4", 100, width=64, height=48)      # no subtitles
    make_timecoded_video(lib / "subbed.mp4", 60, width=64, height=48)
    (lib / "subbed.en.vtt").write_text(numbered_vtt(16))
    make_timecoded_video(lib / "mute.mp4", 30, width=64, height=48, audio=False)  # neither
    out = tmp_path / "out"
    record = run_build(BuildConfig(
        metadata=(), text=(), output=str(out), source="local", inputs=(str(lib),),
        plan=PlanConfig(max_clips=4, max_gap=10.0, allow_local_files=True), text_opts=asr_opts(whisper),
        task=TaskContext(output=str(out), source="local", fetch=FetchConfig(allow_local_files=True))))
    m = pd.read_parquet(out / "manifest")
    speech = m[m.video_id == local_video_id((lib / "speech.mp4").resolve())]
    check_asr_samples(speech, 100.0)
    subbed = m[m.video_id == local_video_id((lib / "subbed.mp4").resolve())]
    assert len(subbed) >= 1 and (subbed.text_source == "subtitles").all()  # subtitles win in auto
    f = pd.read_parquet(out / "failures")
    mute = f[f.video_id == local_video_id((lib / "mute.mp4").resolve())]
    assert mute.stage.tolist() == ["asr"]
    assert "no subtitles" in mute.reason.iloc[0] and "audio" in mute.reason.iloc[0]
    assert mute.code.tolist() == ["no_audio"]
    assert record["counts"]["text_fetched_bytes"] == 0  # local files: nothing fetched
    got = shard_verify_load([out], tmp_path / "e2e")  # ASR clips hold several sentences
    assert got["samples"] == len(m) and got["loaded"] == int((m.n_clips >= 4).sum())


def test_youtube_asr_auto(tmp_path, whisper, ray_module):
    root = tmp_path / "site"
    root.mkdir()
    make_timecoded_video(root / "talk.mp4", 90, width=64, height=48)
    (root / "talk.fr.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:03.000\nBonjour.\n")
    (root / "french.html").write_text(page("talk.mp4", {"fr": "talk.fr.vtt"}))
    with MediaServer(root) as srv:
        lst = tmp_path / "list.txt"
        lst.write_text(srv.url("french.html") + "\n")
        out = tmp_path / "out"
        run_build(BuildConfig(metadata=(), text=(), output=str(out), source="youtube", inputs=(str(lst),),
                              plan=PLAN, text_opts=asr_opts(whisper),
                              task=TaskContext(output=str(out), source="youtube")))
        m = pd.read_parquet(out / "manifest")
        assert set(m.video_id) == {url_video_id(srv.url("french.html"))}
        check_asr_samples(m, 90.0)
        assert srv.requests["talk.fr.vtt"] == 0  # French was not asked for: never downloaded


def test_hdvila_asr_always_retranscribes_planned_spans(tmp_path, whisper, ray_module):
    root = tmp_path / "site"
    root.mkdir()
    make_timecoded_video(root / "v1.mp4", 100, width=64, height=48)
    with MediaServer(root) as srv:
        spec = VideoSpec("vidAAAAAAA1", srv.url("v1.mp4"), even_spans(8, 6.0, 0.5, first=45.0))
        meta, text = write_metadata(tmp_path / "meta", [spec])
        out = tmp_path / "out"
        cfg = BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                          plan=PLAN, text_opts=asr_opts(whisper, "always"),
                          task=TaskContext(output=str(out)))
        run_build(replace(cfg, plan_only=True))  # transcribes: every request so far is speech recognition's
        audio = list(srv.transfers)
        record = run_build(cfg)  # reuses the plan and its transcripts: only the cut fetches
        video = srv.transfers[len(audio):]
    check_fetched_bytes(record["counts"], audio, video)
    m = pd.read_parquet(out / "manifest")
    check_asr_samples(m, 100.0)
    check_word_account(record["plan"])
    assert record["plan"]["words_in_samples"] == sum(len(c["text"].split()) for r in m.itertuples()
                                                     for c in r.clips)
    assert json.loads((out / "build.json").read_text())["plan"] == record["plan"]
    assert all("says hello" not in c["text"] for row in m.itertuples() for c in row.clips)
    # only the planned spans (44.5 s onwards, with the margin) were transcribed
    assert all(t["start"] >= 44.5 for row in m.itertuples() for c in row.clips for t in c["sentences"])
    spans = {c["clip_id"]: (c["start"], c["end"]) for row in m.itertuples() for c in row.clips}
    assert all(spans[cid] == pytest.approx(s) for cid, s in
               zip([spec.clip_id(k) for k in range(1, 9)], spec.spans) if cid in spans)
    got = shard_verify_load([out], tmp_path / "e2e", multi_sentence=False)
    assert got["samples"] == len(m)


def check_fetched_bytes(counts: dict, audio: list, video: list) -> None:
    """The build's bytes against what the server sent (body bytes: the guard also counts
    headers, and misses what was in flight when ffmpeg dropped a connection): the audio
    of the earlier run counted once, `fetched_bytes` the videos' and the audio's."""
    def sent(transfers: list) -> int:
        return sum(t.sent for t in transfers)

    asr = counts["text_fetched_bytes"]
    assert audio and video and not {t.name for t in audio} - {"v1.mp4"}
    assert sent(audio) / 2 < asr <= sent(audio) + 2048 * len(audio)
    assert 0 < counts["fetched_bytes"] - asr <= sent(video) + 2048 * len(video)


def test_bad_model_path_fails_before_planning(tmp_path, ray_module):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_timecoded_video(lib / "a.mp4", 5, width=64, height=48)
    with pytest.raises(InputError, match="Whisper"):
        run_build(BuildConfig(metadata=(), text=(), output=str(tmp_path / "out"), source="local",
                              inputs=(str(lib),), text_opts=asr_opts(tmp_path / "no-such-model")))
    assert not (tmp_path / "out" / "plan").exists()


def test_cli_text_source_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", *args,
                            "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
        return r.returncode, r.stderr.strip()

    code, err = run("--source", "youtube")
    assert code == 2 and "--input is required for --source youtube" in err
    lst = tmp_path / "list.txt"
    lst.write_text("QMi8x8o55Ns\n")
    code, err = run("--source", "youtube", "--input", str(lst), "--asr", "auto",
                    "--asr-model", str(tmp_path / "no-model"))
    assert code == 2 and "Whisper model" in err and "no such directory" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    code, err = run("--source", "youtube", "--input", str(lst), "--asr-timestamps", "char")
    assert code == 2 and "--asr-timestamps" in err
    code, err = run("--source", "youtube", "--input", str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in err


def test_asr_outcome_language_and_empty_transcripts():
    from lfvila_data.text.asr import AsrResult
    from lfvila_data.text.stage import asr_outcome

    words = [Word(f"w{i}.", 2.0 * i, 2.0 * i + 1.5) for i in range(40)]
    detect = TextOptions(langs=("en",), asr="auto", asr_config=AsrConfig(model="m"))
    o = asr_outcome(AsrResult("v", words, "de", 80.0), "u", PLAN, detect, None)
    assert not o.samples and "detected 'de' speech; asked for en" in o.failures[0].reason
    assert o.failures[0].code is FailureCode.WRONG_LANGUAGE
    o = asr_outcome(AsrResult("v", words, "en-US", 80.0), "u", PLAN, detect, None)
    assert o.samples and all(s.text_source == "asr" and s.language == "en-US" for s in o.samples)
    forced = TextOptions(langs=("en",), asr="auto", asr_config=AsrConfig(model="m", language="de"))
    assert asr_outcome(AsrResult("v", words, "de", 80.0), "u", PLAN, forced, None).samples  # asked for
    o = asr_outcome(AsrResult("v", [], "en", 80.0), "u", PLAN, detect, "no subtitles")
    assert o.failures[0].stage == "asr" and "heard no words in 80 s" in o.failures[0].reason
    assert o.failures[0].code is FailureCode.ASR_NO_WORDS


def test_silent_windows_are_not_decoded(tmp_path, whisper):
    import subprocess

    from lfvila_data.text.asr import AsrJob, WhisperTranscriber

    media = tmp_path / "quiet.mp4"  # 20 s of a tone, then 40 s of digital silence
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x48:r=5:d=60",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=20,apad=whole_dur=60",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(media)],
                   check=True)
    cfg = AsrConfig(model=str(whisper), language="en", batch_size=2, chunk_seconds=10.0)
    words = WhisperTranscriber(cfg).transcribe(AsrJob("q", str(media))).words
    assert words and max(w.end for w in words) <= 20.5  # the tone only; silence invents nothing
    loud = WhisperTranscriber(AsrConfig(model=str(whisper), language="en", batch_size=2,
                                        chunk_seconds=10.0, silence_db=None))
    assert max(w.end for w in loud.transcribe(AsrJob("q", str(media))).words) > 30  # a random model would


def test_audio_resolver_keeps_permanent_failures(tmp_path, whisper):
    from lfvila_data.text.asr import AsrJob, WhisperTranscriber
    from lfvila_data.text.stage import AudioResolver

    with MediaServer(tmp_path) as srv:
        result = WhisperTranscriber(AsrConfig(model=str(whisper))).transcribe(
            AsrJob("gone", srv.url("gone.html")), resolve=AudioResolver(FetchConfig()))
    assert result.failure.stage == "asr" and "404" in result.failure.reason
    assert result.failure.code is FailureCode.NOT_FOUND
    assert result.failure.permanent  # not retried on every rerun
