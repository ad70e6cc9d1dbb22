"""Federated evaluation on the device: hold out the latest liked item, score it against sampled unseen items under
each candidate setting of the round's plan, and return what :func:`sync.protocol.evaluation.encode` turns into the
bounded eval part of the masked vector.

The held-out item, the sampled candidates and the ranks never leave this module's caller: only HR@k and NDCG@k per
setting (each 0 or 1, or 1/log2(2+rank)) do, inside the masked, noised sum.

* **Hold out.** The latest liked item is the positive; the liked items before it are the history the models score
  from. With fewer than two liked items there is nothing to hold out: the agent sends the zero part (count 0).
* **Candidates.** ``plan.negatives`` catalog items the person never rated (liked or disliked), sampled with a
  seeded generator (``seed``: the round's base version, so re-evaluating one version draws the same items) —
  LOO-99 as ``agent eval`` measures it, but on the person's own latest item.
* **Settings.** The first stage alone always (the quality history of every version). When the caller can score with
  the language model (``lm_scores``; it has the model and an adapter), the first stage's top ``plan.rerank_k`` are
  rescored and blended at each of the plan's weights (:class:`models.fm.blend.RerankedList`, the product's blend);
  otherwise the paired block stays empty rather than reporting the first stage for every weight, which would pull
  the weights' means together.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.evaluation.metrics import rank_of_positive
from models.fm.blend import RerankedList
from models.types import FloatArray, IntArray
from sync.protocol.evaluation import NOTHING, EvalPlan, LocalEvaluation, local_metrics, per_setting

ScoreFn = Callable[[IntArray, IntArray], FloatArray]
"""``(history, candidates) -> scores`` of the candidates for a person with that history (liked items, time order)."""


def candidates(positive: int, seen: IntArray, n_items: int, negatives: int, seed: int) -> IntArray | None:
    """The held-out ``positive`` first, then ``negatives`` distinct items not in ``seen`` (seeded); None when the
    catalog has too few unseen items."""
    unseen = np.setdiff1d(np.arange(n_items, dtype=np.int64), np.asarray(seen, dtype=np.int64), assume_unique=False)
    unseen = unseen[unseen != positive]
    if len(unseen) < negatives:
        return None
    rng = np.random.default_rng([int(seed), len(seen), 0x65766C])
    picked = rng.choice(unseen, size=negatives, replace=False)
    return np.concatenate([[positive], picked]).astype(np.int64)


def evaluate_held_out(
    liked: IntArray,
    disliked: IntArray,
    n_items: int,
    plan: EvalPlan,
    first_scores: ScoreFn,
    lm_scores: ScoreFn | None = None,
    *,
    seed: int = 0,
) -> LocalEvaluation:
    """What this person's latest liked item says about the plan's settings (see the module docstring).

    ``first_scores`` and ``lm_scores`` score with the models as they are now (before this round's training).
    """
    liked = np.asarray(liked, dtype=np.int64)
    if len(liked) < 2:
        return NOTHING
    history, positive = liked[:-1], int(liked[-1])
    seen = np.concatenate([liked, np.asarray(disliked, dtype=np.int64)])
    items = candidates(positive, seen, n_items, plan.negatives, seed)
    if items is None:
        return NOTHING
    first = np.asarray(first_scores(history, items), dtype=np.float64)
    first_rank = rank_of_positive(float(first[0]), first[1:])
    baseline = local_metrics(first_rank, plan.k)
    if lm_scores is None:
        return LocalEvaluation(baseline, None)
    top = np.argsort(-first, kind="stable")[: plan.rerank_k]
    reranked = RerankedList(
        top=top,
        first=first[top].astype(np.float32),
        fm=np.asarray(lm_scores(history, items[top]), dtype=np.float32),
        positive_first_rank=first_rank,
    )
    return LocalEvaluation(baseline, per_setting([reranked.rank(w) for w in plan.weights], plan.k))
