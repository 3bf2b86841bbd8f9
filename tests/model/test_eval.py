"""Retrieval metrics on hand-built similarity matrices, and encode/evaluate on a tiny model."""
import pytest
import torch

from lfvila_model.eval import evaluate, ranks_of_matches, retrieval_metrics
from lfvila_model.models import presets
from lfvila_model.models.lfvila import LFVILA, synthetic_batch
from tests.model.checks import assert_retrieval_consistent


def test_identity_is_perfect_both_ways():
    m = retrieval_metrics(torch.eye(5))
    for direction in ("paragraph_to_video", "video_to_paragraph"):
        assert m[direction] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                                "median_rank": 1.0, "mean_rank": 1.0}
    assert m["num_samples"] == 5


def test_known_permutation_gives_known_ranks():
    # Row i scores column j by a fixed preference; the match (diagonal) lands at a known place.
    n = 6
    sim = torch.zeros(n, n)
    order = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0],
             [3, 0, 1, 2, 4, 5], [4, 0, 1, 2, 3, 5], [0, 1, 2, 3, 4, 5]]
    for i, pref in enumerate(order):
        for place, j in enumerate(pref):
            sim[i, j] = n - place  # best candidate scores n
    ranks = ranks_of_matches(sim)
    assert ranks.tolist() == [1, 2, 4, 1, 1, 6]
    p2v = retrieval_metrics(sim, ks=(1, 2, 5))["paragraph_to_video"]
    assert p2v["R@1"] == pytest.approx(50.0) and p2v["R@2"] == pytest.approx(100 * 4 / 6)
    assert p2v["R@5"] == pytest.approx(100 * 5 / 6)
    assert p2v["median_rank"] == 1.5 and p2v["mean_rank"] == pytest.approx(15 / 6)


def test_directions_use_rows_and_columns():
    # A column-permuted identity: paragraph i's best video is (i + 1) % n, and vice versa.
    n = 4
    sim = torch.eye(n)[:, torch.tensor([3, 0, 1, 2])] * 0.9 + torch.eye(n) * 0.5
    m = retrieval_metrics(sim)
    assert m["paragraph_to_video"]["R@1"] == 0.0 and m["paragraph_to_video"]["median_rank"] == 2.0
    assert m["video_to_paragraph"]["R@1"] == 0.0
    asym = torch.tensor([[1.0, 0.0], [2.0, 1.5]])  # row 1 prefers video 0; column 0 still prefers row 1
    m = retrieval_metrics(asym)
    assert m["paragraph_to_video"]["R@1"] == 50.0 and m["video_to_paragraph"]["R@1"] == 50.0
    assert ranks_of_matches(asym).tolist() == [1, 2] and ranks_of_matches(asym.T).tolist() == [2, 1]


def test_ties_count_against_the_match():
    assert ranks_of_matches(torch.ones(4, 4)).tolist() == [4, 4, 4, 4]
    m = retrieval_metrics(torch.ones(3, 3))
    assert m["paragraph_to_video"]["R@1"] == 0.0 and m["paragraph_to_video"]["median_rank"] == 3.0
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.0, 0.0, 1.0]])
    assert ranks_of_matches(sim).tolist() == [2, 2, 1]
    assert torch.equal(ranks_of_matches(sim), ranks_of_matches(sim.clone()))  # deterministic


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(2, 3))


def test_evaluate_tiny_model_on_synthetic_batches():
    """Batched evaluation in eval mode equals scoring all 6 samples in one forward pass."""
    cfg = presets.tiny()
    model = LFVILA(cfg).train()
    batches = [dict(synthetic_batch(cfg, 3, seed=s), key=[f"s{s}_{i}" for i in range(3)]) for s in range(2)]
    m = evaluate(model, batches)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        whole = {k: torch.cat([b[k] for b in batches]) for k in ("video", "input_ids", "attention_mask")}
        feats = model(**whole)
    direct = retrieval_metrics(feats["paragraph"] @ feats["video"].T)
    assert m["num_samples"] == 6
    for direction in ("paragraph_to_video", "video_to_paragraph"):
        assert m[direction] == pytest.approx(direct[direction], abs=1e-9), direction
        assert_retrieval_consistent(m[direction], n=6)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(model, batches + batches[:1])
