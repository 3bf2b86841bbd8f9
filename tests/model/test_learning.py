"""Learning works: the tiny model, trained on shards our own pipeline made from generated
videos whose content and text are linked (each clip is one flat colour and its sentence
names it), lowers its training loss and retrieves each sample's video from its paragraph
far above chance, while the same model untrained is at chance (so the link is learnt, not
leaked). Assertions are on the results, never on time."""
from __future__ import annotations

import csv

import pandas as pd
import pytest
import torch

from lfvila_data.demo import write_vocab
from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import load_config
from lfvila_model.eval import evaluate
from lfvila_model.sources import setup_data
from lfvila_model.train import load_model, setup_model, train

VIDEOS, CLIPS, SAMPLE_CLIPS = 6, 16, 4   # 6 x 16/4 = 24 samples of 4 clips
STEPS = 300   # 150 reached R@1 33%, 200: 71%, 300: 100% (seeds 0 and 1)
WINDOW = 10   # steps averaged at each end of the loss curve


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ray_module):
    """24 samples through build -> shard. Every sample starts with a two-colour window no
    other sample starts with (eval reads window 0), so none is indistinguishable; videos are
    small (160x120 generated, 96 px built) to keep decoding cheap."""
    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.demo import make_corpus
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.localserver import MediaServer
    from lfvila_data.media.cut import CutConfig
    from lfvila_data.media.fetch import FetchConfig
    from lfvila_data.media.task import TaskContext
    from lfvila_data.plan.join import PlanConfig
    from lfvila_data.shards.write import ShardConfig, run_shard

    root = tmp_path_factory.mktemp("learning")
    build = root / "build"
    with MediaServer(root / "www") as srv:
        meta, text = make_corpus(root, srv.url("").rstrip("/"), videos=VIDEOS, clips=CLIPS, seed=0,
                                 distinct_every=SAMPLE_CLIPS, size="160x120")
        run_build(BuildConfig(
            metadata=(str(meta),), text=(str(text),), output=str(build),
            plan=PlanConfig(min_clips=SAMPLE_CLIPS, max_clips=SAMPLE_CLIPS),
            task=TaskContext(output=str(build), fetch=FetchConfig(retries=2, backoff=0.1, height=96),
                             cut=CutConfig(height=96))))
    shards = root / "shards"
    run_shard([str(build)], str(shards), ShardConfig(val_count=0, samples_per_shard=4), write=RayTasks())
    paragraphs = pd.read_parquet(build / "manifest").paragraph.tolist()
    return {"shards": sorted(str(p) for p in shards.glob("*.tar")), "paragraphs": paragraphs,
            "tokenizer": write_vocab(root / "tokenizer", paragraphs), "root": root}


def p2v(model, cfg, shards) -> dict:
    """Paragraph -> video retrieval on every sample (eval: window 0, centre crop)."""
    return evaluate(model, setup_data(cfg, shards, train=False)(0, 1)(0, 0))


def test_tiny_model_learns_the_colour_text_link(corpus, tmp_path):
    n = len(corpus["paragraphs"])
    assert n == VIDEOS * CLIPS // SAMPLE_CLIPS
    cfg = load_config("demo", [
        f"data.tokenizer={corpus['tokenizer']}", f"optim.max_steps={STEPS}",
        f"checkpoint.dir={tmp_path}/ck", f"log.dir={tmp_path}/log", "log.every_steps=1",
        "log.tensorboard=false", "log.progress=false", "seed=0", "data.seed=0"])

    torch.manual_seed(cfg.seed)   # the initial weights train() starts from
    before = p2v(setup_model(cfg, torch.device("cpu")), cfg, corpus["shards"])
    train(cfg, setup_data(cfg, corpus["shards"]))
    model, _ = load_model(checkpoints(tmp_path / "ck")[-1])
    after = p2v(model, cfg, corpus["shards"])

    with open(tmp_path / "log" / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    first, last = sum(losses[:WINDOW]) / WINDOW, sum(losses[-WINDOW:]) / WINDOW
    chance = 100.0 / n
    r1_before, r1_after = before["paragraph_to_video"]["R@1"], after["paragraph_to_video"]["R@1"]
    summary = (f"loss {first:.3f} -> {last:.3f}; p->v R@1 untrained {r1_before:.1f}% trained "
               f"{r1_after:.1f}% (chance {chance:.1f}%, {n} samples); untrained {before}; trained {after}")
    print(summary)
    assert len(losses) == STEPS and before["num_samples"] == after["num_samples"] == n
    assert last < 0.7 * first, summary
    assert r1_before <= 3 * chance, summary            # untrained: no leak of the answer
    assert r1_after >= 4 * chance, summary             # trained: far above chance
    assert after["paragraph_to_video"]["median_rank"] < before["paragraph_to_video"]["median_rank"], summary
    assert after["video_to_paragraph"]["R@1"] >= 4 * chance, summary
