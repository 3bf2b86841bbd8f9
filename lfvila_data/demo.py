"""The built-in demo corpus: a few generated long videos in HD-VILA format, served from a
loopback HTTP server, so `lfvila-data demo` runs the real build (yt-dlp section
downloads, cutting, manifest) with no internet.

Each clip shows one named colour with moving noise and its sentence names that colour,
so the text is about the video and a model trained on it can learn the link: `train_demo`
trains the tiny demo config on the demo's shards and evaluates retrieval
(tests/model/test_learning.py shows it learning)."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
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


def _distinct_starts(rng: random.Random, colours: list[str], pairs: list[tuple[str, str]],
                     every: int) -> list[str]:
    """Give the clip at each multiple of ``every`` (the first clip of each ``every``-clip
    sample) and the one after it two different colours whose unordered pair no other such
    start has (popped from ``pairs`` while they last)."""
    for start in range(0, len(colours) - 1, every):
        if pairs:
            pair = list(pairs.pop())
            rng.shuffle(pair)
            colours[start:start + 2] = pair
    return colours


def make_corpus(root: Path, base_url: str, videos: int = 6, clips: int = 16,
                seed: int = 0, colours: int | None = None, distinct_every: int = 0,
                size: str = "320x240") -> tuple[Path, Path]:
    """Write videos under root/www and HD-VILA metadata under root; returns (meta, text).

    colours: use the first n named colours only (default all 8). distinct_every=k > 0:
    samples of k clips get distinct first two-clip windows (two different colours, an
    unordered pair no other sample starts with, while the pairs last: 28 for 8 colours), so
    a retrieval test on window 0 has no indistinguishable samples. size: of the generated
    videos (WxH)."""
    rng = random.Random(seed)
    palette = list(COLOURS)[:colours or len(COLOURS)]
    if len(palette) < 2:
        raise ValueError("the demo corpus needs at least 2 colours")
    www = root / "www"
    www.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b) for i, a in enumerate(palette) for b in palette[i + 1:]] if distinct_every else []
    rng.shuffle(pairs)
    meta_lines, text_lines = [], []
    for v in range(videos):
        vid = f"demo{v:02d}"
        colours_v = [rng.choice(palette) for _ in range(clips)]
        if distinct_every:
            colours_v = _distinct_starts(rng, colours_v, pairs, distinct_every)
        video = www / f"{vid}.mp4"
        stamp = www / f"{vid}.colours"  # regenerate when the colours asked for change
        want = json.dumps([colours_v, size])
        if not video.exists() or not stamp.exists() or stamp.read_text() != want:
            make_video(video, colours_v, size=size)
            stamp.write_text(want)
        spans = [(k * (CLIP + GAP), k * (CLIP + GAP) + CLIP) for k in range(clips)]
        meta_lines.append(json.dumps({"video_id": vid, "url": f"{base_url}/{vid}.mp4", "clip": [
            {"clip_id": f"{vid}.{k + 1}.mp4", "span": [_hms(a), _hms(b)]}
            for k, (a, b) in enumerate(spans)]}))
        text_lines += [json.dumps({"clip_id": f"{vid}.{k + 1}.mp4",
                                   "text": rng.choice(TEMPLATES).format(c=c)})
                       for k, c in enumerate(colours_v)]
    meta, text = root / "hdvila_part0.jsonl", root / "hdvila_clip_text.jsonl"
    meta.write_text("\n".join(meta_lines) + "\n")
    text.write_text("\n".join(text_lines) + "\n")
    return meta, text


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(directory: str | Path, texts: Iterable[str] = ()) -> Path:
    """A tiny BERT WordPiece vocabulary (directory/vocab.txt) of the words and punctuation of
    the demo sentences plus ``texts``, so training needs no downloaded tokenizer; load it
    with ``lfvila_model.data.load_tokenizer(directory)``. Returns the directory."""
    words: set[str] = set(COLOURS)
    for t in [*TEMPLATES, *texts]:
        words |= set(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower().replace("{c}", " ")))
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, *sorted(words)]) + "\n")
    return d


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _train_command(args: list[str], log_file: Path) -> None:
    """Run ``lfvila-train ARGS`` as the user would (this interpreter, so the same install),
    its stdout and stderr appended to ``log_file`` as they come; a failure is a ValueError
    carrying its last line."""
    with open(log_file, "a") as f:
        rc = subprocess.run([sys.executable, "-m", "lfvila_model.cli", *args], stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        lines = [line for line in log_file.read_text().splitlines() if line.strip()] or [f"exit code {rc}"]
        name = "lfvila-train eval" if args[0] == "eval" else "lfvila-train"
        raise ValueError(f"{name} failed: {lines[-1]} (see {log_file})")


def train_demo(output: str | Path, steps: int, overrides: Iterable[str] = (), config: str = "demo",
               log: Callable[[str], None] = print) -> dict:
    """Train the demo config for ``steps`` updates on ``output/shards`` (train split), then
    evaluate paragraph-to-video retrieval on each split, with ``lfvila-train`` (the `model`
    extra) run as a command, so the data package never imports the model package.

    Writes ``output/tokenizer/vocab.txt`` (from the build's paragraphs), checkpoints in
    ``output/train/checkpoints``, ``metrics.csv`` in ``output/train/logs``, the commands'
    output in ``output/train/train.log`` and ``output/train/eval.json`` ({split: metrics}).
    Returns {"loss_first", "loss_last" (means of the first and last few logged steps),
    "steps", "train_samples", "eval": {split: metrics}, "checkpoint"}."""
    import csv
    import importlib.util
    import tempfile

    import pandas as pd

    for module in ("torch", "transformers", "lfvila_model"):
        if importlib.util.find_spec(module) is None:  # the CLI says: --train-steps 0 skips training
            raise ImportError(f"No module named {module!r}")
    out = Path(output)
    shard_dir, run = out / "shards", out / "train"
    splits = {s: sorted(shard_dir.glob(f"{s}-*.tar")) for s in ("train", "val")}
    if not splits["train"]:
        raise ValueError(f"no train shards in {shard_dir}")
    counts = pd.read_parquet(shard_dir / "manifest").split.value_counts().to_dict()
    paragraphs = pd.read_parquet(out / "manifest").paragraph.tolist()
    tok = write_vocab(out / "tokenizer", paragraphs)
    vocab = len((tok / "vocab.txt").read_text().split())
    n_train = int(counts.get("train", 0))
    run.mkdir(parents=True, exist_ok=True)
    train_log = run / "train.log"
    train_log.write_text("")
    log(f"train: {steps} steps of the {config} config on {n_train} train samples "
        f"(step lines in {train_log})")
    _train_command([
        "--train-shards", str(shard_dir), "--config", config,
        f"data.tokenizer={tok}", f"model.text.bert.vocab_size={max(128, vocab)}",
        f"data.batch_size={max(2, min(8, n_train))}", f"optim.max_steps={steps}",
        f"optim.warmup_steps={max(1, min(10, steps // 4))}",
        f"checkpoint.dir={run / 'checkpoints'}", f"log.dir={run / 'logs'}", "log.every_steps=1",
        "log.progress=false", "log.tensorboard=false", *overrides], train_log)
    with open(run / "logs" / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    k = max(1, min(5, len(losses) // 4))
    ckpt = sorted(p.parent for p in (run / "checkpoints").glob("step-*/trainer.json"))[-1]
    metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, paths in splits.items():
            if paths:
                _train_command(["eval", "--checkpoint", str(ckpt), "--val-shards", ",".join(map(str, paths)),
                                "--output", f"{tmp}/{split}.json"], train_log)
                metrics[split] = {k: v for k, v in json.loads(Path(f"{tmp}/{split}.json").read_text()).items()
                                  if k != "checkpoint"}
    (run / "eval.json").write_text(json.dumps({**metrics, "checkpoint": str(ckpt)}, indent=1))
    return {"loss_first": _mean(losses[:k]), "loss_last": _mean(losses[-k:]), "steps": len(losses),
            "train_samples": n_train, "eval": metrics, "checkpoint": str(ckpt)}
