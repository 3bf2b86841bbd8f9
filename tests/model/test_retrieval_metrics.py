"""Retrieval metrics on hand-made similarity matrices with ties (ties count against the
match: pessimistic ranks), both directions, and the table set beside the paper's numbers."""
from __future__ import annotations

import json

import pytest
import torch

from lfvila_model.eval import BENCHMARKS, paper_table, retrieval_metrics

# rows are paragraphs, columns videos, the match on the diagonal
HAND = torch.tensor([[0.9, 0.9, 0.1],   # p0: v1 ties with its match -> rank 2
                     [0.2, 0.5, 0.5],   # p1: v2 ties with its match -> rank 2
                     [0.3, 0.1, 0.8]])  # p2: alone at the top -> rank 1


def test_hand_matrix_with_ties_both_directions():
    m = retrieval_metrics(HAND)
    p2v, v2p = m["paragraph_to_video"], m["video_to_paragraph"]
    assert p2v["R@1"] == pytest.approx(100 / 3) and p2v["R@5"] == 100.0
    assert (p2v["median_rank"], p2v["mean_rank"]) == (2.0, pytest.approx(5 / 3))
    # columns: v0 above p1, p2 (rank 1); v1 below p0's 0.9 (rank 2); v2 above p1's 0.5 (rank 1)
    assert v2p["R@1"] == pytest.approx(200 / 3)
    assert (v2p["median_rank"], v2p["mean_rank"]) == (1.0, pytest.approx(4 / 3))
    assert m["num_samples"] == 3


def test_ranks_one_to_sixty_made_of_ties_give_every_recall():
    """Paragraph i has its match and i other videos all scoring 1 (the rest 0): its rank is
    i + 1 only if every tie counts against it."""
    n = 60
    sim = torch.zeros(n, n)
    for i in range(n):
        sim[i, : i + 1] = 1.0
        sim[i, i] = 1.0
    p2v = retrieval_metrics(sim)["paragraph_to_video"]
    assert {k: p2v[k] for k in ("R@1", "R@5", "R@10", "R@50")} == pytest.approx(
        {"R@1": 100 / 60, "R@5": 500 / 60, "R@10": 1000 / 60, "R@50": 5000 / 60})
    assert (p2v["median_rank"], p2v["mean_rank"]) == (30.5, 30.5)
    # video j is matched by p_j and tied by p_{j+1}..p_59: rank 60 - j
    v2p = retrieval_metrics(sim)["video_to_paragraph"]
    assert v2p["R@1"] == pytest.approx(100 / 60) and v2p["R@50"] == pytest.approx(5000 / 60)


def test_constant_scores_rank_last():
    m = retrieval_metrics(torch.ones(51, 51))
    assert m["paragraph_to_video"]["R@50"] == 0.0 and m["video_to_paragraph"]["median_rank"] == 51.0


def test_table_sets_the_papers_numbers_beside_ours():
    m = json.loads(json.dumps(retrieval_metrics(HAND)))  # as written to the JSON file
    table = paper_table(m, "didemo").splitlines()
    assert table[0].split() == ["R@1", "R@5", "R@10", "R@50", "median", "rank", "mean", "rank"]
    assert table[1].split()[:2] == ["paragraph->video", "33.33"]
    assert table[2].split()[:2] == ["video->paragraph", "66.67"]
    assert table[3].split() == ["paper", "(didemo)", "35.00", "64.50", "75.80", "-", "-", "-"]
    assert table[-1] == "3 videos and paragraphs"
    assert "paper" not in paper_table(m)
    assert BENCHMARKS["activitynet"].paper == {"R@1": 35.3, "R@5": 65.4}
    assert BENCHMARKS["condensed-movies"].paper == {"R@1": 13.6, "R@5": 32.5, "R@10": 41.8}
