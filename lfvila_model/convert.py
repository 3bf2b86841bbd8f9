"""The LF-VILA release's checkpoints (microsoft/XPretrain, ``LF-VILA/src``: ``lfvila_stage1.bin``,
``lfvila_stage2.bin``) as checkpoints of ours, for ``lfvila-train`` and ``lfvila-train eval``.

The release saves its ``LFVILA_Pretrain`` state dict in fp16, under ``module.`` when DeepSpeed
wrapped it. Its stage-1 model computes a few things differently from ours (the paragraph
input, the clip pooling, clip features from the last layer), so the converted checkpoint
runs with ``model.compat: xpretrain``, which computes what the release computes.

Every key of the file is accounted for: renamed to one of ours (shape-checked), listed as
deliberately unused with the reason, or listed under a part this version does not convert
(stage 2, for now). The key tables are ``Part``s, one per part of the model, so a stage-2
table is one more ``Part``. A key no part knows, a tensor of the wrong shape, or one of our
tensors the file lacks is a ConvertError naming the key.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lfvila_model.checkpoint import TrainState
from lfvila_model.config import ConfigError, TrainConfig, model_config
from lfvila_model.models.video import read_state_dict

STEP_DIR = "step-00000000"
REPORT = "convert.json"


class ConvertError(ConfigError):
    """A file that is not the release's checkpoint of this model size (one line)."""


@dataclass(frozen=True)
class Part:
    """One part of the release's model: how its keys become ours.

    renames: (release prefix, our prefix), the longest matching prefix wins; unused: (regex
    matched at the key's start, why we do not need it), tried first; pending: release
    prefixes this version does not convert (reported apart, as ``"<name>: not converted by
    this version"``)."""

    name: str
    renames: tuple[tuple[str, str], ...] = ()
    unused: tuple[tuple[str, str], ...] = ()
    pending: tuple[str, ...] = ()


def stage1_part(stage1_layers: int) -> Part:
    """The stage-1 model: the video encoder, BERT's embeddings and its first ``stage1_layers``
    layers (release: ``num_local_layers`` sentence + paragraph layers), the paragraph
    embedding (``sent_embedding``) and the four projections."""
    layers = tuple((f"text_encoder.bert.encoder.layer.{i}.",) * 2 for i in range(stage1_layers))
    return Part(
        "stage 1",
        renames=(
            ("video_encoder.", "video_encoder."),
            ("video_local_proj.", "video_encoder.clip_proj."),
            ("video_global_proj.", "video_encoder.video_proj."),
            ("text_local_proj.", "text_encoder.sentence_proj."),
            ("text_global_proj.", "text_encoder.paragraph_proj."),
            ("sent_embedding.", "text_encoder.paragraph_embedding."),
            ("text_encoder.bert.embeddings.", "text_encoder.bert.embeddings."),
            *layers,
        ),
        unused=(
            (r"video_encoder\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$",
             "buffer: the window's relative-position index, recomputed from the window"),
            (r"video_encoder\.(local_feat_proj|norm_local)\.",
             "the release computes it but discards its output (its clip features come from the last layer)"),
            (r"(sent_embedding|text_encoder\.bert\.embeddings)\.(position_ids|token_type_ids)$",
             "buffer: 0..n-1 position / zero token-type ids, recomputed"),
        ),
    )


STAGE2 = Part(
    "stage 2",
    pending=(
        "text_encoder.bert.encoder.layer.",  # the layers after stage 1's (BERT-large 12-23): single-stream encoder
        "text_encoder.bert.pooler.",  # feeds video-text matching
        "text_encoder.cls.",  # the MLM head
        "text_encoder.seq_relationship.",  # the VTM head
        "video_token_pos.",  # the video tokens' time/space positions
    ),
)


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
    not_converted: dict[str, list[str]] = field(default_factory=dict)  # part -> release keys
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # ours

    def report(self) -> dict:
        return {"mapped": self.mapped, "unused": self.unused,
                "not_converted": {f"{part}: not converted by this version": keys
                                  for part, keys in self.not_converted.items()}}


def _place(key: str, parts: list[Part]) -> tuple[str, str | None, str]:
    """(kind, our key or None, part or reason) for one release key."""
    for part in parts:
        for pattern, why in part.unused:
            if re.match(pattern, key):
                return "unused", None, why
        hits = [(src, dst) for src, dst in part.renames if key.startswith(src)]
        if hits:
            src, dst = max(hits, key=lambda h: len(h[0]))
            return "mapped", dst + key[len(src):], part.name
        if any(key.startswith(p) for p in part.pending):
            return "pending", None, part.name
    return "unknown", None, ""


def _release_key(ours: str, parts: list[Part]) -> str:
    """The release key that would have filled our key ``ours`` (for error messages)."""
    hits = [(src, dst) for part in parts for src, dst in part.renames if ours.startswith(dst)]
    if not hits:
        return "?"
    src, dst = max(hits, key=lambda h: len(h[1]))
    return src + ours[len(dst):]


def convert_state(release: dict[str, torch.Tensor], own: dict[str, torch.Tensor], parts: list[Part]) -> Conversion:
    """Rename, shape-check and cast the release's tensors to ``own`` (our model's state dict)."""
    conv = Conversion()
    for key, value in release.items():
        kind, target, where = _place(key, parts)
        if kind == "unknown":
            raise ConvertError(f"unknown key {key}: not a key of the LF-VILA release's model")
        if kind == "unused":
            conv.unused[key] = where
        elif kind == "pending":
            conv.not_converted.setdefault(where, []).append(key)
        elif target not in own:
            raise ConvertError(f"release key {key} has no counterpart {target} in this model "
                               "(a model size other than the release's?)")
        elif tuple(value.shape) != tuple(own[target].shape):
            raise ConvertError(f"release key {key} has shape {tuple(value.shape)}, our {target} is "
                               f"{tuple(own[target].shape)}: set model.* to the release's size")
        else:
            conv.mapped[key] = target
            conv.state[target] = value.to(own[target].dtype)
    missing = [k for k in own if k not in conv.state]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"the file lacks {_release_key(missing[0], parts)} (our {missing[0]}){more}")
    return conv


def xpretrain_config(base: TrainConfig, release: dict[str, torch.Tensor]) -> TrainConfig:
    """``base`` with compat xpretrain and the release's number of sentence embeddings."""
    d = base.to_dict()
    d["stage"] = 1
    d["model"]["compat"] = "xpretrain"
    segments = release.get("sent_embedding.segment_embeddings.weight")
    if segments is not None:
        d["model"]["text"] = {**d["model"]["text"], "max_sentences": int(segments.shape[0])}
    return TrainConfig.from_dict(d)


def convert_xpretrain(path: str | os.PathLike, out: str | os.PathLike, base: TrainConfig) -> dict:
    """Write ``out/step-00000000`` (a checkpoint ``lfvila-train`` loads: model.pt, trainer.json)
    and ``out/convert.json``; returns the report."""
    from lfvila_model.models.lfvila import LFVILA

    release = release_state(path)
    cfg = xpretrain_config(base, release)
    mcfg = model_config(cfg.model)
    own = LFVILA(mcfg).state_dict()
    used = mcfg.text.split + mcfg.text.paragraph_layers
    conv = convert_state(release, own, [stage1_part(used), STAGE2])
    step = Path(out) / STEP_DIR
    tmp = Path(out) / f".tmp-{STEP_DIR}"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(conv.state, tmp / "model.pt")
    meta = {k: v for k, v in asdict(TrainState()).items() if k != "position"}
    (tmp / "trainer.json").write_text(json.dumps(
        {"state": meta, "world_size": 1, "config": cfg.to_dict(), "converted_from": os.path.abspath(path)},
        indent=1, default=list))
    if step.exists():
        shutil.rmtree(step)
    os.replace(tmp, step)
    report = {"source": os.path.abspath(path), "checkpoint": str(step), "release_keys": len(release),
              "counts": {"mapped": len(conv.mapped), "unused": len(conv.unused),
                         **{f"{p}: not converted": len(k) for p, k in conv.not_converted.items()}},
              **conv.report()}
    (Path(out) / REPORT).write_text(json.dumps(report, indent=1))
    return report
