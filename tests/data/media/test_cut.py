"""Cutting with real ffmpeg: exact boundaries (decoded from time-coded frames), sizes,
codecs, real third-party files, and files that must be refused."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lfvila_data.media.cut import CutConfig, MediaError, cut_sample, probe
from lfvila_data.media.task import fit_to_media
from lfvila_data.records import Clip, FailureCode, PlannedSample
from tests.support.media import decode_times, make_timecoded_video
from tests.support.realdata import VIDEOS as REAL


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "h264": make_timecoded_video(d / "src.mp4", 40, width=320, height=180, fps=25, gop=100),
        "vp9": make_timecoded_video(d / "portrait.webm", 20, width=241, height=427, fps=30,
                                    codec="vp9", audio=False),
    }


def assert_boundaries(path: Path, start: float, end: float, fps: float = 3.0) -> None:
    """First frame shows `start`, last shows the final output frame before `end`."""
    times = decode_times(path)
    assert abs(len(times) - (end - start) * fps) <= 1, (len(times), start, end)
    # frames encode time in quarter seconds: allow that plus one output frame
    assert start - 0.25 <= times[0] <= start + 1 / fps, (times[0], start)
    assert end - 2 / fps - 0.25 <= times[-1] <= end, (times[-1], end)
    assert times == sorted(times)


@pytest.mark.parametrize("start,end", [(0.0, 6.0), (7.3, 19.9), (13.1, 39.5)])
def test_cut_is_exact_to_one_output_frame(media, tmp_path, start, end):
    out = cut_sample(media["h264"], tmp_path / "o.mp4", start, end, CutConfig())
    assert (out.height, out.width) == (240, 426)  # 320x180 scaled to 240 high, even width
    assert out.fps == pytest.approx(3.0)
    assert out.nb_frames == pytest.approx((end - start) * 3, abs=1)
    assert not out.has_audio
    assert_boundaries(tmp_path / "o.mp4", start, end)
    assert not list(tmp_path.glob("*.part"))


def test_portrait_odd_size_vp9_and_options(media, tmp_path):
    out = cut_sample(media["vp9"], tmp_path / "p.mp4", 2.2, 14.0, CutConfig(fps=5, height=120))
    assert out.height == 120 and out.width % 2 == 0 and out.width == 68
    assert out.codec == "h264"
    assert_boundaries(tmp_path / "p.mp4", 2.2, 14.0, fps=5)


def test_audio_kept_only_when_asked_and_present(media, tmp_path):
    with_audio = cut_sample(media["h264"], tmp_path / "a.mp4", 1, 9, CutConfig(audio=True))
    assert with_audio.has_audio
    silent_src = cut_sample(media["vp9"], tmp_path / "b.mp4", 1, 9, CutConfig(audio=True))
    assert not silent_src.has_audio  # a video without audio is fine with --audio


def test_copy_mode_keeps_source_stream(media, tmp_path):
    out = cut_sample(media["h264"], tmp_path / "c.mp4", 8.0, 16.0, CutConfig(copy=True))
    assert (out.width, out.height, out.codec) == (320, 180, "h264")
    assert out.duration == pytest.approx(8.0, abs=0.1)


def test_one_ffprobe_run_reads_what_two_did(media, tmp_path):
    """`probe` reads streams and packets in one ffprobe run; the two-run way it replaced
    stays for files that run cannot read. Both give the same record (audio or not, kept
    timestamps of a section)."""
    import subprocess

    from lfvila_data.media.cut import _probe_once, _probe_twice
    section = tmp_path / "section.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "9.3", "-t", "12", "-i", str(media["h264"]),
                    "-copyts", "-c", "copy", str(section)], check=True)
    for path in (media["h264"], media["vp9"], section):
        assert _probe_once(path, 60) == _probe_twice(path, 60)
    assert _probe_once(media["h264"], 60).has_audio and not _probe_once(media["vp9"], 60).has_audio


def test_written_files_are_probed_from_their_boxes_as_ffprobe_does(media, tmp_path):
    """The files our cut writes are probed from their MP4 boxes (no ffprobe start-up),
    with exactly ffprobe's numbers; a file the reader does not vouch for (truncated, not
    MP4) goes to ffprobe, which says what is wrong."""
    from lfvila_data.media.cut import Probe, probe_written
    from lfvila_data.media.mp4 import read_mp4
    cases = [(media["h264"], 7.3, 19.9, CutConfig(audio=True)),
             (media["vp9"], 2.2, 14.0, CutConfig(fps=5, height=120)),
             (media["h264"], 8.0, 16.0, CutConfig(copy=True))]
    for i, (src, start, end, cfg) in enumerate(cases):
        dst = tmp_path / f"{i}.mp4"
        cut_sample(src, dst, start, end, cfg)
        facts = read_mp4(dst)
        assert facts is not None and Probe(**facts) == probe(dst), i
    assert read_mp4(tmp_path / "0.mp4")["has_audio"]
    truncated = tmp_path / "t.mp4"
    truncated.write_bytes((tmp_path / "1.mp4").read_bytes()[:-1000])
    assert read_mp4(truncated) is None and read_mp4(media["vp9"]) is None
    assert probe_written(truncated).nb_frames < probe(tmp_path / "1.mp4").nb_frames


def test_section_file_with_kept_timestamps_cuts_like_the_whole_file(media, tmp_path):
    import subprocess
    section = tmp_path / "section.mkv"  # what a section download leaves: copy, -copyts
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "9.3", "-t", "12", "-i", str(media["h264"]),
                    "-copyts", "-c", "copy", str(section)], check=True)
    p = probe(section)
    assert p.start <= 9.3 and p.end == pytest.approx(21.3, abs=0.1)
    cut_sample(section, tmp_path / "s.mp4", 10.1, 20.2, CutConfig(), p)
    assert_boundaries(tmp_path / "s.mp4", 10.1, 20.2)


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.glob("*") if p.suffix != ".md"))
def test_real_videos(name, tmp_path):
    src = REAL / name
    p = probe(src)
    assert p.duration > 5
    out = cut_sample(src, tmp_path / "r.mp4", p.start + 1.0, p.start + 5.0, CutConfig(audio=True))
    assert out.height == 240 and out.width % 2 == 0
    assert out.nb_frames == 12
    assert out.has_audio == p.has_audio


def test_not_a_video_and_truncated(media, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError, match="not a readable media file"):
        probe(junk)
    data = media["h264"].read_bytes()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 2])  # faststart: header intact, data cut
    p = probe(trunc)
    assert 10 < p.end < 30  # the packets say where the data really ends
    with pytest.raises(MediaError, match="outside the media"):
        cut_sample(trunc, tmp_path / "t.mp4", 35, 39, CutConfig(), p)
    audio_only = tmp_path / "a.m4a"
    import subprocess
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=2", str(audio_only)], check=True)
    with pytest.raises(MediaError, match="no video stream"):
        probe(audio_only)


def test_playlists_and_references_are_not_followed(media, tmp_path):
    import subprocess
    segment = tmp_path / "seg.ts"  # a real, readable local video that a playlist points at
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media["h264"]), "-t", "4", "-c", "copy",
                    str(segment)], check=True)
    playlist = tmp_path / "evil.mp4"  # an HLS playlist pretending to be a video
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n{segment}\n#EXT-X-ENDLIST\n")
    # plain ffprobe follows it and reads the segment: that is what we must not do
    plain = subprocess.run(["ffprobe", "-v", "error", "-show_streams", str(playlist)],
                           capture_output=True)
    assert plain.returncode == 0 and b"codec_type=video" in plain.stdout
    with pytest.raises(MediaError):
        probe(playlist)
    with pytest.raises(MediaError):
        cut_sample(playlist, tmp_path / "o.mp4", 0, 3, CutConfig(),
                   probe(media["h264"]))  # even with a borrowed probe, ffmpeg refuses


def _sample(n: int, length: float = 4.0) -> PlannedSample:
    clips = tuple(Clip(f"v.{k}.mp4", k, (k - 1) * length, k * length, f"t{k}") for k in range(1, n + 1))
    return PlannedSample("v_00001_%05d" % n, "v", "http://x/v.mp4", 0.0, n * length, clips)


def test_fit_to_media_drops_clips_past_the_end():
    s = _sample(6)
    same, fails = fit_to_media(s, 24.2, min_clips=4)
    assert same == s and fails == []
    cut, fails = fit_to_media(s, 17.0, min_clips=4)  # clip 5 ends at 20 > 17.5
    assert [c.k for c in cut.clips] == [1, 2, 3, 4] and cut.key == "v_00001_00004"
    assert cut.end == 16.0
    assert [f.clip_id for f in fails] == ["v.5.mp4", "v.6.mp4"]
    assert all(f.stage == "probe" and f.code is FailureCode.PAST_MEDIA_END and "beyond the end" in f.reason
               for f in fails)
    gone, fails = fit_to_media(s, 10.0, min_clips=4)
    assert gone is None and len(fails) == 4


def test_no_partial_file_on_failure(media, tmp_path):
    dst = tmp_path / "x.mp4"
    with pytest.raises(MediaError):
        cut_sample(media["h264"], dst, 100, 110, CutConfig())
    assert not dst.exists() and not os.listdir(tmp_path)


def test_adjacent_spans_cut_in_one_pass(media, tmp_path):
    from lfvila_data.media.cut import Span, cut_command, cut_spans
    spans = [Span(1.0, 9.5, tmp_path / "a.mp4"), Span(10.0, 17.3, tmp_path / "b.mp4"),
             Span(17.3, 25.0, tmp_path / "c.mp4")]
    cmd = cut_command(media["h264"], spans, CutConfig(audio=True), with_audio=True)
    assert cmd.count("-i") == 1 and cmd.count("-ss") == 1  # one input, one seek, one decode
    results = cut_spans(media["h264"], spans + [Span(45, 50, tmp_path / "d.mp4")], CutConfig(audio=True))
    for span, out in zip(spans, results):
        assert not isinstance(out, Exception) and out.has_audio
        assert_boundaries(span.dst, span.start, span.end)
    assert isinstance(results[3], MediaError) and "outside the media" in str(results[3])
    assert not list(tmp_path.glob("*.part"))


def test_default_encode_has_no_b_frames_and_the_old_settings_remain(media, tmp_path):
    """CutConfig's x264 settings reach the file (docs/performance.md, "x264 settings"):
    no B-frames at crf 24; `x264_params=""` with crf 23 encodes as builds did before."""
    from lfvila_data.media.cut import X264_PARAMS, Span, cut_command
    cmd = cut_command(media["h264"], [Span(1.0, 5.0, tmp_path / "x.mp4")], CutConfig(), False)
    assert cmd[cmd.index("-x264-params") + 1] == X264_PARAMS == "bframes=0:partitions=i8x8,i4x4:me=dia"
    assert cmd[cmd.index("-crf") + 1] == "24" and cmd[cmd.index("-preset") + 1] == "veryfast"
    assert "-x264-params" not in cut_command(media["h264"], [Span(1.0, 5.0, tmp_path / "x.mp4")],
                                             CutConfig(x264_params=""), False)

    def frame_types(cfg: CutConfig) -> str:
        cut_sample(media["h264"], tmp_path / "t.mp4", 1.0, 13.0, cfg)
        return subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                               "frame=pict_type", "-of", "csv=p=0", str(tmp_path / "t.mp4")],
                              capture_output=True, text=True, check=True).stdout.split()

    new, old = frame_types(CutConfig()), frame_types(CutConfig(crf=23, x264_params=""))
    assert len(new) == len(old) == 36 and "B" not in new and "B" in old
    assert_boundaries(tmp_path / "t.mp4", 1.0, 13.0)  # the old settings' file, as before


def test_x264_params_that_x264_cannot_parse_are_named():
    from lfvila_data.media.cut import X264_PARAMS, x264_params_problem
    assert x264_params_problem(X264_PARAMS) is None and x264_params_problem("") is None
    assert x264_params_problem("bframes=0:me=bogus") == "Error parsing option 'me = bogus'."
