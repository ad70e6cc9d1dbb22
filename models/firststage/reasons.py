"""Reasons for first-stage suggestions: which liked items a suggestion cites, and how faithful that citation is.

A suggestion cites the pooled history items (the last ``window`` the user state averages; an older item adds
nothing to any score) **closest to that suggestion** in the first stage's own item space: the cosine between the
suggestion's item vector and each history item's vector. The item space, not MiniLM text, because it is the space
the score is computed in (``score = state · item + bias`` with the state a weighted mean of these same vectors), so
a close item is also one that pulls the score up; the cosine, not the raw pull ``weight · (history · item)``,
because the pull favours whichever history item has the longest vector or the largest recency weight and cites it
for nearly every suggestion.

Diversity rule (:data:`LEAD_MARGIN`): going down the list best first, a suggestion's lead item is the closest one
not already leading an earlier suggestion, provided its cosine is within ``LEAD_MARGIN`` of the closest; else the
closest, repeated. The second cited item is the closest of the rest. Only items that support the suggestion are
cited: a positive cosine, and taking the item out of the history lowers the suggestion's score (:func:`support`;
an item can point the same way as the suggestion yet less so than the rest of the history, and then its removal
raises the score).

Faithfulness is measured, not assumed (:func:`removal_drop`, ``scripts/bench_reasons.py``): removing the cited
item from the history should lower that suggestion's score more than removing a random history item.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.firststage.scorer import FirstStageScorer, PrivateParams, history_tail
from models.types import FloatArray, IntArray

LEAD_MARGIN = 0.05
"""How much closer (in cosine) a repeated lead item must be than an unused one for the reason to repeat it."""

CITED = 2
"""How many liked items a reason names."""


def closeness(scorer: FirstStageScorer, tail: IntArray, item: int) -> FloatArray:
    """Cosine between ``item``'s vector and each of the ``tail`` items' vectors in the first stage's item space."""
    vectors = scorer.item_vectors[tail]
    target = scorer.item_vectors[item]
    norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(target))
    return np.asarray((vectors @ target) / np.maximum(norms, 1e-12), dtype=np.float32)


def support(scorer: FirstStageScorer, history: IntArray, tail: IntArray, items: IntArray) -> FloatArray:
    """How much removing each ``tail`` item from the history lowers each of ``items``' scores, shape (tail, items).

    The private vector and the bias add the same with and without the item, so the drop is the history's alone.
    """
    history = np.asarray(history, dtype=np.int64)
    if not len(tail):
        return np.zeros((0, len(items)), dtype=np.float32)
    zero = PrivateParams.init(scorer.shared.dim)
    full = scorer.user_state(history, zero)
    without = np.stack([scorer.user_state(history[history != h], zero) for h in tail])
    return np.asarray((full - without) @ scorer.item_vectors[items].T, dtype=np.float32)


def citations(
    scorer: FirstStageScorer, history: IntArray, items: IntArray, *, cited: int = CITED, margin: float = LEAD_MARGIN
) -> list[IntArray]:
    """For each of ``items`` (a suggestion list, best first), the history items its reason cites, lead first.

    See the module docstring for the rule; ``margin = 0`` turns the diversity rule off.
    """
    # sorted(set()), not np.unique: np.unique imports numpy.ma (~50-80 ms of CPU on the TUI's first paint, issue 15)
    tail = np.array(sorted(set(history_tail(scorer.shared, history).tolist())), dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    drops = support(scorer, history, tail, items)
    used: set[int] = set()
    out: list[IntArray] = []
    for column, item in enumerate(items):
        cosine = closeness(scorer, tail, int(item))
        order = [int(j) for j in np.argsort(-cosine, kind="stable") if cosine[j] > 0 and drops[j, column] > 0]
        if not order:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        fresh = [j for j in order if int(tail[j]) not in used and cosine[j] >= cosine[order[0]] - margin]
        lead = fresh[0] if fresh else order[0]
        picked = [lead, *[j for j in order if j != lead][: cited - 1]]
        used.add(int(tail[lead]))
        out.append(tail[picked].astype(np.int64))
    return out


def removal_drop(scorer: FirstStageScorer, history: IntArray, private: PrivateParams, item: int, removed: int) -> float:
    """How much ``item``'s first-stage score falls when ``removed`` is taken out of the history (negative: it rises)."""
    history = np.asarray(history, dtype=np.int64)
    without = history[history != removed]
    items = np.array([item], dtype=np.int64)
    before = scorer.score_items(history, private, items)[0]
    after = scorer.score_items(without, private, items)[0]
    return float(before - after)


def fidelity(
    scorer: FirstStageScorer,
    history: IntArray,
    private: PrivateParams,
    items: IntArray,
    cites: list[IntArray],
    rng: np.random.Generator,
    *,
    pooled_only: bool = True,
) -> NDArray[np.float64]:
    """Per suggestion with a citation: (drop when its lead item is removed, drop when a random other item is).

    The random item is drawn from the pooled history (``pooled_only``, the stricter comparison: every such item
    moves the score) or from the whole history (where items older than the window move nothing). Shape (n, 2).
    """
    pool = np.unique(history_tail(scorer.shared, history) if pooled_only else np.asarray(history, dtype=np.int64))
    rows: list[tuple[float, float]] = []
    for item, cite in zip(np.asarray(items, dtype=np.int64), cites, strict=True):
        others = pool[pool != cite[0]] if len(cite) else pool
        if not len(cite) or not len(others):
            continue
        random_item = int(rng.choice(others))
        rows.append(
            (
                removal_drop(scorer, history, private, int(item), int(cite[0])),
                removal_drop(scorer, history, private, int(item), random_item),
            )
        )
    return np.array(rows, dtype=np.float64).reshape(-1, 2)
