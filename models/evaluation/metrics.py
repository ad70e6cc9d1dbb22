"""Ranking metrics. Ties count against the positive (a tied negative ranks above it)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def rank_of_positive(pos_score: float, neg_scores: NDArray[np.floating]) -> int:
    """0-based rank of the positive among the negatives; ties are counted against the positive."""
    return int(np.count_nonzero(neg_scores >= pos_score))


def hit_at(rank: int, k: int) -> float:
    """1 if the positive's 0-based rank is within the top ``k``."""
    return 1.0 if rank < k else 0.0


def ndcg_at(rank: int, k: int) -> float:
    """NDCG@k for a single relevant item at 0-based ``rank``: 1/log2(2+rank) inside the top k."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def summarize(ranks: list[int], *, ks: tuple[int, ...] = (10,), recall_ks: tuple[int, ...] = ()) -> dict[str, float]:
    """Mean HR@k and NDCG@k (and Recall@k, equal to HR@k with one held-out item) over users."""
    if not ranks:
        return {}
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean([hit_at(r, k) for r in ranks]))
        out[f"NDCG@{k}"] = float(np.mean([ndcg_at(r, k) for r in ranks]))
    for k in recall_ks:
        out[f"Recall@{k}"] = float(np.mean([hit_at(r, k) for r in ranks]))
    return out
