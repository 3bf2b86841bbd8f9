"""Typed configs: the bundled presets, `a.b=c` overrides parsed to the schema's types, and one-line
errors for unknown keys, wrong types and cross-field checks."""
from __future__ import annotations

import json

import pytest

from lfvila_model.config import ConfigError, TrainConfig, data_config, load_config, model_config


def test_config_files_and_overrides():
    paper = load_config("paper")
    mcfg = model_config(paper.model)
    assert (mcfg.num_clips, mcfg.video.frames_per_clip, mcfg.frame_size, mcfg.max_tokens) == (4, 8, (192, 320), 50)
    o = paper.optim
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.epochs, o.warmup()) == (5e-5, (0.9, 0.98), 1e-8, 0.05, 10,
                                                                             o.steps_per_epoch)
    assert paper.data.batch_size == 16 and paper.data.tokenizer == "bert-base-uncased"
    cfg = load_config("tiny", ["optim.lr=1e-4", "model.text.bert.hidden_dropout_prob=0", "model.num_clips=2",
                               "checkpoint.keep=5"])
    assert cfg.optim.lr == 1e-4 and cfg.checkpoint.keep == 5
    assert model_config(cfg.model).text.bert["hidden_dropout_prob"] == 0
    assert model_config(cfg.model).text.bert["hidden_size"] == 32  # preset values kept
    with pytest.raises(ConfigError, match="preset"):
        model_config(load_config("tiny", ["model.preset=huge"]).model)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        load_config("tiny", ["optim.max_steps=null", "optim.steps_per_epoch=null", "optim.epochs=2"]).optim.total_steps()


def test_overrides_take_the_schema_types():
    cfg = load_config("tiny", ["optim.lr=1e-4", "optim.max_steps=null", "optim.epochs=3", "log.tensorboard=false",
                               "stage2.special_token_ids=[0, 1, 2]", "optim.betas=[0.8,0.9]", "data.num_workers=2",
                               "checkpoint.dir=/runs/a=b", "optim.clip_grad_norm=2", "data.size=[32, 64]"])
    o = cfg.optim
    assert type(o.lr) is float and o.lr == 1e-4 and o.max_steps is None and o.epochs == 3
    assert o.betas == (0.8, 0.9) and type(o.clip_grad_norm) is float and o.clip_grad_norm == 2.0
    assert cfg.log.tensorboard is False and cfg.data.num_workers == 2
    assert cfg.stage2.special_token_ids == [0, 1, 2]
    assert cfg.checkpoint.dir == "/runs/a=b"  # only the first '=' separates key and value
    assert cfg.optim.total_steps() == 3 * 5  # tiny: 5 steps per epoch
    assert data_config(cfg, model_config(cfg.model))["size"] == (32, 64)  # agrees with the tiny model


@pytest.mark.parametrize("overrides,message", [
    (["optim.lrr=1"], "unknown config key optim.lrr"),
    (["data.nope=1"], "unknown config key data.nope"),
    (["nope=1"], "unknown config key nope"),
    (["optim.lr"], "'optim.lr' is not key.sub=value"),
    (["=3"], "is not key.sub=value"),
    (["optim.lr=abc"], "optim.lr: Value 'abc'"),
    (["optim.max_steps=1.5"], "optim.max_steps: Value '1.5'"),
    (["data.batch_size=many"], "data.batch_size: Value 'many'"),
    (["log.tensorboard=maybe"], "log.tensorboard: Value 'maybe'"),
    (["stage=3"], "stage must be 1 or 2, not 3"),
    (["optim.grad_accum=0"], "optim.grad_accum must be >= 1"),
    (["stage2.negatives=hardest"], "stage2.negatives must be random or hard, not 'hardest'"),
    (["stage2.mlm_probability=1.5"], "stage2.mlm_probability must be in (0, 1)"),
])
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: /nope.yaml"):
        load_config("/nope.yaml")
    (tmp_path / "typo.yaml").write_text("optim:\n  lr: 1.0e-3\n  warmup_step: 3\n")
    with pytest.raises(ConfigError, match="unknown config key optim.warmup_step"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "broken.yaml").write_text("optim: [\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "partial.yaml").write_text("optim:\n  lr: 0.5\n")
    cfg = load_config(tmp_path / "partial.yaml")  # the rest: the schema's defaults
    assert cfg.optim.lr == 0.5 and cfg.optim.betas == (0.9, 0.98) and cfg == TrainConfig(
        optim=type(cfg.optim)(lr=0.5))


def test_stored_config_round_trips_through_json():
    """What a checkpoint's trainer.json holds rebuilds the same config (tuples came back as lists)."""
    for name in ("tiny", "tiny_stage2", "demo", "paper"):
        cfg = load_config(name, ["data.tokenizer=/tok"])
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), default=list))) == cfg, name
    assert TrainConfig.from_dict({"optim": {"lr": 0.1}, "data": {"batch_size": 2}}).data.batch_size == 2
    with pytest.raises(ConfigError, match="unknown config key data.bogus"):
        TrainConfig.from_dict({"data": {"bogus": 1}})


def test_the_sample_shape_comes_from_the_model():
    cfg = load_config("tiny", ["data.tokenizer=/tok"])
    d = data_config(cfg, model_config(cfg.model), drop_last=True)
    assert (d["sample_clips"], d["frames_per_clip"], d["size"], d["max_tokens"]) == (2, 4, (32, 64), 12)
    assert d["drop_last"] is True and d["batch_size"] == 4 and d["tokenizer"] == "/tok"
    conflict = load_config("tiny", ["data.sample_clips=4"])
    with pytest.raises(ConfigError, match=r"data.sample_clips=4 conflicts with the model \(2\)"):
        data_config(conflict, model_config(conflict.model))
