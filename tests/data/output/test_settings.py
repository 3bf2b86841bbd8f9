"""A rerun with other sample settings (issue 14 item 4): refused in one line, or with
--rebuild every sample is made again with the new ones; speed settings change freely;
build.json always describes the files on disk."""
from __future__ import annotations

import json
import subprocess
from dataclasses import fields

import pandas as pd
import pytest

from lfvila_data.build import MEDIA_SETTINGS, check_media_settings, run_build
from lfvila_data.executor.runner import RunConfig
from lfvila_data.inputs import InputError
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.output.fingerprint import content, kind
from lfvila_data.output.write import OutputDir
from tests.support.smallbuild import KEYS, copy_build, file_facts, read_video_stream, small_build_fixture


def test_every_media_setting_is_declared():
    """What changes a sample file is content; how fast or whether a download is tried is not."""
    assert set(content(CutConfig())) == {"fps", "height", "copy", "audio", "crf", "preset", "x264_params"}
    assert set(content(FetchConfig())) == {"height", "audio"}
    assert {kind(f) for f in fields(RunConfig)} == {"speed"}
    assert {kind(f) for f in fields(CutConfig) if f.name in ("threads", "timeout")} == {"speed"}


small_build = small_build_fixture()


def test_a_build_from_before_the_x264_params_is_told_how_to_go_on():
    """Builds before `x264_params` recorded none: they were made with none, at crf 23."""
    from lfvila_data.build import media_setting_changes
    old = {"cut": {k: v for k, v in content(CutConfig(crf=23)).items() if k != "x264_params"}, "fetch": {}}
    assert media_setting_changes(old, {"cut": content(CutConfig()), "fetch": {}}) == [
        ("--crf 23", "--crf 24"), ("--x264-params ''", "--x264-params bframes=0:partitions=i8x8,i4x4:me=dia")]
    assert media_setting_changes(old, {"cut": content(CutConfig(crf=23, x264_params="")), "fetch": {}}) == []


def test_other_settings_are_refused_and_nothing_is_touched(small_build, tmp_path):
    site, built = small_build
    out = copy_build(built, tmp_path / "out")
    before = file_facts(out)
    r = subprocess.run(site.cli(out, "--fps", "1", "--height", "120"), check=False, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{out} was built with --fps 3 --height 240; this run asks --fps 1 --height 120" in err
    assert "--rebuild" in err and "--output" in err
    assert file_facts(out) == before


def test_output_older_than_the_settings_marker_is_judged_by_build_json(small_build, tmp_path):
    site, built = small_build
    out = copy_build(built, tmp_path / "out")
    (out / MEDIA_SETTINGS).unlink()
    check_media_settings(OutputDir(str(out)), site.config(out))  # build.json: the same settings
    info = json.loads((out / "build.json").read_text())
    info["cut"]["audio"] = info["fetch"]["audio"] = True  # as if made with --audio
    (out / "build.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="built with --audio; this run asks no --audio"):
        check_media_settings(OutputDir(str(out)), site.config(out))


def test_speed_settings_change_freely(small_build, tmp_path):
    site, built = small_build
    out = copy_build(built, tmp_path / "out")
    before = {k: v for k, v in file_facts(out).items() if k.startswith("videos/")}
    site.srv.requests.clear()
    cfg = site.config(out, cut=CutConfig(threads=2, timeout=60),
                      fetch=FetchConfig(retries=2, backoff=0.1, margin=2.0, sections=False),
                      run=RunConfig(fetch_concurrency=1, cut_concurrency=1, cut_cpus=2.0))
    record = run_build(cfg)
    assert sum(site.srv.requests.values()) == 0  # nothing redone
    assert {k: v for k, v in file_facts(out).items() if k.startswith("videos/")} == before
    assert record["counts"]["samples_written"] == len(KEYS)
    assert record["cut"]["threads"] == 2 and record["fetch"]["retries"] == 2


def test_rebuild_makes_every_sample_with_the_new_settings(small_build, tmp_path):
    site, built = small_build
    out = copy_build(built, tmp_path / "out")
    plan_before = {k: v for k, v in file_facts(out).items() if k.startswith("plan/")}
    run_build(site.config(out, cut=CutConfig(fps=1, height=120), rebuild=True))
    m = pd.read_parquet(out / "manifest")
    assert list(m.key) == KEYS
    for row in m.itertuples():
        got = read_video_stream(out / row.video)
        assert (got["height"], got["fps"]) == (120, 1.0), row.key
        assert abs(got["frames"] - (row.end - row.start)) <= 1, row.key
        assert (row.height, row.fps) == (120, 1.0)
    info = json.loads((out / "build.json").read_text())
    assert (info["cut"]["fps"], info["cut"]["height"], info["fetch"]["height"]) == (1.0, 120, 120)
    assert json.loads((out / MEDIA_SETTINGS).read_text())["cut"]["height"] == 120
    # the plan does not depend on the sample settings: kept as it was
    assert {k: v for k, v in file_facts(out).items() if k.startswith("plan/")} == plan_before
    # the old settings are now refused in turn, and a plain rerun of the new ones proceeds
    with pytest.raises(InputError, match="built with --fps 1 --height 120; this run asks --fps 3 --height 240"):
        check_media_settings(OutputDir(str(out)), site.config(out))
    check_media_settings(OutputDir(str(out)), site.config(out, cut=CutConfig(fps=1, height=120)))
