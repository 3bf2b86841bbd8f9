import dataclasses

import pytest
import torch

from lfvila_model.models import presets
from lfvila_model.models.video import VideoEncoder, VideoEncoderConfig, full_attention, pool_clips

TINY = presets.tiny().video  # 2 clips × 4 frames × 32×64 → tokens 8×4×8 → 8×2×4 → 8×1×2


def _video(batch=2, frames=8, size=(32, 64)):
    return torch.randn(batch, frames, 3, *size, generator=torch.Generator().manual_seed(1))


def test_paper_config_numbers():
    cfg = VideoEncoderConfig()
    assert cfg.dims == [128, 256, 512, 512, 512, 1024]
    assert cfg.resolved_clip_layer == 2  # temporal window 8 = frames_per_clip
    assert TINY.resolved_clip_layer == 1


def test_paper_topology_token_grids():
    # Paper windows, merges and input size with narrow layers: grids 32×24×40 → … → 32×3×5.
    cfg = VideoEncoderConfig(embed_dim=8, depths=(1,) * 6, heads=(1, 2, 4, 4, 4, 8), proj_dim=8)
    enc = VideoEncoder(cfg).eval()
    grids = []
    for layer in enc.layers:
        layer.register_forward_hook(lambda m, i, o: grids.append(tuple(o[0].shape[1:4])))
    with torch.no_grad():
        out = enc(torch.randn(1, 32, 3, 192, 320))
    assert grids == [(32, 24, 40), (32, 12, 20), (32, 6, 10), (32, 6, 10), (32, 6, 10), (32, 3, 5)]
    assert out["clip"].shape == (1, 4, 8) and out["video"].shape == (1, 8)


def test_output_shapes_and_norms():
    enc = VideoEncoder(TINY).eval()
    out = enc(_video())
    assert out["clip"].shape == (2, 2, 32) and out["video"].shape == (2, 32)
    torch.testing.assert_close(out["clip"].norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(out["video"].norm(dim=-1), torch.ones(2))


def test_clip_features_come_from_the_clip_layer():
    enc = VideoEncoder(TINY).eval()
    video = _video()
    with torch.no_grad():
        clip_tokens, last_tokens = enc.forward_features(video)
        before = enc(video)
        assert clip_tokens.shape[-1] == TINY.dims[1] != last_tokens.shape[-1]
        for p in enc.layers[2].parameters():  # a layer after the clip layer
            p.add_(torch.randn_like(p))
        after = enc(video)
        torch.testing.assert_close(after["clip"], before["clip"])
        assert not torch.allclose(after["video"], before["video"])
        for p in enc.layers[1].parameters():  # the clip layer itself
            p.add_(torch.randn_like(p))
        assert not torch.allclose(enc(video)["clip"], before["clip"])


def test_pool_clips_max_then_mean():
    tokens = torch.zeros(1, 4, 3, 5, 1)
    tokens[0, 0, 0, 0, 0] = 6.0  # a peak in frame 0 of clip 0
    pooled = pool_clips(tokens, tokens_per_clip=2, grid=(2, 3))
    # 2×3 adaptive max-pool of 3×5: the peak lands in one of 6 cells of one of 2 frames.
    torch.testing.assert_close(pooled, torch.tensor([[[6.0 / 12], [0.0]]]))


def test_full_attention_equals_one_window_per_layer():
    big = dataclasses.replace(TINY, rel_pos_bias=False, windows=((64, 64, 64),) * 3, clip_layer=1)
    one_window = VideoEncoder(big).eval()
    full = VideoEncoder(full_attention(dataclasses.replace(TINY, rel_pos_bias=False))).eval()
    full.load_state_dict(one_window.state_dict())
    htwa = VideoEncoder(dataclasses.replace(TINY, rel_pos_bias=False)).eval()
    htwa.load_state_dict(one_window.state_dict())
    video = _video()
    with torch.no_grad():
        a, b, c = one_window(video), full(video), htwa(video)
    torch.testing.assert_close(a["video"], b["video"])
    torch.testing.assert_close(a["clip"], b["clip"])
    assert not torch.allclose(a["video"], c["video"])


def test_checkpointing_matches():
    enc = VideoEncoder(TINY)
    ckpt = VideoEncoder(dataclasses.replace(TINY, checkpointing=True))
    ckpt.load_state_dict(enc.state_dict())
    video = _video()
    a, b = enc(video), ckpt(video)
    torch.testing.assert_close(a["video"], b["video"])
    (a["video"].sum() + a["clip"].sum()).backward()
    (b["video"].sum() + b["clip"].sum()).backward()
    torch.testing.assert_close(enc.patch_embed.proj.weight.grad, ckpt.patch_embed.proj.weight.grad)


def test_rejects_partial_clips():
    with pytest.raises(ValueError, match="whole clips"):
        VideoEncoder(TINY)(_video(frames=6))


def test_load_swin2d_inflates_and_reports():
    enc = VideoEncoder(TINY)
    dims = TINY.dims
    swin = {"patch_embed.proj.weight": torch.randn(16, 3, 4, 4), "patch_embed.proj.bias": torch.randn(16),
            "head.weight": torch.randn(10, 64), "layers.0.blocks.0.attn.relative_position_bias_table":
            torch.randn(13 * 13, 1), "layers.2.blocks.1.mlp.fc1.weight": torch.randn(4 * dims[2], dims[2]),
            "layers.1.downsample.reduction.weight": torch.randn(2 * dims[1], 4 * dims[1])}
    report = enc.load_swin2d({"model": swin})
    assert set(report.unexpected) == {"head.weight"}
    assert set(report.adapted) == {"patch_embed.proj.weight", "layers.0.blocks.0.attn.relative_position_bias_table"}
    assert "layers.0.blocks.0.attn.qkv.weight" in report.missing
    assert enc.patch_embed.proj.weight.shape == (16, 3, 1, 8, 8)
    torch.testing.assert_close(enc.layers[2].blocks[1].mlp.fc1.weight, swin["layers.2.blocks.1.mlp.fc1.weight"])
    torch.testing.assert_close(enc.layers[1].downsample.reduction.weight, swin["layers.1.downsample.reduction.weight"])
    # A flat image gives the same patch response as the 2D 4×4 kernel on a flat patch.
    flat = swin["patch_embed.proj.weight"].sum((1, 2, 3))
    torch.testing.assert_close(enc.patch_embed.proj.weight.sum((1, 2, 3, 4)), flat, rtol=1e-4, atol=1e-4)
