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
users, for NDCG@10, HR@10 and satisfied@10).

With ``lm_users`` (``agent eval --protocol query --with-fm [--test-users N]``) one more row, ``product_query_fm``
(:func:`lm_row`): the two-stage system on requests. The product's order (``product_query``) gives the top 20; the
base language model (llama.cpp, no adapter) reads the listwise prompt of :mod:`models.fm.listwise` *with the request*
("Looking for: a 1990s comedy") and its letter logits are blended as ``z(product) + w · z(language model)``, ``w``
picked on validation lists only from :data:`LM_WEIGHTS`; the rows below the top 20 keep the product's order. It runs
on a seeded sample of users (validation and test lists of the same users) and is compared, on those users, with
``product_query`` and with ``first_stage`` (paired bootstrap 95 % intervals).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.data.request import filter_scores, parse_request
from models.data.split import Split
from models.errors import PersonaError
from models.evaluation.protocols import (
    QUERY_TOP,
    RERANK_K,
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
from models.evaluation.stats import RESAMPLES, compare_ranks, paired_bootstrap, seeded_sample
from models.federation import Aggregator
from models.firststage.fit import TrainedModel, train_model
from models.firststage.recipe import CentralConfig, FederatedConfig
from models.firststage.scorer import QUERY_WEIGHT, FirstStageScorer, PrivateParams, query_vector, with_query
from models.fm.assets import require_gguf, torch_dir
from models.fm.blend import RerankedList, blend, fm_auc
from models.fm.listwise import LetterScorer, ListwisePromptBuilder, score_list_shuffled
from models.fm.serving import FoundationModel
from models.text.encoder import ItemEncoder
from models.types import FloatArray, IntArray, Progress

LM_ROW = "product_query_fm"
LM_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
"""The blend weights of the language model over the product's order that validation chooses from (0: off)."""
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


@dataclass(frozen=True)
class LMList:
    """One list rescored by the language model: the product's scores of all candidates, the positions of its top
    ``k`` (best first) and the model's letter logits for them (in that order)."""

    candidates: IntArray
    product: Scores
    top: IntArray
    lm: FloatArray

    def reranked(self) -> RerankedList:
        """As a :class:`~models.fm.blend.RerankedList` (for :func:`~models.fm.blend.fm_auc`)."""
        positive_rank = int(np.count_nonzero(self.product[1:] >= self.product[0]))
        return RerankedList(self.top, self.product[self.top].astype(np.float32), self.lm, positive_rank)


def lm_lists(
    lists: Sequence[QueryList],
    product: Reranker,
    model: LetterScorer,
    builder: ListwisePromptBuilder,
    split: Split,
    *,
    k: int = RERANK_K,
    shuffle_seed: int | None = None,
    progress: Progress | None = None,
) -> dict[int, LMList]:
    """Each list's product order, and the language model's listwise scores of its top ``k`` after the user's
    training history and the request (one prompt per list). With ``shuffle_seed`` the top ``k`` are lettered in a
    random order seeded by it and the user (the scores still come back in the product's order): a diagnostic of
    whether the model reads the titles and the request or the letters' order."""
    out: dict[int, LMList] = {}
    for done, lst in enumerate(lists, start=1):
        scores = np.asarray(product(lst.user, lst.request.text, lst.candidates, lst.first_stage), dtype=np.float64)
        top = np.argsort(-scores, kind="stable")[:k].astype(np.int64)
        history = split.users[lst.user].train
        seed = None if shuffle_seed is None else [shuffle_seed, lst.user, 47]
        lm = score_list_shuffled(model, builder, history, lst.candidates[top].tolist(), seed, lst.request.text)
        out[lst.user] = LMList(lst.candidates, scores, top, np.asarray(lm, dtype=np.float32))
        if progress is not None and (done % 25 == 0 or done == len(lists)):
            progress("query_lm", {"lists": done, "of": len(lists)})
    return out


def lm_reranker(scored: Mapping[int, LMList], weight: float) -> Reranker:
    """The row ``product_query_fm`` at ``weight``: the product's top ``k`` reordered by ``z(product) + weight ·
    z(language model)`` (:func:`models.fm.blend.blend`, the product's formula) and kept above the rest, which stay
    in the product's order. At weight 0 it is the product's order."""

    def rerank(user: int, _request: str, items: IntArray, _first_stage: Scores) -> Scores:
        lst = scored[user]
        if not np.array_equal(items, lst.candidates):
            raise ValueError(f"user {user}'s candidates are not the ones the language model scored")
        out = np.asarray(lst.product, dtype=np.float64).copy()
        rest = np.delete(out, lst.top)
        finite = rest[np.isfinite(rest)]
        floor = float(finite.max()) if len(finite) else 0.0
        final = blend(lst.product[lst.top], lst.lm, weight)
        out[lst.top] = floor + 1.0 + final - final.min()
        return out

    return rerank


def pick_lm_weight(
    lists: list[QueryList], scored: Mapping[int, LMList], weights: Sequence[float] = LM_WEIGHTS
) -> tuple[float, dict[str, dict[str, float]]]:
    """The weight with the best NDCG@10 on these (validation) lists, the smallest on ties, and each weight's
    HR@10 / NDCG@10 / satisfied@10."""
    table = {str(w): query_row(lists, lm_reranker(scored, w)).summary() for w in weights}
    best = max(sorted(weights), key=lambda w: (table[str(w)]["NDCG@10"], -w))
    return best, table


def lm_row(
    valid: list[QueryList],
    test: list[QueryList],
    rows: Mapping[str, Mapping[str, Reranker]],
    model: LetterScorer,
    builder: ListwisePromptBuilder,
    split: Split,
    *,
    k: int = RERANK_K,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``product_query_fm`` on these validation and test lists (the same users): the weight picked on validation,
    then on test every row of ``rows[split]`` with it, each against ``product_query`` and against ``first_stage``
    (paired bootstrap 95 % intervals over these users), the model's own within-top-``k`` AUC and its order alone."""
    clock = time.perf_counter()
    scored_valid = lm_lists(valid, rows["valid"]["product_query"], model, builder, split, k=k, progress=progress)
    weight, by_weight = pick_lm_weight(valid, scored_valid)
    scored_test = lm_lists(test, rows["test"]["product_query"], model, builder, split, k=k, progress=progress)
    seconds = time.perf_counter() - clock
    # the diagnostic: the same prompts with the letters shuffled (never used to pick anything)
    mixed = {
        which: lm_lists(lists, rows[which]["product_query"], model, builder, split, k=k, shuffle_seed=seed)
        for which, lists in (("valid", valid), ("test", test))
    }
    test_rows = {**rows["test"], LM_ROW: lm_reranker(scored_test, weight)}
    summaries, vs_product = compare_rows(test, test_rows, baseline="product_query", seed=seed)
    _, vs_first = compare_rows(test, test_rows, baseline="first_stage", seed=seed)
    valid_rows = {**rows["valid"], LM_ROW: lm_reranker(scored_valid, weight)}
    valid_summaries = {name: query_row(valid, rerank).summary() for name, rerank in valid_rows.items()}
    alone = 1e6  # the language model's order within the top k, the product's only to break its ties
    prompts = len(valid) + len(test)
    return {
        "users": len(test),
        "k": k,
        "adapters": "none (base model)",
        "prompt": "listwise, 10 history titles, 'Looking for: <request>', the product's top k lettered A..T",
        "weight": weight,
        "weights": list(LM_WEIGHTS),
        "valid_by_weight": by_weight,
        "metrics": summaries,
        "valid_metrics": valid_summaries,
        "vs_product_query": vs_product,
        "vs_first_stage": vs_first,
        "lm_alone": {
            "test": query_row(test, lm_reranker(scored_test, alone)).summary(),
            "valid": query_row(valid, lm_reranker(scored_valid, alone)).summary(),
        },
        "lm_auc_in_top_k": {
            "valid": fm_auc([lst.reranked() for lst in scored_valid.values()]),
            "test": fm_auc([lst.reranked() for lst in scored_test.values()]),
        },
        "letters_shuffled": {
            "lm_auc_in_top_k": {
                which: fm_auc([lst.reranked() for lst in scored.values()]) for which, scored in mixed.items()
            },
            "lm_alone": {
                which: query_row(lists, lm_reranker(mixed[which], alone)).summary()
                for which, lists in (("valid", valid), ("test", test))
            },
        },
        "lists_with_positive_in_top_k": {
            "valid": sum(bool(np.any(lst.top == 0)) for lst in scored_valid.values()),
            "test": sum(bool(np.any(lst.top == 0)) for lst in scored_test.values()),
        },
        "prompts": prompts,  # and as many again with the letters shuffled
        "lm_seconds": round(seconds, 1),
        "seconds_per_prompt": round(seconds / max(1, prompts), 3),
    }


def sample_users(users: Sequence[int], n: int | None, seed: int) -> list[int]:
    """A seeded sample of ``n`` users (all of them when ``n`` is None or not smaller), sorted."""
    return seeded_sample(users, n, [seed, 43])


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
    with_fm: bool = False,
    lm_users: int | None = None,
    lm_threads: int = 1,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train the first stage (selected on LOO-99 validation as usual), pick the query weight on the validation
    requests, and measure every row on the test requests; the same rows on validation too. ``with_fm`` adds the
    row ``product_query_fm`` (:func:`lm_row`) on a seeded sample of ``lm_users`` users (None: all), its figures
    under ``selected["product_query_fm"]`` and its test / validation metrics as that row (on the sample only).

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
    lists_by_split: dict[str, list[QueryList]] = {}
    rows_by_split: dict[str, dict[str, Reranker]] = {}
    for which in order:
        requests = make_requests(split, catalog, which, seed=seed)
        lists = query_lists(model, split, catalog, which, requests)
        if which == "valid":
            weight, by_weight = pick_query_weight(model, split, text_vectors, lists)
        rows = _rows(model, split, catalog, text_vectors, lists, weight)
        lists_by_split[which], rows_by_split[which] = lists, rows
        by_split[which] = compare_rows(lists, rows, seed=seed)
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
    metrics, valid_metrics = by_split["test"][0], by_split["valid"][0]
    if with_fm:
        sample = set(sample_users(sorted(split.users), lm_users, seed))
        chosen = {which: [lst for lst in lists_by_split[which] if lst.user in sample] for which in order}
        builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
        with FoundationModel(require_gguf(), n_threads=lm_threads, n_ctx=1024) as fm:
            record = lm_row(
                chosen["valid"], chosen["test"], rows_by_split, fm, builder, split, seed=seed, progress=progress
            )
        record["sampled_users"] = len(sample)
        record["sample_seed"] = [seed, 43]
        metrics = {**metrics, LM_ROW: record["metrics"][LM_ROW]}
        valid_metrics = {**valid_metrics, LM_ROW: record["valid_metrics"][LM_ROW]}
        selected[LM_ROW] = record
    return metrics, valid_metrics, selected
