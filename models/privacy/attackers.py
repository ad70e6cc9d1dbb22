"""Attribute-inference attackers and their statistics: how much of a person's traits a view of them reveals.

A *view* is one row of features per user (a shared delta, what an agent sends, a coordinator's difference of two
round sums, a suggestion list). The attacker is a regularised logistic regression, cross-validated over users:

* users are split into ``folds`` stratified folds (stratified on the joint label, so every target uses the same
  folds); for each fold the attacker is fitted on the other folds only and scores the held-out users;
* inside a fold, each feature is standardised with the training users' mean and deviation, the view is reduced to
  its leading principal components (fitted on the training users only, through their Gram matrix, so a
  68k-dimensional view costs an ``n × n`` eigen-problem), the scores are standardised again and an L2 logistic
  regression is fitted by Newton's method; the number of components and the L2 weight are chosen by an inner
  cross-validation on the training users only;
* the out-of-fold scores give the AUC (binary targets) or the macro one-vs-rest AUC (several classes), with a
  95 % percentile-bootstrap interval over users. Chance is 0.5.

Everything is numpy; nothing here knows where a view comes from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Dataset
from models.evaluation.stats import fit_logistic, logistic_scores

FloatMatrix = NDArray[np.floating]
Labels = NDArray[np.int64]

CHANCE_AUC = 0.5
AGE_GROUPS = ("<25", "25-44", ">=45")
GENDERS = ("M", "F")


def age_group(age: int) -> int:
    """0 for under 25, 1 for 25–44, 2 for 45 and over."""
    return 0 if age < 25 else (1 if age < 45 else 2)


def attribute_labels(dataset: Dataset, users: Sequence[int]) -> dict[str, Labels]:
    """The sensitive attributes of dense users: ``gender`` (1 = F) and ``age`` (:data:`AGE_GROUPS` index)."""
    ids = dataset.interactions.user_ids
    rows = [dataset.user_attributes[ids[u]] for u in users]
    return {
        "gender": np.array([int(r["gender"] == "F") for r in rows], dtype=np.int64),
        "age": np.array([age_group(int(r["age"])) for r in rows], dtype=np.int64),
    }


# ------------------------------------------------------------------------------------------------- statistics


def auc(scores: NDArray[np.floating], labels: NDArray[np.integer] | NDArray[np.bool_]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (ties count half); nan if one class."""
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(y), dtype=np.float64)
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(y)]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def target_auc(scores: FloatMatrix, labels: Labels) -> float:
    """AUC for one score column; for several columns the macro one-vs-rest AUC (column k scores class k)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        return auc(s, labels)
    return float(np.mean([auc(s[:, k], labels == k) for k in range(s.shape[1])]))


def bootstrap_interval(
    scores: FloatMatrix, labels: Labels, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`target_auc` over users (resamples missing a class are redrawn)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    n_classes = 2 if np.asarray(scores).ndim == 1 else np.asarray(scores).shape[1]
    values: list[float] = []
    while len(values) < resamples:
        pick = rng.integers(0, n, size=n)
        if len(np.unique(labels[pick])) < n_classes:
            continue
        values.append(target_auc(np.asarray(scores)[pick], labels[pick]))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def stratified_folds(strata: NDArray[np.integer], folds: int, *, seed: int = 0) -> Labels:
    """A fold index per sample: each stratum is shuffled and dealt round-robin over the folds."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(strata), dtype=np.int64)
    offset = 0
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        out[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return out


# ------------------------------------------------------------------------------------------------- the attacker


def _binary_problems(y: Labels, n_classes: int) -> list[NDArray[np.bool_]]:
    """The positive class of each logistic model: one for two classes, one-vs-rest otherwise."""
    return [y == 1] if n_classes == 2 else [y == k for k in range(n_classes)]


@dataclass(frozen=True)
class AttackerConfig:
    """How the attacker is fitted and measured."""

    folds: int = 5
    inner_folds: int = 3
    components: tuple[int, ...] = (16, 128)  # leading principal components tried (at most all of them)
    screened: tuple[int, ...] = (16, 128)  # or this many raw features with the largest class-mean differences
    l2: tuple[float, ...] = (100.0, 10.0, 1.0)  # tried in this order, each fit warm-started from the previous
    standardize: bool = True  # per-feature standardisation before the principal components
    block: int = 4096  # feature columns per block when scanning a wide view
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class AttackResult:
    """The attacker's out-of-fold performance on one target."""

    target: str
    auc: float
    interval: tuple[float, float]
    n_users: int
    chance: float = CHANCE_AUC
    scores: FloatMatrix | None = None  # out-of-fold scores, one row per user
    model: str = ""  # the representation and L2 weight most often selected


def fold_embedding(features: FloatMatrix, train: NDArray[np.bool_], config: AttackerConfig) -> NDArray[np.float64]:
    """Every row's scores on all principal components of the (standardised) training rows, largest first.

    Means, deviations and components come from the training rows only; the Gram matrix is accumulated block by
    block in float32, so a wide view never needs a standardised copy in memory. The scores are scaled so that a
    training row has unit mean squared norm (the L2 grid then means the same for every view).
    """
    n, d = features.shape
    train_rows = np.flatnonzero(train)
    gram = np.zeros((n, len(train_rows)), dtype=np.float64)
    for start in range(0, d, config.block):
        block = np.asarray(features[:, start : start + config.block], dtype=np.float32)
        z = block - block[train_rows].mean(0)
        if config.standardize:
            deviation = z[train_rows].std(0)
            z *= np.where(deviation > 1e-12, 1.0 / np.maximum(deviation, 1e-12), 0.0).astype(np.float32)
        gram += (z @ z[train_rows].T).astype(np.float64)
    values, vectors = np.linalg.eigh(gram[train_rows])
    values, vectors = values[::-1], vectors[:, ::-1]
    keep = max(1, int(np.count_nonzero(values > 1e-9 * max(float(values[0]), 1e-30))))
    values, vectors = values[:keep], vectors[:, :keep]
    scores = gram @ vectors / np.sqrt(values)
    scale = np.sqrt(max(float(values.sum()) / len(train_rows), 1e-30))
    return np.asarray(scores / scale, dtype=np.float64)


def screen_features(
    features: FloatMatrix, rows: NDArray[np.int64], problems: Sequence[NDArray[np.bool_]], top: int, block: int
) -> list[NDArray[np.int64]]:
    """For each binary problem (a mask over ``rows``), the ``top`` features whose class means differ most,
    in units of the feature's deviation over ``rows`` (computed from those rows only)."""
    best: list[tuple[NDArray[np.float64], NDArray[np.int64]]] = [(np.zeros(0), np.zeros(0, np.int64)) for _ in problems]
    for start in range(0, features.shape[1], block):
        x = np.asarray(features[rows, start : start + block], dtype=np.float64)
        deviation = x.std(0)
        deviation[deviation < 1e-12] = np.inf
        for i, positive in enumerate(problems):
            gap = np.abs(x[positive].mean(0) - x[~positive].mean(0)) / deviation
            values = np.concatenate([best[i][0], gap])
            index = np.concatenate([best[i][1], np.arange(start, start + x.shape[1])])
            keep = np.argsort(-values, kind="stable")[:top]
            best[i] = (values[keep], index[keep])
    return [index for _, index in best]


def _standardized(
    fit: NDArray[np.float64], other: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    mean, deviation = fit.mean(0), fit.std(0)
    deviation[deviation < 1e-12] = 1.0
    return (fit - mean) / deviation, (other - mean) / deviation


Design = list[tuple[NDArray[np.float64], NDArray[np.float64]]]  # per binary problem: (fitting rows, scored rows)


def _designs(
    features: FloatMatrix,
    embedding: NDArray[np.float64],
    fit: NDArray[np.int64],
    score: NDArray[np.int64],
    problems: Sequence[NDArray[np.bool_]],
    config: AttackerConfig,
) -> dict[str, Design]:
    """Every candidate representation of the fitting and scored rows, named (e.g. ``pca64``, ``screen128``)."""
    out: dict[str, Design] = {}
    for k in sorted({min(c, embedding.shape[1]) for c in config.components}):
        pair = (embedding[fit, :k], embedding[score, :k])
        out[f"pca{k}"] = [pair for _ in problems]
    if config.screened:
        widest = max(config.screened)
        chosen = screen_features(features, fit, problems, widest, config.block)
        for m in config.screened:
            design: Design = []
            for index in chosen:
                columns = np.sort(index[:m])
                x = np.asarray(features[:, columns], dtype=np.float64)
                design.append(_standardized(x[fit], x[score]))
            out[f"screen{m}"] = design
    return out


def _path_scores(design: Design, problems: Sequence[NDArray[np.bool_]], l2s: Sequence[float]) -> list[FloatMatrix]:
    """Scores of the scored rows for each L2 weight (one column per binary problem, squeezed when there is one),
    fitted along the L2 path with warm starts."""
    columns: list[list[NDArray[np.float64]]] = [[] for _ in l2s]
    for (x_fit, x_score), positive in zip(design, problems, strict=True):
        w: NDArray[np.float64] | None = None
        for i, l2 in enumerate(l2s):
            w = fit_logistic(x_fit, positive, l2, start=w)
            columns[i].append(logistic_scores(x_score, w))
    return [c[0] if len(c) == 1 else np.stack(c, axis=1) for c in columns]


def _select(
    features: FloatMatrix,
    embedding: NDArray[np.float64],
    rows: NDArray[np.int64],
    y: Labels,
    n_classes: int,
    config: AttackerConfig,
) -> tuple[str, float]:
    """(representation, l2) with the best inner cross-validated AUC on these (training) rows."""
    inner = stratified_folds(y, config.inner_folds, seed=config.seed + 1)
    totals: dict[tuple[str, float], NDArray[np.float64]] = {}
    for f in range(config.inner_folds):
        fit, held = inner != f, inner == f
        problems = _binary_problems(y[fit], n_classes)
        for name, design in _designs(features, embedding, rows[fit], rows[held], problems, config).items():
            for l2, scores in zip(config.l2, _path_scores(design, problems, config.l2), strict=True):
                total = totals.setdefault((name, l2), np.zeros((len(y), n_classes) if n_classes > 2 else len(y)))
                total[held] = scores
    return max(totals, key=lambda key: target_auc(totals[key], y))


def attack(
    features: FloatMatrix, targets: Mapping[str, Labels], config: AttackerConfig = AttackerConfig()
) -> dict[str, AttackResult]:
    """Cross-validated attacker AUC (with a bootstrap interval) for each target, from one view of the users.

    Candidates are L2 logistic models on the leading principal components or on the screened raw features; the
    candidate and the L2 weight are chosen per fold by an inner cross-validation on that fold's training users.
    """
    names = list(targets)
    n = features.shape[0]
    joint = np.zeros(n, dtype=np.int64)
    for name in names:
        joint = joint * (int(targets[name].max()) + 1) + targets[name]
    folds = stratified_folds(joint, config.folds, seed=config.seed)
    classes = {name: int(targets[name].max()) + 1 for name in names}
    oof = {name: np.zeros((n, classes[name]) if classes[name] > 2 else n) for name in names}
    picked: dict[str, list[str]] = {name: [] for name in names}
    for f in range(config.folds):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        embedding = fold_embedding(features, folds != f, config)
        for name in names:
            y = targets[name]
            model, l2 = _select(features, embedding, train, y[train], classes[name], config)
            problems = _binary_problems(y[train], classes[name])
            design = _designs(features, embedding, train, test, problems, config)[model]
            path = [v for v in config.l2 if v >= l2]  # the same warm-started path the selection used
            oof[name][test] = _path_scores(design, problems, path)[-1]
            picked[name].append(f"{model}/l2={l2:g}")
    out: dict[str, AttackResult] = {}
    for name in names:
        interval = bootstrap_interval(
            oof[name], targets[name], resamples=config.resamples, level=config.level, seed=config.seed
        )
        common = max(set(picked[name]), key=picked[name].count)
        value = target_auc(oof[name], targets[name])
        out[name] = AttackResult(name, value, interval, n, scores=oof[name], model=common)
    return out


def predict(
    features: FloatMatrix,
    train: NDArray[np.bool_],
    targets: Mapping[str, Labels],
    config: AttackerConfig = AttackerConfig(),
) -> dict[str, NDArray[np.float64]]:
    """Class probabilities of the rows outside ``train`` from an attacker fitted on all ``train`` rows (labels in
    ``targets`` are read at the training rows only): for two classes P(class 1) per row, otherwise one normalised
    one-vs-rest probability per class and row."""
    rows, others = np.flatnonzero(train), np.flatnonzero(~train)
    embedding = fold_embedding(features, train, config)
    out: dict[str, NDArray[np.float64]] = {}
    for name, labels in targets.items():
        y = labels[rows]
        n_classes = int(y.max()) + 1
        model, l2 = _select(features, embedding, rows, y, n_classes, config)
        problems = _binary_problems(y, n_classes)
        design = _designs(features, embedding, rows, others, problems, config)[model]
        logits = _path_scores(design, problems, [v for v in config.l2 if v >= l2])[-1]
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        if n_classes > 2:
            probabilities = probabilities / probabilities.sum(1, keepdims=True)
        out[name] = np.asarray(probabilities, dtype=np.float64)
    return out
