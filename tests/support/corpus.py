"""HD-VILA-format metadata for generated videos, written the way the real release is."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


def hms(seconds: float) -> str:
    """Seconds as HD-VILA's "HH:MM:SS.mmm"."""
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def even_spans(n: int, length: float = 4.0, gap: float = 0.5, first: float = 1.0) -> list[tuple[float, float]]:
    return [(first + i * (length + gap), first + i * (length + gap) + length) for i in range(n)]


@dataclass
class VideoSpec:
    video_id: str
    url: str
    spans: list[tuple[float, float]]
    no_text: set[int] = field(default_factory=set)  # clip numbers (1-based) without text

    def clip_id(self, k: int) -> str:
        return f"{self.video_id}.{k}.mp4"

    def meta_line(self) -> str:
        return json.dumps({"video_id": self.video_id, "url": self.url, "clip": [
            {"clip_id": self.clip_id(k), "span": [hms(a), hms(b)]}
            for k, (a, b) in enumerate(self.spans, 1)]})

    def text_lines(self) -> list[str]:
        return [json.dumps({"clip_id": self.clip_id(k), "text": f"Clip {k} of {self.video_id} says hello."})
                for k in range(1, len(self.spans) + 1) if k not in self.no_text]


def write_metadata(dirpath: Path, videos: list[VideoSpec], extra_meta: list[str] = (),
                   extra_text: list[str] = ()) -> tuple[Path, Path]:
    """Write hdvila_part0.jsonl and hdvila_clip_text.jsonl; returns both paths."""
    dirpath.mkdir(parents=True, exist_ok=True)
    meta, text = dirpath / "hdvila_part0.jsonl", dirpath / "hdvila_clip_text.jsonl"
    meta.write_text("\n".join([v.meta_line() for v in videos] + list(extra_meta)) + "\n")
    text.write_text("\n".join([ln for v in videos for ln in v.text_lines()] + list(extra_text)) + "\n")
    return meta, text
