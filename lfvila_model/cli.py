"""lfvila-train: train LF-VILA (stage 1, or stage 2 on a stage-1 checkpoint) on shards, locally or
on Ray Train, and evaluate (retrieval; stage 2 adds MLM and video-text matching accuracy).

    lfvila-train --train-shards 'shards/train-{000000..000099}.tar' --config paper.yaml optim.lr=1e-4
    lfvila-train --train-shards shards/ --config tiny --num-workers 2 --resume
    lfvila-train --train-shards shards/ --config tiny_stage2 --stage1-checkpoint runs/tiny/checkpoints
    lfvila-train eval --checkpoint runs/tiny/checkpoints --val-shards shards/
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

PROG = "lfvila-train"


class UsageError(Exception):
    """A bad argument or a missing file: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def expand_shards(pattern: str, split: str) -> list[str]:
    """Shard paths from a brace pattern, a glob, a comma list or a shard directory (its ``split``-*.tar)."""
    if os.path.isdir(pattern):
        found = sorted(glob.glob(os.path.join(pattern, f"{split}-*.tar")))
    else:
        found = []
        for part in pattern.split(","):
            try:
                from braceexpand import braceexpand
                names = list(braceexpand(part))
            except ImportError:
                names = [part]
            for name in names:
                found.extend(sorted(glob.glob(name)) if glob.has_magic(name) else [name])
    missing = [p for p in found if "://" not in p and not os.path.isfile(p)]
    if missing:
        raise UsageError(f"shard not found: {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not found:
        raise UsageError(f"no shards match {pattern!r}")
    return found


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or bundled name (tiny, paper)")
    p.add_argument("overrides", nargs="*", help="config overrides: key.sub=value")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-shards", help="shard pattern or directory")
    p.add_argument("--val-shards", help="shard pattern or directory: retrieval eval after training")
    _common(p)
    p.add_argument("--num-workers", type=int, help="run on Ray Train with this many workers (DDP)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per Ray worker (nccl)")
    p.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in checkpoint.dir")
    p.add_argument("--resume-from", metavar="PATH", help="resume from this step-* checkpoint directory")
    p.add_argument("--stage1-checkpoint", metavar="PATH",
                   help="train stage 2 on this stage-1 checkpoint (step-* or checkpoint dir; = stage=2 "
                        "stage2.stage1_checkpoint=PATH)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate the latest checkpoint on --val-shards")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} eval", description="Paragraph-to-video retrieval of a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a step-* directory, or a checkpoint dir (latest)")
    p.add_argument("--val-shards", required=True, help="shard pattern or directory")
    _common(p)
    p.add_argument("--output", help="metrics JSON (default: CHECKPOINT/eval.json)")
    return p


def _eval(checkpoint: str, val: str, output: str | None, cfg, device: str | None) -> int:
    from lfvila_model.eval import run_eval

    if not os.path.exists(checkpoint):
        raise UsageError(f"checkpoint not found: {checkpoint}")
    metrics = run_eval(checkpoint, expand_shards(val, "val"), output, cfg, device)
    print(json.dumps(metrics, indent=1))
    return 0


def run(argv: list[str]) -> int:
    from lfvila_model.train import load_config, setup_data, train, train_ray

    if argv[:1] == ["eval"]:
        a = eval_parser().parse_intermixed_args(argv[1:])
        cfg = load_config(a.config, a.overrides) if a.config else None
        if cfg is None and a.overrides:
            raise UsageError("overrides need --config")
        return _eval(a.checkpoint, a.val_shards, a.output, cfg, a.device)
    a = train_parser().parse_intermixed_args(argv)
    if not a.config:
        raise UsageError("--config is required")
    cfg = load_config(a.config, a.overrides)
    if a.stage1_checkpoint:
        if not os.path.exists(a.stage1_checkpoint):
            raise UsageError(f"stage-1 checkpoint not found: {a.stage1_checkpoint}")
        cfg.stage, cfg.stage2.stage1_checkpoint = 2, os.path.abspath(a.stage1_checkpoint)
    if a.eval_only:
        if not a.val_shards:
            raise UsageError("--eval-only needs --val-shards")
        return _eval(a.resume_from or cfg.checkpoint.dir, a.val_shards, None, None, a.device)
    if not a.train_shards:
        raise UsageError("--train-shards is required")
    if a.num_workers is not None and a.num_workers < 1:
        raise UsageError("--num-workers must be >= 1")
    if (a.use_gpu or a.ray_address) and a.num_workers is None:
        raise UsageError("--use-gpu/--ray-address need --num-workers")
    if a.resume_from and not os.path.isfile(os.path.join(a.resume_from, "trainer.json")):
        raise UsageError(f"not a checkpoint directory: {a.resume_from}")
    resume = a.resume_from or a.resume
    val = expand_shards(a.val_shards, "val") if a.val_shards else None
    sources = setup_data(cfg, expand_shards(a.train_shards, "train"))
    cfg.optim.total_steps(), cfg.optim.warmup()  # config errors before any worker starts
    if a.num_workers:
        train_ray(cfg, sources, a.num_workers, use_gpu=a.use_gpu, resume=resume, address=a.ray_address)
    else:
        import torch

        train(cfg, sources, resume=resume, device=torch.device(a.device) if a.device else None)
    if val:
        return _eval(cfg.checkpoint.dir, a.val_shards, None, None, a.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: config, setup, train (or eval); bad input is one line on stderr and exit 2."""
    from lfvila_model.train import ConfigError

    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except (UsageError, ConfigError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
