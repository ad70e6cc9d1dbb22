"""Statistics behind every comparison: per-user metrics, the paired bootstrap over users, logistic regression and
the likelihood-ratio test of nested logistic models.

A quality claim carries a paired bootstrap 95 % interval over users: the same resample of users is applied to both
systems, so the interval is the one of the mean per-user difference. Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.evaluation.metrics import hit_at, ndcg_at

RESAMPLES = 2000


def per_user(ranks: Sequence[int], k: int = 10) -> dict[str, NDArray[np.float64]]:
    """Each user's NDCG@k and HR@k from the 0-based ranks of their held-out items."""
    return {
        f"NDCG@{k}": np.array([ndcg_at(r, k) for r in ranks], dtype=np.float64),
        f"HR@{k}": np.array([hit_at(r, k) for r in ranks], dtype=np.float64),
    }


def paired_bootstrap(
    a: NDArray[np.floating], b: NDArray[np.floating], *, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """The mean of the per-user differences ``a - b`` and its percentile-bootstrap 95 % interval over users."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or len(diff) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty per-user vectors; got {diff.shape}")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), (float(low), float(high))


def compare_ranks(ranks: Sequence[int], baseline: Sequence[int], *, seed: int = 0) -> dict[str, Any]:
    """ΔNDCG@10 and ΔHR@10 of ``ranks`` against ``baseline`` (the same users, same order), each with its paired
    bootstrap 95 % interval over users."""
    if len(ranks) != len(baseline):
        raise ValueError(f"compare_ranks needs the same users on both sides; got {len(ranks)} and {len(baseline)}")
    mine, theirs = per_user(ranks), per_user(baseline)
    ndcg, ndcg_ci = paired_bootstrap(mine["NDCG@10"], theirs["NDCG@10"], seed=seed)
    hr, hr_ci = paired_bootstrap(mine["HR@10"], theirs["HR@10"], seed=seed)
    return {
        "delta_ndcg10": ndcg,
        "ci95": list(ndcg_ci),
        "delta_hr10": hr,
        "hr_ci95": list(hr_ci),
        "users": len(ranks),
        "resamples": RESAMPLES,
    }


def compare_runs(ranks: Mapping[int, int], baseline: Mapping[int, int], *, seed: int = 0) -> dict[str, Any]:
    """Two runs of a model on the same split, paired over the users both ranked: :func:`compare_ranks`'s deltas
    plus each metric's ratio ``mean(ranks) / mean(baseline) − 1`` with its paired bootstrap 95 % interval (the same
    resample of users for both runs). ValueError when no user is in both."""
    users = sorted(set(ranks) & set(baseline))
    if not users:
        raise ValueError("the two runs ranked no user in common: were they run on the same split?")
    mine, theirs = [int(ranks[u]) for u in users], [int(baseline[u]) for u in users]
    out = compare_ranks(mine, theirs, seed=seed)
    a, b = per_user(mine), per_user(theirs)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(users), size=(RESAMPLES, len(users)))  # compare_ranks' resamples
    for metric, key in (("NDCG@10", "ndcg10"), ("HR@10", "hr10")):
        base = float(b[metric].mean())
        out[key] = [float(a[metric].mean()), base]
        if base <= 0:
            continue
        ratios = a[metric][picks].mean(axis=1) / np.maximum(b[metric][picks].mean(axis=1), 1e-12) - 1.0
        low, high = np.quantile(ratios, [0.025, 0.975])
        out[f"relative_{key}"] = float(a[metric].mean()) / base - 1.0
        out[f"relative_{key}_ci95"] = [float(low), float(high)]
    return out


def fit_logistic(
    x: NDArray[np.floating],
    y: NDArray[Any],
    l2: float,
    *,
    start: NDArray[np.float64] | None = None,
    iterations: int = 50,
) -> NDArray[np.float64]:
    """Weights (last element: intercept, not penalised) minimising Σ log-loss + l2/2·‖w‖², by Newton's method."""
    n, d = x.shape
    a = np.hstack([np.asarray(x, dtype=np.float64), np.ones((n, 1))])
    target = np.asarray(y, dtype=np.float64)
    w = np.zeros(d + 1) if start is None else start.copy()
    ridge = np.full(d + 1, l2)
    ridge[-1] = 1e-8
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        gradient = a.T @ (p - target) + ridge * w
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.max(np.abs(step))) < 1e-4:
            break
    return w


def logistic_scores(x: NDArray[np.floating], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Logits of a model from :func:`fit_logistic`."""
    return np.asarray(np.asarray(x, dtype=np.float64) @ w[:-1] + w[-1], dtype=np.float64)


def log_likelihood(x: NDArray[np.floating], y: NDArray[Any], w: NDArray[np.float64]) -> float:
    """Σ log p(y | x) of a logistic model from :func:`fit_logistic`."""
    logits = logistic_scores(x, w)
    target = np.asarray(y, dtype=np.float64)
    return float(-np.sum(np.logaddexp(0.0, -logits) * target + np.logaddexp(0.0, logits) * (1.0 - target)))


def likelihood_ratio_test(
    base: NDArray[np.floating], extra: NDArray[np.floating], y: NDArray[Any], *, l2: float = 1e-6
) -> dict[str, float]:
    """Does ``extra`` (one column) add to ``base``? Nested logistic models (``base`` vs ``base`` + ``extra``), the
    statistic 2·Δlog-likelihood and its chi-square p-value with 1 degree of freedom (closed form: erfc(√(x/2)))."""
    base_x = np.asarray(base, dtype=np.float64).reshape(len(y), -1)
    full_x = np.hstack([base_x, np.asarray(extra, dtype=np.float64).reshape(len(y), 1)])
    small = log_likelihood(base_x, y, fit_logistic(base_x, y, l2))
    large = log_likelihood(full_x, y, fit_logistic(full_x, y, l2))
    statistic = max(0.0, 2.0 * (large - small))
    return {"statistic": statistic, "p_value": math.erfc(math.sqrt(statistic / 2.0)), "df": 1.0}


def seeded_sample(users: Sequence[int], n: int | None, seed: Sequence[int]) -> list[int]:
    """A seeded sample of ``n`` of ``users`` (all of them when ``n`` is None or not smaller), sorted: the same
    users for the same arguments on every machine. ValueError for ``n`` < 1."""
    if n is not None and n < 1:
        raise ValueError(f"the sample needs at least one user, got {n}")
    if n is None or n >= len(users):
        return sorted(int(u) for u in users)
    rng = np.random.default_rng(list(seed))
    return sorted(int(u) for u in rng.choice(np.asarray(users), size=n, replace=False))
