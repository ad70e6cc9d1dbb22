"""Measurements behind ``scripts/bench_reasons.py``: are the liked items a reason cites the ones behind the score?

A federated first stage is trained on ML-100K as ``agent demo`` trains it (in-process averaging, fewer rounds);
then for a seeded sample of users, as ``agent suggest`` sees them (liked = rated ≥ 3 in time order, every rated
item excluded, the agent's private vector), the top 10 are cited with :func:`models.firststage.reasons.citations`
at a few diversity margins, plus the previous rule (the largest pull, ``weight · history · item``) as a baseline.

For each rule: the share of suggestions whose lead item's removal lowers the score more than a random pooled
history item's (and than a random item of the whole history), the mean drops with a paired bootstrap 95 % interval
over users of the per-user mean difference, and how many distinct lead items the top 10 cite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.firststage.fit import train_federated
from models.firststage.reasons import LEAD_MARGIN, citations, fidelity
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import FirstStageScorer, PrivateParams, history_tail
from models.text.encoder import ItemEncoder, embed_catalog
from models.types import IntArray

LIKED_FROM_RATING = 3.0
"""A rating this high counts as liked, as in the profile store."""


def liked_and_rated(dataset: Dataset, user: int) -> tuple[IntArray, IntArray]:
    """One user's liked items in time order and every item they rated (what the profile sees after the demo)."""
    inter = dataset.interactions
    mine = np.flatnonzero(inter.users == user)
    mine = mine[np.lexsort((inter.items[mine], inter.timestamps[mine]))]
    liked = inter.items[mine][inter.ratings[mine] >= LIKED_FROM_RATING]
    return liked.astype(np.int64), inter.items[mine].astype(np.int64)


def pull_citations(scorer: FirstStageScorer, history: IntArray, items: IntArray) -> list[IntArray]:
    """The previous rule, as a baseline: the pooled item with the largest pull ``weight · history · item``."""
    tail = history_tail(scorer.shared, history)
    weights = scorer.history_weights(history)
    return [tail[[int(np.argmax(weights * (scorer.item_vectors[tail] @ scorer.item_vectors[i])))]] for i in items]


def paired_interval(diffs: NDArray[np.float64], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean of per-user paired differences."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def _summary(per_user: list[dict[str, Any]]) -> dict[str, Any]:
    cited = np.concatenate([u["pooled"][:, 0] for u in per_user])
    pooled = np.concatenate([u["pooled"][:, 1] for u in per_user])
    whole = np.concatenate([u["whole"][:, 1] for u in per_user])
    diffs = np.array([float(np.mean(u["pooled"][:, 0] - u["pooled"][:, 1])) for u in per_user if len(u["pooled"])])
    low, high = paired_interval(diffs)
    return {
        "suggestions": len(cited),
        "share_cited_beats_random_pooled": round(float(np.mean(cited > pooled)), 4),
        "share_cited_beats_random_history": round(float(np.mean(cited > whole)), 4),
        "mean_drop_cited": round(float(cited.mean()), 5),
        "mean_drop_random_pooled": round(float(pooled.mean()), 5),
        "mean_drop_random_history": round(float(whole.mean()), 5),
        "mean_diff_vs_pooled_ci95": [round(float(diffs.mean()), 5), round(low, 5), round(high, 5)],
        "mean_distinct_leads_top10": round(float(np.mean([u["distinct"] for u in per_user])), 2),
        "users_with_one_lead_for_all": int(sum(u["distinct"] == 1 for u in per_user)),
    }


def bench_reasons(cache_dir: Path, *, users: int = 100, rounds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Train the federated first stage, then measure every citation rule on ``users`` seeded ML-100K users."""
    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir)
    split = make_loo_split(dataset, seed=0)
    model = train_federated(split, vectors, config=FederatedConfig(rounds=rounds))
    assert model.shared is not None
    scorer = FirstStageScorer(model.shared, vectors)
    rng = np.random.default_rng(seed)
    sample = rng.choice(sorted(split.users), size=min(users, len(split.users)), replace=False)
    rules: dict[str, list[dict[str, Any]]] = {}
    for user in sample:
        liked, rated = liked_and_rated(dataset, int(user))
        if len(np.unique(liked)) < 5:
            continue
        private = model.privates.get(int(user), PrivateParams.init(model.shared.dim))
        top = scorer.top_k(liked, private, 10, exclude=rated)
        candidates = {f"margin_{m:g}": citations(scorer, liked, top, margin=m) for m in (0.0, LEAD_MARGIN, 0.1)}
        candidates["largest_pull (previous rule)"] = pull_citations(scorer, liked, top)
        for name, cites in candidates.items():
            user_rng = np.random.default_rng([seed, int(user)])
            rules.setdefault(name, []).append(
                {
                    "pooled": fidelity(scorer, liked, private, top, cites, user_rng),
                    "whole": fidelity(scorer, liked, private, top, cites, user_rng, pooled_only=False),
                    "distinct": len({int(c[0]) for c in cites if len(c)}),
                }
            )
    return {
        "users": len(next(iter(rules.values()))),
        "rounds": rounds,
        "selected_round": model.selected["round"],
        "default_margin": LEAD_MARGIN,
        "rules": {name: _summary(per_user) for name, per_user in rules.items()},
    }
