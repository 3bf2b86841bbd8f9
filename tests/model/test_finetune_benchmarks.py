"""The paper's protocol end to end on benchmarks the pipeline built, ActivityNet Captions
and DiDeMo: annotation files in their published formats and videos in --video-dir ->
`--source activitynet|didemo` build -> shards -> fine-tune the tiny model from a stage-1
checkpoint (`--config finetune_<benchmark>`) -> evaluate on the held-out split, JSON written
beside the paper's numbers for that benchmark."""
from __future__ import annotations

import json

import pytest

from lfvila_data.executor.threads import ThreadTasks
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


def captions(video: int, colours: tuple[str, ...]) -> dict:
    """An ActivityNet Captions entry (val_1.json / train.json shape): duration, segments, sentences."""
    return {"duration": 10.0, "timestamps": [[4.0 * k, 4.0 * k + 5.0] for k in range(len(colours))],
            "sentences": [f"The {c} part of video {video}." for c in colours]}


# train.json holds 4 videos, val_1.json 2: the val_1 videos are the held-out test split
ANET_TRAIN = {f"v_train{v}AAAA": captions(v, ("red", "green")) for v in range(4)}
ANET_VAL1 = {f"v_val{v}AAAAAA": captions(v, ("blue", "white")) for v in range(2)}
BUILDS = {
    "didemo": ({"train_data.json": json.dumps(TRAIN), "test_data.json": json.dumps(TEST)},
               {f"{v}@N00_1_a.mp4": 10 for v in ("11", "22", "33", "44", "55", "66")}),
    "activitynet": ({"train.json": json.dumps(ANET_TRAIN), "val_1.json": json.dumps(ANET_VAL1)},
                    {f"{vid}.mp4": 10 for vid in [*ANET_TRAIN, *ANET_VAL1]}),
}
PAPER = {"didemo": {"R@1": 35.0, "R@5": 64.5, "R@10": 75.8}, "activitynet": {"R@1": 35.3, "R@5": 65.4}}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def bench_shards(request, tmp_path_factory):
    """(benchmark, root, shards): the benchmark built from its annotation files and sharded."""
    root = tmp_path_factory.mktemp(f"{request.param}_ft")
    out, _ = benchmark_build(root, request.param, *BUILDS[request.param])
    shards = root / "shards"
    stats = run_shard([str(out)], str(shards), ShardConfig(val_count=0, samples_per_shard=2), write=ThreadTasks())
    assert stats["samples"] == 6
    assert verify_shards(str(shards), progress=lambda line: None).ok
    return request.param, root, shards


def test_benchmark_build_finetunes_and_scores_beside_the_paper(bench_shards, vocab_dir, tmp_path, capsys):
    benchmark, _root, shards = bench_shards
    pre = load_config("tiny", [f"checkpoint.dir={tmp_path}/pre", f"log.dir={tmp_path}/prelog",
                               "log.tensorboard=false", "log.progress=false", "optim.max_steps=1",
                               f"data.tokenizer={vocab_dir}"])
    train(pre, SyntheticSource(pre.model, batch_size=2))
    run = tmp_path / "run"
    rc = cli.main(["--config", f"finetune_{benchmark}", "--init", str(tmp_path / "pre"),
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
                   "--benchmark", benchmark, "--output", str(tmp_path / "scores.json"), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((tmp_path / "scores.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["benchmark"] == benchmark
    assert metrics["paper"]["paragraph_to_video"] == PAPER[benchmark]
    assert f"paper ({benchmark})" in capsys.readouterr().err
