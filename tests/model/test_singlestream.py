"""Stage 2 as released (stage2.arch=singlestream): the forward against a per-sample direct
computation (rolled negatives, MLM on the positive half, loss = mlm + 10·vtm), the video
tokens against the release's pooling, the release's stage-2 state-dict keys loaded by
XPRETRAIN_STAGE2_RULES, initialisation from BERT, a short run whose loss falls and resumes
exactly; and the paper config's optimiser: LR floor, no decay on position tables."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import ConfigError, load_config, model_config
from lfvila_model.eval import evaluate_stage2
from lfvila_model.losses import IGNORE_INDEX
from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILA, synthetic_batch
from lfvila_model.models.singlestream import (
    XPRETRAIN_STAGE2_RULES,
    LFVILASingleStream,
    SingleStreamEncoder,
    map_xpretrain_stage2,
    pool_frame_tokens,
    rolled_pairs,
    xpretrain_stage2_key,
)
from lfvila_model.objectives import Masker, MatchingObjective, setup_objective
from lfvila_model.sources import SyntheticSource
from lfvila_model.train import load_model, lr_factor, param_groups, setup_model, setup_optimizer, train
from tests.model.checks import resumed_params, tiny_with_saved_bert

SPECIAL = ["stage2.mask_token_id=4", "stage2.special_token_ids=[0, 1, 2, 3]"]


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)


# ----------------------------------------------------------------------------- pairs and tokens

def test_first_half_gets_videos_rolled_by_one():
    assert [t.tolist() for t in rolled_pairs(4)] == [[1, 0, 2, 3], [0, 0, 1, 1]]
    assert [t.tolist() for t in rolled_pairs(5)] == [[1, 0, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert [t.tolist() for t in rolled_pairs(6)] == [[2, 0, 1, 3, 4, 5], [0, 0, 0, 1, 1, 1]]
    assert [t.tolist() for t in rolled_pairs(2)] == [[1, 1], [0, 1]]  # never its own video
    for b in range(4, 50):  # the release's torch.roll(videos[:b // 2], 1, 0)
        videos = torch.arange(b)
        assert torch.equal(rolled_pairs(b)[0], torch.cat([torch.roll(videos[:b // 2], 1, 0), videos[b // 2:]]))


def test_video_tokens_pool_as_the_release():
    """The paper's last video layer is 32×3×5; the release max-pools each frame with
    MaxPool2d((2, 3), stride 1) to 2×3: 192 tokens."""
    paper = presets.paper()
    assert paper.video.token_grid(paper.num_frames, paper.frame_size) == (32, 3, 5)
    tokens = torch.randn(2, 32, 3, 5, 8)
    b, n, h, w, c = tokens.shape
    release = nn.MaxPool2d((2, 3), stride=(1, 1))(tokens.permute(0, 1, 4, 2, 3).reshape(b * n, c, h, w))
    release = release.permute(0, 2, 3, 1).reshape(b, n, -1, c)
    ours = pool_frame_tokens(tokens, paper.video.pool_grid)
    assert ours.shape == (2, 32, 6, 8) and torch.equal(ours, release)


# ----------------------------------------------------------------------------- forward and loss

def test_forward_and_loss_equal_a_per_sample_computation():
    cfg = presets.tiny()
    torch.manual_seed(0)
    model = LFVILASingleStream(cfg).eval()
    masker = Masker(4, (0, 1, 2, 3), cfg.text.bert["vocab_size"], probability=0.3)
    objective = MatchingObjective(masker, mlm_weight=1.0, vtm_weight=10.0)
    x = objective.inputs(synthetic_batch(cfg, 5, seed=3), torch.device("cpu"), 3)
    b, m, length = x["input_ids"].shape
    with torch.no_grad():
        out = model(**x)
        _, tokens, mask = model.stage1.text_encoder.paragraph_tokens(x["masked_ids"], x["attention_mask"])
        vid = model.fusion.video_tokens(model.stage1.video_encoder.features_and_tokens(x["video"])[1])
        assert vid.shape[1] == 8 * 1 * 2  # the tiny grid: 8 frames × 1×2 patches
        pairs = [1, 0, 2, 3, 4]  # texts 0, 1 get each other's video; 2-4 their own
        assert out["video_index"].tolist() == pairs and out["vtm_labels"].tolist() == [0, 0, 1, 1, 1]
        seqs, vtm = [], []
        for i, v in enumerate(pairs):
            seq, pooled = model.fusion(tokens[i:i + 1], mask[i:i + 1], vid[v:v + 1])
            seqs.append(seq[0])
            vtm.append(model.fusion.seq_relationship(pooled)[0])
        torch.testing.assert_close(out["vtm_logits"], torch.stack(vtm), rtol=1e-4, atol=1e-5)

        labels = torch.cat([torch.full((b, 1), IGNORE_INDEX), x["mlm_labels"].reshape(b, m * length)], 1)
        assert (labels[:2] != IGNORE_INDEX).any()  # the negative half had masked tokens too: not scored
        rows, cols = torch.nonzero(labels[2:] != IGNORE_INDEX, as_tuple=True)
        assert torch.equal(out["mlm_labels"], labels[2:][rows, cols])
        expected = torch.stack([model.fusion.cls(seqs[2 + r][c]) for r, c in zip(rows.tolist(), cols.tolist())])
        torch.testing.assert_close(out["mlm_logits"], expected, rtol=1e-4, atol=1e-5)

        loss = objective(model, {k: x[k] for k in ("video", "input_ids", "attention_mask")}, torch.device("cpu"), 3)
        mlm = -expected.log_softmax(-1)[torch.arange(len(rows)), out["mlm_labels"]].mean()
        vtm = -torch.stack(vtm).log_softmax(-1)[torch.arange(b), out["vtm_labels"]].mean()
        torch.testing.assert_close(loss["mlm"], mlm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss["vtm"], vtm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss["loss"], mlm + 10 * vtm, rtol=1e-4, atol=1e-5)
        assert out["video"].shape == out["paragraph"].shape == (b, cfg.video.proj_dim)


def test_eval_scores_the_rolled_pairs():
    cfg = presets.tiny()
    model = LFVILASingleStream(cfg)
    masker = Masker(4, (0, 1, 2, 3), cfg.text.bert["vocab_size"], probability=0.3)
    metrics = evaluate_stage2(model, [synthetic_batch(cfg, 4, seed=s) for s in range(2)], masker)
    s2 = metrics["stage2"]  # 2 batches of 4: 4 mismatched (rolled) and 4 matched pairs
    assert s2["vtm_matched_accuracy"] in {25.0 * k for k in range(5)}
    assert s2["vtm_mismatched_accuracy"] in {25.0 * k for k in range(5)}
    assert s2["vtm_accuracy"] == pytest.approx((s2["vtm_matched_accuracy"] + s2["vtm_mismatched_accuracy"]) / 2)
    assert s2["masked_tokens"] > 0 and model.training and metrics["paragraph_to_video"]


# ----------------------------------------------------------------------------- the release's weights

def release_stage2_keys(hidden: int, intermediate: int, vocab: int, frames: int, patches: int,
                        first: int = 12, layers: int = 12) -> dict[str, tuple[int, ...]]:
    """The stage-2 keys of the release's LFVILA_Pretrain state dict and their shapes (read from
    LF-VILA/src/models/lfvila_pretrain.py, text_encoder.py and bert.py): BERT layers 12-23 of
    text_encoder.bert.encoder, its pooler, the MLM head text_encoder.cls (decoder.bias is the
    same tensor as bias), text_encoder.seq_relationship and video_token_pos."""
    shapes: dict[str, tuple[int, ...]] = {}
    h, i = hidden, intermediate
    for n in range(first, first + layers):
        p = f"text_encoder.bert.encoder.layer.{n}."
        for lin in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + lin + ".weight"], shapes[p + lin + ".bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (i, h), (i,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, i), (h,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"], shapes[p + norm + ".bias"] = (h,), (h,)
    shapes |= {
        "text_encoder.bert.pooler.dense.weight": (h, h), "text_encoder.bert.pooler.dense.bias": (h,),
        "text_encoder.cls.predictions.bias": (vocab,),
        "text_encoder.cls.predictions.transform.dense.weight": (h, h),
        "text_encoder.cls.predictions.transform.dense.bias": (h,),
        "text_encoder.cls.predictions.transform.LayerNorm.weight": (h,),
        "text_encoder.cls.predictions.transform.LayerNorm.bias": (h,),
        "text_encoder.cls.predictions.decoder.weight": (vocab, h),
        "text_encoder.cls.predictions.decoder.bias": (vocab,),
        "text_encoder.seq_relationship.weight": (2, h), "text_encoder.seq_relationship.bias": (2,),
        "video_token_pos.s_pos_embed": (1, 1, patches, h), "video_token_pos.t_pos_embed": (1, frames, 1, h),
        "video_token_pos.norm.weight": (h,), "video_token_pos.norm.bias": (h,),
    }
    return shapes


def test_release_stage2_keys_map_onto_the_model_and_load_strictly():
    """At a tiny width (the last video layer as wide as BERT, as in the paper: no projection)
    with the release's 12 layers 12-23; the stage-1 keys around them are left to the converter."""
    tiny = presets.tiny(embed_dim=8)  # video dims 8, 16, 32 = the BERT width
    cfg = dataclasses.replace(tiny, cross=dataclasses.replace(tiny.cross, num_layers=12))
    model = LFVILASingleStream(cfg).eval()
    t, h, w = cfg.video.token_grid(cfg.num_frames, cfg.frame_size)
    bert = cfg.text.bert
    shapes = release_stage2_keys(bert["hidden_size"], bert["intermediate_size"], bert["vocab_size"], t,
                                 min(2, h) * min(3, w))
    g = torch.Generator().manual_seed(0)
    release = {k: torch.randn(s, generator=g).half() for k, s in shapes.items()}
    release["text_encoder.cls.predictions.decoder.bias"] = release["text_encoder.cls.predictions.bias"]
    stage1_keys = ["text_encoder.bert.encoder.layer.0.attention.self.query.weight", "video_encoder.norm.weight",
                   "text_encoder.bert.embeddings.word_embeddings.weight", "sent_embedding.norm.weight",
                   "video_local_proj.weight", "text_encoder.bert.encoder.layer.11.output.dense.bias"]
    assert all(xpretrain_stage2_key(k) is None for k in stage1_keys)
    assert all(xpretrain_stage2_key(k) is not None for k in release), \
        [k for k in release if xpretrain_stage2_key(k) is None]
    ours = {k: v.float() for k, v in map_xpretrain_stage2(release).items()}
    fusion = {k for k in model.state_dict() if not k.startswith("stage1.")}
    assert set(ours) == fusion, set(ours) ^ fusion
    state = {k: v for k, v in model.state_dict().items() if k.startswith("stage1.")} | ours
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.fusion.layer[0].attention.self.query.weight,
                               release["text_encoder.bert.encoder.layer.12.attention.self.query.weight"].float())
    torch.testing.assert_close(model.fusion.layer[11].output.LayerNorm.bias,
                               release["text_encoder.bert.encoder.layer.23.output.LayerNorm.bias"].float())
    x = MatchingObjective(Masker(4, (0, 1, 2, 3), bert["vocab_size"])).inputs(
        synthetic_batch(cfg, 4), torch.device("cpu"), 0)
    with torch.no_grad():
        assert torch.isfinite(model(**x)["vtm_logits"]).all()
    bad = dict(release, **{"text_encoder.cls.predictions.decoder.bias": torch.zeros(bert["vocab_size"])})
    with pytest.raises(ValueError, match="fusion.cls.predictions.bias"):
        map_xpretrain_stage2(bad)
    assert len(XPRETRAIN_STAGE2_RULES) == 12 + 5


def test_release_stage2_shapes_at_the_paper_size():
    """The paper-size fusion encoder (built without memory, on the meta device) has exactly
    the shapes of the release's stage-2 keys: BERT-large, 32 frames × 6 patches."""
    from transformers import BertConfig

    paper = presets.paper()
    with torch.device("meta"):
        fusion = SingleStreamEncoder(paper.cross, BertConfig(**paper.text.bert), paper.video.dims[-1],
                                     paper.video.token_grid(paper.num_frames, paper.frame_size), paper.video.pool_grid)
    ours = {f"fusion.{k}": tuple(v.shape) for k, v in fusion.state_dict().items()}
    release = {xpretrain_stage2_key(k): s for k, s in release_stage2_keys(1024, 4096, 30522, 32, 6).items()}
    assert release == ours


def test_fusion_starts_from_bert_after_the_stage1_layers(tmp_path):
    from transformers import BertForPreTraining

    cfg, bert, used = tiny_with_saved_bert(tmp_path, BertForPreTraining)
    model = LFVILASingleStream(cfg)
    for i in range(2):
        theirs = bert.bert.encoder.layer[used + i].state_dict()
        assert all(torch.equal(model.fusion.layer[i].state_dict()[k], v) for k, v in theirs.items())
    assert torch.equal(model.fusion.pooler.dense.weight, bert.bert.pooler.dense.weight)
    ours, head = model.fusion.cls.predictions, bert.cls.predictions
    assert torch.equal(ours.transform.dense.weight, head.transform.dense.weight)
    assert torch.equal(ours.decoder.weight, head.decoder.weight) and torch.equal(ours.bias, head.bias)
    assert not torch.equal(model.fusion.seq_relationship.weight, bert.cls.seq_relationship.weight)


# ----------------------------------------------------------------------------- training

def _cfg(tmp: Path, name: str, config: str, *overrides: str):
    return load_config(config, [f"checkpoint.dir={tmp}/{name}/ck", f"log.dir={tmp}/{name}/log",
                                "log.tensorboard=false", "log.progress=false", *overrides])


def test_singlestream_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    """12 steps on one fixed batch (random data has no video-text pairing to learn): the loss
    falls (seeds 0/1/2: the mean of the last 3 steps ~5.9/6.0/5.8 from ~11.7)."""
    s1 = _cfg(tmp_path, "s1", "tiny", "optim.max_steps=1")
    train(s1, SyntheticSource(s1.model, batch_size=4, seed=1))
    over = [f"stage2.stage1_checkpoint={s1.checkpoint.dir}", *SPECIAL, "optim.max_steps=12", "optim.lr=1e-2",
            "checkpoint.every_steps=6", "checkpoint.keep=0", "optim.steps_per_epoch=null"]
    a = _cfg(tmp_path, "a", "tiny_stage2", *over)
    assert a.stage2.arch == "singlestream" and setup_objective(a).loss_fn.vtm_weight == 10.0
    batch = synthetic_batch(model_config(a.model), 4, seed=2)

    def source(rank, world):  # every step a new epoch of the same one batch
        return lambda epoch, skip, position=None: iter([batch])

    train(a, source)
    final = params(Path(a.checkpoint.dir) / "step-00000012")
    stage1 = params(checkpoints(s1.checkpoint.dir)[-1])
    assert all(torch.equal(final[f"stage1.{k}"], v) for k, v in stage1.items())
    with open(Path(a.log.dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["mlm"]) + 10 * float(r["vtm"]), rel=1e-5)
    loss = [float(r["loss"]) for r in rows]
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    print(f"single-stream stage-2 loss, mean of the first and last 3 of {len(loss)} steps: {first:.3f} -> {last:.3f}")
    assert len(loss) == 12 and last < first - 3.0, loss

    resumed = resumed_params(_cfg(tmp_path, "b", "tiny_stage2", *over), source, a.checkpoint.dir, 6)
    assert max((final[k] - resumed[k]).abs().max().item() for k in final) <= 1e-6
    model, cfg = load_model(a.checkpoint.dir)
    assert isinstance(model, LFVILASingleStream) and cfg.stage2.arch == "singlestream"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())


# ----------------------------------------------------------------------------- optimiser and config

def test_position_tables_are_not_decayed():
    model = LFVILASingleStream(presets.tiny())
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in param_groups(model, 0.05))
    assert {"fusion.video_token_pos.s_pos_embed", "fusion.video_token_pos.t_pos_embed"} <= no_decay
    stage1 = LFVILA(presets.tiny())
    names = {id(p): n for n, p in stage1.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in param_groups(stage1, 0.05))
    tables = {n for n in names.values() if n.endswith("relative_position_bias_table")}
    assert len(tables) == 6 and tables <= no_decay and not tables & decay
    assert "video_encoder.layers.0.blocks.0.attn.qkv.weight" in decay


def test_lr_decays_to_the_floor():
    assert [lr_factor(s, 2, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]  # floor 0: as before
    assert [lr_factor(s, 2, 6, 0.2) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    optim = dataclasses.replace(load_config("tiny").optim, max_steps=6, warmup_steps=2, min_lr_ratio=0.01)
    opt, sched = setup_optimizer(nn.Linear(2, 2), optim)
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * optim.lr)


def test_paper_config_is_the_release_and_arch_errors_are_one_line():
    paper = load_config("paper")
    assert paper.optim.min_lr_ratio == 0.01 and model_config(paper.model).video.drop_path == 0.2
    assert paper.stage2.arch == "singlestream" and paper.stage2.resolved_vtm_weight == 10.0
    assert paper.data.batch_size == 16 and load_config("paper", ["stage=2"]).data.batch_size == 48
    assert load_config("tiny").optim.min_lr_ratio == 0.0
    assert load_config("tiny_stage2", ["stage2.arch=crossattn"]).stage2.resolved_vtm_weight == 1.0
    assert isinstance(setup_model(load_config("tiny_stage2"), torch.device("cpu")), LFVILASingleStream)
    with pytest.raises(ConfigError, match="stage2.arch must be singlestream or crossattn, not 'dual'"):
        load_config("tiny_stage2", ["stage2.arch=dual"])
    with pytest.raises(ConfigError, match="negatives applies to arch crossattn only"):
        load_config("tiny_stage2", ["stage2.negatives=hard"])
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        load_config("tiny", ["optim.min_lr_ratio=2"])
