"""Stage-1 LF-VILA training-step benchmark on one GPU (synthetic batch, random weights).

    python benchmarks/gpu_train_step.py                       # paper model, batch 16, H100/H200
    python benchmarks/gpu_train_step.py --compare-full        # + HTWA vs full attention (paper size)
    python benchmarks/gpu_train_step.py --device cpu --tiny   # smoke test, < 30 s

AdamW (lr 5e-5, betas (0.9, 0.98), eps 1e-8, wd 0.05), bf16 autocast, global + MTC loss.
On OOM it retries with activation checkpointing (``--checkpointing auto``), then with
half the batch, down to 1. It watches ``--time-limit`` and stops early rather than overrun.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lfvila_model.losses import LFVILALoss  # noqa: E402
from lfvila_model.models import presets  # noqa: E402
from lfvila_model.models.lfvila import LFVILA, synthetic_batch  # noqa: E402

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_steps(model, cfg, args, device, batch_size: int, checkpointing: bool, deadline: float) -> dict:
    """Warm-up then timed steps; returns the timing row."""
    for layer in model.video_encoder.layers:
        layer.checkpointing = checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
    criterion = LFVILALoss()
    batch = synthetic_batch(cfg, batch_size, seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    try:
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16):
                feats = model(**batch)
            out = criterion({k: v.float() for k, v in feats.items()})
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            dt = time.perf_counter() - t0
            losses.append(out["loss"].item())
            phase = "warm-up" if i < args.warmup else "timed"
            log(f"  step {i} ({phase}) {dt:.3f}s loss {losses[-1]:.4f}")
            if i >= args.warmup:
                times.append(dt)
            if time.monotonic() > deadline and times:
                log("  time limit reached: stopping the timed steps early")
                break
        if not times:  # out of time during warm-up: report the last warm-up step
            times.append(dt)
    finally:
        del batch, opt
    median = statistics.median(times)
    return {
        "batch": batch_size, "checkpointing": checkpointing, "steps_timed": len(times),
        "step_s": median, "samples_per_s": batch_size / median,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "loss_first": losses[0], "loss_last": losses[-1],
    }


def attempts(batch_size: int, mode: str):
    modes = {"off": [False], "on": [True], "auto": [False, True]}[mode]
    bs = batch_size
    while bs >= 1:
        for ckpt in modes:
            yield bs, ckpt
        bs //= 2


def train_benchmark(args, device, deadline) -> dict | None:
    cfg = presets.tiny() if args.tiny else presets.paper()
    torch.manual_seed(0)
    log(f"building {'tiny' if args.tiny else 'paper'} model")
    model = LFVILA(cfg).to(device).train()
    n_video = sum(p.numel() for p in model.video_encoder.parameters()) / 1e6
    n_text = sum(p.numel() for p in model.text_encoder.parameters()) / 1e6
    log(f"params: video {n_video:.1f}M, text {n_text:.1f}M; input {cfg.num_frames}×3×{cfg.frame_size[0]}×"
        f"{cfg.frame_size[1]}, {cfg.num_clips} sentences × {cfg.max_tokens} tokens")
    math_fallback = False
    for bs, ckpt in attempts(args.batch_size, args.checkpointing):
        if time.monotonic() > deadline:
            log("time limit reached before a batch size fitted")
            return None
        log(f"trying batch {bs}, checkpointing {ckpt}{', math SDPA' if math_fallback else ''}")
        oom = failed = False
        try:
            if math_fallback:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    return run_steps(model, cfg, args, device, bs, ckpt, deadline) | {"sdpa": "math"}
            return run_steps(model, cfg, args, device, bs, ckpt, deadline) | {"sdpa": "auto"}
        except torch.OutOfMemoryError:
            oom = True
        except Exception:  # an unexpected kernel error: retry once with plain math attention
            traceback.print_exc()
            sys.stderr.flush()
            failed = True
        model.zero_grad(set_to_none=True)
        _free(device)
        if oom:
            log(f"  OOM at batch {bs}, checkpointing {ckpt}")
        elif failed and not math_fallback:
            math_fallback = True
            log("  retrying with SDPBackend.MATH")
        elif failed:
            return None
    return None


def compare_full(args, device, deadline) -> list[dict]:
    """HTWA vs full attention in the video encoder (bench_htwa), OOM reported as a row."""
    import bench_htwa

    ns = argparse.Namespace(
        device=device.type, full_size=not args.tiny, batch=args.compare_batch, repeat=3, threads=0,
        checkpointing=False, bf16=args.bf16, in_process=device.type == "cuda")
    ns.frames, ns.height, ns.width = (32, 192, 320) if ns.full_size else (16, 96, 160)
    rows = []
    for attention in ("htwa", "full"):
        if time.monotonic() > deadline:
            rows.append({"attention": attention, "error": "skipped: time limit"})
            continue
        log(f"compare: {attention} attention, batch {ns.batch}, {ns.frames}×{ns.height}×{ns.width}")
        rows.append(bench_htwa.run_variant(ns, attention))
        log(f"  {rows[-1]}")
        _free(device)
    print(bench_htwa.table(rows), flush=True)
    return rows


def markdown(row: dict, gpu: str) -> str:
    head = ["device", "batch", "checkpointing", "sdpa", "step_s (median)", "samples/s", "peak_mem_GiB",
            "timed steps", "loss first→last"]
    vals = [gpu, row["batch"], row["checkpointing"], row["sdpa"], f"{row['step_s']:.3f}",
            f"{row['samples_per_s']:.2f}", f"{row['peak_mem_GiB']:.2f}", row["steps_timed"],
            f"{row['loss_first']:.3f}→{row['loss_last']:.3f}"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      "| " + " | ".join(str(v) for v in vals) + " |"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny preset (CPU smoke test)")
    p.add_argument("--batch-size", type=int, default=None, help="per GPU (default 16; 4 with --tiny)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="activation checkpointing per video block; auto = only after an OOM")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    p.add_argument("--compare-full", action="store_true", help="also HTWA vs full attention fwd+bwd")
    p.add_argument("--compare-batch", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=540.0, help="seconds; stops early, exits cleanly")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 4 if args.tiny else 16
    deadline = T0 + args.time_limit
    if args.device == "cuda" and not torch.cuda.is_available():
        log("CUDA is not available; use --device cpu --tiny")
        return 1
    device = torch.device(args.device)
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(device)
        log(f"GPU {gpu}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        gpu = f"CPU ({torch.get_num_threads()} threads)"
        log(f"{gpu}, torch {torch.__version__}")
    row = None
    try:
        row = train_benchmark(args, device, deadline - (120 if args.compare_full and not args.tiny else 0))
    except Exception:
        traceback.print_exc()
    _free(device)
    if row is not None:
        print(f"\n{markdown(row, gpu)}\n", flush=True)
    else:
        log("no training-step result")
    if args.compare_full:
        try:
            compare_full(args, device, deadline)
        except Exception:
            traceback.print_exc()
    log("done")
    return 0 if row is not None else 1


if __name__ == "__main__":
    sys.exit(main())
