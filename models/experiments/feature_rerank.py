"""The bar a language-model reranker has to beat: a cheap logistic regression over hand-made features of the
first stage's top-K candidates.

Features of each candidate (:data:`FEATURES`): the first-stage score (z within the list), log popularity (training
counts), the MiniLM cosine to the last three history items (mean and max), genre overlap with the history (mean over
the candidate's tags of the share of history items carrying the tag), the gap to the history's median year (decades;
0 when unknown) and the rank in the first-stage list. The model is fitted on **validation** lists only (the
validation item against the other top-K candidates; lists whose top K misses it carry no label and are skipped) and
applied to test lists. Candidates below the top K keep their first-stage order, as in :mod:`models.fm.blend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.metrics import summarize
from models.evaluation.stats import compare_ranks, fit_logistic, logistic_scores
from models.experiments.persona_rerank import Candidates, candidates_for
from models.fm.blend import zscore
from models.types import FloatArray, IntArray, ScoreAllFn

FEATURES: tuple[str, ...] = (
    "first_stage_z",
    "log_popularity",
    "cosine_last3_mean",
    "cosine_last3_max",
    "genre_overlap",
    "year_gap_decades",
    "first_stage_rank",
)
L2 = 1.0  # ridge on the standardised features; the intercept is not penalised


@dataclass(frozen=True)
class FeatureContext:
    """What the features read: popularity from the training sets, unit text vectors, tags and years per item."""

    log_popularity: NDArray[np.float64]
    unit_vectors: NDArray[np.float64]
    tags: NDArray[np.float64]  # (items, distinct tags) 0/1
    years: NDArray[np.float64]  # nan when unknown

    @classmethod
    def build(cls, split: Split, text_vectors: FloatArray, catalog: Catalog) -> FeatureContext:
        """The context of a split's training sets and a catalog's text, tags and years."""
        counts = np.zeros(split.n_items, dtype=np.float64)
        for s in split.users.values():
            np.add.at(counts, s.train, 1.0)
        vectors = np.asarray(text_vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        names = sorted({t for tags in catalog.tags for t in tags})
        column = {t: i for i, t in enumerate(names)}
        tags = np.zeros((len(catalog), len(names)), dtype=np.float64)
        for i, item_tags in enumerate(catalog.tags):
            tags[i, [column[t] for t in item_tags]] = 1.0
        years = np.array([np.nan if y is None else float(y) for y in catalog.years] or [np.nan] * len(catalog))
        return cls(np.log1p(counts), vectors / np.maximum(norms, 1e-12), tags, years)

    def features(self, history: IntArray, items: IntArray, first: NDArray[np.floating]) -> NDArray[np.float64]:
        """One row of :data:`FEATURES` per candidate; ``items`` in first-stage order with their scores ``first``."""
        recent = self.unit_vectors[history[-3:]] if len(history) else np.zeros((1, self.unit_vectors.shape[1]))
        cosine = self.unit_vectors[items] @ recent.T
        share = self.tags[history].mean(axis=0) if len(history) else np.zeros(self.tags.shape[1])
        n_tags = self.tags[items].sum(axis=1)
        overlap = (self.tags[items] @ share) / np.maximum(n_tags, 1.0)
        history_years = self.years[history][~np.isnan(self.years[history])] if len(history) else np.array([])
        median = float(np.median(history_years)) if len(history_years) else np.nan
        gap = np.nan_to_num(np.abs(self.years[items] - median) / 10.0, nan=0.0)
        return np.column_stack(
            [
                zscore(first),
                self.log_popularity[items],
                cosine.mean(axis=1),
                cosine.max(axis=1),
                overlap,
                gap,
                np.arange(len(items), dtype=np.float64) / max(1, len(items) - 1),
            ]
        )


def positive_slot(c: Candidates) -> int | None:
    """Where the held-out item (candidate 0) stands in the first stage's top K, or None if it is not there."""
    where = np.flatnonzero(c.top == 0)
    return int(where[0]) if len(where) else None


def candidate_lists(
    split: Split,
    score_all: ScoreAllFn,
    users: Iterable[int],
    which: Literal["valid", "test"],
    k: int,
    protocol: Literal["loo99", "full"] = "loo99",
) -> dict[int, Candidates]:
    """Each user's candidate list (validation or test) under the protocol and the first stage's top ``k``."""
    return {u: candidates_for(split, u, which, protocol, score_all, k) for u in sorted(users)}


@dataclass(frozen=True)
class FeatureReranker:
    """A fitted reranker: standardisation of the features and the logistic weights."""

    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    weights: NDArray[np.float64]
    rows: int  # candidates it was fitted on

    def scores(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        """The reranker's logit per candidate."""
        return logistic_scores((features - self.mean) / self.scale, self.weights)

    def rank(self, ctx: FeatureContext, history: IntArray, c: Candidates) -> int:
        """0-based rank of the held-out item after reranking the top K (ties against it)."""
        slot = positive_slot(c)
        if slot is None:
            return c.positive_first_rank
        s = self.scores(ctx.features(history, c.items[c.top], c.first[c.top]))
        return int(np.count_nonzero(s >= s[slot]) - 1)

    def record(self) -> dict[str, Any]:
        """The fitted weights by feature (on standardised features) for the JSON."""
        return {"weights": dict(zip(FEATURES, map(float, self.weights[:-1]), strict=True)), "fit_rows": self.rows}


def labelled_rows(
    ctx: FeatureContext, split: Split, lists: dict[int, Candidates]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Features and 0/1 labels (held-out item = 1) of every list whose top K holds the held-out item."""
    xs, ys = [], []
    for u, c in lists.items():
        slot = positive_slot(c)
        if slot is None:
            continue
        xs.append(ctx.features(split.users[u].train, c.items[c.top], c.first[c.top]))
        y = np.zeros(len(c.top))
        y[slot] = 1.0
        ys.append(y)
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0)
    return np.vstack(xs), np.concatenate(ys)


def fit_reranker(ctx: FeatureContext, split: Split, valid_lists: dict[int, Candidates]) -> FeatureReranker | None:
    """Fit the logistic reranker on validation lists (the validation item vs the other top-K candidates); None
    when no validation list holds its held-out item in the top K (nothing to learn from)."""
    x, y = labelled_rows(ctx, split, valid_lists)
    if not len(y):
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return FeatureReranker(mean, scale, fit_logistic((x - mean) / scale, y, L2), len(y))


def feature_rerank_row(
    split: Split,
    score_all: ScoreAllFn,
    ctx: FeatureContext,
    *,
    fit_users: Sequence[int],
    test_users: Sequence[int],
    k: int,
    protocol: Literal["loo99", "full"] = "loo99",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit on ``fit_users``' validation lists, rerank ``test_users``' test lists: the row (test metrics, weights)
    and its comparison with the first stage on the same test lists (paired bootstrap over users)."""
    reranker = fit_reranker(ctx, split, candidate_lists(split, score_all, fit_users, "valid", k, protocol))
    tests = candidate_lists(split, score_all, test_users, "test", k, protocol)
    first = [c.positive_first_rank for c in tests.values()]
    row: dict[str, Any] = {"fit_users": len(fit_users), "rerank_k": k}
    if reranker is None:
        row["note"] = "no validation list held its item in the top K: nothing to fit, the first stage's order is kept"
        ranks = first
    else:
        ranks = [reranker.rank(ctx, split.users[u].train, c) for u, c in tests.items()]
        row |= reranker.record()
    return {"test": summarize(ranks), **row}, compare_ranks(ranks, first)
