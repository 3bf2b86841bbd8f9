"""Speech recognition: audio streaming with real ffmpeg, the Whisper transcriber on a tiny
random Whisper loaded from disk (its text means nothing; timing, batching and plumbing do),
the Ray actor pool, and the RTF benchmark script."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from lfvila_data.executor.asr import transcribe_on_ray
from lfvila_data.localserver import MediaServer
from lfvila_data.media.audio import SAMPLE_RATE, AudioChunk, AudioError, stream_audio
from lfvila_data.media.guard import ByteMeter, GuardLimits
from lfvila_data.records import FailureCode
from lfvila_data.text.asr import (
    AsrConfig,
    AsrJob,
    AsrModelError,
    WhisperTranscriber,
    dtw,
    group_words,
    merge_spans,
    place_words,
    pool_shape,
    spread_words,
    transcribe_all,
)
from tests.support.asr_model import LANGUAGES, build_tiny_whisper
from tests.support.media import make_timecoded_video
from tests.support.realdata import ROOT

# the tiny model never stops by itself: a short decode keeps the tests fast
TOKENS = 12
# AAC codes 1024-sample frames at 44.1 kHz: a file's audio may run over by one frame
AAC_FRAME = 1024 * SAMPLE_RATE // 44100 + 1


def _beep(path: Path, seconds: float, at: float, *, offset: float = 0.0) -> Path:
    """Silence with a 1-s tone at `at` s; `offset` shifts the file's timestamps (as a
    section download keeps its source times)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"aevalsrc='if(between(t,{at},{at + 1}),0.5*sin(2*PI*440*t),0)':s=44100:d={seconds}",
                    *(["-output_ts_offset", str(offset)] if offset else []), "-c:a", "libopus", str(path)],
                   check=True)
    return path


def _onset(chunks: list[AudioChunk]) -> float:
    """Source time of the first audible sample."""
    for c in chunks:
        loud = np.flatnonzero(np.abs(c.samples) > 0.05)
        if len(loud):
            return c.start + loud[0] / SAMPLE_RATE
    raise AssertionError("no tone")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("asr-media")
    small = {"width": 64, "height": 48, "fps": 5}
    (d / "garbage.mp4").write_bytes(b"this is not a video\n" * 100)
    (d / "list.ffconcat").write_text("ffconcat version 1.0\nfile long.mp4\n")
    return {
        "long": make_timecoded_video(d / "long.mp4", 150, **small),
        "mute": make_timecoded_video(d / "mute.mp4", 20, audio=False, **small),
        "beep": _beep(d / "beep.mkv", 30, 20.0),
        "shifted": _beep(d / "shifted.mkv", 10, 5.0, offset=95.0),
        "garbage": d / "garbage.mp4",
        "playlist": d / "list.ffconcat",
        "dir": d,
    }


# ------------------------------------------------------------------------------- audio

def test_seventy_seconds_is_30_30_10(tmp_path):
    video = make_timecoded_video(tmp_path / "v70.mp4", 70, width=64, height=48, fps=5)
    chunks = list(stream_audio(str(video)))
    assert [c.start for c in chunks] == [0.0, 30.0, 60.0]
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    assert [len(c.samples) for c in chunks[:2]] == [480000, 480000]
    assert abs(sum(len(c.samples) for c in chunks) - 70 * SAMPLE_RATE) <= AAC_FRAME


def test_spans_are_cut_to_the_sample_and_never_cross(media):
    chunks = list(stream_audio(str(media["long"]), [(5, 12), (40, 47)], chunk_seconds=3))
    assert [(c.start, len(c.samples)) for c in chunks] == [
        (5.0, 48000), (8.0, 48000), (11.0, 16000), (40.0, 48000), (43.0, 48000), (46.0, 16000)]
    whole = list(stream_audio(str(media["long"]), [(5, 12), (40, 47)]))
    assert [(c.start, len(c.samples)) for c in whole] == [(5.0, 112000), (40.0, 112000)]


def test_times_are_source_times(media):
    # a tone at 20 s, read from a span starting at 18.25 s: the onset lands at 20 s
    assert _onset(list(stream_audio(str(media["beep"]), [(18.25, 25.0)]))) == pytest.approx(20.0, abs=0.01)
    # a file whose timestamps start at 95 s (a section download): the tone at 100 s source
    shifted = list(stream_audio(str(media["shifted"])))
    assert shifted[0].start == pytest.approx(95.0, abs=0.05)
    assert _onset(shifted) == pytest.approx(100.0, abs=0.02)
    assert _onset(list(stream_audio(str(media["shifted"]), [(99.0, 102.0)]))) == pytest.approx(100.0, abs=0.02)


def test_http_url_reads_like_the_file(media):
    with MediaServer(media["dir"]) as srv:
        chunks = list(stream_audio(srv.url("long.mp4"), [(100, 130)], chunk_seconds=10))
        assert [(c.start, len(c.samples)) for c in chunks] == [(100.0, 160000), (110.0, 160000), (120.0, 160000)]
        with pytest.raises(AudioError, match="URL") as err:
            list(stream_audio(srv.url("missing.mp4")))
        assert err.value.permanent
        # a playlist from the network must not make ffmpeg open local files
        (media["dir"] / "evil.m3u8").write_text(
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{media['long']}\n#EXT-X-ENDLIST\n")
        with pytest.raises(AudioError, match="inputs we do not open"):
            list(stream_audio(srv.url("evil.m3u8")))


def test_the_network_bytes_of_an_audio_read_are_counted(media):
    """What the guard let through, whether the read ends or fails; a local file fetches
    nothing."""
    size = media["beep"].stat().st_size
    with MediaServer(media["dir"]) as srv:
        meter = ByteMeter()
        assert sum(c.duration for c in stream_audio(srv.url("beep.mkv"), meter=meter)) > 29
        sent = sum(t.sent for t in srv.transfers)
        # the last request reads the whole file; headers are not in `sent`
        assert size <= meter.received <= sent + 2048 * len(srv.transfers)
        before = meter.received
        with pytest.raises(AudioError):
            list(stream_audio(srv.url("missing.mp4"), meter=meter))
        assert 0 < meter.received - before < 2048  # a 404's headers: a failed read counts too
    local = ByteMeter()
    assert list(stream_audio(str(media["beep"]), [(0, 1)], meter=local)) and local.received == 0


@pytest.mark.parametrize("name,message", [
    ("mute", "no audio stream"),
    ("garbage", "not a readable media file"),
    ("playlist", "inputs we do not open"),
])
def test_unusable_media_is_an_audio_error(media, name, message):
    for spans in (None, [(1.0, 3.0)]):
        with pytest.raises(AudioError, match=message):
            list(stream_audio(str(media[name]), spans))


def test_missing_file_span_outside_and_bad_locations(media):
    with pytest.raises(AudioError, match="does not exist"):
        list(stream_audio(str(media["dir"] / "nope.mp4")))
    with pytest.raises(AudioError, match="no audio samples in 400.0-410.0 s"):
        list(stream_audio(str(media["long"]), [(400, 410)]))
    with pytest.raises(AudioError, match="unsupported"):
        list(stream_audio("ftp://example.com/a.mp4"))
    with pytest.raises(ValueError):
        list(stream_audio(str(media["long"]), [(5, 5)]))


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "ffmpeg"]


def test_closing_the_stream_early_kills_ffmpeg(media):
    stream = stream_audio(str(media["long"]), chunk_seconds=1)
    next(stream)
    (proc,) = _ffmpeg_children()
    stream.close()
    assert not _ffmpeg_children()
    assert not psutil.pid_exists(proc.pid) or proc.status() != psutil.STATUS_ZOMBIE


# ------------------------------------------------------------------------- pure helpers

def test_dtw_matches_the_reference_implementation():
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (6, 1), (4, 9), (30, 200), (9, 4)]:
        matrix = rng.normal(size=shape)
        ours, ref = dtw(matrix), _dynamic_time_warping(matrix)
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1]), shape


def test_word_grouping_spreading_and_placement():
    pieces = [b" Hel", b"lo", b",", b" world", b"!", b" ", b"Again", "你".encode(), "好".encode()[:1],
              "好".encode()[1:], b"."]

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", "replace")

    assert group_words(list(range(7)), decode) == [[0, 1, 2], [3, 4, 5], [6]]
    assert group_words([7, 8, 9, 10], decode, no_space=True) == [[0], [1, 2], [3]]
    assert spread_words(["a", "bbb"], 10.0, 14.0) == [("a", 10.0, 11.0), ("bbb", 11.0, 14.0)]
    chunk = AudioChunk(100.0, np.zeros(10 * SAMPLE_RATE, dtype=np.float32))
    words = place_words([(" hi", -1.0, 0.5), ("", 1, 2), ("there", 0.2, 3.0), ("end", 9.5, 12.0)],
                        chunk, after=99.0)
    assert [(w.text, w.start, w.end) for w in words] == [
        ("hi", 100.0, 100.5), ("there", 100.5, 103.0), ("end", 109.5, 110.0)]
    assert merge_spans([(40, 47), (5, 12), (10, 20), (20, 21)]) == [(5, 21), (40, 47)]


def test_pool_shape():
    assert pool_shape(AsrConfig(), {"CPU": 16, "GPU": 2}) == (2, 1.0, 1.0, None)
    assert pool_shape(AsrConfig(num_actors=4), {"CPU": 16, "GPU": 2})[:2] == (4, 0.5)
    assert pool_shape(AsrConfig(), {"CPU": 64}) == (8, 0.0, 8.0, 8)
    assert pool_shape(AsrConfig(num_actors=2), {"CPU": 2}) == (2, 0.0, 1.0, 1)
    assert pool_shape(AsrConfig(use_gpu=False), {"CPU": 4, "GPU": 1})[:2] == (1, 0.0)
    with pytest.raises(AsrModelError, match="no GPU"):
        pool_shape(AsrConfig(use_gpu=True), {"CPU": 4})


def test_config_is_checked():
    for bad in ({"timestamps": "char"}, {"batch_size": 0}, {"chunk_seconds": 45}, {"dtype": "int8"}):
        with pytest.raises(ValueError):
            AsrConfig(**bad)


# -------------------------------------------------------------------------- transcriber

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_whisper(tmp_path_factory.mktemp("asr-model") / "tiny-whisper"))


@pytest.fixture(scope="module")
def transcriber(tiny_model):
    return WhisperTranscriber(AsrConfig(model=tiny_model, language="en", batch_size=2,
                                                max_new_tokens=TOKENS), "cpu")


def _check_words(words, spans):
    assert words
    assert all(w.text and w.text == w.text.strip() for w in words)
    assert all(any(s <= w.start <= w.end <= e for s, e in spans) for w in words), words
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))


def test_words_are_in_source_time_inside_the_spans(transcriber, media):
    result = transcriber.transcribe(AsrJob("v", str(media["long"]), ((100.0, 130.0),)))
    assert result.failure is None and result.language == "en"
    assert result.audio_seconds == pytest.approx(30.0)
    _check_words(result.words, [(100.0, 130.0)])
    # word times come from the alignment, not from where the window starts
    assert len({w.start for w in result.words}) > 1


def test_batch_size_is_respected(transcriber, media, monkeypatch):
    sizes = []
    generate = transcriber.model.generate

    def counting(*args, **kwargs):
        inputs = args[0] if args else kwargs.get("input_features", kwargs.get("encoder_outputs"))
        sizes.append(getattr(inputs, "last_hidden_state", inputs).shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(transcriber.model, "generate", counting)
    spans = ((2.0, 70.0), (80.0, 95.0))  # windows 30, 30, 8 and 15 s
    result = transcriber.transcribe(AsrJob("v", str(media["long"]), spans))
    assert sizes == [2, 2]
    assert result.audio_seconds == pytest.approx(83.0)
    _check_words(result.words, spans)


def test_a_model_error_mid_job_stops_ffmpeg(transcriber, media, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(transcriber.model, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        transcriber.transcribe(AsrJob("v", str(media["long"])))
    assert not _ffmpeg_children()


def test_segment_timestamps(tiny_model, media):
    t = WhisperTranscriber(AsrConfig(model=tiny_model, language="fr", timestamps="segment", batch_size=4,
                                     max_new_tokens=TOKENS), "cpu")
    spans = ((100.0, 130.0), (140.0, 150.0))
    result = t.transcribe(AsrJob("v", str(media["long"]), spans))
    assert result.failure is None and result.language == "fr"
    _check_words(result.words, spans)


def test_language_is_detected_when_not_given(tiny_model, media):
    t = WhisperTranscriber(AsrConfig(model=tiny_model, batch_size=2, max_new_tokens=TOKENS), "cpu")
    result = t.transcribe(AsrJob("v", str(media["long"]), ((0.0, 10.0),)))
    assert result.language in LANGUAGES and result.words


def test_bad_media_and_resolver_errors_are_failed_results(transcriber, media):
    mute = transcriber.transcribe(AsrJob("mute", str(media["mute"])))
    assert mute.words == [] and mute.failure.stage == "asr" and "no audio stream" in mute.failure.reason
    assert mute.failure.video_id == "mute" and mute.failure.permanent and mute.failure.code is FailureCode.NO_AUDIO

    def resolve(url: str, meter: ByteMeter) -> str:
        if url.endswith("gone"):
            raise RuntimeError("ERROR: [youtube] gone: Video unavailable")
        return str(media["long"])

    gone = transcriber.transcribe(AsrJob("gone", "https://www.youtube.com/watch?v=gone"), resolve)
    assert gone.failure.stage == "asr" and "Video unavailable" in gone.failure.reason
    assert gone.failure.code is FailureCode.UNAVAILABLE
    ok = transcriber.transcribe(AsrJob("ok", "https://www.youtube.com/watch?v=ok", ((10.0, 20.0),)), resolve)
    assert ok.failure is None
    _check_words(ok.words, [(10.0, 20.0)])
    assert (mute.fetched_bytes, gone.fetched_bytes, ok.fetched_bytes) == (0, 0, 0)  # local files


def test_a_job_keeps_the_bytes_it_fetched_when_it_fails(transcriber, media):
    """The resolver's bytes and the audio's are the result's (and the caller's meter's),
    also when the read fails half way (here at the resolver's size cap)."""

    class Capped:
        guard_limits = GuardLimits(allow_private=True, file_bytes=50_000)

        def __call__(self, url: str, meter: ByteMeter) -> str:
            meter.received += 1_000  # what a page look-up would have cost
            return url

    with MediaServer(media["dir"]) as srv:
        meter = ByteMeter()
        failed = transcriber.transcribe(AsrJob("big", srv.url("long.mp4")), Capped(), meter)
    assert failed.failure.code is FailureCode.TOO_LARGE
    assert failed.fetched_bytes == meter.received and 51_000 < failed.fetched_bytes < media["long"].stat().st_size


def test_bad_model_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(AsrModelError, match="cannot load Whisper model .*no such directory"):
        WhisperTranscriber(AsrConfig(model=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrModelError, match="cannot load Whisper model"):
        WhisperTranscriber(AsrConfig(model=str(tmp_path / "empty")))
    headless = Path(shutil.copytree(tiny_model, tmp_path / "headless"))
    gen = json.loads((headless / "generation_config.json").read_text())
    del gen["alignment_heads"]
    (headless / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(AsrModelError, match="alignment_heads"):
        WhisperTranscriber(AsrConfig(model=str(headless)))
    assert WhisperTranscriber(AsrConfig(model=str(headless), timestamps="segment"))


# ------------------------------------------------------------------------------ the pool

def test_pool_transcribes_and_records_failures(ray_local, tiny_model, media):
    cfg = AsrConfig(model=tiny_model, language="en", batch_size=2, num_actors=2, max_new_tokens=TOKENS)
    jobs = [AsrJob("far", str(media["long"]), ((100.0, 130.0),)),
            AsrJob("mute", str(media["mute"])),
            AsrJob("near", str(media["long"]), ((5.0, 20.0), (40.0, 45.0)))]
    seen = []
    results = {r.video_id: r for r in transcribe_on_ray(iter(jobs), cfg, on_result=seen.append)}
    assert sorted(results) == ["far", "mute", "near"] and len(seen) == 3
    _check_words(results["far"].words, [(100.0, 130.0)])
    _check_words(results["near"].words, [(5.0, 20.0), (40.0, 45.0)])
    failure = results["mute"].failure
    assert results["mute"].words == [] and failure.stage == "asr" and "audio" in failure.reason
    assert failure.code is FailureCode.NO_AUDIO


def test_in_process_worker_transcribes_and_records_failures(tiny_model, media):
    cfg = AsrConfig(model=tiny_model, language="en", batch_size=2, max_new_tokens=TOKENS)
    jobs = [AsrJob("near", str(media["long"]), ((5.0, 20.0),)), AsrJob("mute", str(media["mute"]))]
    results = list(transcribe_all(iter(jobs), cfg))  # no Ray: one worker in this process
    assert [r.video_id for r in results] == ["near", "mute"]
    _check_words(results[0].words, [(5.0, 20.0)])
    assert results[1].words == [] and results[1].failure.stage == "asr"


@pytest.mark.parametrize("on_ray", [True, False])
def test_pool_raises_early_on_a_bad_model(ray_local, tmp_path, on_ray):
    (tmp_path / "empty").mkdir()
    started = time.monotonic()
    transcribe = transcribe_on_ray if on_ray else transcribe_all
    with pytest.raises(AsrModelError, match="cannot load Whisper model"):  # the worker's own error
        next(transcribe([AsrJob("v", "x.mp4")], AsrConfig(model=str(tmp_path / "empty"), num_actors=1)))
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------------- benchmark

def test_benchmark_runs_on_cpu(tiny_model):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_asr_rtf.py"), "--model", tiny_model,
                          "--device", "cpu", "--seconds", "12", "--batch-size", "2", "--tokens", str(TOKENS)],
                         check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RTF" in out.stdout and "xRT" in out.stdout
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("ours")]
    assert [(r[1], r[2]) for r in rows] == [("word", "1"), ("word", "2")]
    assert rows[0][7] == "1.00x"
