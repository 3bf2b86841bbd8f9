"""HTWA (hierarchical temporal window attention) vs full attention in the video encoder:
parameters, forward FLOPs, peak memory and forward+backward time.

    python benchmarks/bench_htwa.py                                   # CPU, reduced size
    python benchmarks/bench_htwa.py --device cuda --full-size         # paper config, 32×192×320, bf16

Reduced size: 16 frames × 96×160, embed 64, depths (1,1,2,1,1,1), paper windows.
On CPU each variant runs in a fresh process and memory is the growth of peak RSS during
forward+backward; on CUDA it is torch.cuda.max_memory_allocated. OOM is reported, not raised.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils import flop_counter  # noqa: E402

from lfvila_model.models.video import VideoEncoder, VideoEncoderConfig, full_attention  # noqa: E402

REDUCED = dict(embed_dim=64, depths=(1, 1, 2, 1, 1, 1), heads=(2, 4, 8, 8, 8, 16), proj_dim=256, drop_path=0.0)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """FlopCounterMode that also counts the CPU fused SDPA kernel (unregistered in torch)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {op: _cpu_sdpa_flops} if op is not None else {}
    return flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)


def _config(args, attention: str) -> VideoEncoderConfig:
    cfg = VideoEncoderConfig(drop_path=0.0) if args.full_size else VideoEncoderConfig(**REDUCED)
    cfg = dataclasses.replace(cfg, checkpointing=args.checkpointing)
    return full_attention(cfg) if attention == "full" else cfg


def _autocast(device: str, enabled: bool):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=enabled)


def measure(args, attention: str) -> dict:
    """One variant: params, forward FLOPs, peak memory and median fwd+bwd seconds."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = _config(args, attention)
    model = VideoEncoder(cfg).to(device)
    video = torch.randn(args.batch, args.frames, 3, args.height, args.width, device=device)
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    row = {"attention": attention, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}

    def step():
        with _autocast(device.type, bf16):
            out = model(video)
            loss = out["video"].float().sum() + out["clip"].float().sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        with torch.no_grad(), flop_counter_mode() as counter, _autocast(device.type, bf16):
            model(video)
        row["fwd_GFLOPs"] = counter.get_total_flops() / 1e9
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()  # warm-up (also the peak-memory run)
        if device.type == "cuda":
            torch.cuda.synchronize()
            row["peak_mem_GiB"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        else:
            row["peak_mem_GiB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**30
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        row["fwd_bwd_s"] = statistics.median(times)
    except torch.OutOfMemoryError as exc:
        row["error"] = f"OOM: {str(exc).splitlines()[0][:120]}"
    return row


def _measure_in_child(args, attention, queue):
    try:
        queue.put(measure(args, attention))
    except Exception as exc:  # report, never hang the parent
        queue.put({"attention": attention, "error": f"{type(exc).__name__}: {exc}"[:200]})


def run_variant(args, attention: str) -> dict:
    if args.device != "cpu" or args.in_process:
        try:
            return measure(args, attention)
        except Exception as exc:
            return {"attention": attention, "error": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure_in_child, args=(args, attention, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


COLUMNS = [("attention", "{}"), ("params_M", "{:.2f}"), ("fwd_GFLOPs", "{:.1f}"),
           ("peak_mem_GiB", "{:.3f}"), ("fwd_bwd_s", "{:.3f}")]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [fmt.format(r[c]) if c in r else (r.get("error", "-") if c == "fwd_GFLOPs" else "-")
                 for c, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    htwa, full = rows[0], rows[1]
    ratios = [f"full/htwa {c}: {full[c] / htwa[c]:.2f}×" for c, _ in COLUMNS[2:]
              if c in htwa and c in full and htwa[c] > 0]
    return "\n".join(lines + ([""] + ratios if ratios else []))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--full-size", action="store_true", help="paper config and 32×192×320 input")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for cuda, off for cpu)")
    p.add_argument("--in-process", action="store_true", help="CPU: do not spawn a process per variant")
    args = p.parse_args(argv)
    args.frames, args.height, args.width = (32, 192, 320) if args.full_size else (16, 96, 160)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"video encoder, input {args.batch}×{args.frames}×3×{args.height}×{args.width}, "
          f"{'paper' if args.full_size else 'reduced'} config, {name}, torch {torch.__version__}", flush=True)
    rows = []
    for attention in ("htwa", "full"):
        rows.append(run_variant(args, attention))
        print(f"  {attention}: {rows[-1]}", flush=True)
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
