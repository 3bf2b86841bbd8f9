"""The LF-VILA release's checkpoints (microsoft/XPretrain, ``LF-VILA/src``: ``lfvila_stage1.bin``,
``lfvila_stage2.bin``) as checkpoints of ours, for ``lfvila-train`` and ``lfvila-train eval``.

The release saves its ``LFVILA_Pretrain`` state dict in fp16, under ``module.`` when DeepSpeed
wrapped it. Its stage-1 model computes a few things differently from ours (the paragraph
input, the clip pooling, clip features from the last layer), so the converted checkpoint
runs with ``model.compat: xpretrain``, which computes what the release computes.

A stage-2 file (it has BERT layers after stage 1's, or ``video_token_pos``) becomes a stage-2
checkpoint of ours (``stage2.arch: singlestream``, the release's single-stream stage 2): its
stage-1 keys under ``stage1.``, its stage-2 keys through the single-stream's
``xpretrain_stage2_rules``. A stage-1 file becomes a stage-1 checkpoint.

Every key of the file is accounted for: renamed to one of ours (shape-checked) or listed as
deliberately unused with the reason. The key tables are ``Part``s, one per part of the
model. A key no part knows, a tensor of the wrong shape, two release keys for one of ours
that differ (the MLM bias and its decoder alias), or one of our tensors the file lacks is a
ConvertError naming the key.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lfvila_model.checkpoint import TrainState, save_checkpoint
from lfvila_model.config import ConfigError, TrainConfig, model_config
from lfvila_model.models.singlestream import xpretrain_stage2_key, xpretrain_stage2_rules
from lfvila_model.models.video import read_state_dict

REPORT = "convert.json"


class ConvertError(ConfigError):
    """A file that is not the release's checkpoint of this model size (one line)."""


@dataclass(frozen=True)
class Part:
    """One part of the release's model: how its keys become ours.

    renames: (release prefix, our prefix), the longest matching prefix wins; rules: (regex
    over the whole key, ``re.Match.expand`` template of ours); unused: (regex matched at the
    key's start, why we do not need it), tried first."""

    name: str
    renames: tuple[tuple[str, str], ...] = ()
    unused: tuple[tuple[str, str], ...] = ()
    rules: tuple[tuple[str, str], ...] = ()


def stage1_part(stage1_layers: int, under: str = "") -> Part:
    """The stage-1 model: the video encoder, BERT's embeddings and its first ``stage1_layers``
    layers (release: ``num_local_layers`` sentence + paragraph layers), the paragraph
    embedding (``sent_embedding``) and the four projections; ``under``: our prefix for them
    (``stage1.`` in a stage-2 model)."""
    layers = tuple((f"text_encoder.bert.encoder.layer.{i}.",) * 2 for i in range(stage1_layers))
    renames = (
        ("video_encoder.", "video_encoder."),
        ("video_local_proj.", "video_encoder.clip_proj."),
        ("video_global_proj.", "video_encoder.video_proj."),
        ("text_local_proj.", "text_encoder.sentence_proj."),
        ("text_global_proj.", "text_encoder.paragraph_proj."),
        ("sent_embedding.", "text_encoder.paragraph_embedding."),
        ("text_encoder.bert.embeddings.", "text_encoder.bert.embeddings."),
        *layers,
    )
    return Part(
        "stage 1",
        renames=tuple((src, under + dst) for src, dst in renames),
        unused=(
            (r"video_encoder\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$",
             "buffer: the window's relative-position index, recomputed from the window"),
            (r"video_encoder\.(local_feat_proj|norm_local)\.",
             "the release computes it but discards its output (its clip features come from the last layer)"),
            (r"(sent_embedding|text_encoder\.bert\.embeddings)\.(position_ids|token_type_ids)$",
             "buffer: 0..n-1 position / zero token-type ids, recomputed"),
        ),
    )


def stage2_part(first: int, layers: int) -> Part:
    """The single-stream stage 2: BERT layers ``first``.. (the fusion layers), the pooler, the
    MLM and matching heads and the video tokens' positions, by the single-stream's rules."""
    return Part("stage 2", rules=tuple(xpretrain_stage2_rules(first, layers)))


# The stage-2 heads a stage-1 file holds too: the release builds them in both stages.
STAGE2_HEADS = Part("stage 2 heads", unused=(
    (r"text_encoder\.(bert\.pooler|cls|seq_relationship)\.",
     "a stage-2 head: the release's stage-1 model holds it but never trains it"),))
LAYER = re.compile(r"text_encoder\.bert\.encoder\.layer\.(\d+)\.")


def stage2_layers(release: dict[str, torch.Tensor], first: int) -> int:
    """How many BERT layers the file has from layer ``first`` on (its stage 2's; 0: a stage-1 file)."""
    found = [int(m.group(1)) for k in release if (m := LAYER.match(k))]
    return max(0, max(found, default=-1) + 1 - first)


def is_stage2(release: dict[str, torch.Tensor], first: int) -> bool:
    """A stage-2 file has BERT layers after stage 1's or the video tokens' positions."""
    return stage2_layers(release, first) > 0 or any(k.startswith("video_token_pos.") for k in release)


def release_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a release checkpoint: a bare one, or DeepSpeed's (``{"module": ...}``
    and/or keys under ``module.``)."""
    try:
        state = read_state_dict(path, ("module", "model", "state_dict"))
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass
class Conversion:
    """What became of every key of the release's file."""

    mapped: dict[str, str] = field(default_factory=dict)  # release key -> our key
    unused: dict[str, str] = field(default_factory=dict)  # release key -> why
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # ours

    def report(self) -> dict:
        return {"mapped": self.mapped, "unused": self.unused}


def _place(key: str, parts: list[Part]) -> tuple[str, str | None, str]:
    """(kind, our key or None, part or reason) for one release key."""
    for part in parts:
        for pattern, why in part.unused:
            if re.match(pattern, key):
                return "unused", None, why
        ours = xpretrain_stage2_key(key, part.rules)
        if ours is not None:
            return "mapped", ours, part.name
        hits = [(src, dst) for src, dst in part.renames if key.startswith(src)]
        if hits:
            src, dst = max(hits, key=lambda h: len(h[0]))
            return "mapped", dst + key[len(src):], part.name
    return "unknown", None, ""


def _release_key(ours: str, parts: list[Part]) -> str:
    """The release key that would have filled our key ``ours`` (for error messages)."""
    hits = [(src, dst) for part in parts for src, dst in part.renames if ours.startswith(dst)]
    if not hits:  # a rules-made key
        return f"the key for our {ours}"
    src, dst = max(hits, key=lambda h: len(h[1]))
    return f"{src + ours[len(dst):]} (our {ours})"


def convert_state(release: dict[str, torch.Tensor], own: dict[str, torch.Tensor], parts: list[Part]) -> Conversion:
    """Rename, shape-check and cast the release's tensors to ``own`` (our model's state dict)."""
    conv = Conversion()
    for key, value in release.items():
        kind, target, where = _place(key, parts)
        if kind == "unknown":
            raise ConvertError(f"unknown key {key}: not a key of the LF-VILA release's model")
        if kind == "unused":
            conv.unused[key] = where
        elif target not in own:
            raise ConvertError(f"release key {key} has no counterpart {target} in this model "
                               "(a model size other than the release's?)")
        elif tuple(value.shape) != tuple(own[target].shape):
            raise ConvertError(f"release key {key} has shape {tuple(value.shape)}, our {target} is "
                               f"{tuple(own[target].shape)}: set model.* to the release's size")
        elif target in conv.state:  # the MLM bias and its decoder alias: one tensor in the release
            other = next(k for k, t in conv.mapped.items() if t == target)
            if not torch.equal(conv.state[target], value.to(own[target].dtype)):
                raise ConvertError(f"release keys {other} and {key} both fill our {target} but differ")
            conv.mapped[key] = target
        else:
            conv.mapped[key] = target
            conv.state[target] = value.to(own[target].dtype)
    missing = [k for k in own if k not in conv.state]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"the file lacks {_release_key(missing[0], parts)}{more}")
    return conv


def xpretrain_config(base: TrainConfig, release: dict[str, torch.Tensor]) -> TrainConfig:
    """``base`` with compat xpretrain and the release's number of sentence embeddings; for a
    stage-2 file, stage 2 single-stream with the file's number of fusion layers (taken from
    the file, not from text.pretrained)."""
    d = base.to_dict()
    d["stage"] = 1
    d["model"]["compat"] = "xpretrain"
    segments = release.get("sent_embedding.segment_embeddings.weight")
    if segments is not None:
        d["model"]["text"] = {**d["model"]["text"], "max_sentences": int(segments.shape[0])}
    text = model_config(base.model).text
    first = text.split + text.paragraph_layers
    if is_stage2(release, first):
        d["stage"] = 2
        d["stage2"] = {**d["stage2"], "arch": "singlestream"}
        cross = {**d["model"]["cross"], "init_from_pretrained": False}
        if stage2_layers(release, first):
            cross["num_layers"] = stage2_layers(release, first)
        d["model"]["cross"] = cross
    return TrainConfig.from_dict(d)


def convert_xpretrain(path: str | os.PathLike, out: str | os.PathLike, base: TrainConfig) -> dict:
    """Write ``out/step-00000000`` (a checkpoint ``lfvila-train`` loads, evaluates and resumes:
    the model, a fresh optimizer and LR schedule, trainer.json) and ``out/convert.json``;
    returns the report."""
    from lfvila_model.train import setup_model, setup_optimizer

    release = release_state(path)
    cfg = xpretrain_config(base, release)
    mcfg = model_config(cfg.model)
    model = setup_model(cfg, torch.device("cpu"))
    used = mcfg.text.split + mcfg.text.paragraph_layers
    parts = ([stage1_part(used, "stage1."), stage2_part(used, mcfg.cross.num_layers)] if cfg.stage == 2
             else [stage1_part(used), STAGE2_HEADS])
    conv = convert_state(release, model.state_dict(), parts)
    model.load_state_dict(conv.state)
    optimizer, scheduler = setup_optimizer(model, cfg.optim)
    step = save_checkpoint(out, model, optimizer, scheduler, TrainState(), cfg)
    meta = json.loads((step / "trainer.json").read_text())
    (step / "trainer.json").write_text(json.dumps({**meta, "converted_from": os.path.abspath(path)}, indent=1))
    report = {"source": os.path.abspath(path), "checkpoint": str(step), "stage": cfg.stage,
              "release_keys": len(release), "counts": {"mapped": len(conv.mapped), "unused": len(conv.unused)},
              **conv.report()}
    (Path(out) / REPORT).write_text(json.dumps(report, indent=1))
    return report
