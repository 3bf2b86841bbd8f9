"""Starting from the paper's weights: a 2D Swin checkpoint in Microsoft's layout inflated into
the video encoder, a transformers BERT directory loaded into the text encoder, both by the
training recipe when it starts; a wrong file is a one-line error naming what does not fit."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertModel

from lfvila_model.config import ConfigError, load_config
from lfvila_model.models import presets
from lfvila_model.models.text import TextEncoder
from lfvila_model.models.video import VideoEncoder, VideoEncoderConfig
from lfvila_model.sources import SyntheticSource
from lfvila_model.train import TrainRecipe

TINY = presets.tiny()


def swin2d_state(cfg: VideoEncoderConfig, window: int = 7, classes: int = 10, init=torch.randn) -> dict:
    """A 2D Swin state dict with the exact key names and shapes of Microsoft's Swin code
    (models/swin_transformer.py) for the Swin our encoder inflates from: a stage per width,
    ``window``×``window`` windows, 4×4 patches, a classifier head, and the buffers Swin saves."""
    widths = []
    for i, d in enumerate(cfg.dims):  # consecutive layers of one width are one Swin stage
        if not widths or widths[-1][0] != d or (i - 1) in cfg.merge_after:
            widths.append([d, 0, cfg.heads[i]])
        widths[-1][1] += cfg.depths[i]
    n = window * window
    s = {"patch_embed.proj.weight": init(cfg.embed_dim, 3, 4, 4), "patch_embed.proj.bias": init(cfg.embed_dim),
         "patch_embed.norm.weight": init(cfg.embed_dim), "patch_embed.norm.bias": init(cfg.embed_dim)}
    for st, (d, depth, heads) in enumerate(widths):
        for j in range(depth):
            p = f"layers.{st}.blocks.{j}."
            s.update({p + "norm1.weight": init(d), p + "norm1.bias": init(d),
                      p + "attn.relative_position_bias_table": init((2 * window - 1) ** 2, heads),
                      p + "attn.relative_position_index": torch.randint(0, (2 * window - 1) ** 2, (n, n)),
                      p + "attn.qkv.weight": init(3 * d, d), p + "attn.qkv.bias": init(3 * d),
                      p + "attn.proj.weight": init(d, d), p + "attn.proj.bias": init(d),
                      p + "norm2.weight": init(d), p + "norm2.bias": init(d),
                      p + "mlp.fc1.weight": init(4 * d, d), p + "mlp.fc1.bias": init(4 * d),
                      p + "mlp.fc2.weight": init(d, 4 * d), p + "mlp.fc2.bias": init(d)})
            if j % 2:
                s[p + "attn_mask"] = torch.zeros(4, n, n)
        if st < len(widths) - 1:
            s.update({f"layers.{st}.downsample.norm.weight": init(4 * d), f"layers.{st}.downsample.norm.bias": init(4 * d),
                      f"layers.{st}.downsample.reduction.weight": init(2 * d, 4 * d)})
    last = widths[-1][0]
    s.update({"norm.weight": init(last), "norm.bias": init(last), "head.weight": init(classes, last),
              "head.bias": init(classes)})
    return s


def small_bert(layers: int, **over) -> BertModel:
    return BertModel(BertConfig(**{**TINY.text.bert, "num_hidden_layers": layers, **over}), add_pooling_layer=False)


def test_swin2d_checkpoint_fills_every_encoder_tensor_but_our_heads():
    swin = swin2d_state(TINY.video)
    enc = VideoEncoder(TINY.video)
    report = enc.load_swin2d({"model": swin})
    assert set(report.missing) == {f"{m}.{p}" for m in ("clip_norm", "clip_proj", "video_proj") for p in ("weight", "bias")}
    assert set(report.unexpected) == {"head.weight", "head.bias"}
    assert report.ignored and all(k.endswith(("relative_position_index", "attn_mask")) for k in report.ignored)
    assert report.loaded == len(enc.state_dict()) - len(report.missing)
    torch.testing.assert_close(enc.layers[2].blocks[1].attn.qkv.weight, swin["layers.2.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(enc.patch_embed.norm.bias, swin["patch_embed.norm.bias"])
    torch.testing.assert_close(enc.norm.weight, swin["norm.weight"])
    # the 13×13 table is resized to the window's (2h-1)×(2w-1) and repeated over (2t-1) time offsets
    table = enc.layers[0].blocks[0].attn.relative_position_bias_table
    t, h, w = (2 * x - 1 for x in TINY.video.windows[0])
    assert table.shape == (t * h * w, 1)
    torch.testing.assert_close(table.view(t, h * w, 1)[0], table.view(t, h * w, 1)[-1])


def test_paper_encoder_takes_swin_b_22k_384_window12_key_for_key():
    # The paper's topology (2-2-14-2-2-2 blocks = Swin-B's 2-2-18-2, its heads, window 12) at
    # width 8 instead of 128: the key names are Swin-B's, the shapes scaled (CPU time).
    cfg = VideoEncoderConfig(embed_dim=8, proj_dim=8)
    swin = swin2d_state(cfg, window=12, classes=21841, init=lambda *shape: torch.zeros(shape))
    assert len([k for k in swin if k.endswith("attn.qkv.weight")]) == 24
    assert swin["layers.2.blocks.17.attn.relative_position_bias_table"].shape == (23 * 23, 16)
    assert "layers.3.downsample.norm.weight" not in swin and "layers.2.downsample.norm.weight" in swin
    enc = VideoEncoder(cfg)
    report = enc.load_swin2d({"model": swin})
    assert {k.rsplit(".", 1)[0] for k in report.missing} == {"clip_norm", "clip_proj", "video_proj"}
    assert set(report.unexpected) == {"head.weight", "head.bias"}
    assert "layers.4.downsample.reduction.weight" not in report.missing  # Swin-B's layers.2.downsample
    assert enc.layers[4].blocks[1].attn.relative_position_bias_table.shape == (31 * 5 * 9, 16)


def test_compat_inflates_the_patch_conv_by_tiling_as_the_release():
    swin = swin2d_state(TINY.video)
    enc = VideoEncoder(dataclasses.replace(TINY.video, compat="xpretrain"))
    enc.load_swin2d({"model": swin})
    k = swin["patch_embed.proj.weight"]  # release: unsqueeze(2).repeat(1, 1, pt, 2, 2) / pt / 4
    torch.testing.assert_close(enc.patch_embed.proj.weight, k.unsqueeze(2).repeat(1, 1, 1, 2, 2) / 4)


def test_wrong_swin_files_are_one_line_errors(tmp_path):
    enc = VideoEncoder(TINY.video)
    torch.save(small_bert(1).state_dict(), tmp_path / "bert.pt")
    with pytest.raises(ValueError, match="is not a 2D Swin checkpoint"):
        enc.load_swin2d(str(tmp_path / "bert.pt"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a torch checkpoint"):
        enc.load_swin2d(str(tmp_path / "junk.pth"))
    wide = swin2d_state(dataclasses.replace(TINY.video, embed_dim=24))
    with pytest.raises(ValueError, match=r"Swin key patch_embed\.proj\.weight has shape \(24, 3, 4, 4\).*\(16, 3, 1, 8, 8\)"):
        enc.load_swin2d({"model": wide})


def test_bert_directory_loads_into_the_stage1_layers(tmp_path):
    bert = small_bert(6)
    bert.save_pretrained(tmp_path)
    enc = TextEncoder(dataclasses.replace(TINY.text, pretrained=str(tmp_path), compat="xpretrain"))
    report = enc.load_pretrained()
    assert report.missing == []
    assert {k.split(".")[2] for k in report.unexpected} == {"4", "5"}  # layers after split + paragraph
    for key, value in enc.bert.state_dict().items():
        torch.testing.assert_close(value, bert.state_dict()[key], rtol=0, atol=0)
    # the release starts its paragraph position embeddings from BERT's (_init_sent_embedding)
    torch.testing.assert_close(enc.paragraph_embedding.position_embeddings.weight,
                               bert.embeddings.position_embeddings.weight)


def test_bert_of_another_size_names_the_key(tmp_path):
    small_bert(4, hidden_size=48, num_attention_heads=2, intermediate_size=96).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"key embeddings\.word_embeddings\.weight has shape \(128, 48\)"):
        TextEncoder(TINY.text).load_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="cannot load BERT"):
        TextEncoder(TINY.text).load_pretrained(str(tmp_path / "absent"))


def _recipe(tmp_path, *overrides):
    cfg = load_config("tiny", [f"checkpoint.dir={tmp_path}/ck", f"log.dir={tmp_path}/log", "log.tensorboard=false",
                               "log.progress=false", *overrides])
    recipe = TrainRecipe(cfg, device=torch.device("cpu"))
    recipe.setup(SyntheticSource(cfg.model, batch_size=2, batches_per_epoch=2))
    return recipe


def test_the_recipe_starts_from_both_and_says_so(tmp_path, capsys):
    swin = swin2d_state(TINY.video)
    torch.save({"model": swin}, tmp_path / "swin.pth")
    bert = small_bert(4)
    bert.save_pretrained(tmp_path / "bert")
    recipe = _recipe(tmp_path, f"model.video.pretrained_2d={tmp_path}/swin.pth", f"model.text.pretrained={tmp_path}/bert")
    try:
        model = recipe.model
        torch.testing.assert_close(model.video_encoder.layers[1].blocks[0].mlp.fc2.weight,
                                   swin["layers.1.blocks.0.mlp.fc2.weight"])
        torch.testing.assert_close(model.text_encoder.bert.encoder.layer[3].output.dense.weight,
                                   bert.encoder.layer[3].output.dense.weight)
    finally:
        recipe.cleanup()
    out = capsys.readouterr().out
    assert "video encoder from 2D Swin" in out and "missing 6 (clip_norm.bias, clip_norm.weight" in out
    assert "text encoder from BERT" in out and "missing 0" in out


def test_the_recipe_stops_on_a_wrong_file_with_one_line(tmp_path):
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "x.pth")
    with pytest.raises(ConfigError, match=r"x\.pth is not a 2D Swin checkpoint") as e:
        _recipe(tmp_path, f"model.video.pretrained_2d={tmp_path}/x.pth")
    assert "\n" not in str(e.value)


def test_paper_config_starts_from_swin_b_and_bert_large():
    model = load_config("paper").model
    assert model.text["pretrained"] == "bert-large-uncased"
    assert model.video["pretrained_2d"].endswith("swin_base_patch4_window12_384_22k.pth")
    assert model.compat is None
