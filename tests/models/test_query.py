"""The query protocol (models.evaluation.protocols, models.experiments.query): requests written from the held-out
item, satisfied@10, the metadata filter, and the query blend being the agent's own formula."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agent.engine import profile as agent_profile
from models.data.catalog import Catalog, Dataset
from models.data.movielens import load_ml100k
from models.data.request import filter_scores
from models.data.split import Split, make_loo_split
from models.errors import PersonaError
from models.evaluation.protocols import (
    PROTOCOLS,
    QueryList,
    Request,
    Reranker,
    Scores,
    chain,
    first_stage_only,
    make_requests,
    metadata_filter,
    query_lists,
    query_row,
    satisfied_at,
)
from models.experiments.evaluate import evaluate
from models.experiments.query import (
    BASELINE,
    LM_ROW,
    LM_WEIGHTS,
    QUERY_WEIGHTS,
    compare_rows,
    lm_lists,
    lm_reranker,
    lm_row,
    product_query,
    query_blend,
    query_vectors,
    sample_users,
)
from models.firststage.fit import TrainedModel, scorer_model
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams, with_query
from models.fm.assets import gguf_path, torch_dir
from models.fm.listwise import ListwisePromptBuilder, score_list
from models.fm.serving import FoundationModel
from models.text.encoder import ItemEncoder, embed_catalog
from models.types import FloatArray, IntArray

USERS = 60


@pytest.fixture(scope="module")
def world(_catalog_embeddings: Path) -> tuple[Dataset, Split, FloatArray]:
    """ML-100K, the first 60 users of the seed-0 split, and the catalog's text vectors (the session's cache)."""
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    return dataset, full.subset(sorted(full.users)[:USERS]), vectors


@pytest.fixture(scope="module")
def model(world: tuple[Dataset, Split, FloatArray]) -> TrainedModel:
    """An untrained first stage with non-zero private vectors (what the blend must carry, like the agent's)."""
    _, split, vectors = world
    shared = SharedParams.init(split.n_items, text_dim=vectors.shape[1], seed=3)
    rng = np.random.default_rng(4)
    privates = {u: PrivateParams(rng.normal(size=shared.dim).astype(np.float32)) for u in split.users}
    return scorer_model(shared, privates, vectors)


def test_requests_are_deterministic_and_satisfied_by_their_own_item(world: tuple[Dataset, Split, FloatArray]) -> None:
    dataset, split, _ = world
    catalog = dataset.catalog
    for which in ("valid", "test"):
        requests = make_requests(split, catalog, which, seed=0)
        assert requests == make_requests(split, catalog, which, seed=0)
        assert sorted(requests) == sorted(split.users)
        for u, request in requests.items():
            held_out = split.users[u].valid if which == "valid" else split.users[u].test
            assert request.satisfied_by(catalog, held_out)
            assert request.genre is None or request.genre in catalog.tags[held_out]
            assert re.fullmatch(r"an? (\d{4}s )?[a-z' ]+", request.text), request.text
    other_seed = make_requests(split, catalog, "test", seed=1)
    assert other_seed != make_requests(split, catalog, "test", seed=0)  # a seeded choice among several genres


def test_request_text_and_satisfaction() -> None:
    catalog = Catalog(
        "tiny",
        ["a", "b", "c", "d"],
        ["A", "B", "C", "D"],
        tags=[["Comedy"], ["Comedy", "Drama"], ["Drama"], []],
        years=[1994, 1987, 1999, None],
    )
    request = Request("Comedy", 1990)
    assert request.text == "a 1990s comedy"
    assert Request("Sci Fi", 1970).text == "a 1970s science fiction film"
    assert [request.satisfied_by(catalog, i) for i in range(4)] == [True, False, False, False]
    assert Request(None, 1990).mask(catalog, np.arange(4)).tolist() == [True, False, True, False]
    assert Request("Comedy", None).text == "a comedy"


def test_satisfied_at_on_a_hand_made_list() -> None:
    # index 0 is the held-out item; the top 3 by score are items 1 (0.9), 3 (0.7) and 0 (0.5)
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.2])
    satisfied = np.array([True, False, True, True, False])
    assert satisfied_at(scores, satisfied, k=3) == pytest.approx(2 / 3)
    assert satisfied_at(scores, satisfied, k=1) == 0.0
    assert satisfied_at(scores, satisfied, k=10) == pytest.approx(3 / 5)
    # ties: the held-out item loses them, so item 2 (tied at 0.5, unsatisfying here) takes the second place
    tied = np.array([0.5, 0.9, 0.5, 0.1])
    assert satisfied_at(tied, np.array([True, False, False, False]), k=2) == 0.0
    assert satisfied_at(tied, np.array([False, True, True, False]), k=2) == 1.0


def test_the_filter_puts_satisfying_items_first_in_first_stage_order() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=100)
    first[7] = first[8]  # a tie stays a tie
    mask = rng.random(100) < 0.3
    filtered = filter_scores(first, mask)
    order = np.argsort(-filtered, kind="stable")
    n = int(mask.sum())
    assert mask[order[:n]].all() and not mask[order[n:]].any()
    for group in (order[:n], order[n:]):
        assert (np.diff(first[group]) <= 0).all()  # first-stage order kept inside each group
    assert (filtered[7] == filtered[8]) == (mask[7] == mask[8])


def test_rows_on_real_lists(world: tuple[Dataset, Split, FloatArray], model: TrainedModel) -> None:
    dataset, split, vectors = world
    requests = make_requests(split, dataset.catalog, "test")
    lists = query_lists(model, split, dataset.catalog, "test", requests)
    assert all(len(lst.candidates) == 100 and lst.candidates[0] == split.users[lst.user].test for lst in lists)
    assert all(lst.satisfied[0] for lst in lists)
    plain = query_row(lists, first_stage_only)
    filtered = query_row(lists, metadata_filter(lists))
    for lst, first_rank, filter_rank, share in zip(lists, plain.ranks, filtered.ranks, filtered.satisfied, strict=True):
        assert share == min(int(lst.satisfied.sum()), 10) / 10  # the filter fills its top 10 with matches first
        # the held-out item satisfies its request, so the filter only removes unsatisfying items from above it
        assert filter_rank <= first_rank
    summaries, versus = compare_rows(
        lists,
        {
            "first_stage": first_stage_only,
            BASELINE: query_blend(model, split, vectors, _vectors(model, lists), 1.0),
            "metadata_filter": metadata_filter(lists),
        },
    )
    assert set(summaries) == {"first_stage", BASELINE, "metadata_filter"} and set(versus) == {
        "first_stage",
        "metadata_filter",
    }
    for row in versus.values():
        assert row["ci95"][0] <= row["delta_ndcg10"] <= row["ci95"][1]
        assert row["satisfied_ci95"][0] <= row["delta_satisfied10"] <= row["satisfied_ci95"][1]
        assert row["users"] == USERS
    expected = summaries["metadata_filter"]["satisfied@10"] - summaries[BASELINE]["satisfied@10"]
    assert versus["metadata_filter"]["delta_satisfied10"] == pytest.approx(expected)


def _vectors(model: TrainedModel, lists: list[QueryList]) -> dict[str, FloatArray]:
    return query_vectors(model, [lst.request.text for lst in lists])


def test_the_query_blend_is_the_agents_formula(world: tuple[Dataset, Split, FloatArray], model: TrainedModel) -> None:
    _, split, vectors = world
    assert agent_profile.with_query is with_query  # type: ignore[attr-defined]  # one formula: the agent calls the function the evaluation measures
    assert model.shared is not None
    scorer = FirstStageScorer(model.shared, vectors)
    u = sorted(split.users)[0]
    items = np.arange(50, dtype=np.int64)
    request = "a 1990s comedy"
    q = query_vectors(model, [request])
    blended = query_blend(model, split, vectors, q, 2.0)(u, request, items, np.zeros(50))
    state = scorer.user_state(split.users[u].train, model.privates[u])
    expected = scorer.score_state(state + 2.0 * np.linalg.norm(state) / np.linalg.norm(q[request]) * q[request], items)
    np.testing.assert_allclose(blended, expected, rtol=1e-5, atol=1e-5)
    # a second stage chained after the blend receives the blend's scores
    seen: list[Scores] = []

    def second(_user: int, _request: str, _items: IntArray, scores: Scores) -> Scores:
        seen.append(scores)
        return -scores

    chained = chain(query_blend(model, split, vectors, q, 2.0), second)(u, request, items, np.zeros(50))
    np.testing.assert_allclose(chained, -expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen[0], expected, rtol=1e-5, atol=1e-5)


def test_eval_query_protocol_end_to_end(world: tuple[Dataset, Split, FloatArray]) -> None:
    dataset, split, vectors = world
    assert "query" in PROTOCOLS
    body = evaluate("federated", "query", split, vectors, federated=FederatedConfig(rounds=1), catalog=dataset.catalog)
    rows = {"first_stage", BASELINE, "metadata_filter", "product_query"}
    assert set(body["metrics"]) == set(body["valid_metrics"]) == rows
    # The product reads the request's words and finds exactly what the filter was given.
    assert body["metrics"]["product_query"] == body["metrics"]["metadata_filter"]
    assert set(body["metrics"]["first_stage"]) == {"HR@10", "NDCG@10", "satisfied@10"}
    selected = body["selected"]
    assert selected["query_weight"] in QUERY_WEIGHTS and set(selected["valid_by_query_weight"]) == {
        str(w) for w in QUERY_WEIGHTS
    }
    chosen = selected["valid_by_query_weight"][str(selected["query_weight"])]["NDCG@10"]
    assert chosen == max(v["NDCG@10"] for v in selected["valid_by_query_weight"].values())
    assert chosen == pytest.approx(body["valid_metrics"][BASELINE]["NDCG@10"])
    assert (
        set(selected["vs_first_stage_query"])
        == set(selected["valid_vs_first_stage_query"])
        == {"first_stage", "metadata_filter", "product_query"}
    )
    with pytest.raises(PersonaError, match="first stage"):
        evaluate("popularity", "query", split, vectors, catalog=dataset.catalog)


LM_USERS = 3
"""Users whose validation and test lists the language model rescores in the test below (one prompt each)."""


def test_the_language_model_row_reads_the_request_and_blends_over_the_product(
    world: tuple[Dataset, Split, FloatArray], model: TrainedModel
) -> None:
    """``product_query_fm``: the product's top 20 rescored by the real llama.cpp model from a prompt that holds
    the request; the weight picked on validation from the grid; weight 0 is exactly the product; only the top 20
    move; every row compared with the product and the first stage on the sampled users."""
    dataset, split, vectors = world
    catalog = dataset.catalog
    users = sample_users(sorted(split.users), LM_USERS, 0)
    assert len(users) == LM_USERS and users == sample_users(sorted(split.users), LM_USERS, 0)
    assert sample_users(sorted(split.users), None, 0) == sorted(split.users)
    with pytest.raises(ValueError, match="at least one user"):
        sample_users(sorted(split.users), 0, 0)
    lists: dict[str, list[QueryList]] = {}
    reranks: dict[str, dict[str, Reranker]] = {}
    for which in ("valid", "test"):
        requests = make_requests(split, catalog, which)
        lists[which] = [lst for lst in query_lists(model, split, catalog, which, requests) if lst.user in users]
        blend = query_blend(model, split, vectors, _vectors(model, lists[which]), 0.25)
        reranks[which] = {
            "first_stage": first_stage_only,
            BASELINE: blend,
            "product_query": product_query(catalog, blend),
        }
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog, history_items=3)
    with FoundationModel(gguf_path(), n_threads=1, n_ctx=1024) as fm:
        record = lm_row(lists["valid"], lists["test"], reranks, fm, builder, split)
        # the scores come from the prompt with the request: the first list's top scored again by hand
        first = lists["test"][0]
        scored = lm_lists([first], reranks["test"]["product_query"], fm, builder, split)[first.user]
        again = score_list(
            fm, builder, split.users[first.user].train, first.candidates[scored.top].tolist(), first.request.text
        )
        plain = score_list(fm, builder, split.users[first.user].train, first.candidates[scored.top].tolist())
        mixed = lm_lists([first], reranks["test"]["product_query"], fm, builder, split, shuffle_seed=0)[first.user]
        order = np.random.default_rng([0, first.user, 47]).permutation(len(scored.top))
        shown = score_list(
            fm,
            builder,
            split.users[first.user].train,
            first.candidates[scored.top][order].tolist(),
            first.request.text,
        )
    # shuffled: the same top, each candidate scored from its own letter in the shuffled prompt
    np.testing.assert_array_equal(mixed.top, scored.top)
    np.testing.assert_allclose(mixed.lm[order], shown, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scored.lm, again, rtol=1e-4, atol=1e-4)
    assert not np.allclose(scored.lm, plain, atol=1e-3)  # the request changes what the model reads
    text = builder._tok.decode(
        builder.prompt(
            split.users[first.user].train.tolist(), first.candidates[scored.top].tolist(), first.request.text
        )
    )
    assert f"\nLooking for: {first.request.text}\nOptions:" in text
    # the top 20 are the product's, in its order
    product = np.asarray(
        reranks["test"]["product_query"](first.user, first.request.text, first.candidates, first.first_stage)
    )
    np.testing.assert_array_equal(scored.top, np.argsort(-product, kind="stable")[:20])
    # weight 0 is the product exactly; any weight only reorders the top 20 and keeps the rest in order
    at_zero = query_row([first], lm_reranker({first.user: scored}, 0.0))
    same = query_row([first], reranks["test"]["product_query"])
    assert at_zero.ranks == same.ranks and at_zero.satisfied.tolist() == same.satisfied.tolist()
    moved = lm_reranker({first.user: scored}, 1.0)(first.user, first.request.text, first.candidates, first.first_stage)
    order = np.argsort(-moved, kind="stable")
    assert set(order[:20].tolist()) == set(scored.top.tolist())
    np.testing.assert_array_equal(order[20:], np.argsort(-product, kind="stable")[20:])
    with pytest.raises(ValueError, match="not the ones"):
        lm_reranker({first.user: scored}, 1.0)(first.user, "", first.candidates[::-1].copy(), first.first_stage)
    # the record: the weight validation picked (best NDCG@10, smallest on ties), comparisons on the sampled users
    table = record["valid_by_weight"]
    assert set(table) == {str(w) for w in LM_WEIGHTS} and record["weight"] in LM_WEIGHTS
    best = max(v["NDCG@10"] for v in table.values())
    assert table[str(record["weight"])]["NDCG@10"] == best
    assert all(w >= record["weight"] for w in LM_WEIGHTS if table[str(w)]["NDCG@10"] == best)
    assert record["valid_metrics"][LM_ROW] == table[str(record["weight"])]
    shuffled = record["letters_shuffled"]
    assert set(shuffled["lm_auc_in_top_k"]) == {"valid", "test"} and set(shuffled["lm_alone"]) == {"valid", "test"}
    assert (
        shuffled["lm_alone"]["test"] != record["lm_alone"]["test"]
        or shuffled["lm_auc_in_top_k"] != record["lm_auc_in_top_k"]
    )
    assert set(record["metrics"]) == {"first_stage", BASELINE, "product_query", LM_ROW}
    for baseline, versus in (("product_query", record["vs_product_query"]), ("first_stage", record["vs_first_stage"])):
        assert baseline not in versus and versus[LM_ROW]["users"] == LM_USERS
        delta = record["metrics"][LM_ROW]["NDCG@10"] - record["metrics"][baseline]["NDCG@10"]
        assert versus[LM_ROW]["delta_ndcg10"] == pytest.approx(delta)
    assert record["prompts"] == 2 * LM_USERS and record["users"] == LM_USERS
