"""The cheap non-LM reranker (models.experiments.feature_rerank) on real ML-100K users with the popularity first
stage: it learns from validation lists only and only reorders the top K."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.data.movielens import load_ml100k
from models.data.split import Split, make_loo_split
from models.experiments.evaluate import evaluate
from models.experiments.feature_rerank import (
    FEATURES,
    FeatureContext,
    candidate_lists,
    feature_rerank_row,
    fit_reranker,
)
from models.experiments.persona import variant_comparisons
from models.experiments.persona_rerank import VARIANTS, UserResult
from models.firststage.fit import popularity_model
from models.firststage.recipe import FederatedConfig
from models.fm.blend import RerankedList
from models.text.encoder import ItemEncoder, embed_catalog

K = 20


@pytest.fixture(scope="module")
def slice_(_catalog_embeddings: Path) -> tuple[Split, FeatureContext]:
    """The first 80 users of the seed-0 split and their feature context (text vectors from the session's cache)."""
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    split = full.subset(sorted(full.users)[:80])
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    return split, FeatureContext.build(split, vectors, dataset.catalog)


def scrambled_test_lists(split: Split) -> Split:
    """The same users with other test items and negatives: what fitting must never look at."""
    rng = np.random.default_rng(9)
    users = {}
    for u, s in split.users.items():
        negs = rng.choice(split.n_items, size=len(s.test_negs), replace=False)
        users[u] = replace(s, test=int(rng.integers(split.n_items)), test_negs=negs.astype(np.int64))
    return Split(split.dataset, split.seed, split.n_items, users)


def test_the_fit_sees_validation_lists_only(slice_: tuple[Split, FeatureContext]) -> None:
    split, ctx = slice_
    score_all = popularity_model(split).score_all
    users = sorted(split.users)
    row, _ = feature_rerank_row(split, score_all, ctx, fit_users=users, test_users=users[:5], k=K)
    other, _ = feature_rerank_row(
        scrambled_test_lists(split), score_all, ctx, fit_users=users, test_users=users[:5], k=K
    )
    assert row["weights"] == other["weights"] and set(row["weights"]) == set(FEATURES)
    fewer = fit_reranker(ctx, split, candidate_lists(split, score_all, users[:40], "valid", K))
    assert fewer is not None and fewer.record()["weights"] != row["weights"]  # the validation lists do matter


def test_reranking_reorders_the_top_k_only(slice_: tuple[Split, FeatureContext]) -> None:
    split, ctx = slice_
    score_all = popularity_model(split).score_all
    users = sorted(split.users)
    reranker = fit_reranker(ctx, split, candidate_lists(split, score_all, users, "valid", K))
    assert reranker is not None and reranker.rows % K == 0
    tests = candidate_lists(split, score_all, users, "test", K)
    moved = 0
    for u, c in tests.items():
        rank = reranker.rank(ctx, split.users[u].train, c)
        assert (rank < K) == (c.positive_first_rank < K)
        if c.positive_first_rank >= K:
            assert rank == c.positive_first_rank
        moved += rank != c.positive_first_rank
    assert moved > 0
    row, versus = feature_rerank_row(split, score_all, ctx, fit_users=users, test_users=users, k=K)
    assert versus["users"] == len(users) and versus["ci95"][0] <= versus["delta_ndcg10"] <= versus["ci95"][1]
    assert set(row["test"]) == {"HR@10", "NDCG@10"}


def test_the_federated_eval_reports_the_feature_rerank_row_against_the_first_stage(
    slice_: tuple[Split, FeatureContext], _catalog_embeddings: Path
) -> None:
    split, _ = slice_
    small = split.subset(sorted(split.users)[:30])
    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    body = evaluate("federated", "loo99", small, vectors, federated=FederatedConfig(rounds=1), catalog=dataset.catalog)
    row, versus = body["selected"]["feature_rerank"], body["selected"]["vs_first_stage"]["feature_rerank"]
    assert versus["users"] == 30 and row["fit_users"] == 30
    # the paired difference is the difference of the two rows' means, measured on the same 30 test lists
    assert versus["delta_ndcg10"] == pytest.approx(row["test"]["NDCG@10"] - body["metrics"]["NDCG@10"])
    assert versus["delta_hr10"] == pytest.approx(row["test"]["HR@10"] - body["metrics"]["HR@10"])


def test_every_persona_row_is_compared_with_the_first_stage_on_the_same_users() -> None:
    # the FM puts the positive (candidate 0, second in the first stage) first; only weight > 0 uses it
    top, first = np.array([3, 0, 5]), np.array([3.0, 2.0, 1.0], dtype=np.float32)
    fm = np.array([0.0, 9.0, 0.0], dtype=np.float32)
    lists = {(v, "test"): RerankedList(top, first, fm, positive_first_rank=1) for v in VARIANTS}
    results = [UserResult(u, dict(lists), None, 0.0, 0.0) for u in range(3)]
    report = {"base": {"blend_weight": 0.0}, "shared": {"blend_weight": 2.0}, "both": {"blend_weight": 2.0}}
    rows = variant_comparisons(results, report, private=True)
    assert set(rows) == {"base_fm", "shared_only", "persona"}
    assert rows["base_fm"]["delta_ndcg10"] == 0.0  # weight 0 is the first stage
    gain = 1.0 - 1.0 / math.log2(3)  # rank 1 -> rank 0 for every user
    assert rows["persona"]["delta_ndcg10"] == pytest.approx(gain) and rows["persona"]["users"] == 3
    assert rows["persona"]["ci95"] == pytest.approx([gain, gain])
    assert set(variant_comparisons(results, report, private=False)) == {"base_fm", "persona-shared"}
