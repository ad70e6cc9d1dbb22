"""The personality-leakage audit: train a federation under one protection setting
(:mod:`sync.simulation.federation`), attack four views of every user (:mod:`sync.simulation.views`) and measure
what the protection costs in quality (LOO-99 on test); :func:`audit_user` measures one person's exposure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.data.catalog import Dataset
from models.data.split import Split, UserSplit
from models.evaluation.protocols import metrics_for
from models.federation import FedAdam
from models.firststage.fit import scorer_model
from models.firststage.scorer import PrivateParams, SharedParams
from models.privacy.attackers import AGE_GROUPS, GENDERS, attack, attribute_labels, predict
from models.types import FloatArray, IntArray, Status
from sync.protocol.privacy import PrivacyParams, epsilon
from sync.simulation.federation import (
    MECHANISMS,
    SETTINGS,
    AuditConfig,
    Federation,
    Mechanism,
    SettingRun,
    proxy_users,
    train_setting,
)
from sync.simulation.views import VIEWS, compute_views

__all__ = [
    "SETTINGS",
    "USER_VIEWS",
    "AuditConfig",
    "SettingResult",
    "audit_setting",
    "audit_user",
    "run_audit",
    "setting_epsilon",
]


@dataclass
class SettingResult:
    """One setting's rows, quality and ε."""

    rows: list[dict[str, Any]]
    quality: dict[str, float]
    epsilon: float | None
    info: dict[str, Any]


def setting_epsilon(mechanism: Mechanism, privacy: PrivacyParams, rounds: int, survivors: int) -> float | None:
    """ε (δ = 1e-5) against the coordinator for an agent that took part in ``rounds`` rounds; None without noise.

    With secure aggregation the coordinator sees only sums carrying σC: noise multiplier σ/√2 per round. Without
    it, it sees each agent's contribution with only that agent's share σC/√m: noise multiplier σ/√(2m).
    """
    if not mechanism.noise or privacy.sigma <= 0:
        return None
    z = privacy.noise_multiplier if mechanism.secure else privacy.sigma / math.sqrt(2.0 * survivors)
    return epsilon([z] * rounds)


def audit_setting(
    dataset: Dataset,
    split: Split,
    text_vectors: FloatArray,
    name: str,
    config: AuditConfig,
    *,
    progress: Status | None = None,
) -> SettingResult:
    """Train under one setting, attack its four views on the non-proxy users, and measure LOO-99 test quality."""
    start = time.perf_counter()
    mechanism = MECHANISMS[name]
    users = sorted(split.users)
    proxies = proxy_users(users, config)
    proxy_labels = attribute_labels(dataset, proxies)
    federation = Federation(split, text_vectors, mechanism, config, proxies, proxy_labels)
    run = train_setting(federation, progress=progress)
    quality = metrics_for(scorer_model(run.shared, run.privates, text_vectors), split, "loo99", "test")
    trained = time.perf_counter() - start
    audited = [u for u in users if u not in set(proxies)]
    views = compute_views(federation, run, audited, progress=progress)
    targets = attribute_labels(dataset, audited)
    rows: list[dict[str, Any]] = []
    for view in VIEWS:
        results = attack(views.features[view], targets, config.attacker)
        for target in ("gender", "age"):
            r = results[target]
            rows.append(
                {
                    "setting": name,
                    "target": target,
                    "view": view,
                    "auc": round(r.auc, 4),
                    "auc_ci": [round(r.interval[0], 4), round(r.interval[1], 4)],
                }
            )
            if progress is not None:
                progress(f"{name}: view {view} {target} AUC {r.auc:.3f} [{r.interval[0]:.3f}, {r.interval[1]:.3f}]")
        del results
    survivors = config.min_survivors(min(config.cohort, len(users)))
    most = max(run.rounds_taken.values(), default=0)
    info = {
        "selected_round": run.selected_round,
        "rounds": config.federated.rounds,
        "max_rounds_per_agent": most,
        "train_s": round(trained, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "mean_factor": round(float(views.factors.mean()), 4),
        "probe_directions": 0 if run.probe is None else len(run.probe.names),
    }
    return SettingResult(rows, quality, setting_epsilon(mechanism, config.privacy, most, survivors), info)


def run_audit(
    dataset: Dataset,
    split: Split,
    text_vectors: FloatArray,
    config: AuditConfig,
    *,
    settings: Sequence[str] = SETTINGS,
    progress: Status | None = None,
) -> dict[str, Any]:
    """The ``scripts/audit.py --json`` body: ``{"rows", "quality", "epsilon"}`` over the settings (run details on
    ``progress``)."""
    unknown = [s for s in settings if s not in MECHANISMS]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    rows: list[dict[str, Any]] = []
    quality: dict[str, dict[str, float]] = {}
    spent: dict[str, float | None] = {}
    for name in settings:
        result = audit_setting(dataset, split, text_vectors, name, config, progress=progress)
        rows += result.rows
        quality[name] = {k: round(result.quality[k], 4) for k in ("HR@10", "NDCG@10")}
        spent[name] = None if result.epsilon is None else round(result.epsilon, 3)
        if progress is not None:
            progress(f"{name}: done {result.info}")
    return {"rows": rows, "quality": quality, "epsilon": spent}


USER_VIEWS = {
    "a": "your raw shared update (before any protection; it never leaves the device)",
    "b": "what your agent sends (clipped, noised, quantized and masked)",
    "c": "what a coordinator can isolate by subtracting two round sums that differ only by you",
    "d": "your top-10 suggestion list",
}


def audit_user(
    dataset: Dataset,
    text_vectors: FloatArray,
    shared: SharedParams,
    private: PrivateParams,
    history: IntArray,
    config: AuditConfig,
    *,
    train: Any = None,
    population: int | None = None,
    exclude: int | None = None,
    progress: Status | None = None,
) -> dict[str, Any]:
    """One person's exposure: attackers trained on ML-100K users as agents at the same settings (``default``:
    clipping, noise, quantization, masks) guess the person's gender and age group from each view of them.

    Every population user computes one local update from ``shared`` on their whole ML-100K history (``train``:
    the person's own local training settings), so the attacker sees the same kind of view it is then shown of the
    person. Returns the population AUC with its interval and the guess for the person, per view and target.
    """
    sequences = dataset.interactions.sequences()
    users = [u for u in range(dataset.interactions.n_users) if u != exclude and len(sequences[u]) >= 2]
    if population is not None and population < len(users):
        rng = np.random.default_rng([config.seed, 8])
        users = sorted(int(u) for u in rng.choice(users, size=population, replace=False))
    me = dataset.interactions.n_users  # a dense id no ML-100K user has
    empty = np.zeros(0, dtype=np.int64)
    entries = {u: UserSplit(sequences[u], -1, -1, empty, empty) for u in users}
    entries[me] = UserSplit(np.asarray(history, dtype=np.int64), -1, -1, empty, empty)
    split = Split(dataset.name, config.seed, len(dataset.catalog), entries)
    federation = Federation(split, text_vectors, MECHANISMS["default"], config, [], {}, train=train)
    run = SettingRun(
        MECHANISMS["default"], shared, {me: private}, FedAdam(lr=config.federated.server_lr), None, 0, {}, []
    )
    views = compute_views(federation, run, [*users, me], progress=progress)
    targets = attribute_labels(dataset, users)
    padded = {name: np.concatenate([labels, [0]]) for name, labels in targets.items()}
    population_rows = np.r_[np.ones(len(users), dtype=bool), False]
    classes = {"gender": GENDERS, "age": AGE_GROUPS}
    rows: list[dict[str, Any]] = []
    for view in VIEWS:
        features = views.features[view]
        results = attack(features[: len(users)], targets, config.attacker)
        guesses = predict(features, population_rows, padded, config.attacker)
        for target in ("gender", "age"):
            p = guesses[target][0]
            probabilities = [1.0 - float(p), float(p)] if np.ndim(p) == 0 else [float(v) for v in p]
            r = results[target]
            rows.append(
                {
                    "view": view,
                    "what": USER_VIEWS[view],
                    "target": target,
                    "population_auc": round(r.auc, 4),
                    "auc_ci": [round(r.interval[0], 4), round(r.interval[1], 4)],
                    "guess": {c: round(v, 4) for c, v in zip(classes[target], probabilities, strict=True)},
                }
            )
        if progress is not None:
            progress(f"view {view}: gender AUC {results['gender'].auc:.3f}, age AUC {results['age'].auc:.3f}")
    return {"population": len(users), "rows": rows}
