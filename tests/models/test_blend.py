"""The second stage: blending, rank bookkeeping, weight selection, and a two-stage run on a slice of real users."""

from __future__ import annotations

import numpy as np
import pytest

from agent.paths import cache_dir
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.experiments.evaluate import evaluate_two_stage
from models.firststage.recipe import FederatedConfig
from models.fm.blend import RerankedList, blend, fm_auc, pick_weight, weight_curve, zscore
from models.text.encoder import ItemEncoder, embed_catalog


def test_zscore_and_blend() -> None:
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871])
    assert not zscore(np.array([5.0, 5.0])).any()
    np.testing.assert_allclose(blend(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 1.0), [0.0, 0.0])


def test_rank_of_the_positive_after_blending() -> None:
    # positive (candidate 0) is second in the first stage; the foundation model prefers it strongly
    lst = RerankedList(
        top=np.array([3, 0, 5]), first=np.array([3.0, 2.0, 1.0]), fm=np.array([0.0, 9.0, 0.0]), positive_first_rank=1
    )
    assert lst.rank(0.0) == 1
    assert lst.rank(2.0) == 0
    ones = np.ones(2, dtype=np.float32)
    outside = RerankedList(top=np.array([3, 4]), first=ones, fm=ones, positive_first_rank=17)
    assert outside.rank(5.0) == 17  # not in the top K: the second stage cannot move it
    weight, metrics = pick_weight([lst, outside], weights=(0.0, 2.0))
    assert weight == 2.0 and metrics["HR@10"] == 0.5


@pytest.mark.usefixtures("warm_embedding_cache")
def test_fm_auc_measures_the_fm_alone_within_the_top_k() -> None:
    top = np.array([3, 0, 5, 7])  # the positive (candidate 0) is second in the first stage's top 4
    first = np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float32)
    right = RerankedList(top, first, np.array([0.0, 9.0, 1.0, 2.0], dtype=np.float32), 1)
    wrong = RerankedList(top, first, np.array([5.0, -1.0, 1.0, 2.0], dtype=np.float32), 1)
    tied = RerankedList(top, first, np.zeros(4, dtype=np.float32), 1)
    absent = RerankedList(np.array([3, 5, 7, 9]), first, np.zeros(4, dtype=np.float32), 12)
    assert fm_auc([right]) == 1.0 and fm_auc([wrong]) == 0.0 and fm_auc([tied]) == 0.5
    assert fm_auc([right, wrong, absent]) == 0.5  # a list without the positive in its top K does not count
    assert fm_auc([absent]) is None
    curve = weight_curve([right, wrong])
    assert curve[0.0] == pick_weight([right, wrong], weights=(0.0,))[1]  # weight 0: the first stage's own order
    assert curve[2.0]["NDCG@10"] != curve[0.0]["NDCG@10"]


def test_two_stage_on_a_slice_reports_both_stages() -> None:
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    split = full.subset(sorted(full.users)[:6])
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir() / "embeddings")
    test, valid, selected = evaluate_two_stage(
        split, vectors, dataset.catalog, federated=FederatedConfig(rounds=1), k=5
    )
    assert set(test) == {"HR@10", "NDCG@10"} and set(valid) == {"HR@10", "NDCG@10"}
    assert selected["rerank_k"] == 5
    assert selected["blend_weight"] in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    assert set(selected["first_stage_metrics"]) == {"HR@10", "NDCG@10"}
    # reranking only reorders the top 5, so HR@10 cannot change
    assert test["HR@10"] == selected["first_stage_metrics"]["HR@10"]
