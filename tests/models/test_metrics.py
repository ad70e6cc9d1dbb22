"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.metrics import hit_at, ndcg_at, rank_of_positive, summarize


def test_rank_counts_ties_against_the_positive() -> None:
    assert rank_of_positive(0.5, np.array([0.1, 0.2])) == 0
    assert rank_of_positive(0.5, np.array([0.5, 0.2])) == 1
    assert rank_of_positive(0.5, np.array([0.9, 0.5, 0.5])) == 3


def test_hit_and_ndcg_by_hand() -> None:
    assert hit_at(0, 10) == 1.0 and hit_at(9, 10) == 1.0 and hit_at(10, 10) == 0.0
    assert ndcg_at(0, 10) == 1.0
    assert ndcg_at(1, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(9, 10) == pytest.approx(1 / math.log2(11))
    assert ndcg_at(10, 10) == 0.0


def test_summarize_means_over_users() -> None:
    got = summarize([0, 1, 15, 30], ks=(10,), recall_ks=(20,))
    assert got["HR@10"] == pytest.approx(0.5)
    assert got["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got["Recall@20"] == pytest.approx(0.75)
    assert summarize([]) == {}
