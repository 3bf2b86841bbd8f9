import torch

from lfvila_model.losses import LFVILALoss
from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILA, synthetic_batch


def test_forward_shapes():
    cfg = presets.tiny()
    model = LFVILA(cfg).eval()
    with torch.no_grad():
        out = model(**synthetic_batch(cfg, 2))
    assert out["clip"].shape == out["sentence"].shape == (2, cfg.num_clips, 32)
    assert out["video"].shape == out["paragraph"].shape == (2, 32)


def test_paper_preset_numbers():
    cfg = presets.paper()
    assert cfg.video.dims[-1] == 1024 and cfg.video.resolved_clip_layer == 2
    assert cfg.num_frames == 32 and cfg.frame_size == (192, 320)
    assert cfg.text.bert["hidden_size"] == 1024 and cfg.text.split + cfg.text.paragraph_layers == 12


def test_loss_decreases_on_a_fixed_batch():
    cfg = presets.tiny()
    model = LFVILA(cfg)
    batch = synthetic_batch(cfg, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)
    criterion = LFVILALoss()
    losses = []
    for _ in range(20):
        out = criterion(model(**batch), generator=torch.Generator().manual_seed(0))  # fixed MTC draws
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-5:]) < 0.8 * losses[0], losses
