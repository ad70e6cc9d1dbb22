"""The query protocol for the first stage: ``agent eval --protocol query --model federated``.

Each user asks for something written from their held-out item's metadata ("a 1990s comedy",
:func:`models.evaluation.protocols.make_requests`). Rows, each a :data:`~models.evaluation.protocols.Reranker` over
the user's LOO-99 candidates (the same candidates as ``loo99``):

* ``first_stage`` — the first stage alone; the request is ignored;
* ``first_stage_query`` — the first stage with its MiniLM query blend, the formula ``agent suggest --query`` uses
  for a request it cannot read for tags or a decade
  (:func:`models.firststage.scorer.with_query`), its weight picked on validation from :data:`QUERY_WEIGHTS`;
* ``metadata_filter`` — the first stage's order restricted to the candidates that satisfy the request, then the rest;
* ``product_query`` — what ``agent suggest --query`` does (:func:`product_query`): a request whose *words* name
  catalog tags or a decade gets the filter over the first stage, reached from the text alone; others the blend.

Every row is compared with ``first_stage_query`` (mean per-user difference and paired bootstrap 95 % interval over
users, for NDCG@10, HR@10 and satisfied@10). A second stage (the listwise language model) plugs in as one more row:
a :data:`~models.evaluation.protocols.Reranker` given to :func:`compare_rows`, chained after the query blend with
:func:`models.evaluation.protocols.chain` so that it reranks the blended first stage's scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.data.request import filter_scores, parse_request
from models.data.split import Split
from models.errors import PersonaError
from models.evaluation.protocols import (
    QUERY_TOP,
    QueryList,
    QueryRow,
    Reranker,
    Scores,
    first_stage_only,
    make_requests,
    metadata_filter,
    query_lists,
    query_row,
)
from models.evaluation.stats import RESAMPLES, compare_ranks, paired_bootstrap
from models.federation import Aggregator
from models.firststage.fit import TrainedModel, train_model
from models.firststage.recipe import CentralConfig, FederatedConfig
from models.firststage.scorer import QUERY_WEIGHT, FirstStageScorer, PrivateParams, query_vector, with_query
from models.text.encoder import ItemEncoder
from models.types import FloatArray, IntArray, Progress

QUERY_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""The query weights validation chooses from. It picked 0.25 on ML-100K (validation NDCG@10 0.483 at 0.25, 0.328
at 1), which is why the product's default, :data:`models.firststage.scorer.QUERY_WEIGHT`, is 0.25."""
BASELINE = "first_stage_query"


def query_vectors(model: TrainedModel, texts: list[str]) -> dict[str, FloatArray]:
    """Each distinct request text encoded by MiniLM and projected into the first stage's item space."""
    if model.shared is None:
        raise PersonaError("The query blend needs a first stage with text vectors.", hint="Use central or federated.")
    distinct = sorted(set(texts))
    encoded = ItemEncoder().encode(distinct) if distinct else np.zeros((0, 0), dtype=np.float32)
    return {text: query_vector(model.shared, encoded[i]) for i, text in enumerate(distinct)}


def query_blend(
    model: TrainedModel, split: Split, text_vectors: FloatArray, vectors: dict[str, FloatArray], weight: float
) -> Reranker:
    """The first stage with the user state pulled toward the request (``agent suggest --query``'s formula)."""
    assert model.shared is not None
    scorer = FirstStageScorer(model.shared, text_vectors)
    zero = PrivateParams.init(model.shared.dim)

    def rerank(user: int, request: str, items: IntArray, _first_stage: Scores) -> Scores:
        state = scorer.user_state(split.users[user].train, model.privates.get(user, zero))
        return np.asarray(scorer.score_state(with_query(state, vectors[request], weight), items), dtype=np.float64)

    return rerank


def compare_rows(
    lists: list[QueryList], rows: Mapping[str, Reranker], *, baseline: str = BASELINE, seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Run each row over the lists: its HR@10 / NDCG@10 / satisfied@10, and its difference from the ``baseline``
    row (mean per-user difference with a paired bootstrap 95 % interval over users)."""
    if baseline not in rows:
        raise ValueError(f"the baseline row {baseline!r} is not among the rows {sorted(rows)}")
    results: dict[str, QueryRow] = {name: query_row(lists, rerank) for name, rerank in rows.items()}
    base = results[baseline]
    versus: dict[str, dict[str, Any]] = {}
    for name, row in results.items():
        if name == baseline:
            continue
        delta, ci = paired_bootstrap(row.satisfied, base.satisfied, seed=seed)
        versus[name] = {
            **compare_ranks(row.ranks, base.ranks, seed=seed),
            f"delta_satisfied{QUERY_TOP}": delta,
            "satisfied_ci95": list(ci),
        }
    return {name: row.summary() for name, row in results.items()}, versus


def _rows(
    model: TrainedModel,
    split: Split,
    catalog: Catalog,
    text_vectors: FloatArray,
    lists: list[QueryList],
    weight: float,
) -> dict[str, Reranker]:
    vectors = query_vectors(model, [lst.request.text for lst in lists])
    blend = query_blend(model, split, text_vectors, vectors, weight)
    return {
        "first_stage": first_stage_only,
        BASELINE: blend,
        "metadata_filter": metadata_filter(lists),
        "product_query": product_query(catalog, blend),
    }


def product_query(catalog: Catalog, blend: Reranker) -> Reranker:
    """What ``agent suggest --query`` does: a request whose words name catalog tags or a decade
    (:func:`models.data.request.parse_request`) puts the first stage's candidates that satisfy it first, without
    the MiniLM pull; any other request gets the blend. (Filtering after the blend instead was measured worse on
    validation: NDCG@10 0.766 against 0.790, HR@10 0.949 against 0.970.)"""

    def rerank(user: int, request: str, items: IntArray, first_stage: Scores) -> Scores:
        asked = parse_request(request, catalog)  # read once: decides the path and gives the filter
        if asked:
            return filter_scores(first_stage, asked.mask(catalog, items))
        return blend(user, request, items, first_stage)

    return rerank


def pick_query_weight(
    model: TrainedModel, split: Split, text_vectors: FloatArray, lists: list[QueryList]
) -> tuple[float, dict[str, dict[str, float]]]:
    """The query weight with the best validation NDCG@10 (the first in :data:`QUERY_WEIGHTS` on ties), and each
    weight's validation HR@10 / NDCG@10 / satisfied@10."""
    vectors = query_vectors(model, [lst.request.text for lst in lists])
    table: dict[str, dict[str, float]] = {}
    best: tuple[float, float] | None = None
    for weight in QUERY_WEIGHTS:
        summary = query_row(lists, query_blend(model, split, text_vectors, vectors, weight)).summary()
        table[str(weight)] = summary
        if best is None or summary["NDCG@10"] > best[1]:
            best = (weight, summary["NDCG@10"])
    assert best is not None
    return best[0], table


def evaluate_query(
    name: str,
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    aggregator: Aggregator | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train the first stage (selected on LOO-99 validation as usual), pick the query weight on the validation
    requests, and measure every row on the test requests; the same rows on validation too.

    Returns (test metrics per row, validation metrics per row, the selection record with the comparisons)."""
    if name not in ("central", "federated"):
        raise PersonaError(
            f"The query protocol measures the first stage (central or federated), not {name!r}.",
            hint="Use --model federated or --model central with --protocol query.",
        )
    model = train_model(
        name,
        split,
        text_vectors,
        federated=federated,
        central=central,
        aggregator=aggregator,
        progress=progress,
    )
    order: tuple[Literal["valid", "test"], ...] = ("valid", "test")
    by_split: dict[str, tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]] = {}
    requests_seen: dict[str, dict[str, Any]] = {}
    weight: float = QUERY_WEIGHT
    by_weight: dict[str, dict[str, float]] = {}
    for which in order:
        requests = make_requests(split, catalog, which, seed=seed)
        lists = query_lists(model, split, catalog, which, requests)
        if which == "valid":
            weight, by_weight = pick_query_weight(model, split, text_vectors, lists)
        by_split[which] = compare_rows(lists, _rows(model, split, catalog, text_vectors, lists, weight), seed=seed)
        satisfying = np.array([lst.satisfied[1:].mean() for lst in lists])
        requests_seen[which] = {
            "users": len(lists),
            "distinct_requests": len({lst.request.text for lst in lists}),
            "negatives_satisfying": round(float(satisfying.mean()), 4),
            "examples": sorted({lst.request.text for lst in lists})[:5],
        }
    selected = {
        **{k: v for k, v in model.selected.items() if k != "history"},
        "query_weight": weight,
        "query_weight_default": QUERY_WEIGHT,
        "valid_by_query_weight": by_weight,
        "requests": requests_seen,
        "request_seed": seed,
        "baseline": BASELINE,
        "vs_first_stage_query": by_split["test"][1],
        "valid_vs_first_stage_query": by_split["valid"][1],
        "resamples": RESAMPLES,
    }
    return by_split["test"][0], by_split["valid"][0], selected
