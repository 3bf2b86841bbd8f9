"""The release's checkpoints as ours: a random state dict with the exact key names and shapes
of the LF-VILA release's model (LFVILA_Pretrain in microsoft/XPretrain LF-VILA/src/models) at a
tiny size, fp16 under DeepSpeed's ``module.``, converted by ``lfvila-train convert``, loaded
with model.compat=xpretrain and run - a stage-1 file as our stage 1, a stage-2 file as our
single-stream stage 2 (forward, losses, eval on real shards, resumable); and compat
computing the release's pooling and paragraph input (reference code written from the
release's, here)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lfvila_model import cli
from lfvila_model.checkpoint import load_checkpoint, load_stage1
from lfvila_model.config import load_config
from lfvila_model.convert import ConvertError, convert_xpretrain
from lfvila_model.models.lfvila import synthetic_batch
from lfvila_model.models.singlestream import LFVILASingleStream
from lfvila_model.models.video import pool_clips_xpretrain
from lfvila_model.objectives import setup_objective
from lfvila_model.train import load_model, setup_model, setup_optimizer
from tests.model.checks import assert_retrieval_consistent

# The release's LFVILA_Pretrain arguments at a tiny size (its configs/pretrain_stage1.yaml has the paper's).
VIDEO = {"patch_size": (1, 8, 8), "embed_dim": 8, "depths": (2, 2, 2), "num_heads": (1, 2, 4), "stages": (0, 1, 2),
             "downsample_stages": (0, 1), "window_size": ((2, 2, 4), (4, 2, 4), (8, 2, 2))}
BERT = {"hidden": 32, "intermediate": 64, "vocab": 128, "positions": 64, "type_vocab": 2, "stage1_layers": 4, "layers": 6}
SEGMENTS = 8  # the release's type_vocab_size for sent_embedding
FRAMES, CLIPS = 8, 2
GRID = (2, 3)  # last-layer grid of 64×96 frames (patch 8, two merges), as 3×5 is the paper's
OURS = ["model.video.embed_dim=8", "model.frame_size=[64,96]"]  # the tiny preset otherwise matches


def release_state(stage2: bool = False) -> dict[str, torch.Tensor]:
    """Keys and shapes as the release's modules register them (video_encoder.py, bert.py,
    text_encoder.py, lfvila_pretrain.py), random fp16 values; stage 2 adds its keys."""
    g = torch.Generator().manual_seed(0)
    s: dict[str, tuple] = {}
    e = VIDEO["embed_dim"]
    s["video_encoder.patch_embed.proj.weight"] = (e, 3, *VIDEO["patch_size"])
    s["video_encoder.patch_embed.proj.bias"] = (e,)
    s["video_encoder.patch_embed.norm.weight"] = s["video_encoder.patch_embed.norm.bias"] = (e,)
    for i, depth in enumerate(VIDEO["depths"]):
        d, heads, (wd, wh, ww) = e * 2 ** VIDEO["stages"][i], VIDEO["num_heads"][i], VIDEO["window_size"][i]
        for j in range(depth):
            p = f"video_encoder.layers.{i}.blocks.{j}."
            s.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                      p + "attn.relative_position_bias_table": ((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), heads),
                      p + "attn.relative_position_index": ("index", wd * wh * ww),
                      p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
                      p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                      p + "norm2.weight": (d,), p + "norm2.bias": (d,), p + "mlp.fc1.weight": (4 * d, d),
                      p + "mlp.fc1.bias": (4 * d,), p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
        if i in VIDEO["downsample_stages"]:
            p = f"video_encoder.layers.{i}.downsample."
            s.update({p + "reduction.weight": (2 * d, 4 * d), p + "norm.weight": (4 * d,), p + "norm.bias": (4 * d,)})
    last = e * 2 ** VIDEO["stages"][-1]
    s.update({"video_encoder.norm.weight": (last,), "video_encoder.norm.bias": (last,),
              "video_encoder.norm_local.weight": (last,), "video_encoder.norm_local.bias": (last,),
              "video_encoder.local_feat_proj.reduction.weight": (8 * e, 16 * e),
              "video_encoder.local_feat_proj.norm.weight": (16 * e,), "video_encoder.local_feat_proj.norm.bias": (16 * e,)})
    h, n = BERT["hidden"], BERT["intermediate"]
    p = "text_encoder.bert.embeddings."
    s.update({p + "word_embeddings.weight": (BERT["vocab"], h), p + "position_embeddings.weight": (BERT["positions"], h),
              p + "token_type_embeddings.weight": (BERT["type_vocab"], h), p + "LayerNorm.weight": (h,),
              p + "LayerNorm.bias": (h,), p + "position_ids": ("ids", BERT["positions"])})
    for i in range(BERT["layers"] if stage2 else BERT["stage1_layers"]):
        p = f"text_encoder.bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            s.update({f"{p}{name}.weight": (h, h), f"{p}{name}.bias": (h,)})
        s.update({p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias": (h,),
                  p + "intermediate.dense.weight": (n, h), p + "intermediate.dense.bias": (n,),
                  p + "output.dense.weight": (h, n), p + "output.dense.bias": (h,),
                  p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,)})
    p = "text_encoder."
    s.update({p + "bert.pooler.dense.weight": (h, h), p + "bert.pooler.dense.bias": (h,),
              p + "cls.predictions.bias": (BERT["vocab"],), p + "cls.predictions.transform.dense.weight": (h, h),
              p + "cls.predictions.transform.dense.bias": (h,), p + "cls.predictions.transform.LayerNorm.weight": (h,),
              p + "cls.predictions.transform.LayerNorm.bias": (h,), p + "cls.predictions.decoder.weight": (BERT["vocab"], h),
              p + "cls.predictions.decoder.bias": (BERT["vocab"],), p + "seq_relationship.weight": (2, h),
              p + "seq_relationship.bias": (2,)})
    for name in ("video_local_proj", "text_local_proj", "video_global_proj", "text_global_proj"):
        s.update({f"{name}.weight": (h, h), f"{name}.bias": (h,)})
    s.update({"sent_embedding.position_embeddings.weight": (BERT["positions"], h),
              "sent_embedding.segment_embeddings.weight": (SEGMENTS, h), "sent_embedding.norm.weight": (h,),
              "sent_embedding.norm.bias": (h,), "sent_embedding.position_ids": ("ids", BERT["positions"])})
    if stage2:
        s.update({"video_token_pos.s_pos_embed": (1, 1, GRID[0] * GRID[1], h),
                  "video_token_pos.t_pos_embed": (1, FRAMES, 1, h), "video_token_pos.norm.weight": (h,),
                  "video_token_pos.norm.bias": (h,)})
    out = {}
    for key, shape in s.items():
        if shape[0] == "index":
            out[key] = torch.randint(0, 10, (shape[1], shape[1]), generator=g)
        elif shape[0] == "ids":
            out[key] = torch.arange(shape[1])[None]
        else:
            out[key] = (0.02 * torch.randn(shape, generator=g)).half()
    out["text_encoder.cls.predictions.decoder.bias"] = out["text_encoder.cls.predictions.bias"]  # tied in BERT's head
    return out


def save_deepspeed(state: dict, path) -> None:
    """As DeepSpeed's save_checkpoint stores a model wrapped in DDP: {"module": {"module.<key>": ...}}."""
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}, "global_steps": 10}, path)


def convert_file(root, release: dict, name: str, *extra: str) -> None:
    save_deepspeed(release, root / name)
    assert cli.main(["convert", "--xpretrain", str(root / name), "--out", str(root / "ours"),
                     "--config", "tiny", *OURS, *extra]) == 0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("xpretrain")
    release = release_state()
    convert_file(root, release, "lfvila_stage1.bin")
    return root, release


@pytest.fixture(scope="module")
def converted2(tmp_path_factory, vocab_dir):
    """The release's stage-2 file, converted with our demo vocabulary as data.tokenizer."""
    root = tmp_path_factory.mktemp("xpretrain2")
    release = release_state(stage2=True)
    convert_file(root, release, "lfvila_stage2.bin", f"data.tokenizer={vocab_dir}")
    return root, release


def test_every_key_is_accounted_for(converted, capsys):
    root, release = converted
    report = json.loads((root / "ours" / "convert.json").read_text())
    assert report["stage"] == 1 and sorted([*report["mapped"], *report["unused"]]) == sorted(release)
    assert not set(report["mapped"]) & set(report["unused"])
    assert report["mapped"]["video_local_proj.weight"] == "video_encoder.clip_proj.weight"
    assert report["mapped"]["sent_embedding.segment_embeddings.weight"] == "text_encoder.paragraph_embedding.segment_embeddings.weight"
    assert report["mapped"]["text_encoder.bert.encoder.layer.3.output.dense.weight"] == "text_encoder.bert.encoder.layer.3.output.dense.weight"
    assert set(report["unused"]) >= {"video_encoder.norm_local.weight", "video_encoder.local_feat_proj.reduction.weight",
                                     "sent_embedding.position_ids", "video_encoder.layers.0.blocks.1.attn.relative_position_index"}
    assert "never trains it" in report["unused"]["text_encoder.cls.predictions.decoder.weight"]
    assert "never trains it" in report["unused"]["text_encoder.seq_relationship.bias"]


def test_stage2_file_every_key_is_accounted_for(converted2):
    root, release = converted2
    report = json.loads((root / "ours" / "convert.json").read_text())
    assert report["stage"] == 2 and sorted([*report["mapped"], *report["unused"]]) == sorted(release)
    mapped = report["mapped"]
    assert mapped["video_local_proj.weight"] == "stage1.video_encoder.clip_proj.weight"
    assert mapped["text_encoder.bert.encoder.layer.3.output.dense.weight"] == "stage1.text_encoder.bert.encoder.layer.3.output.dense.weight"
    assert mapped["text_encoder.bert.encoder.layer.4.output.dense.weight"] == "fusion.layer.0.output.dense.weight"
    assert mapped["text_encoder.bert.encoder.layer.5.attention.self.key.bias"] == "fusion.layer.1.attention.self.key.bias"
    assert mapped["text_encoder.cls.predictions.bias"] == mapped["text_encoder.cls.predictions.decoder.bias"] \
        == "fusion.cls.predictions.bias"
    assert mapped["video_token_pos.t_pos_embed"] == "fusion.video_token_pos.t_pos_embed"
    assert mapped["text_encoder.bert.pooler.dense.weight"] == "fusion.pooler.dense.weight"
    assert not any("never trains" in why for why in report["unused"].values())  # the heads are trained here


def test_stage2_checkpoint_loads_runs_evaluates_and_resumes(converted2, shards, tmp_path):
    """The converted stage 2 is our single-stream LFVILASingleStream with the release's tensors;
    its VTM/MLM losses are finite, `lfvila-train eval` scores it on real shards, and the
    directory holds what a stage-2 --resume-from loads (optimizer, schedule, RNG)."""
    root, release = converted2
    model, cfg = load_model(root / "ours")
    assert isinstance(model, LFVILASingleStream)
    assert (cfg.stage, cfg.stage2.arch, cfg.model.compat, cfg.model.cross["num_layers"]) == (2, "singlestream", "xpretrain", 2)
    state = model.state_dict()
    for ours, theirs in [("fusion.layer.1.output.dense.weight", "text_encoder.bert.encoder.layer.5.output.dense.weight"),
                         ("fusion.video_token_pos.s_pos_embed", "video_token_pos.s_pos_embed"),
                         ("fusion.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias"),
                         ("stage1.video_encoder.video_proj.weight", "video_global_proj.weight"),
                         ("stage1.text_encoder.paragraph_embedding.norm.weight", "sent_embedding.norm.weight")]:
        torch.testing.assert_close(state[ours], release[theirs].float())
    out = setup_objective(cfg)(model.train(), synthetic_batch(model.cfg, 4, seed=1), torch.device("cpu"), seed=0)
    assert torch.isfinite(out["mlm"]) and torch.isfinite(out["vtm"]) and out["mlm"] > 0 and out["vtm"] > 0

    shard_dir = str(shards[0]).rsplit("/", 1)[0]
    assert cli.main(["eval", "--checkpoint", str(root / "ours"), "--val-shards", f"{shard_dir}/val-*.tar",
                     "--output", str(tmp_path / "eval.json")]) == 0
    m = json.loads((tmp_path / "eval.json").read_text())
    assert m["num_samples"] == 2
    for direction in ("paragraph_to_video", "video_to_paragraph"):
        assert_retrieval_consistent(m[direction], n=2)

    fresh = setup_model(cfg, torch.device("cpu"))
    optimizer, scheduler = setup_optimizer(fresh, cfg.optim)
    assert load_checkpoint(root / "ours" / "step-00000000", fresh, optimizer, scheduler).step == 0
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


def test_stage2_file_with_a_wrong_fusion_key_is_one_line(tmp_path, capsys):
    state = release_state(stage2=True)
    state["text_encoder.bert.encoder.layer.5.intermediate.dense.weight"] = torch.zeros(3, 3, dtype=torch.half)
    save_deepspeed(state, tmp_path / "shape.bin")
    assert cli.main(["convert", "--xpretrain", str(tmp_path / "shape.bin"), "--out", str(tmp_path / "a"),
                     "--config", "tiny", *OURS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "text_encoder.bert.encoder.layer.5.intermediate.dense.weight has shape (3, 3)" in err
    assert "fusion.layer.1.intermediate.dense.weight" in err and not (tmp_path / "a" / "step-00000000").exists()
    cfg = load_config("tiny", OURS)
    state = release_state(stage2=True)
    state["text_encoder.cls.predictions.decoder.bias"] = torch.ones(BERT["vocab"], dtype=torch.half)
    torch.save(state, tmp_path / "alias.bin")
    with pytest.raises(ConvertError, match=r"cls\.predictions\.bias and text_encoder\.cls\.predictions\.decoder\.bias "
                                           r"both fill our fusion\.cls\.predictions\.bias but differ"):
        convert_xpretrain(tmp_path / "alias.bin", tmp_path / "b", cfg)
    del state["video_token_pos.norm.bias"]
    state["text_encoder.cls.predictions.decoder.bias"] = state["text_encoder.cls.predictions.bias"]
    torch.save(state, tmp_path / "missing.bin")
    with pytest.raises(ConvertError, match=r"lacks the key for our fusion\.video_token_pos\.norm\.bias"):
        convert_xpretrain(tmp_path / "missing.bin", tmp_path / "c", cfg)


def test_converted_checkpoint_loads_with_compat_and_runs(converted):
    root, release = converted
    model, cfg = load_model(root / "ours")
    assert cfg.model.compat == "xpretrain" and cfg.model.text["max_sentences"] == SEGMENTS
    state = model.state_dict()
    torch.testing.assert_close(state["video_encoder.video_proj.weight"], release["video_global_proj.weight"].float())
    torch.testing.assert_close(state["video_encoder.layers.2.blocks.1.attn.relative_position_bias_table"],
                               release["video_encoder.layers.2.blocks.1.attn.relative_position_bias_table"].float())
    assert state["text_encoder.sentence_proj.weight"].dtype == torch.float32
    batch = synthetic_batch(model.cfg, 2)
    with torch.no_grad():
        out = model(batch["video"], batch["input_ids"], batch["attention_mask"])
    assert out["clip"].shape == (2, CLIPS, 32) and out["paragraph"].shape == (2, 32)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_compat_text_computes_the_release_paragraph_input(converted):
    """The release: sentence tokens + position embeddings over all m·L tokens + the sentence's
    segment embedding, LayerNorm, (dropout); the paragraph token is the mean of the [CLS] after it."""
    root, release = converted
    model, _ = load_model(root / "ours")
    text = model.text_encoder
    batch = synthetic_batch(model.cfg, 2, seed=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        cls, para = text.encode(ids, mask)
        b, m, length = ids.shape
        f = {k: v.float() for k, v in release.items() if k.startswith("sent_embedding.")}
        seg = torch.arange(m).repeat(b, 1).repeat_interleave(length, dim=1)
        hidden = text.bert.embeddings(input_ids=ids.reshape(b * m, length))
        ext = (1.0 - mask.reshape(b * m, length)[:, None, None, :].float()) * -1e4
        for layer in text.bert.encoder.layer[:2]:
            hidden = layer(hidden, attention_mask=ext)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        emb = hidden.view(b, m * length, -1) + f["sent_embedding.position_embeddings.weight"][: m * length] \
            + f["sent_embedding.segment_embeddings.weight"][seg]
        emb = nn.functional.layer_norm(emb, (emb.shape[-1],), f["sent_embedding.norm.weight"], f["sent_embedding.norm.bias"], 1e-12)
        tokens = torch.cat([emb.view(b, m, length, -1)[:, :, 0].mean(1, keepdim=True), emb], dim=1)
        full = torch.cat([mask.new_ones(b, 1), mask.reshape(b, m * length)], dim=1)
        ext = (1.0 - full[:, None, None, :].float()) * -1e4
        for layer in text.bert.encoder.layer[2:]:
            tokens = layer(tokens, attention_mask=ext)
            tokens = tokens[0] if isinstance(tokens, tuple) else tokens
    torch.testing.assert_close(cls, hidden.view(b, m, length, -1)[:, :, 0])
    torch.testing.assert_close(para, tokens[:, 0], rtol=1e-4, atol=1e-4)


def test_compat_pooling_is_the_release_maxpool():
    """downsample_video_embd: MaxPool2d((2,3), stride 1) per frame, then the mean over each
    clip's frames and pooled positions; our adaptive pool takes other windows on 3×5."""
    tokens = torch.randn(2, 8, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    b, n, h, w, c = tokens.shape
    x = nn.MaxPool2d((2, 3), stride=(1, 1))(tokens.permute(0, 1, 4, 2, 3).reshape(b * n, c, h, w))
    x = x.permute(0, 2, 3, 1).reshape(b, n, -1, c)
    ref = x.view(b, 2, n // 2, -1, c).mean(dim=[2, 3])
    torch.testing.assert_close(pool_clips_xpretrain(tokens, 4), ref)


def test_wrong_files_name_the_key(tmp_path, capsys):
    cfg = load_config("tiny", OURS)
    state = release_state()
    del state["text_local_proj.bias"]
    torch.save(state, tmp_path / "missing.bin")
    with pytest.raises(ConvertError, match=r"lacks text_local_proj\.bias \(our text_encoder\.sentence_proj\.bias\)"):
        convert_xpretrain(tmp_path / "missing.bin", tmp_path / "a", cfg)
    state = release_state()
    state["video_encoder.layers.1.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3, dtype=torch.half)
    torch.save(state, tmp_path / "shape.bin")
    with pytest.raises(ConvertError, match=r"video_encoder\.layers\.1\.blocks\.0\.mlp\.fc1\.weight has shape \(3, 3\)"):
        convert_xpretrain(tmp_path / "shape.bin", tmp_path / "b", cfg)
    state = {**release_state(), "some_head.weight": torch.zeros(2)}
    torch.save(state, tmp_path / "extra.bin")
    assert cli.main(["convert", "--xpretrain", str(tmp_path / "extra.bin"), "--out", str(tmp_path / "c"),
                     "--config", "tiny", *OURS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key some_head.weight" in err
    assert not (tmp_path / "c" / "step-00000000").exists()


def test_stage2_starts_from_a_converted_checkpoint(converted):
    root, release = converted
    cfg = load_config("tiny", [*OURS, "model.compat=xpretrain", f"model.text.max_sentences={SEGMENTS}", "stage=2"])
    model = setup_model(cfg, torch.device("cpu"))
    load_stage1(model, root / "ours")
    torch.testing.assert_close(model.stage1.text_encoder.paragraph_embedding.norm.weight,
                               release["sent_embedding.norm.weight"].float())
