"""The statistics behind every comparison (models.evaluation.stats) on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.stats import compare_ranks, likelihood_ratio_test, paired_bootstrap


def test_paired_bootstrap_of_two_users_has_the_known_interval() -> None:
    # differences 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    mean, (low, high) = paired_bootstrap(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert mean == 0.5 and (low, high) == (0.0, 1.0)


def test_paired_bootstrap_interval_contains_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(200), rng.random(200)
    mean, (low, high) = paired_bootstrap(a, b, seed=1)
    assert low < mean < high
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert paired_bootstrap(a, b, seed=1) == (mean, (low, high))


def test_identical_systems_differ_by_exactly_zero() -> None:
    a = np.random.default_rng(0).random(50)
    assert paired_bootstrap(a, a.copy()) == (0.0, (0.0, 0.0))
    same = compare_ranks([0, 3, 40], [0, 3, 40])
    assert same["delta_ndcg10"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["hr_ci95"] == [0.0, 0.0]


def test_compare_ranks_reports_the_mean_per_user_difference() -> None:
    # user 1 moves from rank 1 to rank 0; user 2 stays outside the top 10
    result = compare_ranks([0, 20], [1, 20])
    assert result["delta_ndcg10"] == pytest.approx((1.0 - 1.0 / math.log2(3)) / 2)
    assert result["delta_hr10"] == 0.0 and result["users"] == 2
    with pytest.raises(ValueError, match="same users"):
        compare_ranks([0], [0, 1])


def test_likelihood_ratio_test_tells_a_useless_feature_from_a_separating_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=2000)
    y = (rng.random(2000) < 1.0 / (1.0 + np.exp(-base))).astype(np.float64)
    noise = likelihood_ratio_test(base, rng.normal(size=2000), y)
    assert noise["p_value"] > 0.05
    separating = likelihood_ratio_test(base, y + 0.3 * rng.normal(size=2000), y)
    assert separating["p_value"] < 1e-6 and separating["statistic"] > noise["statistic"]
