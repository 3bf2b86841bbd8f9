"""The paper's protocol end to end on a benchmark the pipeline built: DiDeMo annotation
files (train and test) and Flickr-named videos in --video-dir -> `--source didemo` build ->
shards -> fine-tune the tiny model from a stage-1 checkpoint (`--config finetune_didemo`)
-> evaluate on the test split, JSON written beside the paper's DiDeMo numbers."""
from __future__ import annotations

import json

import pytest

from lfvila_data.executor.pool import RayTasks
from lfvila_data.shards.verify import verify_shards
from lfvila_data.shards.write import ShardConfig, run_shard
from lfvila_model import cli
from lfvila_model.checkpoint import checkpoints
from lfvila_model.config import load_config
from lfvila_model.sources import SyntheticSource
from lfvila_model.train import train
from tests.support.benchbuild import benchmark_build


def moment(video: str, description: str, segment: int) -> dict:
    return {"video": video, "description": description, "times": [[segment, segment]] * 3,
            "annotation_id": 1, "num_segments": 6}


TRAIN = [moment(f"{v}@N00_1_a.mov", f"the {c} part of video {v}", s)
         for v in ("11", "22", "33", "44") for s, c in enumerate(("red", "green"))]
TEST = [moment(f"{v}@N00_1_a.mov", f"the {c} part of video {v}", s)
        for v in ("55", "66") for s, c in enumerate(("blue", "white"))]


@pytest.fixture(scope="module")
def didemo_shards(tmp_path_factory, ray_module):
    root = tmp_path_factory.mktemp("didemo_ft")
    out, _ = benchmark_build(root, "didemo", {"train_data.json": json.dumps(TRAIN),
                                              "test_data.json": json.dumps(TEST)},
                             {f"{v}@N00_1_a.mp4": 10 for v in ("11", "22", "33", "44", "55", "66")})
    shards = root / "shards"
    stats = run_shard([str(out)], str(shards), ShardConfig(val_count=0, samples_per_shard=2), write=RayTasks())
    assert stats["samples"] == 6
    assert verify_shards(str(shards), progress=lambda line: None).ok
    return root, shards


def test_didemo_build_finetunes_and_scores_beside_the_paper(didemo_shards, vocab_dir, tmp_path, capsys):
    root, shards = didemo_shards
    pre = load_config("tiny", [f"checkpoint.dir={tmp_path}/pre", f"log.dir={tmp_path}/prelog",
                               "log.tensorboard=false", "log.progress=false", "optim.max_steps=1",
                               f"data.tokenizer={vocab_dir}"])
    train(pre, SyntheticSource(pre.model, batch_size=2))
    run = tmp_path / "run"
    rc = cli.main(["--config", "finetune_didemo", "--init", str(tmp_path / "pre"),
                   "--train-shards", str(shards), "--val-shards", str(shards), "--device", "cpu",
                   f"data.tokenizer={vocab_dir}", "data.batch_size=2", "data.num_workers=0",
                   "data.shuffle_buffer=4", "optim.epochs=1", "eval.every_steps=1",
                   f"checkpoint.dir={run}/ck", f"log.dir={run}/log", "log.tensorboard=false",
                   "log.progress=false", "log.every_steps=1"])
    assert rc == 0, capsys.readouterr().err
    # 4 train videos / batch 2: 2 updates, each scored on the 2 test videos
    evals = [json.loads(line) for line in (run / "log" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2] and {e["num_samples"] for e in evals} == {2}
    assert len(checkpoints(run / "ck" / "best")) == 1
    capsys.readouterr()

    rc = cli.main(["eval", "--checkpoint", str(run / "ck" / "best"), "--val-shards", str(shards),
                   "--benchmark", "didemo", "--output", str(tmp_path / "didemo.json"), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((tmp_path / "didemo.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["benchmark"] == "didemo"
    assert metrics["paper"]["paragraph_to_video"] == {"R@1": 35.0, "R@5": 64.5, "R@10": 75.8}
    assert "paper (didemo)" in capsys.readouterr().err
