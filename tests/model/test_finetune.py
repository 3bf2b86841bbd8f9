"""The paper's retrieval protocol: the sentence-merge rule and the whole-video frame spread
on hand cases, the step LR schedule, and end to end on retrieval shards written by our
shard writer (ActivityNet-format samples: task retrieval, split train/val1) from generated
videos: the loader, fine-tuning the tiny model from a checkpoint with validation and the
best model kept, and zero-shot evaluation with the JSON written and the paper's table."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lfvila_data.shards.write import ShardPlan, write_shard
from lfvila_model import cli
from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import load_config
from lfvila_model.data import (
    DataConfig,
    center_crop_box,
    crop_resize_normalize,
    make_loader,
    merge_sentences,
    spread_frames,
)
from lfvila_model.finetune import count_samples, step_lr_factor
from lfvila_model.sources import SyntheticSource
from lfvila_model.train import train
from tests.support.media import make_timecoded_video

# ----------------------------------------------------------------------------- pure rules


def test_merge_joins_the_adjacent_pair_shortest_in_characters_leftmost_on_ties():
    texts = ["a", "bb", "c", "dddd", "e"]  # pairs 3, 3, 5, 5: the first 3 wins the tie
    assert merge_sentences(texts, 4) == ["a bb", "c", "dddd", "e"]
    # then pairs 5, 5, 5 (leftmost again), then 10 vs 5
    assert merge_sentences(texts, 3) == ["a bb c", "dddd", "e"]
    assert merge_sentences(texts, 2) == ["a bb c", "dddd e"]
    assert merge_sentences(texts, 1) == ["a bb c dddd e"]  # Condensed Movies: one sentence
    # characters, not words: 6 short words + "x" (12) beat "x" + one long word (21)
    assert merge_sentences(["a b c d e f", "x", "supercalifragilistic"], 2) == \
        ["a b c d e f x", "supercalifragilistic"]
    assert merge_sentences(["one", "two"], 4) == ["one", "two"] and merge_sentences([], 4) == []


def test_frames_spread_over_the_whole_video():
    for n_frames in (1, 5, 12, 31, 32, 33, 94, 1000):  # eval: first to last, as numpy's linspace
        assert spread_frames(n_frames, 32, random.Random(0), train=False) == \
            list(np.linspace(0, n_frames - 1, 32).astype(int))
    starts, ends = set(), set()
    for seed in range(200):  # training: ends jittered within one interval (94 // 31 = 3 frames)
        idx = spread_frames(94, 32, random.Random(seed), train=True)
        assert len(idx) == 32 and idx == sorted(idx) and 0 <= idx[0] <= 3 and 90 <= idx[-1] <= 93
        starts.add(idx[0])
        ends.add(idx[-1])
    assert starts == {0, 1, 2, 3} and ends == {90, 91, 92, 93}
    assert spread_frames(3, 8, random.Random(1), train=True)[-1] <= 2


def test_step_schedule():
    # 1 warm-up epoch of 4 updates, x0.25 every 5 epochs (ActivityNet, DiDeMo, QuerYD)
    f = [step_lr_factor(s, 4, 4, 5, 0.25) for s in range(45)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and set(f[4:20]) == {1.0}
    assert set(f[20:40]) == {0.25} and f[40] == 0.0625
    # Condensed Movies: x0.5 every epoch
    assert [step_lr_factor(s, 4, 4, 1, 0.5) for s in (4, 7, 8, 12)] == [0.5, 0.5, 0.25, 0.125]


# ----------------------------------------------------------------------------- end to end

FPS = 3.0
SENTENCES = ["The screen turns red.", "Now everything is blue.", "A green picture fills the frame.",
             "We see a flickering yellow surface.", "The colour changes to purple.", "The screen turns white."]
# (video id, split, sentences): 4 to train on, 2 to validate, one of another split
VIDEOS = [("v_train0", "train", SENTENCES[:6]), ("v_train1", "train", SENTENCES[1:3]),
          ("v_train2", "train", SENTENCES[2:5]), ("v_train3", "train", SENTENCES[:4]),
          ("v_valA", "val1", SENTENCES[3:6]), ("v_valB", "val1", SENTENCES[:2]),
          ("v_val2", "val2", SENTENCES[4:])]


def _row(build: Path, video_id: str, split: str, sentences: list[str], duration: float) -> dict:
    """A manifest row of a benchmark sample (one video, its annotated segments as clips)."""
    step = duration / len(sentences)
    clips = [{"clip_id": f"{video_id}.{k + 1}.mp4", "start": k * step, "end": min(duration, (k + 1.5) * step),
              "text": s, "sentences": None} for k, s in enumerate(sentences)]
    path = build / "videos" / f"{video_id}.mp4"
    return {"key": f"{video_id}_00001_{len(clips):05d}", "video_id": video_id,
            "url": f"https://www.youtube.com/watch?v={video_id[2:]}", "source": "activitynet", "start": 0.0,
            "end": duration, "duration": duration, "fps": FPS, "width": 128, "height": 64,
            "frames": int(duration * FPS), "clips": clips, "text_source": "annotations", "language": None,
            "split": split, "_build": str(build), "video": f"videos/{video_id}.mp4", "bytes": path.stat().st_size}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, vocab_dir):
    """Retrieval shards (2 samples each) and a stage-1 checkpoint of the tiny model to start from."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "build" / "videos").mkdir(parents=True)
    rows = []
    for i, (vid, split, sentences) in enumerate(VIDEOS):
        duration = 4.0 + i % 2
        make_timecoded_video(root / "build" / "videos" / f"{vid}.mp4", duration, width=128, height=64, fps=FPS,
                             audio=False)
        rows.append(_row(root / "build", vid, split, sentences, duration))
    shards = root / "shards"
    plan = root / "plan.parquet"  # the rows where a shard plan keeps them (see ShardPlan)
    pq.write_table(pa.Table.from_pylist(rows), plan, row_group_size=2)
    for n in range(0, len(rows), 2):
        end = min(n + 2, len(rows))
        write_shard(ShardPlan("train", f"train-{n // 2:06d}.tar", ((str(plan), n, end),), end - n), str(shards))
    init_cfg = load_config("tiny", [f"checkpoint.dir={root}/pre", f"log.dir={root}/prelog", "log.tensorboard=false",
                                    "log.progress=false", "optim.max_steps=1", f"data.tokenizer={vocab_dir}"])
    train(init_cfg, SyntheticSource(init_cfg.model, batch_size=2))
    return root, shards, rows


def test_retrieval_samples_are_read_whole_with_merged_sentences(bench, tokenizer):
    _, shards, rows = bench
    cfg = DataConfig(sample_clips=2, frames_per_clip=4, size=(32, 64), max_tokens=12, batch_size=8,
                     num_workers=0, shuffle_buffer=1)
    loader = make_loader(str(shards / "*.tar"), cfg, train=False, tokenizer=tokenizer)
    batch = next(iter(loader))
    assert sorted(batch["key"]) == sorted(r["key"] for r in rows)
    assert batch["input_ids"].shape == (7, 4, 12) and batch["video"].shape == (7, 8, 3, 32, 64)
    at = {k: i for i, k in enumerate(batch["key"])}
    present = batch["attention_mask"][:, :, 0]
    assert present[at["v_train0_00001_00006"]].tolist() == [1, 1, 1, 1]  # 6 sentences merged to 4
    assert present[at["v_valB_00001_00002"]].tolist() == [1, 1, 0, 0]  # 2 sentences, 2 empty slots
    merged = merge_sentences(SENTENCES[:6], 4)
    want = tokenizer(merged, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(batch["input_ids"][at["v_train0_00001_00006"]], want["input_ids"])
    # the frames: 8 spread from the first to the last frame of the whole 5 s video
    import decord
    vr = decord.VideoReader(str(bench[0] / "build" / "videos" / "v_train1.mp4"))
    idx = list(np.linspace(0, len(vr) - 1, 8).astype(int))
    frames = torch.from_numpy(vr.get_batch(idx).asnumpy())
    expected = crop_resize_normalize(frames, center_crop_box(64, 128, 2.0), (32, 64), False)
    assert torch.allclose(batch["video"][at["v_train1_00001_00002"]], expected)

    only = make_loader(str(shards / "*.tar"), DataConfig(**{**cfg.__dict__, "split": "val1"}), train=False,
                       tokenizer=tokenizer)
    assert sorted(k for b in only for k in b["key"]) == ["v_valA_00001_00003", "v_valB_00001_00002"]
    assert only.dataset.counter.skipped_by_reason == {"other_split": 5}
    assert count_samples(sorted(str(p) for p in shards.glob("*.tar")), "train") == 4


def test_finetune_keeps_the_best_and_eval_writes_json(bench, vocab_dir, tmp_path, capsys):
    root, shards, _ = bench
    run = tmp_path / "run"
    rc = cli.main(["--config", "finetune_activitynet", "--init", str(root / "pre"),
                   "--train-shards", str(shards), "--val-shards", str(shards), "--device", "cpu",
                   f"data.tokenizer={vocab_dir}", "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4",
                   "optim.epochs=2", "optim.lr=1e-3", "finetune.lr_decay_epochs=1", "eval.every_steps=1",
                   f"checkpoint.dir={run}/ck", f"log.dir={run}/log", "log.tensorboard=false", "log.progress=false",
                   "log.every_steps=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fine-tuning from" in out and "paper (activitynet)" in out
    with open(run / "log" / "metrics.csv") as f:  # 4 train samples / batch 2: 2 updates an epoch
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == pytest.approx([5e-4, 1e-3, 2.5e-4, 2.5e-4])  # warm-up epoch, then x0.25 each epoch
    evals = [json.loads(line) for line in (run / "log" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2, 3, 4] and {e["num_samples"] for e in evals} == {2}
    r1 = [e["paragraph_to_video"]["R@1"] for e in evals]
    best = checkpoints(run / "ck" / "best")
    assert len(best) == 1 and best[0].name == f"step-{r1.index(max(r1)) + 1:08d}"  # the first best, strictly
    assert json.loads((best[0] / "eval.json").read_text())["paragraph_to_video"]["R@1"] == max(r1)
    # the best model re-scored: on its config's validation split (val1), not its training one
    assert cli.main(["eval", "--checkpoint", str(run / "ck" / "best"), "--val-shards", str(shards),
                     "--benchmark", "activitynet", "--device", "cpu"]) == 0
    again = json.loads((run / "ck" / "best" / "eval.json").read_text())
    assert again["num_samples"] == 2 and again["paragraph_to_video"]["R@1"] == max(r1)
    capsys.readouterr()

    # zero-shot: the pretrained checkpoint on the val1 samples, JSON written, table printed
    rc = cli.main(["eval", "--checkpoint", str(root / "pre"), "--val-shards", str(shards), "--split", "val1",
                   "--benchmark", "activitynet", "--output", str(tmp_path / "zs.json"), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((tmp_path / "zs.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["benchmark"] == "activitynet"
    assert set(metrics["video_to_paragraph"]) == {"R@1", "R@5", "R@10", "R@50", "median_rank", "mean_rank"}
    assert metrics["paper"] == {"paragraph_to_video": {"R@1": 35.3, "R@5": 65.4}}
    printed = capsys.readouterr()
    assert "paper (activitynet)" in printed.err and json.loads(printed.out)["num_samples"] == 2
    assert cli.main(["eval", "--checkpoint", str(root / "pre"), "--val-shards", str(shards),
                     "--benchmark", "imagenet"]) == 2
    common = ["--config", "finetune_didemo", "--train-shards", str(shards), f"data.tokenizer={vocab_dir}",
              f"checkpoint.dir={tmp_path}/bad/ck", f"log.dir={tmp_path}/bad/log", "log.tensorboard=false"]
    assert cli.main(common) == 2 and "needs --init" in capsys.readouterr().err
    assert cli.main([*common, "--init", str(tmp_path / "nothing")]) == 2
    assert cli.main([*common, "--init", str(root / "pre"), "data.batch_size=16"]) == 2  # 4 train samples
    assert "fewer than 16 training samples" in capsys.readouterr().err
    assert cli.main([*common, "--init", str(root / "pre"), "data.batch_size=2", "eval.benchmark=msrvtt",
                     "--val-shards", str(shards), "--device", "cpu"]) == 2
    assert "unknown eval.benchmark 'msrvtt'" in capsys.readouterr().err


def test_pretraining_evaluates_a_downstream_val_split(bench, vocab_dir, tmp_path):
    """eval.downstream_shards during stage 1 (the release evaluates ActivityNet val): every N
    updates and at the end, logged, no best model unless asked."""
    _, shards, _ = bench
    cfg = load_config("tiny", [f"checkpoint.dir={tmp_path}/ck", f"log.dir={tmp_path}/log", "log.tensorboard=false",
                               "log.progress=false", "optim.max_steps=3", f"data.tokenizer={vocab_dir}",
                               f"eval.downstream_shards={shards}/train-{{000000..000003}}.tar", "eval.split=val1",
                               "eval.every_steps=2"])
    train(cfg, SyntheticSource(cfg.model, batch_size=2))
    evals = [json.loads(line) for line in (tmp_path / "log" / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["num_samples"]) for e in evals] == [(2, 2), (3, 2)]
    assert not (tmp_path / "ck" / "best").exists()


def test_stage2_evaluates_downstream_with_its_stage1_model(bench, vocab_dir, tmp_path):
    root, shards, _ = bench
    cfg = load_config("tiny_stage2", [f"checkpoint.dir={tmp_path}/ck", f"log.dir={tmp_path}/log",
                                      "log.tensorboard=false", "log.progress=false", "optim.max_steps=1",
                                      f"data.tokenizer={vocab_dir}", f"stage2.stage1_checkpoint={root}/pre",
                                      f"eval.downstream_shards={shards}/train-{{000000..000003}}.tar",
                                      "eval.split=val1"])
    train(cfg, SyntheticSource(cfg.model, batch_size=2))
    evals = [json.loads(line) for line in (tmp_path / "log" / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["num_samples"]) for e in evals] == [(1, 2)]
