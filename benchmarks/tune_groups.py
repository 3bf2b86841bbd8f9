"""Which of our planning parameters come closest to published groups? On a generated
HD-VILA-style corpus whose official-style groups were made by a known rule
(tests/support/groups.py), plan the groups (--groups) and our rule over a grid of
--max-gap / --min-clips / --max-clips, compare each with compare-plans, and print the
match rates as a Markdown table (the README's HD-VILA section quotes it).

    python benchmarks/tune_groups.py --videos 400 --workdir /tmp/lfvila-tune-groups

Planning runs in this process (executor.base.local_shuffle): the plan is the same as on
Ray (tests/data/plan/test_plan.py), and a grid of small plans is faster without a cluster."""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfvila_data.executor.base import local_shuffle
from lfvila_data.plan.compare import compare_plans, write_report
from lfvila_data.plan.join import PlanConfig, build_plan
from tests.support.groups import GroupRule, make_grouped_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/lfvila-tune-groups")
    ap.add_argument("--rule-gap", type=float, default=2.0, help="The generator's gap rule (s).")
    ap.add_argument("--rule-max", type=int, default=16, help="The generator's longest group.")
    ap.add_argument("--skip-videos", type=float, default=0.1, help="Share of videos without groups.")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    rule = GroupRule(max_gap=args.rule_gap, min_clips=4, max_clips=args.rule_max, skip_videos=args.skip_videos)
    meta, text, groups, _ = make_grouped_corpus(work / "corpus", args.videos, rule, seed=args.seed)
    quiet = lambda line: None
    official = work / "official"
    build_plan([str(meta)], [str(text)], str(official), PlanConfig(num_buckets=4), shuffle=local_shuffle,
               groups=[str(groups)], progress=quiet)

    rows = []
    for gap, lo, hi in itertools.product((1.0, 2.0, 3.0, 5.0), (2, 4, 6), (8, 16, 32)):
        out = work / f"ours-{gap}-{lo}-{hi}"
        build_plan([str(meta)], [str(text)], str(out), PlanConfig(min_clips=lo, max_clips=hi, max_gap=gap,
                                                                  num_buckets=4),
                   shuffle=local_shuffle, progress=quiet)
        r = compare_plans(str(official), str(out))
        rows.append({"max_gap": gap, "min_clips": lo, "max_clips": hi, "samples": r.b.samples,
                     "match_rate_official": r.match_rate_a, "match_rate_ours": r.match_rate_b,
                     "clip_recall": r.clip_recall, "clips_only_ours": r.clips_only_b})
        shutil.rmtree(out)
    rows.sort(key=lambda r: (-r["match_rate_official"], -r["match_rate_ours"]))
    best = rows[0]
    out = work / "best"
    build_plan([str(meta)], [str(text)], str(out), PlanConfig(min_clips=best["min_clips"],
                                                              max_clips=best["max_clips"],
                                                              max_gap=best["max_gap"], num_buckets=4),
               shuffle=local_shuffle, progress=quiet)
    report = write_report(compare_plans(str(official), str(out)), str(work / "report"))
    print(f"rule: {asdict(rule)}; {args.videos} videos, seed {args.seed}; official: {report.a.samples} groups, "
          f"{report.a.clips} clips, {report.a.hours:.1f} h")
    print("| --max-gap | --min-clips | --max-clips | samples | official groups matched | our samples matched "
          "| official clips kept |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['max_gap']:g} | {r['min_clips']} | {r['max_clips']} | {r['samples']:,} "
              f"| {100 * r['match_rate_official']:.1f} % | {100 * r['match_rate_ours']:.1f} % "
              f"| {100 * r['clip_recall']:.1f} % |")
    (work / "tune.json").write_text(json.dumps({"rule": asdict(rule), "rows": rows}, indent=2))
    print(f"histograms of the best: {report.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
