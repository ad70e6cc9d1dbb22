"""Evaluation protocols (EVALUATION.md), over any :class:`Ranker`.

Protocols: ``loo99`` (held-out item vs its 99 sampled negatives), ``full`` (vs every item outside the user's
training set), ``coldstart`` (held-out users whose history is cut to their first k items) and ``query`` (each user
asks for "a 1990s comedy" written from the held-out item's metadata; the held-out item is ranked among its LOO-99
candidates, and the top 10 are checked against the request: :class:`Request`, :func:`query_lists`,
:func:`query_row`). The models they
compare live elsewhere (:mod:`models.firststage.fit`, :mod:`models.experiments.persona`); this module only ranks
with them, so evaluation and the models never import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.data.request import Request as CatalogRequest
from models.data.request import filter_scores
from models.data.split import Split
from models.evaluation.metrics import hit_at, ndcg_at, summarize
from models.types import FloatArray, IntArray

PROTOCOLS: tuple[str, ...] = ("loo99", "full", "coldstart", "query")
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


def user_ranks(
    model: Ranker, split: Split, protocol: Literal["loo99", "full"], which: Literal["valid", "test"]
) -> dict[int, int]:
    """:func:`ranks` keyed by user: what two runs on the same split are compared by (``agent eval --ranks``)."""
    return dict(zip(split.users, ranks(model, split, protocol, which), strict=True))


def protocol_metrics(ranks_: Sequence[int], protocol: Literal["loo99", "full"]) -> dict[str, float]:
    """HR@10, NDCG@10 (and Recall@20 for full ranking) from the held-out items' ranks."""
    return summarize(list(ranks_), ks=(10,), recall_ks=(20,) if protocol == "full" else ())


def metrics_for(model: Ranker, split: Split, protocol: Literal["loo99", "full"], which: str) -> dict[str, float]:
    """HR@10, NDCG@10 (and Recall@20 for full ranking) on the validation or test items."""
    assert which in ("valid", "test")
    return protocol_metrics(ranks(model, split, protocol, "valid" if which == "valid" else "test"), protocol)


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


# -- the query protocol ----------------------------------------------------------------------------------------

QUERY_TOP = 10
"""satisfied@10: the share of the top ``QUERY_TOP`` candidates that satisfy the request."""

_GENRE_PHRASES = {
    "Action": "action film",
    "Adventure": "adventure film",
    "Animation": "animated film",
    "Children's": "children's film",
    "Crime": "crime film",
    "Fantasy": "fantasy film",
    "Film Noir": "film noir",
    "Horror": "horror film",
    "Sci Fi": "science fiction film",
    "War": "war film",
}


@dataclass(frozen=True)
class Request:
    """What a user asks for: one genre tag and a decade (either may be missing when the item lacks it)."""

    genre: str | None
    decade: int | None

    @property
    def text(self) -> str:
        """The request as a person would type it, e.g. ``"a 1990s comedy"``."""
        noun = "film" if self.genre is None else _GENRE_PHRASES.get(self.genre, self.genre.lower())
        return f"a {self.decade}s {noun}" if self.decade is not None else f"a {noun}"

    def checked(self) -> CatalogRequest:
        """What the catalog checks of it (:class:`models.data.request.Request`, the same class the agent's parsed
        ``--query`` is)."""
        return CatalogRequest(() if self.genre is None else (self.genre,), self.decade)

    def satisfied_by(self, catalog: Catalog, item: int) -> bool:
        """Whether the item has the genre and was released in the decade (both, where the request names them)."""
        return self.checked().satisfied_by(catalog, item)

    def mask(self, catalog: Catalog, items: IntArray) -> NDArray[np.bool_]:
        """:meth:`satisfied_by` of each item."""
        return self.checked().mask(catalog, items)


def request_for(catalog: Catalog, item: int, rng: np.random.Generator) -> Request:
    """A request written from the item's metadata: one of its genres (a seeded choice) and its decade."""
    tags = catalog.tags[item]
    year = catalog.years[item]
    genre = tags[int(rng.integers(len(tags)))] if tags else None
    return Request(genre=genre, decade=None if year is None else year // 10 * 10)


def make_requests(
    split: Split, catalog: Catalog, which: Literal["valid", "test"], *, seed: int = 0
) -> dict[int, Request]:
    """Each user's request, written from their held-out validation or test item; deterministic for a seed."""
    rng = np.random.default_rng([seed, 0 if which == "valid" else 1])
    out: dict[int, Request] = {}
    for u in sorted(split.users):
        s = split.users[u]
        out[u] = request_for(catalog, s.valid if which == "valid" else s.test, rng)
    return out


Scores = NDArray[np.floating]
"""Scores of a list's candidates (float32 or float64), higher first."""


@dataclass(frozen=True)
class QueryList:
    """One user's LOO-99 candidates (the held-out item first), their first-stage scores and the request."""

    user: int
    candidates: IntArray
    first_stage: Scores
    request: Request
    satisfied: NDArray[np.bool_]


Reranker = Callable[[int, str, IntArray, Scores], Scores]
"""A row of the query protocol: (user, request text, candidate ids, their first-stage scores) → new scores (higher
is better). The first stage alone returns the scores it was given; a language model would read the text."""


def query_lists(
    model: Ranker, split: Split, catalog: Catalog, which: Literal["valid", "test"], requests: dict[int, Request]
) -> list[QueryList]:
    """Every user's candidates (held-out item, then the same 99 negatives as ``loo99``) scored by the first stage."""
    lists: list[QueryList] = []
    for u in sorted(split.users):
        s = split.users[u]
        pos, negs = (s.valid, s.valid_negs) if which == "valid" else (s.test, s.test_negs)
        items = np.concatenate([[pos], negs]).astype(np.int64)
        scores = np.asarray(model.score(u, s.train, items), dtype=np.float64)
        lists.append(QueryList(u, items, scores, requests[u], requests[u].mask(catalog, items)))
    return lists


def satisfied_at(scores: NDArray[np.floating], satisfied: NDArray[np.bool_], k: int = QUERY_TOP) -> float:
    """The share of the top ``k`` items by score that satisfy the request; among tied scores the held-out item
    (index 0) comes last, as in :func:`models.evaluation.metrics.rank_of_positive`, the others in list order."""
    n = len(scores)
    is_positive = np.zeros(n, dtype=bool)
    is_positive[0] = True
    order = np.lexsort((np.arange(n), is_positive, -np.asarray(scores, dtype=np.float64)))
    top = order[: min(k, n)]
    return float(np.mean(satisfied[top])) if len(top) else 0.0


@dataclass(frozen=True)
class QueryRow:
    """One row of the query protocol over a list of users, per user (same order as the lists)."""

    ranks: list[int]
    satisfied: NDArray[np.float64]

    def summary(self) -> dict[str, float]:
        """Mean HR@10, NDCG@10 and satisfied@10."""
        return {
            "HR@10": float(np.mean([hit_at(r, 10) for r in self.ranks])) if self.ranks else 0.0,
            "NDCG@10": float(np.mean([ndcg_at(r, 10) for r in self.ranks])) if self.ranks else 0.0,
            f"satisfied@{QUERY_TOP}": float(self.satisfied.mean()) if len(self.satisfied) else 0.0,
        }


def query_row(lists: list[QueryList], rerank: Reranker) -> QueryRow:
    """Rank each list with ``rerank``: the held-out item's 0-based rank (ties against it) and satisfied@10."""
    ranks: list[int] = []
    satisfied: list[float] = []
    for lst in lists:
        scores = np.asarray(rerank(lst.user, lst.request.text, lst.candidates, lst.first_stage), dtype=np.float64)
        if scores.shape != lst.candidates.shape:
            raise ValueError(f"a reranker returned {scores.shape} scores for {len(lst.candidates)} candidates")
        ranks.append(int(np.count_nonzero(scores[1:] >= scores[0])))
        satisfied.append(satisfied_at(scores, lst.satisfied))
    return QueryRow(ranks, np.array(satisfied, dtype=np.float64))


def first_stage_only(_user: int, _request: str, _items: IntArray, first_stage: Scores) -> Scores:
    """The first stage alone: the request is ignored."""
    return first_stage


def metadata_filter(lists: list[QueryList]) -> Reranker:
    """The plain metadata filter (:func:`filter_scores`) as a :data:`Reranker` over these lists."""
    masks = {lst.user: lst.satisfied for lst in lists}

    def rerank(user: int, _request: str, _items: IntArray, first_stage: Scores) -> Scores:
        return filter_scores(first_stage, masks[user])

    return rerank


def chain(base: Reranker, rerank: Reranker) -> Reranker:
    """A second stage after a first: ``rerank`` receives ``base``'s scores as the first-stage scores (e.g. a
    language model reranking the query-blended first stage)."""

    def chained(user: int, request: str, items: IntArray, first_stage: Scores) -> Scores:
        return rerank(user, request, items, base(user, request, items, first_stage))

    return chained
