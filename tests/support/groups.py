"""A generated HD-VILA-style corpus whose "official" clip-id groups (like LF-VILA-8M's
lfvila8m_clipid.jsonl) were made by a known rule, so compare-plans can be checked and our
planning parameters tuned against groups whose making we know."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tests.support.corpus import VideoSpec, write_metadata


@dataclass(frozen=True)
class GroupRule:
    """How the official-style groups are made: maximal runs of consecutive clips with
    every gap at most `max_gap`, cut into chunks of `max_clips` (shorter than `min_clips`
    dropped), and no group at all for a `skip_videos` share of videos."""

    max_gap: float = 2.0
    min_clips: int = 4
    max_clips: int = 16
    skip_videos: float = 0.1


def random_spans(rng: random.Random, n: int) -> list[tuple[float, float]]:
    """Clip spans like HD-VILA's: 5-20 s sentences, mostly short pauses, some long ones."""
    spans, t = [], rng.uniform(0, 5)
    for _ in range(n):
        length = rng.uniform(5, 20)
        spans.append((round(t, 3), round(t + length, 3)))
        u = rng.random()
        gap = rng.uniform(0, 1.5) if u < 0.75 else rng.uniform(1.5, 4) if u < 0.93 else rng.uniform(4, 30)
        t += length + gap
    return spans


def rule_groups(spans: list[tuple[float, float]], rule: GroupRule) -> list[list[int]]:
    """The clip numbers (1-based) of each group of one video under `rule`."""
    runs: list[list[int]] = []
    for k, (start, _) in enumerate(spans, 1):
        if runs and start - spans[runs[-1][-1] - 1][1] <= rule.max_gap:
            runs[-1].append(k)
        else:
            runs.append([k])
    return [chunk for run in runs for i in range(0, len(run), rule.max_clips)
            if len(chunk := run[i:i + rule.max_clips]) >= rule.min_clips]


def make_grouped_corpus(root: Path, videos: int, rule: GroupRule = GroupRule(), seed: int = 0,
                        clips: tuple[int, int] = (6, 60), url: str = "https://example.invalid/{vid}.mp4",
                        ) -> tuple[Path, Path, Path, list[list[str]]]:
    """Metadata, clip texts and a groups file (one JSON list of clip ids per line, in
    random video order); returns their paths and the groups as written."""
    rng = random.Random(seed)
    specs = [VideoSpec(f"g{i:010d}", url.format(vid=f"g{i:010d}"), random_spans(rng, rng.randint(*clips)))
             for i in range(videos)]
    meta, text = write_metadata(root, specs)
    groups = [[v.clip_id(k) for k in g] for v in specs if rng.random() >= rule.skip_videos
              for g in rule_groups(v.spans, rule)]
    rng.shuffle(groups)
    path = root / "lfvila8m_clipid.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in groups))
    return meta, text, path, groups
