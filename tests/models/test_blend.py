"""The second stage: blending, rank bookkeeping, weight selection, and a two-stage run on a slice of real users."""

from __future__ import annotations

import numpy as np
import pytest

from agent.paths import cache_dir
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.experiments.evaluate import evaluate_two_stage
from models.firststage.recipe import FederatedConfig
from models.fm.blend import (
    RerankedList,
    SupportedWeight,
    blend,
    fm_auc,
    pick_weight,
    supported_weight,
    weight_curve,
    zscore,
)
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


def _list_with_positive_at(slot: int, fm: np.ndarray) -> RerankedList:
    """Ten candidates in first-stage order, the positive (position 0) at ``slot``, with the given FM scores."""
    top = np.array([*range(1, slot + 1), 0, *range(slot + 1, 10)], dtype=np.int64)
    first = np.linspace(1.0, 0.0, 10).astype(np.float32)
    return RerankedList(top, first, fm.astype(np.float32), slot)


def test_a_weight_is_supported_only_when_its_validation_gain_is_above_the_noise() -> None:
    # the FM puts every user's positive first: weight 1 lifts it from slot 9 to 0 on every list, a gain on all users
    lifted = [_list_with_positive_at(9, np.r_[np.zeros(9), 5.0]) for _ in range(40)]
    chosen = supported_weight(lifted)
    assert chosen.weight == chosen.best > 0 and chosen.gain is not None and chosen.gain["ci95"][0] > 0
    # one user of 40 gains and the others do not move: the best weight is one user's luck, not a measurement
    lucky = [lifted[0]] + [_list_with_positive_at(slot % 10, np.zeros(10)) for slot in range(39)]
    chosen = supported_weight(lucky)
    assert chosen.best > 0 and chosen.weight == 0.0
    assert chosen.gain is not None and chosen.gain["ci95"][0] <= 0 < chosen.gain["delta_ndcg10"]
    # a best weight of 0 needs no interval
    assert supported_weight([_list_with_positive_at(0, np.r_[-5.0, np.zeros(9)])]) == SupportedWeight(0.0, 0.0, None)
