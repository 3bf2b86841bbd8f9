"""Assertions shared by the model tests: what retrieval metrics must satisfy whatever the scores."""
from __future__ import annotations

import pytest


def assert_retrieval_consistent(r: dict, n: int) -> None:
    """What must hold for any scores of ``n`` samples: R@k is a multiple of 100/n, grows with k
    and is 100 from k = n on; with n = 2 the ranks are 1 or 2, so they follow from R@1."""
    ks = sorted(int(k[2:]) for k in r if k.startswith("R@"))
    for k in ks:
        assert round(r[f"R@{k}"] * n / 100, 9).is_integer(), (k, r)
        assert r[f"R@{k}"] == 100.0 or k < n, (k, r)
    assert [r[f"R@{k}"] for k in ks] == sorted(r[f"R@{k}"] for k in ks)
    assert 1 <= r["median_rank"] <= n and 1 <= r["mean_rank"] <= n
    if n == 2:
        assert r["mean_rank"] == pytest.approx(2 - r["R@1"] / 100)
