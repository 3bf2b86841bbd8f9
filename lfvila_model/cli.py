"""`lfvila-train`: train LF-VILA (stage 1, or stage 2 on a stage-1 checkpoint) on shards, locally
or on Ray Train, and evaluate (retrieval; stage 2 adds MLM and video-text matching accuracy).

    lfvila-train --train-shards 'shards/train-{000000..000099}.tar' --config paper.yaml optim.lr=1e-4
    lfvila-train --train-shards shards/ --config tiny --num-workers 2 --resume
    lfvila-train --train-shards shards/ --config tiny_stage2 --stage1-checkpoint runs/tiny/checkpoints
    lfvila-train eval --checkpoint runs/tiny/checkpoints --val-shards shards/
    lfvila-train convert --xpretrain lfvila_stage1.bin --out runs/xpretrain
    lfvila-train --config finetune_activitynet --init runs/paper/checkpoints \
        --train-shards 'anet-shards/*.tar' --val-shards 'anet-shards/*.tar' data.tokenizer=bert-base-uncased
    lfvila-train eval --checkpoint runs/finetune_activitynet/checkpoints/best --val-shards 'anet-shards/*.tar' \
        --split val1 --benchmark activitynet
    lfvila-train --config finetune_how2qa --init runs/paper_stage2/checkpoints \
        --train-shards how2qa-shards/ --val-shards how2qa-shards/ data.tokenizer=bert-base-uncased

Training is the command itself (no subcommand name) and `eval` and `convert` the
subcommands, so ``main`` picks the typer app by the first argument. Errors that stop a run are one line on
stderr and exit code 2.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer
from typer.exceptions import TyperException

PROG = "lfvila-train"

train_app = typer.Typer(add_completion=False)
eval_app = typer.Typer(add_completion=False)
convert_app = typer.Typer(add_completion=False)

CONFIG = typer.Option(None, help="YAML file or bundled name (tiny, tiny_stage2, demo, paper).")
OVERRIDES = typer.Argument(None, help="Config overrides: key.sub=value.", show_default=False)
DEVICE = typer.Option(None, help="cpu or cuda (default: cuda when available).")


class UsageError(Exception):
    """A bad argument or a missing file: reported as one line, exit status 2."""


def shard_list(pattern: str, split: str) -> list[str]:
    """lfvila_model.data.expand_shards, with a missing local shard a usage error here rather
    than a skipped shard in the loader."""
    from lfvila_model.data import expand_shards

    try:
        found = expand_shards(pattern, split)
    except ValueError as e:
        raise UsageError(str(e)) from None
    missing = [p for p in found if "://" not in p and not os.path.isfile(p)]
    if missing:
        raise UsageError(f"shard not found: {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    return found


def _eval(checkpoint: str, val: str, output: str | None, cfg, device: str | None,
          split: str | None = None, benchmark: str | None = None) -> int:
    from lfvila_model.checkpoint import checkpoint_path, stored_config
    from lfvila_model.eval import BENCHMARKS, paper_table, run_eval
    from lfvila_model.qa import QA_BENCHMARKS, qa_table, run_qa_eval

    if not os.path.exists(checkpoint):
        raise UsageError(f"checkpoint not found: {checkpoint}")
    if benchmark is not None and benchmark not in {**BENCHMARKS, **QA_BENCHMARKS}:
        raise UsageError(f"unknown benchmark {benchmark!r} (choose {', '.join([*BENCHMARKS, *QA_BENCHMARKS])})")
    stored = stored_config(checkpoint_path(checkpoint)) if cfg is None and benchmark is None else {}
    if benchmark in QA_BENCHMARKS or stored.get("finetune", {}).get("task") == "multiple_choice":
        # multiple-choice accuracy of a QA checkpoint
        metrics = run_qa_eval(checkpoint, shard_list(val, "*"), output, device, split, benchmark)
        print(json.dumps(metrics, indent=1))
        print(qa_table(metrics, benchmark), file=sys.stderr)
        return 0
    # a benchmark's shards hold every split in train-*.tar: a directory means all its shards then
    metrics = run_eval(checkpoint, shard_list(val, "*" if split or benchmark else "val"), output, cfg, device,
                       split, benchmark)
    print(json.dumps(metrics, indent=1))
    print(paper_table(metrics, benchmark), file=sys.stderr)  # stdout stays one JSON document
    return 0


def _finetune_setup(cfg, init: str | None, train_shards: list[str], val_shards: str | None,
                    world: int) -> None:
    """Retrieval fine-tuning (finetune.enabled, or --init): the model section comes from the
    init checkpoint (its weights fix the architecture), the validation shards are evaluated
    during training, and an epoch is counted from the train shards when not given."""
    from lfvila_model.checkpoint import checkpoint_path, stored_config
    from lfvila_model.config import ConfigError, TrainConfig
    from lfvila_model.finetune import count_samples

    if init:
        if not os.path.exists(init):
            raise UsageError(f"init checkpoint not found: {init}")
        cfg.finetune.enabled, cfg.finetune.init = True, os.path.abspath(init)
    if not cfg.finetune.enabled:
        return
    if not cfg.finetune.init:
        raise UsageError("fine-tuning needs --init PATH (a pretrained stage-1 checkpoint; QA: stage-2)")
    try:
        cfg.model = TrainConfig.from_dict({"model": stored_config(checkpoint_path(cfg.finetune.init))
                                          .get("model", {})}).model
    except ConfigError as e:
        raise UsageError(f"--init: {e}") from None
    for part in (cfg.model.text, cfg.model.video):  # every weight comes from the init checkpoint
        part.pop("pretrained", None)
    if val_shards and not cfg.eval.downstream_shards:
        cfg.eval.downstream_shards = ",".join(shard_list(val_shards, "*"))
    if cfg.optim.steps_per_epoch is None:
        per_step = cfg.data.batch_size * world * cfg.optim.grad_accum
        qa = cfg.finetune.task == "multiple_choice"  # an example per question
        cfg.optim.steps_per_epoch = count_samples(train_shards, cfg.data.split, questions=qa) // per_step
        if cfg.optim.steps_per_epoch < 1:
            raise UsageError(f"fewer than {per_step} training {'questions' if qa else 'samples'} "
                             f"(split {cfg.data.split!r}) in --train-shards")


@train_app.command()
def train(
    train_shards: Optional[str] = typer.Option(None, help="Shard pattern, comma list or directory."),
    val_shards: Optional[str] = typer.Option(None, help="Shard pattern or directory: retrieval eval after training."),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = OVERRIDES,
    device: Optional[str] = DEVICE,
    num_workers: Optional[int] = typer.Option(None, help="Run on Ray Train with this many workers (DDP)."),
    use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per Ray worker (nccl)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start or join a local one)."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the latest checkpoint in checkpoint.dir."),
    resume_from: Optional[str] = typer.Option(None, metavar="PATH", help="Resume from this step-* checkpoint directory."),
    stage1_checkpoint: Optional[str] = typer.Option(
        None, metavar="PATH", help="Train stage 2 on this stage-1 checkpoint (step-* or checkpoint dir; "
                                   "= stage=2 stage2.stage1_checkpoint=PATH)."),
    eval_only: bool = typer.Option(False, "--eval-only", help="Only evaluate the latest checkpoint on --val-shards."),
    init: Optional[str] = typer.Option(
        None, metavar="PATH", help="Fine-tune for retrieval from this stage-1 checkpoint (step-* or checkpoint "
                                   "dir; = finetune.enabled=true finetune.init=PATH; its model section is used); "
                                   "with a QA config (finetune.task=multiple_choice) from a stage-2 one."),
) -> int:
    """Train LF-VILA on shards (stage 1, or stage 2 with --stage1-checkpoint), in this process or
    on Ray Train; `lfvila-train eval --help` for evaluating a checkpoint.

    \b
    lfvila-train --train-shards 'shards/train-{000000..000099}.tar' --config paper optim.lr=1e-4
    lfvila-train --train-shards shards/ --config tiny --num-workers 2 --resume
    """
    from lfvila_model.config import load_config
    from lfvila_model.sources import setup_data

    if not config:
        raise UsageError("--config is required")
    cfg = load_config(config, overrides or [])
    if stage1_checkpoint:
        if not os.path.exists(stage1_checkpoint):
            raise UsageError(f"stage-1 checkpoint not found: {stage1_checkpoint}")
        cfg.stage, cfg.stage2.stage1_checkpoint = 2, os.path.abspath(stage1_checkpoint)
    if eval_only:
        if not val_shards:
            raise UsageError("--eval-only needs --val-shards")
        return _eval(resume_from or cfg.checkpoint.dir, val_shards, None, None, device)
    if not train_shards:
        raise UsageError("--train-shards is required")
    if num_workers is not None and num_workers < 1:
        raise UsageError("--num-workers must be >= 1")
    if (use_gpu or ray_address) and num_workers is None:
        raise UsageError("--use-gpu/--ray-address need --num-workers")
    if resume_from and not os.path.isfile(os.path.join(resume_from, "trainer.json")):
        raise UsageError(f"not a checkpoint directory: {resume_from}")
    start = resume_from or resume
    if val_shards:  # a bad pattern fails now, not after training (benchmark shards: every split in train-*)
        shard_list(val_shards, "*" if init or cfg.finetune.enabled else "val")
    train_list = shard_list(train_shards, "*" if cfg.data.split else "train")
    _finetune_setup(cfg, init, train_list, val_shards, num_workers or 1)
    sources = setup_data(cfg, train_list)
    cfg.optim.total_steps(), cfg.optim.warmup()  # config errors before any worker starts
    if num_workers:
        from lfvila_model.ray_train import train_ray

        train_ray(cfg, sources, num_workers, use_gpu=use_gpu, resume=start, address=ray_address)
    else:
        import torch

        from lfvila_model.train import train as run_train

        run_train(cfg, sources, resume=start, device=torch.device(device) if device else None)
    if val_shards and not cfg.eval.downstream_shards:
        return _eval(cfg.checkpoint.dir, val_shards, None, None, device)
    return 0  # evaluated during training: log.dir/eval.jsonl (and checkpoint.dir/best)


@eval_app.command(name="eval")
def evaluate(
    checkpoint: str = typer.Option(..., help="A step-* directory, or a checkpoint dir (its latest)."),
    val_shards: str = typer.Option(..., help="Shard pattern or directory."),
    config: Optional[str] = CONFIG,
    overrides: Optional[List[str]] = OVERRIDES,
    device: Optional[str] = DEVICE,
    output: Optional[str] = typer.Option(None, help="Metrics JSON (default: CHECKPOINT/eval.json)."),
    split: Optional[str] = typer.Option(None, help="Only samples of this split (benchmark shards, e.g. val1)."),
    benchmark: Optional[str] = typer.Option(
        None, help="activitynet, didemo, queryd or condensed-movies: its paragraph cut, and the paper's numbers "
                   "printed beside ours; how2qa: multiple-choice accuracy of a QA checkpoint."),
) -> int:
    """Paragraph-to-video retrieval of a checkpoint (its stored config unless --config), zero-shot
    or fine-tuned, on any shards; retrieval samples are read whole (the paper's protocol)."""
    from lfvila_model.config import load_config

    if overrides and not config:
        raise UsageError("overrides need --config")
    cfg = load_config(config, overrides or []) if config else None
    return _eval(checkpoint, val_shards, output, cfg, device, split, benchmark)


@convert_app.command(name="convert")
def convert(
    xpretrain: str = typer.Option(..., metavar="FILE", help="The LF-VILA release's checkpoint (lfvila_stage1.bin or lfvila_stage2.bin)."),
    out: str = typer.Option(..., metavar="DIR", help="Our checkpoint directory to write (DIR/step-00000000)."),
    config: Optional[str] = typer.Option("paper", help="The model size the file has (YAML or bundled name)."),
    overrides: Optional[List[str]] = OVERRIDES,
) -> int:
    """Convert the release's checkpoint (fp16, DeepSpeed's `module.` or not) into ours, run with
    model.compat=xpretrain; prints the key report and writes it to DIR/convert.json."""
    from lfvila_model.config import load_config
    from lfvila_model.convert import REPORT, convert_xpretrain

    if not os.path.isfile(xpretrain):
        raise UsageError(f"checkpoint not found: {xpretrain}")
    report = convert_xpretrain(xpretrain, out, load_config(config, overrides or []))
    by_reason: dict[str, list[str]] = {}
    for key, why in sorted(report["unused"].items()):
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        print(f"unused, {why}: {len(keys)} keys ({keys[0]}{', ...' if len(keys) > 1 else ''})")
    print(json.dumps(report["counts"]))
    print(f"wrote {report['checkpoint']} (stage {report['stage']}, model.compat=xpretrain) and "
          f"{os.path.join(out, REPORT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `eval ...` or training; bad input is one line on stderr and exit 2."""
    from lfvila_model.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    apps = {"eval": eval_app, "convert": convert_app}
    app, args, name = (apps[argv[0]], argv[1:], f"{PROG} {argv[0]}") if argv[:1] and argv[0] in apps \
        else (train_app, argv, PROG)
    try:
        return typer.main.get_command(app).main(args, prog_name=name, standalone_mode=False) or 0
    except TyperException as e:  # typer's own usage errors (an unknown option, a missing value)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
    except (UsageError, ConfigError, FileNotFoundError) as e:
        message = str(e)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
