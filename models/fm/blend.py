"""The second stage: the foundation model rescores the first stage's top-K, and the two are blended.

Per user, both stages' scores over the K candidates are standardised (z-scores) and added as
``first + weight · fm``; the weight is picked on validation users only. Candidates below the top K keep their
first-stage order, after all of the top K. Torch-free: it serves through the llama.cpp runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.data.split import Split
from models.evaluation.metrics import summarize
from models.evaluation.stats import compare_ranks
from models.types import FloatArray, IntArray

BLEND_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)

# (user, history, candidates) -> foundation-model scores of the candidates
FMScoreFn = Callable[[int, IntArray, IntArray], FloatArray]
FirstScoreFn = Callable[[int, IntArray, IntArray], FloatArray]


def zscore(x: NDArray[np.floating]) -> NDArray[np.float64]:
    """Standardise scores within one user's candidate list (a constant list maps to zeros)."""
    x = np.asarray(x, dtype=np.float64)
    spread = x.std()
    return (x - x.mean()) / spread if spread > 1e-12 else np.zeros_like(x)


def blend(first: NDArray[np.floating], fm: NDArray[np.floating], weight: float) -> NDArray[np.float64]:
    """The final score of the top-K candidates."""
    return zscore(first) + weight * zscore(fm)


@dataclass
class RerankedList:
    """One user's candidates: the first stage's top K (with both stages' scores) and where the positive stands."""

    top: IntArray  # candidate positions (into the candidate list) of the first-stage top K, best first
    first: FloatArray
    fm: FloatArray
    positive_first_rank: int  # 0-based rank of the positive (position 0) in the first stage, ties against it

    def rank(self, weight: float) -> int:
        """0-based rank of the positive after blending with ``weight``."""
        where = np.flatnonzero(self.top == 0)
        if len(where) == 0:
            return self.positive_first_rank
        final = blend(self.first, self.fm, weight)
        return int(np.count_nonzero(final >= final[where[0]]) - 1)


def fm_auc(lists: Sequence[RerankedList]) -> float | None:
    """How often the foundation model alone scores the positive above another of the top K (ties count half),
    averaged over the lists whose top K holds the positive: 0.5 is no ranking signal. ``None`` if no list has it."""
    aucs = []
    for lst in lists:
        where = np.flatnonzero(lst.top == 0)
        if len(where) == 0 or len(lst.top) < 2:
            continue
        others = np.delete(lst.fm, where[0])
        positive = lst.fm[where[0]]
        aucs.append((np.count_nonzero(others < positive) + 0.5 * np.count_nonzero(others == positive)) / len(others))
    return float(np.mean(aucs)) if aucs else None


def rerank_lists(
    split: Split, which: str, first_score: FirstScoreFn, fm_score: FMScoreFn, *, k: int
) -> list[RerankedList]:
    """Score LOO-99 candidates with the first stage, rescore its top ``k`` with the foundation model."""
    out = []
    for u, s in split.users.items():
        positive = s.valid if which == "valid" else s.test
        negatives = s.valid_negs if which == "valid" else s.test_negs
        candidates = np.concatenate([[positive], negatives]).astype(np.int64)
        first = first_score(u, s.train, candidates)
        order = np.argsort(-first, kind="stable")
        top = order[:k]
        fm = fm_score(u, s.train, candidates[top])
        out.append(
            RerankedList(
                top=top,
                first=first[top].astype(np.float32),
                fm=np.asarray(fm, dtype=np.float32),
                positive_first_rank=int(np.count_nonzero(first[1:] >= first[0])),
            )
        )
    return out


def pick_weight(
    lists: Sequence[RerankedList], weights: Sequence[float] = BLEND_WEIGHTS
) -> tuple[float, dict[str, float]]:
    """The blend weight with the best NDCG@10 on these (validation) lists, and that metric set."""
    best: tuple[float, dict[str, float]] | None = None
    for weight, metrics in weight_curve(lists, weights).items():
        if best is None or metrics["NDCG@10"] > best[1]["NDCG@10"]:
            best = (weight, metrics)
    assert best is not None
    return best


@dataclass(frozen=True)
class SupportedWeight:
    """The blend weight validation supports (:func:`supported_weight`): ``weight`` is used; ``best`` is what
    :func:`pick_weight` picked, and ``gain`` its ΔNDCG@10 against weight 0 on the same validation lists with the
    paired bootstrap interval (None when ``best`` is 0)."""

    weight: float
    best: float
    gain: dict[str, Any] | None


def supported_weight(lists: Sequence[RerankedList], weights: Sequence[float] = BLEND_WEIGHTS) -> SupportedWeight:
    """The best weight on these validation lists, kept only if its gain over weight 0 (the first stage alone) on
    the same lists has a paired bootstrap 95 % interval above zero; otherwise 0. A best weight picked from a tie
    (the language model's gains so far) did not carry to test (README), so noise alone does not switch it on."""
    best, _ = pick_weight(lists, weights)
    if best == 0.0:
        return SupportedWeight(0.0, 0.0, None)
    gain = compare_ranks([lst.rank(best) for lst in lists], [lst.rank(0.0) for lst in lists])
    return SupportedWeight(best if float(gain["ci95"][0]) > 0 else 0.0, best, gain)


def weight_curve(
    lists: Sequence[RerankedList], weights: Sequence[float] = BLEND_WEIGHTS
) -> dict[float, dict[str, float]]:
    """HR@10 and NDCG@10 of these lists at each blend weight."""
    return {weight: summarize([lst.rank(weight) for lst in lists]) for weight in weights}
