"""The statistics behind every comparison (models.evaluation.stats) on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.stats import (
    compare_ranks,
    compare_runs,
    likelihood_ratio_test,
    paired_bootstrap,
    per_user,
    seeded_sample,
)


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


def test_compare_runs_pairs_the_users_both_runs_ranked_and_gives_the_ratio_with_its_interval() -> None:
    rng = np.random.default_rng(3)
    baseline = {u: int(r) for u, r in enumerate(rng.integers(0, 30, size=300))}
    better = {u: max(r - 2, 0) for u, r in baseline.items()}  # every user's item two places higher
    better[1000] = 0  # ranked by one run only: left out of the pairing
    result = compare_runs(better, baseline)
    mine, theirs = per_user(list(better.values())[:300]), per_user(list(baseline.values()))
    assert result["users"] == 300
    assert result["ndcg10"] == pytest.approx([mine["NDCG@10"].mean(), theirs["NDCG@10"].mean()])
    assert result["relative_ndcg10"] == pytest.approx(mine["NDCG@10"].mean() / theirs["NDCG@10"].mean() - 1)
    low, high = result["relative_ndcg10_ci95"]
    assert 0.0 < low < result["relative_ndcg10"] < high  # better for every user: the interval is above zero
    same = compare_runs(baseline, dict(baseline))
    assert same["relative_ndcg10"] == 0.0 and same["relative_ndcg10_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="no user in common"):
        compare_runs({1: 0}, {2: 0})


def test_seeded_sample_is_reproducible_sorted_and_checked() -> None:
    users = list(range(100, 0, -1))
    sample = seeded_sample(users, 10, [0, 43])
    assert sample == sorted(sample) and len(set(sample)) == 10 and set(sample) <= set(users)
    assert sample == seeded_sample(users, 10, [0, 43])  # the same users for the same arguments
    assert sample != seeded_sample(users, 10, [1, 43])
    assert seeded_sample(users, None, [0]) == seeded_sample(users, 500, [0]) == sorted(users)
    with pytest.raises(ValueError, match="at least one user"):
        seeded_sample(users, 0, [0])
