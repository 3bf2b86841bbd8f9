"""Real-time factor of Whisper speech recognition (lfvila_data.text.asr) on one device.

RTF = processing seconds / audio seconds (lower is better); xRT = its inverse ("x real
time"). Each row transcribes the same audio end to end — ffmpeg decoding, features,
`generate`, word alignment — with one batch size; the ratio column compares it with the
baseline measured in the same run: batch size 1 of our transcriber (`--baseline batch1`,
added when missing), or transformers' ASR pipeline with its defaults for long audio
(`--baseline pipeline`: `chunk_length_s=30`, word timestamps, the same batch size).

    python benchmarks/gpu_asr_rtf.py --model openai/whisper-large-v3 --batch-size 1 8 16 talk.mp4
    python benchmarks/gpu_asr_rtf.py --model random:large-v3 --seconds 300 --batch-size 1 8 16 32
    python benchmarks/gpu_asr_rtf.py --model random:tiny --device cpu --seconds 20 --batch-size 1 2

`random:<preset>` builds a randomly initialised model of that shape (tests/support/asr_model.py:
"large-v3" is whisper-large-v3's layers and widths with a small vocabulary) for machines
that cannot download a checkpoint. Random weights never stop early, so every 30-s window
decodes exactly `--tokens` tokens (default 100, about what 30 s of English speech takes).
Generated audio (no media given) is a tone: a real model would decode almost nothing, so
`--tokens` is forced there as well (minimum = maximum); on real speech the model decides.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import transformers

from lfvila_data.media.audio import SAMPLE_RATE, stream_audio
from lfvila_data.text.asr import AsrConfig, AsrJob, WhisperTranscriber

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def generate_audio(path: Path, seconds: float) -> Path:
    """A tone with a slow warble, AAC in MP4, like the audio track of a downloaded video."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"aevalsrc='0.3*sin(2*PI*(220+40*sin(2*PI*0.3*t))*t)':s=44100:d={seconds}",
                    "-c:a", "aac", "-b:a", "96k", str(path)], check=True)
    return path


def resolve_model(name: str, workdir: Path) -> str:
    if not name.startswith("random:"):
        return name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
    from asr_model import build_random_whisper

    preset = name.split(":", 1)[1]
    log(f"building a random {preset} Whisper in {workdir}")
    return str(build_random_whisper(workdir / f"whisper-{preset}", preset))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(t: WhisperTranscriber, jobs: list[AsrJob], device: str) -> dict:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    results = [t.transcribe(j) for j in jobs]
    sync(device)
    wall = time.perf_counter() - start
    failed = [r.failure.reason for r in results if r.failure]
    if failed:
        raise SystemExit(f"transcription failed: {failed[0]}")
    return {"wall": wall, "audio": sum(r.audio_seconds for r in results),
            "words": sum(len(r.words) for r in results), "mem": _peak(device)}


def run_pipeline(asr, audio: list, batch: int, device: str, tokens: int | None) -> dict:
    """transformers' ASR pipeline: chunked long-form with word timestamps, its defaults."""
    gen = {} if tokens is None else {"min_new_tokens": tokens, "max_new_tokens": tokens}
    asr(audio[0][: SAMPLE_RATE * 30], chunk_length_s=30, batch_size=batch, return_timestamps="word",
        generate_kwargs=gen)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    words = 0
    for a in audio:  # audio decoding is excluded here: it is already in memory
        out = asr(a, chunk_length_s=30, batch_size=batch, return_timestamps="word", generate_kwargs=gen)
        words += len(out.get("chunks", []))
    sync(device)
    return {"wall": time.perf_counter() - start, "audio": sum(len(a) for a in audio) / SAMPLE_RATE,
            "words": words, "mem": _peak(device)}


def _peak(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def main(argv: list[str] | None = None) -> int:
    transformers.logging.set_verbosity_error()  # per-call notes on lengths and deprecations
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("media", nargs="*", help="media files or direct URLs (default: generated audio)")
    p.add_argument("--model", default="openai/whisper-large-v3", help="hub id, local directory or random:<preset>")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto (float16 on GPU), float16, bfloat16, float32")
    p.add_argument("--timestamps", nargs="+", default=["word"], choices=["word", "segment"])
    p.add_argument("--language", default="en", help="language code, or 'detect'")
    p.add_argument("--seconds", type=float, default=300.0, help="length of the generated audio")
    p.add_argument("--tokens", type=int, default=None,
                   help="tokens decoded per 30-s window (forced); default 100 on random models or generated audio")
    p.add_argument("--baseline", choices=["batch1", "pipeline"], default="batch1")
    p.add_argument("--time-limit", type=float, default=540.0, help="skip rows that would start after this")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = resolve_model(args.model, tmp)
        synthetic = args.model.startswith("random:") or not args.media
        tokens = args.tokens if args.tokens is not None else (100 if synthetic else None)
        media = args.media or [str(generate_audio(tmp / "tone.m4a", args.seconds))]
        jobs = [AsrJob(f"m{i}", m) for i, m in enumerate(media)]
        warm = [AsrJob("warm", media[0], ((0.0, 30.0),))]
        language = None if args.language == "detect" else args.language
        sizes = sorted(set(args.batch_size) | ({1} if args.baseline == "batch1" else set()))
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        rows = []
        for mode in args.timestamps:
            cfg = AsrConfig(model=model, language=language, timestamps=mode, dtype=args.dtype,
                            max_new_tokens=tokens or 440)
            log(f"loading {args.model} ({mode} timestamps) on {args.device}")
            t = WhisperTranscriber(cfg, args.device)
            if tokens is not None:  # decode exactly `tokens` per window (as far as the model can)
                t.model.generation_config.min_new_tokens = min(tokens, t.max_new_tokens)
                tokens = min(tokens, t.max_new_tokens)
            for b in sizes:
                if time.monotonic() - T0 > args.time_limit:
                    log(f"time limit reached: skipping batch size {b}")
                    continue
                t.cfg = dataclasses.replace(cfg, batch_size=b)
                t.transcribe(warm[0])
                row = run_ours(t, jobs, args.device)
                rows.append({"mode": mode, "impl": "ours", "batch": b, **row})
                log(f"  {mode} batch {b}: {row['wall']:.2f} s for {row['audio']:.0f} s of audio")
            dtype = t.dtype
            del t
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if args.baseline == "pipeline":
            import numpy as np
            from transformers import pipeline

            asr = pipeline("automatic-speech-recognition", model=model, device=args.device, dtype=dtype)
            audio = [np.concatenate([c.samples for c in stream_audio(j.media, j.spans)]) for j in jobs]
            for b in sizes:
                if time.monotonic() - T0 > args.time_limit:
                    log(f"time limit reached: skipping the pipeline at batch size {b}")
                    continue
                log(f"transformers pipeline, batch {b}")
                row = run_pipeline(asr, audio, b, args.device, tokens)
                rows.append({"mode": "word", "impl": "pipeline", "batch": b, **row})

    print(f"\nWhisper RTF: model {args.model}, device {device_name}, dtype {dtype}, "
          f"{len(media)} input(s), tokens/window {tokens or 'free'}")
    print(f"{'impl':<9}{'mode':<9}{'batch':>6}{'audio s':>10}{'wall s':>9}{'RTF':>9}{'xRT':>9}"
          f"{'vs base':>9}{'words':>8}{'peak GiB':>10}")
    for r in rows:
        base = next((x for x in rows if x["mode"] == r["mode"] and
                     (x["impl"], x["batch"]) == (("ours", 1) if args.baseline == "batch1" else ("pipeline", r["batch"]))),
                    None)
        rtf = r["wall"] / r["audio"]
        ratio = f"{base['wall'] / r['wall']:.2f}x" if base else "-"
        print(f"{r['impl']:<9}{r['mode']:<9}{r['batch']:>6}{r['audio']:>10.1f}{r['wall']:>9.2f}{rtf:>9.4f}"
              f"{1 / rtf:>8.1f}x{ratio:>9}{r['words']:>8}{r['mem']:>10.2f}")
    print("vs base: baseline wall time / this row's (higher is faster); baseline = "
          + ("our batch size 1" if args.baseline == "batch1" else "transformers pipeline, same batch size"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
