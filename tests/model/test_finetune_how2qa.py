"""Multiple-choice QA fine-tuning (lfvila_model.qa) on the stage-2 model: the head and loss
on hand cases, and end to end on How2QA: a hand-written fixture in the VALUE release's
layout read and planned by `--source how2qa`'s own code -> shards by our shard writer
(the Ray build of the same source is tests/data/sources/test_source_how2qa.py) -> verify ->
fine-tune the tiny model from a tiny stage-2 checkpoint (`--config finetune_how2qa`) ->
accuracy as JSON beside the paper's result, the best checkpoint kept and reloaded."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lfvila_data.shards.verify import verify_shards
from lfvila_data.shards.write import ShardPlan, write_shard
from lfvila_data.sources.benchmark import plan_video
from lfvila_data.sources.how2qa import read_how2qa
from lfvila_model import cli
from lfvila_model.checkpoint import TrainState, checkpoints, save_checkpoint
from lfvila_model.config import load_config, model_config
from lfvila_model.data import DataConfig, make_loader
from lfvila_model.qa import (
    ChoiceHead,
    LFVILAMultipleChoice,
    candidate_sentences,
    choice_loss,
    predictions,
    span_loss,
    span_targets,
)
from lfvila_model.train import load_model, setup_model, setup_optimizer
from tests.support.media import make_timecoded_video

# ----------------------------------------------------------------------------- head and loss


def test_prediction_is_the_highest_score_first_on_ties():
    scores = torch.tensor([[0.1, 0.7, 0.7, 0.2], [1.0, 1.0, 1.0, 1.0], [-3.0, -2.0, -5.0, -2.5]])
    assert predictions(scores).tolist() == [1, 0, 1]
    labels = torch.tensor([2, 0, 1])  # a tie is not a hit for the second of the tied candidates
    assert (predictions(scores) == labels).float().mean().item() == pytest.approx(2 / 3)


def test_one_sgd_step_raises_the_right_candidates_score():
    torch.manual_seed(0)
    head = ChoiceHead(hidden=8, dropout=0.0)
    pooled = torch.eye(8)  # 2 questions x 4 candidates, orthogonal features: the step moves each score alone
    labels = torch.tensor([2, 0])
    before = head(pooled, 4).detach()
    loss = choice_loss(head(pooled, 4), labels)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(before, labels).item())
    loss.backward()
    torch.optim.SGD(head.parameters(), lr=0.5).step()
    after = head(pooled, 4).detach()
    rows = torch.arange(2)
    assert (after[rows, labels] > before[rows, labels]).all()  # the right answers rise
    wrong = torch.ones_like(before, dtype=torch.bool)
    wrong[rows, labels] = False
    assert (after[wrong] < before[wrong]).all()  # every other candidate falls


def test_span_targets_weigh_inside_and_outside_half_each():
    labels, weights = span_targets([15.0, 30.0], 60.0, 8)  # a quarter of the clip: frames 2 and 3
    assert labels == [0, 0, 1, 1, 0, 0, 0, 0]
    assert weights == [8 * 0.5 / 6] * 2 + [8 * 0.5 / 2] * 2 + [8 * 0.5 / 6] * 4
    assert sum(w for w, y in zip(weights, labels) if y) == pytest.approx(sum(w for w, y in zip(weights, labels) if not y))
    assert span_targets([59.0, 59.5], 60.0, 8)[0] == [0] * 7 + [1]  # at least one frame, within the clip
    assert span_targets([-5.0, 200.0], 60.0, 4)[0] == [1, 1, 1, 1]  # clamped to the clip
    assert span_targets(None, 60.0, 4) == ([1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5])  # no span: every frame
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # undecided: log 2 per frame
    got = span_loss(logits, torch.tensor([labels[:4]]), torch.tensor([weights[:4]]))
    assert got.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() * sum(weights[:4]) / 4)


def test_every_trained_weight_gets_a_gradient():
    """What DDP needs: no trainable parameter left without a gradient (the pretraining heads
    QA does not use are frozen), and the stage-1 encoders are trained too."""
    cfg = model_config(load_config("tiny_stage2").model)
    torch.manual_seed(0)
    model = LFVILAMultipleChoice(cfg)
    ids = torch.randint(5, 100, (2, 4, 3, cfg.max_tokens))
    out = model(torch.randn(2, cfg.num_frames, 3, *cfg.frame_size), ids, torch.ones_like(ids))
    frames = out["span_logits"].shape[1]
    assert out["scores"].shape == (2, 4) and out["span_logits"].shape == (2, cfg.num_frames, 2)
    (choice_loss(out["scores"], torch.tensor([0, 3]))
     + span_loss(out["span_logits"], torch.zeros(2, frames, dtype=torch.long), torch.ones(2, frames))).backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.grad is not None for n, p in model.named_parameters() if n in trained)
    assert any(n.startswith("stage1.video_encoder.") for n in trained)
    assert not any(n.startswith(LFVILAMultipleChoice.UNUSED) for n in trained)


def test_candidates_are_question_answer_and_merged_subtitles():
    subs = ["a", "bb", "c", "dddd", "e", "ff", "g", ""]
    got = candidate_sentences("why?", ["yes", "no"], subs, 6)
    assert got == [["why?", "yes", "a bb", "c", "dddd", "e", "ff", "g"], ["why?", "no", "a bb", "c", "dddd", "e", "ff", "g"]]
    assert candidate_sentences("q", ["x"], subs, 0) == [["q", "x"]]


# ----------------------------------------------------------------------------- end to end

FPS = 3.0


def question(vid: str, qid: str, q: str, answers: list[str], label: int) -> dict:
    return {"vid_name": vid, "qid": qid, "q": q, **{f"a{i}": a for i, a in enumerate(answers)},
            "answer_idx": label, "ts": "0.5-3.0"}


COLOURS = ["red", "blue", "green", "white"]
TRAIN = [question("1001", "q1", "what colour is the screen", COLOURS, 0),
         question("1001", "q2", "what colour comes next", COLOURS, 1),
         question("1002", "q3", "what colour is the screen", COLOURS, 2),
         question("1002", "q4", "what colour comes next", COLOURS, 3)]
VAL = [question("2001", "q5", "what colour is the screen", COLOURS, 1),
       question("2002", "q6", "what colour is the screen", COLOURS, 3)]
SUBS = [*({"vid_name": v, "sub": [{"text": "the screen turns red", "start": 0.0, "end": 1.5},
                                   {"text": "now it is blue", "start": 1.5, "end": 3.0},
                                   {"text": "and then green", "start": 3.0, "end": 4.0}]} for v in ("1001", "1002", "2001")),
        {"vid_name": "2002", "sub": [{"text": "the screen turns white", "start": 0.5, "end": 3.5}]}]


def _manifest_rows(root: Path) -> list[dict]:
    """The source's samples (read_how2qa + plan_video), as the build's manifest rows of
    generated 4-s clips."""
    files = {"how2qa_train_release.jsonl": TRAIN, "how2qa_val_release.jsonl": VAL, "subtitles.jsonl": SUBS}
    for name, lines in files.items():
        (root / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
    videos, fails = read_how2qa([str(root / n) for n in files])
    assert fails == []
    (root / "build" / "videos").mkdir(parents=True)
    rows = []
    for v in videos:
        path = make_timecoded_video(root / "build" / "videos" / f"{v.video_id}.mp4", 4.0, width=128, height=64,
                                    fps=FPS, audio=False)
        sample, _ = plan_video(v, str(path), 4.0)
        rows.append({"key": sample.key, "video_id": v.video_id, "url": sample.url, "source": "how2qa",
                     "start": 0.0, "end": 4.0, "duration": 4.0, "fps": FPS, "width": 128, "height": 64,
                     "frames": 12, "clips": [{"clip_id": c.clip_id, "start": c.start, "end": c.end, "text": c.text,
                                              "sentences": None} for c in sample.clips],
                     "text_source": "annotations", "language": None, "split": sample.split, "qa": sample.qa,
                     "_build": str(root / "build"), "video": f"videos/{v.video_id}.mp4", "bytes": path.stat().st_size})
    return rows


@pytest.fixture(scope="module")
def how2qa(tmp_path_factory, vocab_dir):
    """QA shards of 4 clips (2 train with 4 questions, 2 val with 2), a tiny stage-2 checkpoint
    to start from and a stage-1 one (refused)."""
    root = tmp_path_factory.mktemp("how2qa_ft")
    rows = _manifest_rows(root)
    pq.write_table(pa.Table.from_pylist(rows), root / "plan.parquet")
    shards = root / "shards"
    write_shard(ShardPlan("train", "train-000000.tar", ((str(root / "plan.parquet"), 0, len(rows)),), len(rows)),
                str(shards))
    report = verify_shards(str(shards), progress=lambda line: None)  # every sample's checks (the qa items too)
    assert report.samples == 4 and {p.check for p in report.problems} == {"index", "unindexed"}  # no wids index
    for name, preset in (("s1", "tiny"), ("s2", "tiny_stage2")):  # freshly initialised checkpoints of each stage
        cfg = load_config(preset, [f"data.tokenizer={vocab_dir}"])
        model = setup_model(cfg, torch.device("cpu"))
        save_checkpoint(root / name, model, *setup_optimizer(model, cfg.optim), TrainState(), cfg)
    return root, shards


def test_qa_examples_are_one_per_question(how2qa, tokenizer):
    _, shards = how2qa
    cfg = DataConfig(sample_clips=2, frames_per_clip=4, size=(32, 64), max_tokens=12, batch_size=8,
                     num_workers=0, shuffle_buffer=1, qa=True, qa_subtitles=2)
    batch = next(iter(make_loader(str(shards / "*.tar"), cfg, train=False, tokenizer=tokenizer)))
    assert sorted(k.split("/")[1] for k in batch["key"]) == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert batch["input_ids"].shape == (6, 4, 4, 12) and batch["video"].shape == (6, 8, 3, 32, 64)
    at = {k.split("/")[1]: i for i, k in enumerate(batch["key"])}
    assert batch["label"][at["q4"]].item() == 3
    assert batch["span_labels"][at["q1"]].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]  # ts 0.5-3.0 of the 4-s clip
    # q1's candidate 2: the question, "green", the three subtitle lines merged to 2 (the shorter pair joined)
    want = tokenizer(["what colour is the screen", "green", "the screen turns red", "now it is blue and then green"],
                     padding="max_length", truncation=True, max_length=12, return_tensors="pt")["input_ids"]
    assert torch.equal(batch["input_ids"][at["q1"], 2], want)
    # 2002 has one subtitle line: its second subtitle slot is empty and masked
    assert batch["attention_mask"][at["q6"], :, :, 0].tolist() == [[1, 1, 1, 0]] * 4


def test_how2qa_finetunes_from_stage2_and_scores_accuracy(how2qa, vocab_dir, tmp_path, capsys):
    root, shards = how2qa
    run = tmp_path / "run"
    rc = cli.main(["--config", "finetune_how2qa", "--init", str(root / "s2"), "--train-shards", str(shards),
                   "--val-shards", str(shards), "--device", "cpu", f"data.tokenizer={vocab_dir}", "data.batch_size=2",
                   "data.num_workers=0", "data.shuffle_buffer=4", "data.qa_subtitles=2", "optim.epochs=1",
                   "optim.warmup_epochs=0.5", "eval.every_steps=1", f"checkpoint.dir={run}/ck", f"log.dir={run}/log",
                   "log.tensorboard=false", "log.progress=false", "log.every_steps=1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "fine-tuning for multiple-choice QA from" in out.out and "paper (how2qa)" in out.out
    logged = (run / "log" / "metrics.csv").read_text().splitlines()
    assert logged[0].split(",")[3:7] == ["loss", "choice", "span", "accuracy"] and len(logged) == 3
    # 4 train questions / batch 2: 2 updates, each scored on the 2 val questions
    evals = [json.loads(line) for line in (run / "log" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2] and {e["num_questions"] for e in evals} == {2}
    acc = [e["accuracy"] for e in evals]
    assert all(0 <= a <= 1 for a in acc)
    best = checkpoints(run / "ck" / "best")  # the first most accurate, strictly better than any before
    assert len(best) == 1 and best[0].name == f"step-{acc.index(max(acc)) + 1:08d}"
    model, cfg = load_model(best[0])  # the checkpoint reloads as the QA model
    assert isinstance(model, LFVILAMultipleChoice) and cfg.finetune.task == "multiple_choice"

    rc = cli.main(["eval", "--checkpoint", str(run / "ck" / "best"), "--val-shards", str(shards), "--benchmark",
                   "how2qa", "--output", str(tmp_path / "how2qa.json"), "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((tmp_path / "how2qa.json").read_text())
    assert metrics["num_questions"] == 2 and 0 <= metrics["accuracy"] <= 1 and metrics["benchmark"] == "how2qa"
    assert metrics["accuracy"] == max(acc)
    assert "paper (how2qa)" in capsys.readouterr().err
    # without --benchmark a QA checkpoint is still scored as QA (its stored finetune.task)
    assert cli.main(["eval", "--checkpoint", str(run / "ck" / "best"), "--val-shards", str(shards),
                     "--output", str(tmp_path / "plain.json"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "plain.json").read_text())["accuracy"] == max(acc)
    capsys.readouterr()
    # a stage-1 checkpoint is no start for QA: one line, exit 2
    assert cli.main(["--config", "finetune_how2qa", "--init", str(root / "s1"), "--train-shards", str(shards),
                     f"data.tokenizer={vocab_dir}", "data.batch_size=2", "data.num_workers=0",
                     f"checkpoint.dir={tmp_path}/bad", f"log.dir={tmp_path}/badlog", "log.tensorboard=false",
                     "--device", "cpu"]) == 2
    assert "not a stage-2 single-stream checkpoint" in capsys.readouterr().err
