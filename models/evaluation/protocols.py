"""Evaluation protocols (EVALUATION.md), over any :class:`Ranker`.

Protocols: ``loo99`` (held-out item vs its 99 sampled negatives), ``full`` (vs every item outside the user's
training set) and ``coldstart`` (held-out users whose history is cut to their first k items). The models they
compare live elsewhere (:mod:`models.firststage.fit`, :mod:`models.experiments.persona`); this module only ranks
with them, so evaluation and the models never import each other.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from models.data.split import Split
from models.evaluation.metrics import summarize
from models.types import FloatArray, IntArray

PROTOCOLS: tuple[str, ...] = ("loo99", "full", "coldstart")
MODELS: tuple[str, ...] = ("popularity", "central", "federated", "persona-base", "persona-shared", "persona")
RERANK_K = 20
COLDSTART_KS = (0, 1, 3, 5)


class Ranker(Protocol):
    """What the protocols rank with: scores for a user after a history."""

    def score(self, user: int, history: IntArray, items: IntArray, /) -> FloatArray:
        """Scores of the given items."""
        ...

    def score_all(self, user: int, history: IntArray, /) -> FloatArray:
        """Scores of every catalog item."""
        ...


def ranks(
    model: Ranker, split: Split, protocol: Literal["loo99", "full"], which: Literal["valid", "test"]
) -> list[int]:
    """0-based rank of each user's held-out item (ties against it) under the protocol."""
    out: list[int] = []
    for u, s in split.users.items():
        pos = s.valid if which == "valid" else s.test
        if protocol == "loo99":
            negs = s.valid_negs if which == "valid" else s.test_negs
            scores = model.score(u, s.train, np.concatenate([[pos], negs]).astype(np.int64))
            out.append(int(np.count_nonzero(scores[1:] >= scores[0])))
        else:
            scores = model.score_all(u, s.train).astype(np.float64)
            allowed = np.ones(split.n_items, dtype=bool)
            allowed[s.train] = False
            if which == "test":
                allowed[s.valid] = False
            allowed[pos] = False
            out.append(int(np.count_nonzero(scores[allowed] >= scores[pos])))
    return out


def metrics_for(model: Ranker, split: Split, protocol: Literal["loo99", "full"], which: str) -> dict[str, float]:
    """HR@10, NDCG@10 (and Recall@20 for full ranking) on the validation or test items."""
    assert which in ("valid", "test")
    r = ranks(model, split, protocol, "valid" if which == "valid" else "test")
    return summarize(r, ks=(10,), recall_ks=(20,) if protocol == "full" else ())


def coldstart_users(split: Split, *, fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Hold out a seeded ``fraction`` of users as newcomers: (warm users to train on, cold users to test)."""
    users = np.array(sorted(split.users), dtype=np.int64)
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(users, size=max(1, round(fraction * len(users))), replace=False))
    warm = np.setdiff1d(users, cold)
    return [int(u) for u in warm], [int(u) for u in cold]


def coldstart_cut(split: Split, cold: list[int], k: int) -> Split:
    """The cold users only, each with their training history cut to its first ``k`` items."""
    cut = Split(split.dataset, split.seed, split.n_items, {})
    for u in cold:
        s = split.users[u]
        cut.users[u] = type(s)(s.train[:k], s.valid, s.test, s.valid_negs, s.test_negs)
    return cut
