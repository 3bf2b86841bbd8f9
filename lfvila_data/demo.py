"""The built-in demo corpus: a few generated long videos in HD-VILA format, served from a
loopback HTTP server, so `lfvila-data demo` runs the real build (yt-dlp section
downloads, cutting, manifest) with no internet.

Each clip shows one named colour with moving noise and its sentence names that colour,
so the text is about the video and a model trained on it can learn the link."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

COLOURS = {"red": "0xd62728", "green": "0x2ca02c", "blue": "0x1f77b4", "yellow": "0xf5d33f",
           "purple": "0x9467bd", "orange": "0xff7f0e", "black": "0x111111", "white": "0xeeeeee"}
TEMPLATES = ["The screen turns {c}.", "Now everything is {c}.", "A {c} picture fills the frame.",
             "We see a flickering {c} surface.", "The colour changes to {c}."]
CLIP, GAP = 4.0, 0.5  # HD-VILA-like spans: 4 s clips with short pauses between them


def _hms(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def make_video(path: Path, colours: list[str], size: str = "320x240", fps: int = 15) -> None:
    """One segment per clip (clip plus the pause after it) in the given colours."""
    seg = CLIP + GAP
    inputs, labels = [], []
    for i, name in enumerate(colours):
        inputs += ["-f", "lavfi", "-i", f"color=c={COLOURS[name]}:s={size}:r={fps}:d={seg}"]
        labels.append(f"[{i}:v]")
    graph = (f"{''.join(labels)}concat=n={len(colours)}:v=1:a=0,"
             "drawbox=x='mod(t*80,iw-48)':y='ih/2-24+20*sin(t*3)':w=48:h=48:color=white@0.7:t=fill,"
             "noise=alls=6,format=yuv420p[v]")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", graph,
                    "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-g", str(2 * fps),
                    "-movflags", "+faststart", str(path)], check=True)


def make_corpus(root: Path, base_url: str, videos: int = 6, clips: int = 16,
                seed: int = 0) -> tuple[Path, Path]:
    """Write videos under root/www and HD-VILA metadata under root; returns (meta, text)."""
    rng = random.Random(seed)
    www = root / "www"
    www.mkdir(parents=True, exist_ok=True)
    meta_lines, text_lines = [], []
    for v in range(videos):
        vid = f"demo{v:02d}"
        colours = [rng.choice(list(COLOURS)) for _ in range(clips)]
        if not (www / f"{vid}.mp4").exists():
            make_video(www / f"{vid}.mp4", colours)
        spans = [(k * (CLIP + GAP), k * (CLIP + GAP) + CLIP) for k in range(clips)]
        meta_lines.append(json.dumps({"video_id": vid, "url": f"{base_url}/{vid}.mp4", "clip": [
            {"clip_id": f"{vid}.{k + 1}.mp4", "span": [_hms(a), _hms(b)]}
            for k, (a, b) in enumerate(spans)]}))
        text_lines += [json.dumps({"clip_id": f"{vid}.{k + 1}.mp4",
                                   "text": rng.choice(TEMPLATES).format(c=c)})
                       for k, c in enumerate(colours)]
    meta, text = root / "hdvila_part0.jsonl", root / "hdvila_clip_text.jsonl"
    meta.write_text("\n".join(meta_lines) + "\n")
    text.write_text("\n".join(text_lines) + "\n")
    return meta, text
