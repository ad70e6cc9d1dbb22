"""The attacker's statistics (models.privacy.attackers) on synthetic data where the answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.evaluation.stats import fit_logistic, logistic_scores
from models.privacy.attackers import (
    AttackerConfig,
    age_group,
    attack,
    auc,
    bootstrap_interval,
    stratified_folds,
    target_auc,
)

FAST = AttackerConfig(folds=3, inner_folds=2, components=(8, 32), screened=(8,), l2=(10.0, 1.0), resamples=300)


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return float(wins / (len(pos) * len(neg)))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.integers(0, 2, size=60)
    assert auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))
    assert auc(np.arange(10.0), np.arange(10) >= 5) == 1.0
    assert auc(-np.arange(10.0), np.arange(10) >= 5) == 0.0
    assert np.isnan(auc(np.arange(4.0), np.zeros(4, dtype=int)))


def test_macro_auc_averages_one_vs_rest_columns() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[labels]
    assert target_auc(perfect, labels) == 1.0
    swapped = perfect[:, [1, 0, 2]]  # classes 0 and 1 scored by each other's column
    # class 0 vs class 1 members: always lost; vs class 2 members: tied — 0.25 each; class 2 still perfect
    assert target_auc(swapped, labels) == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def test_stratified_folds_keep_each_stratum_balanced() -> None:
    strata = np.array([0] * 30 + [1] * 9 + [2] * 4)
    folds = stratified_folds(strata, 3, seed=0)
    for value in (0, 1, 2):
        counts = np.bincount(folds[strata == value], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert not np.array_equal(folds, stratified_folds(strata, 3, seed=1))


def test_logistic_regression_separates_and_regularisation_shrinks() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    loose, tight = fit_logistic(x, y, 0.1), fit_logistic(x, y, 100.0)
    assert auc(logistic_scores(x, loose), y) > 0.99
    assert np.linalg.norm(tight[:-1]) < np.linalg.norm(loose[:-1])
    assert abs(loose[0]) > 5 * max(abs(loose[1]), abs(loose[2]))


def test_age_groups() -> None:
    assert [age_group(a) for a in (7, 24, 25, 44, 45, 73)] == [0, 0, 1, 1, 2, 2]


def synthetic_targets(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.random.Generator]:
    rng = np.random.default_rng(seed)
    gender = (rng.random(n) < 0.3).astype(np.int64)  # ML-100K is 29 % female
    age = rng.choice(3, size=n, p=[0.25, 0.53, 0.22]).astype(np.int64)
    return {"gender": gender, "age": age}, rng


def test_a_separable_feature_hidden_in_a_wide_view_is_found() -> None:
    targets, rng = synthetic_targets(240, 3)
    x = rng.normal(size=(240, 3000)).astype(np.float32)
    x[:, 1234] += 6.0 * targets["gender"]  # one coordinate out of 3000
    x[:, 77] += 6.0 * (targets["age"] == 0) - 6.0 * (targets["age"] == 2)
    x[:, 78] += 6.0 * (targets["age"] == 1)
    results = attack(x, targets, FAST)
    for name in ("gender", "age"):
        assert results[name].auc > 0.95, results[name]
        assert results[name].interval[0] > 0.9
        assert results[name].n_users == 240


def test_pure_noise_gives_an_interval_around_chance() -> None:
    targets, rng = synthetic_targets(240, 4)
    x = rng.normal(size=(240, 2000)).astype(np.float32)
    results = attack(x, targets, FAST)
    for name in ("gender", "age"):
        low, high = results[name].interval
        assert low < 0.5 < high, results[name]
        assert results[name].chance == 0.5


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(5)

    def width(n: int) -> float:
        labels = rng.integers(0, 2, size=n)
        scores = labels + rng.normal(0, 1.0, size=n)
        low, high = bootstrap_interval(scores, labels, resamples=400)
        assert low <= auc(scores, labels) <= high
        return high - low

    assert width(2000) < width(100)
