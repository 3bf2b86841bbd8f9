"""The training recipe: optimizer groups and schedule, a few steps, exact resume, Ray Train
(2 CPU workers) against one process, the CLI's one-line errors, and real shards end to end."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from lfvila_model import cli
from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import TrainConfig, load_config, model_config
from lfvila_model.losses import GlobalBatchLoss, LFVILALoss
from lfvila_model.models.lfvila import synthetic_batch
from lfvila_model.ray_train import train_ray
from lfvila_model.sources import SyntheticSource
from lfvila_model.train import load_model, lr_factor, param_groups, setup_model, setup_optimizer, train
from tests.model.checks import assert_retrieval_consistent

NO_DROPOUT = ["model.text.bert.hidden_dropout_prob=0.0", "model.text.bert.attention_probs_dropout_prob=0.0"]


def tiny(tmp: Path, *overrides: str) -> TrainConfig:
    return load_config("tiny", [f"checkpoint.dir={tmp}/ck", f"log.dir={tmp}/log", "log.tensorboard=false",
                                *overrides])


def csv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)


def assert_params_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, worst


# ----------------------------------------------------------------------------- optimizer

def test_param_groups_skip_decay_on_norms_and_biases():
    model = setup_model(load_config("tiny"), torch.device("cpu"))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))
    assert all(n.endswith(("bias", "relative_position_bias_table")) or "norm" in n.lower()
               for n in no_decay_names if "sentence_index" not in n)
    assert any("LayerNorm.weight" in n for n in no_decay_names) and any("clip_norm.weight" in n for n in no_decay_names)
    assert not any(n.endswith(".bias") for n in decay_names)
    assert "video_encoder.video_proj.weight" in decay_names


def test_warmup_then_linear_decay_at_exact_steps():
    cfg = load_config("tiny", ["optim.lr=0.1", "optim.warmup_steps=null", "optim.warmup_epochs=1",
                               "optim.steps_per_epoch=3", "optim.max_steps=null", "optim.epochs=4"])
    assert (cfg.optim.warmup(), cfg.optim.total_steps()) == (3, 12)
    model = torch.nn.Linear(2, 2)
    opt, sched = setup_optimizer(model, cfg.optim)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 / 3, 0.2 / 3, 0.1] + [0.1 * (12 - s) / 9 for s in range(3, 12)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[3] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 / 9)
    assert [lr_factor(s, 0, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert all(g["lr"] == lrs[0] for g in setup_optimizer(model, cfg.optim)[0].param_groups)


# ----------------------------------------------------------------------------- loss

def test_global_batch_loss_equals_lfvila_loss_in_one_process():
    cfg = model_config(load_config("paper").model)  # m = 4 clips: MTC ties (ignored keys) happen
    b, m, d = 6, 4, 8
    g = torch.Generator().manual_seed(3)
    feats = {k: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1) for k, s in
             {"video": (b, d), "paragraph": (b, d), "clip": (b, m, d), "sentence": (b, m, d)}.items()}
    for seed in range(5):
        ours = GlobalBatchLoss()(feats, generator=torch.Generator().manual_seed(seed))
        ref = LFVILALoss()(feats, generator=torch.Generator().manual_seed(seed))
        for k in ("loss", "global", "mtc"):
            assert torch.allclose(ours[k], ref[k], atol=1e-6), (seed, k)
    assert cfg.num_clips == m


# ----------------------------------------------------------------------------- loop

def test_a_few_steps_reduce_the_loss(tmp_path):
    cfg = tiny(tmp_path, "optim.max_steps=8", "optim.steps_per_epoch=null", "optim.warmup_steps=1",
               "checkpoint.every_steps=100", *NO_DROPOUT)
    batch = synthetic_batch(model_config(cfg.model), 4, seed=1)
    last = train(cfg, lambda rank, world: (lambda epoch, skip: [batch]))
    rows = csv_rows(tmp_path / "log" / "metrics.csv")
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 8 and last["step"] == 8 and int(rows[-1]["epoch"]) == 7
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(float(r["samples_per_s"]) > 0 for r in rows)
    assert [p.name for p in checkpoints(tmp_path / "ck")] == ["step-00000008"]


def test_resume_equals_uninterrupted(tmp_path):
    """Dropout on, gradient accumulation, an epoch boundary inside the run: resuming from the
    step-3 checkpoint must give the same parameters at step 6 as the uninterrupted run."""
    over = ["optim.max_steps=6", "optim.steps_per_epoch=2", "optim.grad_accum=2", "checkpoint.every_steps=3",
            "checkpoint.keep=0", "model.text.bert.hidden_dropout_prob=0.1"]
    a = tiny(tmp_path / "a", *over)
    source = SyntheticSource(a.model, batch_size=2, batches_per_epoch=4, seed=7)
    train(a, source)
    assert [p.name for p in checkpoints(a.checkpoint.dir)] == ["step-00000003", "step-00000006"]
    b = tiny(tmp_path / "b", *over)
    shutil.copytree(Path(a.checkpoint.dir) / "step-00000003", Path(b.checkpoint.dir) / "step-00000003")
    last = train(b, source, resume=True)
    assert last["step"] == 6 and last["samples"] == 24
    pa, pb = params(Path(a.checkpoint.dir) / "step-00000006"), params(Path(b.checkpoint.dir) / "step-00000006")
    assert_params_close(pa, pb, 1e-6)
    assert (torch.load(Path(a.checkpoint.dir) / "step-00000003" / "model.pt")["text_encoder.paragraph_proj.weight"]
            != pa["text_encoder.paragraph_proj.weight"]).any()
    model, cfg = load_model(a.checkpoint.dir)  # the latest, rebuilt from its stored config
    assert not model.training and cfg.optim.max_steps == 6
    assert_params_close(model.state_dict(), pa, 0.0)


def test_keep_last_n_checkpoints(tmp_path):
    cfg = tiny(tmp_path, "optim.max_steps=4", "checkpoint.every_steps=1", "checkpoint.keep=2", *NO_DROPOUT)
    train(cfg, SyntheticSource(cfg.model, batch_size=2, batches_per_epoch=4))
    assert [p.name for p in checkpoints(cfg.checkpoint.dir)] == ["step-00000003", "step-00000004"]
    assert not list(Path(cfg.checkpoint.dir).glob(".tmp-*"))


# ----------------------------------------------------------------------------- Ray Train

def test_ray_two_workers_match_one_process_and_resume(tmp_path, ray_local):
    """2 gloo workers × batch 2 see the halves of one process's batch 4, so each step's loss is
    the same (GlobalBatchLoss makes it one big-batch loss). One Ray run (a Ray run costs ~30 s
    here) covers both directions of resume: it resumes from the single process's step-2
    checkpoint, trains steps 3-6 and checkpoints at 4 and 6; a single process resumed from the
    Ray step-4 checkpoint then reaches the same step-6 parameters."""
    over = ["optim.max_steps=6", "optim.warmup_steps=1", "checkpoint.every_steps=2", "checkpoint.keep=0",
            *NO_DROPOUT]
    single = tiny(tmp_path / "single", *over)
    train(single, SyntheticSource(single.model, batch_size=4, batches_per_epoch=10, seed=5))
    ref = {r["step"]: r for r in csv_rows(tmp_path / "single" / "log" / "metrics.csv")}
    ref_final = params(Path(single.checkpoint.dir) / "step-00000006")

    ray_cfg = tiny(tmp_path / "ray", *over)
    shutil.copytree(Path(single.checkpoint.dir) / "step-00000002", Path(ray_cfg.checkpoint.dir) / "step-00000002")
    sources = SyntheticSource(ray_cfg.model, batch_size=2, batches_per_epoch=10, seed=5)
    last = train_ray(ray_cfg, sources, num_workers=2, resume=True)
    assert last["step"] == 6 and last["samples"] == 24
    got = csv_rows(tmp_path / "ray" / "log" / "metrics.csv")
    assert [r["step"] for r in got] == ["3", "4", "5", "6"]
    for g in got:
        for k in ("loss", "global", "mtc", "lr"):
            assert float(g[k]) == pytest.approx(float(ref[g["step"]][k]), abs=1e-4), (g["step"], k)
    assert [p.name for p in checkpoints(ray_cfg.checkpoint.dir)] == ["step-00000002", "step-00000004",
                                                                      "step-00000006"]
    assert_params_close(params(Path(ray_cfg.checkpoint.dir) / "step-00000006"), ref_final, 1e-4)

    back = tiny(tmp_path / "back", *over)
    shutil.copytree(Path(ray_cfg.checkpoint.dir) / "step-00000004", Path(back.checkpoint.dir) / "step-00000004")
    train(back, SyntheticSource(back.model, batch_size=4, batches_per_epoch=10, seed=5), resume=True)
    assert_params_close(params(Path(back.checkpoint.dir) / "step-00000006"), ref_final, 1e-4)


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("argv,message", [
    (["--config", "tiny"], "--train-shards is required"),
    (["--train-shards", "x.tar"], "--config is required"),
    (["--config", "/nope.yaml", "--train-shards", "x.tar"], "config file not found"),
    (["--config", "tiny", "--train-shards", "/nope/train-{000000..000001}.tar"], "shard not found"),
    (["--config", "tiny", "optim.nope=1", "--train-shards", "x.tar"], "unknown config key optim.nope"),
    (["--config", "tiny", "--bogus"], "No such option: --bogus"),
    (["--config", "tiny", "--num-workers", "0", "--train-shards", "x"], None),
    (["--config", "tiny", "--eval-only"], "--eval-only needs --val-shards"),
    (["--config", "tiny", "--train-shards", "x.tar", "--stage1-checkpoint", "/nope"], "stage-1 checkpoint not found"),
    (["--config", "tiny", "stage=3", "--train-shards", "x.tar"], "stage must be 1 or 2"),
    (["--config", "tiny_stage2", "stage2.negatives=hardest", "--train-shards", "x.tar"], "stage2.negatives"),
    (["eval", "--val-shards", "x.tar"], "Missing option '--checkpoint'"),
    (["eval", "--checkpoint", "/nope", "--val-shards", "x.tar"], "checkpoint not found"),
    (["eval", "--checkpoint", "/nope", "--val-shards", "x.tar", "optim.lr=1"], "overrides need --config"),
    (["--config", "tiny", "--train-shards", "x.tar", "--num-workers", "two"], "Invalid value for '--num-workers'"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lfvila-train: error: "), err
    if message:
        assert message in err


def test_cli_help_names_both_forms(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--train-shards" in out and "lfvila-train eval --help" in out
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--train-shards" not in out


# ----------------------------------------------------------------------------- real shards

def test_cli_trains_and_evaluates_on_real_shards(shards, vocab_dir, tmp_path, capsys):
    """`lfvila-train` on real shards: 3 steps on train shards, retrieval eval on the val shards,
    then the `eval` subcommand on the latest checkpoint."""
    tok = vocab_dir
    vocab = (tok / "vocab.txt").read_text().split()
    shard_dir = str(Path(shards[0]).parent)
    common = [f"checkpoint.dir={tmp_path}/ck", f"log.dir={tmp_path}/log", "log.tensorboard=false",
              f"data.tokenizer={tok}", f"model.text.bert.vocab_size={max(128, len(vocab))}",
              "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=2"]
    rc = cli.main(["--train-shards", shard_dir, "--val-shards", shard_dir, "--config", "tiny", *common,
                   "optim.max_steps=3", "optim.steps_per_epoch=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "step 3/3" in out and '"paragraph_to_video"' in out
    assert [p.name for p in checkpoints(tmp_path / "ck")] == ["step-00000003"]
    rc = cli.main(["eval", "--checkpoint", f"{tmp_path}/ck/step-00000003", "--val-shards",
                   f"{shard_dir}/val-*.tar", "--output", str(tmp_path / "eval.json")])
    assert rc == 0
    m = json.loads((tmp_path / "eval.json").read_text())
    assert m["num_samples"] == len(list(Path(shard_dir).glob("val-*.tar"))) == 2  # one sample per val shard
    after_training = json.loads(out[out.index("{"):])
    assert m["checkpoint"] == f"{tmp_path}/ck/step-00000003" and after_training["checkpoint"] == f"{tmp_path}/ck"
    del m["checkpoint"], after_training["checkpoint"]
    assert m == after_training  # eval is deterministic (window 0, centre crop): the same checkpoint, the same numbers
    for direction in ("paragraph_to_video", "video_to_paragraph"):
        assert_retrieval_consistent(m[direction], n=2)

