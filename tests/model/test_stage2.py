"""Stage 2 with stage2.arch=crossattn (ours; singlestream: test_singlestream.py): BERT masking, video-text matching negatives, the cross-modal forward and losses
against direct computations, frozen stage-1 parts, resume, initialisation from a BERT
checkpoint, a short run on real shards with eval (CLI), and 2 Ray Train workers (DDP with
frozen parameters) whose saved data positions replay each rank's stream."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lfvila_model import cli
from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import ConfigError, load_config
from lfvila_model.losses import IGNORE_INDEX, MatchingLoss, vtm_labels
from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILAStage2, pick_negatives, synthetic_batch
from lfvila_model.objectives import Masker, MatchingObjective, mask_tokens
from lfvila_model.ray_train import train_ray
from lfvila_model.sources import SyntheticSource, setup_data
from lfvila_model.train import load_model, setup_model, setup_optimizer, train
from tests.model.checks import assert_retrieval_consistent, resumed_params, tiny_with_saved_bert
from tests.model.recording import RecordKeys, recorded

SPECIAL = {"mask_token_id": 4, "special_token_ids": [0, 1, 2, 3]}  # the test vocabulary's, and synthetic_batch's


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)


# ----------------------------------------------------------------------------- masking

def _token_batch(n=400, m=2, length=12, vocab=31, seed=0):
    """[CLS]=2 words [SEP]=3 then [PAD]=0, random lengths; words drawn from 5..vocab-1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, m, length), generator=g)
    lengths = torch.randint(3, length + 1, (n, m), generator=g)
    pos = torch.arange(length)
    mask = (pos < lengths[..., None]).long()
    ids[..., 0] = 2
    ids = torch.where(pos == lengths[..., None] - 1, torch.full_like(ids, 3), ids)
    return ids * mask, mask


def test_masking_follows_bert_rule_and_never_touches_specials():
    ids, mask = _token_batch()
    masker = Masker(mask_id=4, special_ids=(0, 1, 2, 3), vocab_size=31)
    masked, labels = mask_tokens(ids, mask, masker, torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor([0, 1, 2, 3])) | (mask == 0)
    eligible = ~special
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
    rate = selected.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.02, rate
    n = selected.sum().item()
    to_mask = (masked[selected] == 4).float().mean().item()
    kept = (masked[selected] == ids[selected]).float().mean().item()
    other = 1 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.05 and abs(kept - 0.1 * (1 + 1 / 26)) < 0.04 and abs(other - 0.1 * 25 / 26) < 0.04, \
        (n, to_mask, kept, other)
    replaced = selected & (masked != 4) & (masked != ids)
    assert replaced.any() and not torch.isin(masked[replaced], torch.tensor([0, 1, 2, 3, 4])).any()
    assert masked[replaced].max() < 31
    again = mask_tokens(ids, mask, masker, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(mask_tokens(ids, mask, masker, torch.Generator().manual_seed(2))[1], labels)


def test_masker_from_the_tokenizer(tokenizer):
    m = Masker.from_tokenizer(tokenizer, vocab_size=128)
    assert m.mask_id == 4 and set(m.special_ids) == {0, 1, 2, 3, 4} and m.vocab_size == len(tokenizer)
    with pytest.raises(ValueError):
        Masker(4, (0,), 31, probability=0.0)


# ----------------------------------------------------------------------------- negatives

def test_negatives_on_hand_built_cases():
    uniform = torch.ones(3, 3)
    assert pick_negatives(uniform, torch.tensor([0.1, 0.9, 0.6])).tolist() == [1, 2, 1]
    assert pick_negatives(uniform, torch.tensor([0.6, 0.2, 0.0])).tolist() == [2, 0, 0]
    peaked = torch.tensor([[100.0, 1, 0], [0, 100, 3], [5, 0, 100]])  # the diagonal never counts
    for u in torch.rand(20, 3):
        assert pick_negatives(peaked, u).tolist() == [1, 2, 0]
    draws = pick_negatives(torch.ones(4, 4).expand(4, 4), torch.rand(4)).tolist()
    assert all(d != i for i, d in enumerate(draws))
    many = torch.stack([pick_negatives(torch.ones(4, 4), torch.rand(4)) for _ in range(2000)])
    counts = torch.stack([(many == j).sum(0) for j in range(4)])  # counts[j, i]: row i drew j
    assert (counts.diagonal() == 0).all() and counts.sum(0).tolist() == [2000] * 4
    off = counts[~torch.eye(4, dtype=torch.bool)].float()
    assert (off / 2000 - 1 / 3).abs().max() < 0.05
    with pytest.raises(ValueError, match="at least 2"):
        pick_negatives(torch.ones(1, 1), torch.rand(1))
    assert vtm_labels(2).tolist() == [1, 1, 0, 0, 0, 0]


# ----------------------------------------------------------------------------- forward and losses

def _inputs(cfg, b=3, seed=0):
    batch = synthetic_batch(cfg, b, seed=seed)
    masker = Masker(4, (0, 1, 2, 3), cfg.text.bert["vocab_size"], probability=0.3)
    return MatchingObjective(masker).inputs(batch, torch.device("cpu"), seed)


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_forward_and_losses_equal_a_direct_computation(negatives):
    cfg = presets.tiny()
    torch.manual_seed(0)
    model = LFVILAStage2(cfg, negatives=negatives).eval()
    x = _inputs(cfg)
    b, m, length = x["input_ids"].shape
    with torch.no_grad():
        out = model(**x)
        text = model.stage1.text_encoder
        _, tokens, mask = text.paragraph_tokens(x["input_ids"], x["attention_mask"])
        _, masked_tokens, _ = text.paragraph_tokens(x["masked_ids"], x["attention_mask"])
        vid = model.cross.video_tokens(model.stage1.video_encoder.features_and_tokens(x["video"])[1])

        def fused_cls(t, v):
            return model.vtm_head(model.cross(tokens[t:t + 1], mask[t:t + 1], vid[v:v + 1])[:, 0])[0]

        nv, nt = out["neg_video"], out["neg_text"]
        if negatives == "hard":
            sim = out["paragraph"] @ out["video"].T / 0.05
            assert torch.equal(nv, pick_negatives(sim.softmax(1), x["neg_draws"][:, 0]))
            assert torch.equal(nt, pick_negatives(sim.T.softmax(1), x["neg_draws"][:, 1]))
        assert all(nv[i] != i and nt[i] != i for i in range(b))
        pairs = [(i, i) for i in range(b)] + [(i, int(nv[i])) for i in range(b)] + [(int(nt[i]), i) for i in range(b)]
        expected = torch.stack([fused_cls(t, v) for t, v in pairs])
        torch.testing.assert_close(out["vtm_logits"], expected, rtol=1e-4, atol=1e-5)

        labels = torch.cat([torch.full((b, 1), IGNORE_INDEX), x["mlm_labels"].reshape(b, m * length)], 1)
        where = labels != IGNORE_INDEX
        assert where.sum() > 0 and torch.equal(out["mlm_labels"], labels[where])
        fused = model.cross(masked_tokens, mask, vid)[where]
        word = model.stage1.text_encoder.bert.embeddings.word_embeddings.weight  # tied, as BERT's decoder
        expected_mlm = model.mlm_transform(fused) @ word.T + model.mlm_bias
        torch.testing.assert_close(out["mlm_logits"], expected_mlm, rtol=1e-4, atol=1e-5)

        loss = MatchingLoss(mlm_weight=1.0, vtm_weight=0.5)(out)
        targets = out["mlm_labels"]
        mlm = -out["mlm_logits"].log_softmax(-1)[torch.arange(len(targets)), targets].mean()
        vtm_t = torch.tensor([1] * b + [0] * 2 * b)
        vtm = -out["vtm_logits"].log_softmax(-1)[torch.arange(3 * b), vtm_t].mean()
        torch.testing.assert_close(loss["mlm"], mlm)
        torch.testing.assert_close(loss["vtm"], vtm)
        torch.testing.assert_close(loss["loss"], mlm + 0.5 * vtm)
        assert loss["mlm_acc"] == (out["mlm_logits"].argmax(-1) == targets).float().mean()
        assert loss["vtm_acc"] == (out["vtm_logits"].argmax(-1) == vtm_t).float().mean()
        word.add_(1.0)  # the decoder weight is the embedding itself
        assert not torch.allclose(model.mlm_logits(fused), expected_mlm)


def test_stage1_part_stays_frozen_and_in_eval_mode():
    cfg = dataclasses.replace(presets.tiny(), text=dataclasses.replace(
        presets.tiny().text, bert={**presets.tiny().text.bert, "hidden_dropout_prob": 0.5}))
    model = LFVILAStage2(cfg).train()
    assert model.training and not model.stage1.training and not any(m.training for m in model.stage1.modules())
    assert not any(p.requires_grad for p in model.stage1.parameters())
    x = _inputs(cfg)
    a, b = model(**x), model(**x)  # dropout off in the stage-1 part: same features twice
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["paragraph"], b["paragraph"])
    opt, _ = setup_optimizer(model, load_config("tiny").optim)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert not in_opt & {id(p) for p in model.stage1.parameters()}


def test_cross_layers_start_from_bert_layers_after_the_stage1_ones(tmp_path):
    from transformers import BertForMaskedLM

    cfg, bert, used = tiny_with_saved_bert(tmp_path, BertForMaskedLM)
    model = LFVILAStage2(cfg)
    for i in range(2):
        ours, theirs = model.cross.layers[i], bert.bert.encoder.layer[used + i]
        for name, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0)
    theirs = bert.bert.encoder.layer[used].attention.self.query.weight
    assert not torch.equal(model.cross.layers[0].crossattention.self.query.weight, theirs)
    torch.testing.assert_close(model.mlm_transform.dense.weight, bert.cls.predictions.transform.dense.weight)
    torch.testing.assert_close(model.mlm_bias, bert.cls.predictions.bias)


# ----------------------------------------------------------------------------- training

def _cfg(tmp: Path, name: str, config: str = "tiny", *overrides: str):
    return load_config(config, [f"checkpoint.dir={tmp}/{name}/ck", f"log.dir={tmp}/{name}/log",
                                "log.tensorboard=false", "log.progress=false", *overrides])


def test_stage2_freezes_stage1_trains_the_rest_and_resumes_exactly(tmp_path):
    s1 = _cfg(tmp_path, "s1", "tiny", "optim.max_steps=2")
    train(s1, SyntheticSource(s1.model, batch_size=4, seed=1))
    stage1 = params(checkpoints(s1.checkpoint.dir)[-1])
    over = [f"stage2.stage1_checkpoint={s1.checkpoint.dir}", f"stage2.mask_token_id={SPECIAL['mask_token_id']}",
            f"stage2.special_token_ids={SPECIAL['special_token_ids']}", "optim.max_steps=4",
            "checkpoint.every_steps=2", "checkpoint.keep=0", "optim.grad_accum=2", "stage2.negatives=hard",
            "stage2.arch=crossattn"]
    a = _cfg(tmp_path, "a", "tiny_stage2", *over)
    source = SyntheticSource(a.model, batch_size=3, batches_per_epoch=5, seed=2)
    torch.manual_seed(a.seed)
    init = setup_model(a, torch.device("cpu")).state_dict()  # what train() starts the new parts from
    train(a, source)
    final = params(Path(a.checkpoint.dir) / "step-00000004")
    frozen = {k: v for k, v in final.items() if k.startswith("stage1.")}
    assert {k.removeprefix("stage1.") for k in frozen} == set(stage1)
    assert all(torch.equal(frozen[f"stage1.{k}"], v) for k, v in stage1.items())  # bit for bit
    trainable = [k for k in final if not k.startswith("stage1.")]
    assert any(k.startswith("cross.layers.0.crossattention") for k in trainable) and "vtm_head.weight" in trainable
    changed = [k for k in trainable if not torch.equal(final[k], init[k])]
    assert set(changed) == set(trainable), set(trainable) - set(changed)
    with open(Path(a.log.dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ["step", "epoch", "samples", "loss", "mlm", "vtm", "mlm_acc", "vtm_acc"]
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["mlm"]) + float(r["vtm"]), rel=1e-5)

    resumed = resumed_params(_cfg(tmp_path, "b", "tiny_stage2", *over), source, a.checkpoint.dir, 2)
    assert max((final[k] - resumed[k]).abs().max().item() for k in final) <= 1e-6
    model, cfg = load_model(a.checkpoint.dir)
    assert isinstance(model, LFVILAStage2) and cfg.stage == 2 and not model.training
    assert model.state_dict().keys() == final.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())  # the step-4 weights, all of them

    saved = Path(a.checkpoint.dir) / "step-00000004" / "trainer.json"  # as saved before stage2.arch existed
    meta = json.loads(saved.read_text())
    del meta["config"]["stage2"]["arch"], meta["config"]["stage2"]["batch_size"]
    saved.write_text(json.dumps(meta))
    assert isinstance(load_model(a.checkpoint.dir)[0], LFVILAStage2)
    with pytest.raises(ConfigError, match="trained stage2.arch=crossattn; resume it with stage2.arch=crossattn"):
        train(_cfg(tmp_path, "a", "tiny_stage2", *[o for o in over if "arch" not in o and "negatives" not in o]),
              source, resume=True)

    with pytest.raises(ConfigError, match="stage-2 checkpoint"):  # stage 2 starts from stage 1 only
        train(_cfg(tmp_path, "c", "tiny_stage2", *over, f"stage2.stage1_checkpoint={a.checkpoint.dir}"), source)
    with pytest.raises(ConfigError, match="stage-1 checkpoint and this is stage 2"):
        train(_cfg(tmp_path, "s1", "tiny_stage2", *over), source, resume=True)
    with pytest.raises(ConfigError, match="stage1_checkpoint"):
        train(_cfg(tmp_path, "d", "tiny_stage2", "stage2.mask_token_id=4"), source)


def test_stage2_on_shards_mlm_falls_and_eval_reports_accuracy(shards, vocab_dir, tmp_path, capsys):
    """A stage-1 checkpoint trained on the shards, then `lfvila-train --stage1-checkpoint` for 30
    steps on the train shards and its eval on the val shards. The MLM decoder is tied to the
    frozen, barely trained word embeddings of the tiny stage-1 model, so its logits move
    mostly through the output bias, at most ~lr per AdamW step: hence lr 0.1 (seeds 0/1: the
    mean of the last 5 steps 0.8/1.1 below the first 5)."""
    common = [f"data.tokenizer={vocab_dir}", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=2",
              "log.tensorboard=false", "log.progress=false"]
    shard_dir = str(Path(shards[0]).parent)
    assert cli.main(["--train-shards", shard_dir, "--config", "tiny", f"checkpoint.dir={tmp_path}/s1",
                     f"log.dir={tmp_path}/s1log", "optim.max_steps=2", *common]) == 0
    rc = cli.main(["--train-shards", shard_dir, "--val-shards", shard_dir, "--config", "tiny",
                   "--stage1-checkpoint", f"{tmp_path}/s1", f"checkpoint.dir={tmp_path}/s2",
                   f"log.dir={tmp_path}/s2log", "optim.max_steps=30", "optim.lr=0.1", "optim.steps_per_epoch=null",
                   "stage2.arch=crossattn", *common])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(mlm " in out and "vtm_acc" in out
    with open(tmp_path / "s2log" / "metrics.csv") as f:
        mlm = [float(r["mlm"]) for r in csv.DictReader(f)]
    first, last = sum(mlm[:5]) / 5, sum(mlm[-5:]) / 5
    print(f"stage-2 MLM loss, mean of the first and last 5 of {len(mlm)} steps: {first:.3f} -> {last:.3f}")
    assert len(mlm) == 30 and last < first - 0.4, mlm
    metrics = json.loads(out[out.index("{"):])
    s2 = metrics["stage2"]
    print("stage-2 eval on val:", s2)
    assert metrics["num_samples"] == 2 and s2["masked_tokens"] > 0 and s2["vtm_loss"] > 0 and s2["mlm_loss"] > 0
    # counts behind the percentages: correct masked tokens out of masked_tokens; one batch of the
    # 2 val samples, so 2 matched and 4 mismatched pairs
    assert round(s2["mlm_accuracy"] * s2["masked_tokens"] / 100, 6).is_integer()
    assert s2["vtm_matched_accuracy"] in (0.0, 50.0, 100.0)
    assert s2["vtm_mismatched_accuracy"] in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert s2["vtm_accuracy"] == pytest.approx((s2["vtm_matched_accuracy"] + 2 * s2["vtm_mismatched_accuracy"]) / 3)
    for direction in ("paragraph_to_video", "video_to_paragraph"):
        assert_retrieval_consistent(metrics[direction], n=2)


def test_stage2_on_two_ray_workers_and_their_data_positions(shards, vocab_dir, tmp_path, ray_local):
    """Stage 2 under Ray Train DDP (2 gloo workers, frozen stage-1 parameters outside DDP's
    buckets) on shards, each worker with a DataLoader worker. The data positions the run
    saved at step 2 continue each rank's stream exactly where the run went on."""
    common = [f"data.tokenizer={vocab_dir}", "data.batch_size=2", "data.shuffle_buffer=2", "data.resample=true",
              "optim.steps_per_epoch=null"]
    s1 = _cfg(tmp_path, "s1", "tiny", "optim.max_steps=1", *common, "data.num_workers=0")
    train(s1, SyntheticSource(s1.model, batch_size=2))
    cfg = _cfg(tmp_path, "ray", "tiny_stage2", *common, "data.num_workers=1", "optim.max_steps=4",
               "checkpoint.every_steps=2", "checkpoint.keep=0", f"stage2.stage1_checkpoint={s1.checkpoint.dir}",
               "stage2.arch=crossattn")
    train_shards = [s for s in shards if "/train-" in s]
    keys = tmp_path / "keys"
    last = train_ray(cfg, RecordKeys(setup_data(cfg, train_shards), str(keys)), num_workers=2)
    assert last["step"] == 4 and last["samples"] == 16 and {"mlm", "vtm", "mlm_acc"} <= set(last)
    final = params(Path(cfg.checkpoint.dir) / "step-00000004")
    stage1 = params(checkpoints(s1.checkpoint.dir)[-1])
    assert all(torch.equal(final[f"stage1.{k}"], v) for k, v in stage1.items())
    at2 = Path(cfg.checkpoint.dir) / "step-00000002"
    assert not torch.equal(params(at2)["cross.layers.0.crossattention.self.query.weight"],
                           final["cross.layers.0.crossattention.self.query.weight"])
    saved = json.loads((at2 / "data_position.json").read_text())
    assert len(saved["positions"]) == 2
    source = setup_data(cfg, train_shards)
    for rank in range(2):
        seen = [line.split()[1:] for line in recorded(keys, rank)]
        assert len(seen) == 4
        replay = source(rank, 2)(0, 2, saved["positions"][rank])
        assert [b["key"] for _, b in zip(range(2), replay)] == seen[2:], rank
    assert recorded(keys, 0) != recorded(keys, 1)  # the ranks read different streams
