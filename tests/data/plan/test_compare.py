"""compare-plans: exact numbers on a known pair of plans, the report files as readers get
them (JSON, a PNG PIL opens), and on a corpus whose groups were made by a known rule, our
rule with the same parameters matches every group while other parameters do not."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image
from typer.testing import CliRunner

from lfvila_data.cli import app
from lfvila_data.executor.base import local_shuffle
from lfvila_data.inputs import InputError
from lfvila_data.plan.compare import compare_plans
from lfvila_data.plan.join import PlanConfig, PlanWriter, build_plan
from lfvila_data.records import Clip, PlannedSample, sample_key
from tests.support.groups import GroupRule, make_grouped_corpus


def sample(vid: str, first: int, last: int) -> PlannedSample:
    clips = tuple(Clip(f"{vid}.{k}.mp4", k, 10.0 * k, 10.0 * k + 5, f"text {k}") for k in range(first, last + 1))
    return PlannedSample(sample_key(vid, first, last), vid, f"https://x/{vid}", clips[0].start, clips[-1].end, clips)


def write(out, samples: list[PlannedSample]) -> None:
    writer = PlanWriter(str(out), PlanConfig(), samples_per_part=1)  # one part per video: several parts
    for s in samples:
        writer.add([s], [])
    writer.close({}, Counter())


@pytest.fixture
def pair(tmp_path):
    write(tmp_path / "a", [sample("v1", 1, 4), sample("v1", 5, 8), sample("v2", 1, 4)])
    write(tmp_path / "b", [sample("v1", 1, 4), sample("v1", 5, 9), sample("v3", 1, 2)])
    return tmp_path / "a", tmp_path / "b"


def test_known_pair_exact_numbers(pair, tmp_path):
    a, b = pair
    r = CliRunner().invoke(app, ["compare-plans", str(a), str(b / "plan"), "--output", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "same clip list" in r.output and "1 samples (33.3 % of A, 33.3 % of B)" in r.output

    report = json.loads((tmp_path / "rep" / "compare.json").read_text())
    assert report["a"] | {"path": None} == {"path": None, "samples": 3, "clips": 12, "hours": round(105 / 3600, 6),
                                            "clips_per_sample": {"4": 3}}
    assert report["b"] | {"path": None} == {"path": None, "samples": 3, "clips": 11, "hours": round(95 / 3600, 6),
                                            "clips_per_sample": {"2": 1, "4": 1, "5": 1}}
    assert (report["clips_in_both"], report["clips_only_a"], report["clips_only_b"]) == (8, 4, 3)
    assert (report["exact_matches"], report["match_rate_a"], report["match_rate_b"]) == (1, 0.333333, 0.333333)
    assert report["clip_recall"] == 0.666667
    with Image.open(report["png"]) as png:
        png.load()
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100


def test_same_plan_matches_itself_and_bad_input_is_one_line(pair, tmp_path):
    a, _ = pair
    same = compare_plans(str(a), str(a), num_buckets=2)
    assert (same.exact_matches, same.match_rate_a, same.clips_only_a, same.clips_only_b) == (3, 1.0, 0, 0)
    with pytest.raises(InputError, match="neither a build directory"):
        compare_plans(str(a), str(tmp_path))
    r = CliRunner().invoke(app, ["compare-plans", str(a), str(tmp_path / "nothing")])
    assert r.exit_code == 2 and r.output.count("\n") == 1


def test_our_rule_with_the_generators_parameters_matches_every_group(tmp_path):
    rule = GroupRule(max_gap=2.0, min_clips=4, max_clips=12, skip_videos=0.2)
    meta, text, groups, written = make_grouped_corpus(tmp_path / "corpus", 40, rule, seed=3)
    official = tmp_path / "official"
    build_plan([str(meta)], [str(text)], str(official), PlanConfig(num_buckets=4), shuffle=local_shuffle,
               groups=[str(groups)])

    def ours(**kw):
        out = tmp_path / "ours-{max_gap}-{min_clips}-{max_clips}".format(**kw)
        build_plan([str(meta)], [str(text)], str(out), PlanConfig(num_buckets=3, **kw), shuffle=local_shuffle)
        return compare_plans(str(official), str(out))

    exact = ours(max_gap=2.0, min_clips=4, max_clips=12)
    assert exact.a.samples == len(written)
    assert (exact.match_rate_a, exact.clips_only_a, exact.clip_recall) == (1.0, 0, 1.0)
    assert exact.clips_only_b > 0 and exact.match_rate_b < 1  # the skipped videos
    for kw in ({"max_gap": 3.0, "min_clips": 4, "max_clips": 12}, {"max_gap": 2.0, "min_clips": 4, "max_clips": 32}):
        assert ours(**kw).match_rate_a < 1
