"""The ``agent eval`` harness: train or load the named model, select it on validation, report test metrics.

Models: ``popularity``, ``central``, ``federated`` (:mod:`models.firststage.fit`), ``persona-base`` (the federated
first stage with its top candidates rescored by the foundation model's listwise prompt, no adapters) and ``persona`` /
``persona-shared`` (the whole system, :mod:`models.experiments.persona`). Protocols:
:mod:`models.evaluation.protocols`. The first-stage models (central, federated) also report the cheap non-LM
reranker of their top 20 (:mod:`models.experiments.feature_rerank`) and its ΔNDCG@10 with a bootstrap interval.
The ``query`` protocol (requests written from the held-out item's metadata) is :mod:`models.experiments.query`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from models.data.catalog import Catalog
from models.data.split import Split
from models.errors import PersonaError
from models.evaluation.metrics import summarize
from models.evaluation.protocols import (
    COLDSTART_KS,
    PROTOCOLS,
    RERANK_K,
    coldstart_cut,
    coldstart_users,
    metrics_for,
    protocol_metrics,
    user_ranks,
)
from models.evaluation.stats import compare_ranks
from models.experiments.feature_rerank import FeatureContext, feature_rerank_row
from models.experiments.persona import PersonaConfig, evaluate_persona
from models.experiments.persona_coldstart import evaluate_persona_coldstart
from models.experiments.query import evaluate_query
from models.federation import Aggregator
from models.firststage.fit import cold_private_model, train_federated, train_model
from models.firststage.recipe import CentralConfig, FederatedConfig
from models.fm.assets import gguf_path, torch_dir
from models.fm.blend import pick_weight, rerank_lists
from models.fm.listwise import ListwisePromptBuilder, score_list
from models.fm.serving import FoundationModel
from models.types import FloatArray, IntArray, Progress


def evaluate_coldstart(
    name: str,
    split: Split,
    text_vectors: FloatArray,
    *,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    progress: Progress | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, Any]]:
    """Train on the warm users only; score each cold user from their first k items (k in 0, 1, 3, 5).

    A cold user's private vector is trained on those k items alone (zero for k = 0). Returns test and validation
    LOO-99 metrics per k, and the model-selection record.
    """
    warm, cold = coldstart_users(split)
    model = train_model(name, split, text_vectors, users=warm, federated=federated, central=central, progress=progress)
    test: dict[str, dict[str, float]] = {}
    valid: dict[str, dict[str, float]] = {}
    shared = model.shared
    for k in COLDSTART_KS:
        cut = coldstart_cut(split, cold, k)
        if name == "popularity" or shared is None:
            k_model = model
        else:
            k_model = cold_private_model(shared, cut, text_vectors, federated)
        test[f"k={k}"] = metrics_for(k_model, cut, "loo99", "test")
        valid[f"k={k}"] = metrics_for(k_model, cut, "loo99", "valid")
    return test, valid, {**model.selected, "cold_users": len(cold), "warm_users": len(warm)}


def evaluate_two_stage(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    federated: FederatedConfig = FederatedConfig(),
    k: int = RERANK_K,
    progress: Progress | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """LOO-99 of the federated first stage with its top ``k`` rescored by the foundation model (no adapters yet).

    The blend weight is picked on validation; weight 0 is the first stage alone, so the selection can only
    keep the foundation model where validation says it helps.
    """
    first = train_federated(split, text_vectors, config=federated, progress=progress)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
    with FoundationModel(gguf_path(), n_ctx=1024, max_candidates=k) as fm:

        def fm_score(_u: int, history: IntArray, items: IntArray) -> FloatArray:
            return score_list(fm, builder, history, items.tolist())

        valid_lists = rerank_lists(split, "valid", first.score, fm_score, k=k)
        weight, valid = pick_weight(valid_lists)
        test_lists = rerank_lists(split, "test", first.score, fm_score, k=k)
    ranks, first_ranks = [lst.rank(weight) for lst in test_lists], [lst.rank(0.0) for lst in test_lists]
    test = summarize(ranks)
    selected = {
        **first.selected,
        "rerank_k": k,
        "blend_weight": weight,
        "first_stage_metrics": summarize(first_ranks),
        "vs_first_stage": {"persona-base": compare_ranks(ranks, first_ranks)},
    }
    return test, valid, selected


def evaluate(
    name: str,
    protocol: str,
    split: Split,
    text_vectors: FloatArray,
    *,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    aggregator: Aggregator | None = None,
    fm_aggregator: Aggregator | None = None,
    catalog: Catalog | None = None,
    persona: PersonaConfig | None = None,
    query_fm: bool = False,
    query_fm_users: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train or load the model, select on validation, and report test metrics: the ``agent eval`` JSON body.

    ``query_fm`` (query protocol only) adds the language-model row ``product_query_fm`` on a seeded sample of
    ``query_fm_users`` users (None: all; :func:`models.experiments.query.evaluate_query`).

    ``persona`` and ``persona-shared`` (the whole system with both foundation-model adapters, or the shared one
    only) are described in :mod:`models.experiments.persona`; ``persona`` is their :class:`PersonaConfig`; their
    first stage trains through ``aggregator`` and their shared adapter through ``fm_aggregator``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    start = time.perf_counter()
    metrics: dict[str, Any]
    valid_metrics: dict[str, Any]
    if protocol == "query":
        if catalog is None:
            raise PersonaError("The query protocol needs the catalog's metadata.", hint="Pass the dataset's catalog.")
        metrics, valid_metrics, selected = evaluate_query(
            name,
            split,
            text_vectors,
            catalog,
            federated=federated,
            central=central,
            aggregator=aggregator,
            seed=federated.seed,
            with_fm=query_fm,
            lm_users=query_fm_users,
            progress=progress,
        )
    elif name == "persona-base":
        if protocol != "loo99" or catalog is None:
            raise PersonaError(
                "persona-base is measured on the loo99 protocol only.", hint="Use --protocol loo99 with this model."
            )
        metrics, valid_metrics, selected = evaluate_two_stage(
            split, text_vectors, catalog, federated=federated, progress=progress
        )
    elif name in ("persona", "persona-shared"):
        if catalog is None:
            raise PersonaError(f"{name} needs the catalog's text.", hint="Pass the dataset's catalog.")
        if protocol == "coldstart":
            metrics, valid_metrics, selected = evaluate_persona_coldstart(
                split,
                text_vectors,
                catalog,
                private=name == "persona",
                federated=federated,
                config=persona or PersonaConfig(),
                progress=progress,
            )
        else:
            metrics, valid_metrics, selected = evaluate_persona(
                split,
                text_vectors,
                catalog,
                protocol="loo99" if protocol == "loo99" else "full",
                private=name == "persona",
                federated=federated,
                config=persona or PersonaConfig(),
                aggregator=aggregator,
                fm_aggregator=fm_aggregator,
                progress=progress,
            )
    elif protocol == "coldstart":
        test, valid, selected = evaluate_coldstart(
            name, split, text_vectors, federated=federated, central=central, progress=progress
        )
        metrics = dict(test)
        valid_metrics = dict(valid)
    else:
        proto: Literal["loo99", "full"] = "loo99" if protocol == "loo99" else "full"
        model = train_model(
            name,
            split,
            text_vectors,
            select_protocol=proto,
            federated=federated,
            central=central,
            aggregator=aggregator,
            progress=progress,
        )
        test_ranks = user_ranks(model, split, proto, "test")
        metrics = protocol_metrics(list(test_ranks.values()), proto)
        valid_metrics = metrics_for(model, split, proto, "valid")
        selected = {**model.selected, "test_ranks": {"first_stage": test_ranks}}
        if name != "popularity" and catalog is not None:
            users = sorted(split.users)
            ctx = FeatureContext.build(split, text_vectors, catalog)
            row, versus = feature_rerank_row(
                split, model.score_all, ctx, fit_users=users, test_users=users, k=RERANK_K, protocol=proto
            )
            selected = {**selected, "feature_rerank": row, "vs_first_stage": {"feature_rerank": versus}}
    return {
        "protocol": protocol,
        "model": name,
        "history": "train",
        "metrics": metrics,
        "valid_metrics": valid_metrics,
        "selected": selected,
        "wall_s": round(time.perf_counter() - start, 2),
    }
