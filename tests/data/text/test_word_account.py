"""Every parsed word is accounted for: words in samples + words dropped by planning (by
reason) = words parsed, for subtitle files alone (pure planning) and through a whole
`--source local` build (build.json, the manifest, `--plan-only` and `stats`)."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
from typer.testing import CliRunner

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.cli import app
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import DROP_REASONS, PlanConfig, dropped_by_reason
from lfvila_data.text.clips import ClipConfig, plan_subtitled_video
from lfvila_data.text.stage import TextOptions
from tests.support.media import make_timecoded_video
from tests.support.realdata import SUBTITLES as REAL_SUBS

REAL_FILES = sorted(p for p in REAL_SUBS.glob("*") if p.suffix in (".vtt", ".srt")) if REAL_SUBS.is_dir() \
    else []


def vtt(cues: list[tuple[float, float, str]]) -> bytes:
    def t(s: float) -> str:
        ms = round(s * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    return ("WEBVTT\n\n" + "\n".join(f"{t(a)} --> {t(b)}\n{text}\n" for a, b, text in cues)).encode()


def words_in(samples) -> int:
    return sum(len(c.text.split()) for s in samples for c in s.clips)


def test_planning_counts_what_it_drops_by_reason():
    # 9 s cues, 1 s apart, 5 words each; each cue is one clip (>= 8 s). Clips at 0..50 make
    # a run of 6: a sample of 4 and a tail chunk of 2. After a 30 s music break, clips at 89
    # and 99 are a run of 2; after another break, 140 and 150 are a run of 2, and the cue
    # at 160 lies past the end of the 158 s video (and its 1 s of slack).
    starts = [0, 10, 20, 30, 40, 50, 89, 99, 140, 150, 160]
    data = vtt([(a, a + 9, f"This is sentence number {i}.") for i, a in enumerate(starts)])
    stats: Counter = Counter()
    plan = PlanConfig(min_clips=3, max_clips=4)
    samples, failures = plan_subtitled_video("v", "u", data, ".vtt", None, plan, stats=stats, duration=158.0)
    assert [s.key.split("_", 1)[1] for s in samples] == ["00001_00004"]
    assert [f.code.value for f in failures] == ["subtitles_past_end"]
    dropped = dropped_by_reason(stats)
    assert dropped == {
        "past_video_end": {"runs": 0, "clips": 0, "words": 5, "hours": round(11 / 3600, 6)},
        "short_run": {"runs": 2, "clips": 4, "words": 20, "hours": round(36 / 3600, 6)},
        "short_tail_chunk": {"runs": 1, "clips": 2, "words": 10, "hours": round(18 / 3600, 6)},
    }
    assert set(dropped) <= set(DROP_REASONS)
    assert stats["dropped_short_runs"] == 3 and stats["clips_total"] == 10
    assert stats["words_parsed"] == 55 and stats["words_in_samples"] == words_in(samples) == 20
    assert stats["words_in_samples"] + sum(d["words"] for d in dropped.values()) == stats["words_parsed"]


@pytest.mark.skipif(not REAL_FILES, reason="no real subtitle files")
def test_a_file_in_another_language_drops_all_its_words():
    french = next(p for p in REAL_FILES if p.name.startswith("jlm_fr_"))
    stats: Counter = Counter()
    samples, failures = plan_subtitled_video("v", "u", french.read_bytes(), ".vtt", "en", PlanConfig(),
                                             stats=stats)
    assert not samples and [f.code.value for f in failures] == ["wrong_language"]
    as_french: Counter = Counter()
    plan_subtitled_video("v", "u", french.read_bytes(), ".vtt", "fr", PlanConfig(), stats=as_french)
    assert stats["words_parsed"] == as_french["words_parsed"] == 3698
    dropped = dropped_by_reason(stats)
    assert list(dropped) == ["wrong_language"] and dropped["wrong_language"]["words"] == 3698


@pytest.mark.skipif(not REAL_FILES, reason="no real subtitle files")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_every_word_of_a_real_subtitle_file_is_accounted_for(path):
    stats: Counter = Counter()
    samples, _ = plan_subtitled_video(path.stem, "u", path.read_bytes(), path.suffix, None, PlanConfig(),
                                      stats=stats)
    dropped = dropped_by_reason(stats)
    assert stats["words_parsed"] > 0
    assert stats["words_in_samples"] == words_in(samples)
    assert stats["words_in_samples"] + sum(d["words"] for d in dropped.values()) == stats["words_parsed"]
    # every clip is in a sample or dropped with its reason
    in_samples = sum(len(s.clips) for s in samples)
    assert in_samples + sum(d["clips"] for d in dropped.values()) == stats["clips_total"]


@pytest.fixture(scope="module")
def build(tmp_path_factory, ray_module):
    """One 36 s video whose 2.5 s cues (one clip each) make a sample of 4 clips, a tail
    chunk of 2 and, after a 6.5 s music break, a run of 2; the break holds a 5.5 s cue
    (longer than a clip may be: unaligned text), and a 0.1 s "Okay." ends the text."""
    root = tmp_path_factory.mktemp("words")
    lib = root / "library"
    lib.mkdir()
    make_timecoded_video(lib / "talk.mp4", 36, width=160, height=120)
    starts = [1, 4, 7, 10, 13, 16, 25, 28]
    cues = [(a, a + 2.5, f"This is sentence number {i}.") for i, a in enumerate(starts)]
    (lib / "talk.en.vtt").write_bytes(vtt(sorted(cues + [(19, 24.5, "Music plays on and on here."),
                                                         (33, 33.1, "Okay.")])))
    out = root / "out"
    cfg = BuildConfig(metadata=(), text=(), output=str(out), source="local", inputs=(str(lib),),
                      text_opts=TextOptions(clip=ClipConfig(min_duration=2.0, max_duration=5.0)),
                      plan=PlanConfig(min_clips=3, max_clips=4, allow_local_files=True),
                      task=TaskContext(output=str(out), fetch=FetchConfig(allow_local_files=True)))
    run_build(cfg)
    return out, cfg


def test_build_accounts_for_every_word(build, capsys):
    out, cfg = build
    plan = json.loads((out / "build.json").read_text())["plan"]
    m = pd.read_parquet(out / "manifest")
    in_manifest = sum(len(c["text"].split()) for clips in m.clips for c in clips)
    assert plan["words_parsed"] == 47 and plan["words_in_samples"] == in_manifest == 20
    assert plan["dropped"] == {
        "short_clip": {"runs": 0, "clips": 1, "words": 1, "hours": round(0.1 / 3600, 6)},
        "short_run": {"runs": 1, "clips": 2, "words": 10, "hours": round(5 / 3600, 6)},
        "short_tail_chunk": {"runs": 1, "clips": 2, "words": 10, "hours": round(5 / 3600, 6)},
        "unaligned_text": {"runs": 0, "clips": 0, "words": 6, "hours": round(5.5 / 3600, 6)},
    }
    assert in_manifest + sum(d["words"] for d in plan["dropped"].values()) == plan["words_parsed"]
    assert plan["dropped_short_runs"] == 2 and plan["clips_total"] == 9

    # --plan-only on the same output re-plans from the text journal: the same counts, printed
    capsys.readouterr()
    again = run_build(BuildConfig(**{**cfg.__dict__, "plan_only": True}))
    printed = capsys.readouterr().out
    assert again["words_parsed"] == 47 and again["dropped"] == plan["dropped"]
    assert "words parsed" in printed and "47" in printed
    assert "dropped: short_run" in printed and "10 words" in printed
    assert "dropped: unaligned_text" in printed and "dropped: short_clip" in printed

    got = CliRunner().invoke(app, ["stats", str(out)])
    assert got.exit_code == 0, got.output
    assert "words in manifest" in got.output and "planning: words parsed" in got.output
    lines = {ln.split("  ", 1)[0].strip(): ln for ln in got.output.splitlines()}
    assert "10 words" in lines["planning: dropped: short_run"]
    assert "10 words" in lines["planning: dropped: short_tail_chunk"]
    assert "6 words" in lines["planning: dropped: unaligned_text"]
    assert "1 clips" in lines["planning: dropped: short_clip"]
