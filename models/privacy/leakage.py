"""The leakage-aware local objective (the Ψ term) and the local scores behind personality-aware aggregation.

**Probe.** The coordinator fits a linear probe on the raw shared deltas of a small group of *consenting proxy
users* (whose attributes are public to it) and publishes it with the round: a few orthonormal directions
``a_k`` in shared-parameter space, each with a centre ``c_k`` (the proxies' mean projection) and a scale ``s_k``
(its logit per unit of projection). Directions come from iterated null-space projection (INLP, Ravfogel et al.
2020): fit an L2 logistic probe for each target class, keep its direction, project it out of the deltas, refit.

**Penalty.** During local training an agent's objective gains ``λ · Σ_k (a_k · Δ − c_k)²``, where ``Δ`` is its
shared delta so far: every agent is pulled to the proxies' mean along each probed direction, so its delta says
less there about who it is. ``λ`` is :attr:`LeakageObjective.weight` (``PERSONA_LEAKAGE_WEIGHT``). The penalty
is applied as a proximal step after every optimizer step (``local_train(proximal=...)``): along each direction
the projection ``t`` becomes ``(t + 2ηλ c) / (1 + 2ηλ)`` at learning rate η — the exact minimiser of the penalty
plus the distance moved, stable for any λ. Added to the loss instead, it would act only through the *next*
step's gradient, and an agent with two local batches would send the last batch's leak untouched.

**Local scores.** :meth:`Probe.leakage` is the probe's confidence on one delta, ``max_k |tanh(s_k (a_k·Δ − c_k) / 2)|``
(0 at the centre, near 1 when the probe is sure); :func:`local_quality` says whether a delta improved the rank of
an item the agent held out. The agent turns both into a weight factor (``sync.protocol.privacy.personality_factor``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.evaluation.stats import fit_logistic
from models.firststage.scorer import PrivateParams, SharedParams, history_tail, item_vectors, user_state
from models.firststage.scorer import scores as first_stage_scores
from models.types import FloatArray, IntArray

WEIGHT_ENV = "PERSONA_LEAKAGE_WEIGHT"


@dataclass(frozen=True)
class LeakageObjective:
    """Settings of the leakage-aware objective."""

    weight: float = 2.0  # λ of the penalty (at η = 1 each step keeps 1/5 of the gap); 0 turns the objective off
    rounds_of_directions: int = 2  # INLP iterations (each adds one direction per target class)
    l2: float = 10.0  # L2 weight of the proxy probes (few proxies: keep them smooth)
    components: int = 32  # principal components of the proxies' deltas the probes are fitted on

    @classmethod
    def from_env(cls, **overrides: Any) -> LeakageObjective:
        """Defaults, then ``PERSONA_LEAKAGE_WEIGHT``, then explicit non-None ``overrides``."""
        values: dict[str, Any] = {}
        raw = os.environ.get(WEIGHT_ENV)
        if raw is not None:
            try:
                values["weight"] = float(raw)
            except ValueError as error:
                raise ValueError(f"{WEIGHT_ENV}={raw!r} is not a number") from error
        values.update({k: v for k, v in overrides.items() if v is not None})
        objective = cls(**values)
        if objective.weight < 0:
            raise ValueError("the leakage weight must not be negative")
        return objective


@dataclass(frozen=True)
class Probe:
    """Published probe directions in shared-parameter space (see the module docstring)."""

    directions: NDArray[np.float32]  # (k, size), orthonormal rows
    centres: NDArray[np.float64]  # (k,)
    scales: NDArray[np.float64]  # (k,)
    names: tuple[str, ...]  # e.g. "gender=F", "age=<25"

    def projections(self, delta: NDArray[np.floating]) -> NDArray[np.float64]:
        """``a_k · Δ − c_k`` for every direction."""
        return np.asarray(self.directions @ np.asarray(delta, dtype=np.float32), dtype=np.float64) - self.centres

    def leakage(self, delta: NDArray[np.floating]) -> float:
        """The probe's confidence on this delta, in [0, 1): 0 when it sits at the proxies' centre."""
        if len(self.names) == 0:
            return 0.0
        return float(np.max(np.abs(np.tanh(self.scales * self.projections(delta) / 2.0))))

    def proximal(self, weight: float) -> Callable[[Any, float], Any]:
        """The proximal step of ``weight · Σ_k (a_k · Δ − c_k)²`` on a flat shared delta (a tensor) at step η."""
        import torch  # torch boundary: fitting and reading a probe is numpy; only this training step needs torch

        directions = torch.from_numpy(np.ascontiguousarray(self.directions, dtype=np.float32))
        centres = torch.from_numpy(self.centres.astype(np.float32))

        def step(delta: torch.Tensor, lr: float) -> torch.Tensor:
            t = directions @ delta
            pull = 2.0 * lr * weight
            return delta + directions.T @ ((t + pull * centres) / (1.0 + pull) - t)

        return step


def fit_probe(
    deltas: NDArray[np.floating], targets: Mapping[str, NDArray[np.int64]], objective: LeakageObjective
) -> Probe:
    """INLP probe directions from the proxy users' raw deltas (rows) and their attributes (see module docstring)."""
    x = np.asarray(deltas, dtype=np.float64)
    mean = x.mean(0)
    centred = x - mean
    problems: list[tuple[str, NDArray[np.bool_]]] = []
    for name, labels in targets.items():
        n_classes = int(labels.max()) + 1
        classes = [1] if n_classes == 2 else list(range(n_classes))
        problems += [(f"{name}={k}", labels == k) for k in classes if 0 < int((labels == k).sum()) < len(labels)]
    found: list[NDArray[np.float64]] = []
    scales: list[float] = []
    names: list[str] = []
    for _ in range(objective.rounds_of_directions):
        for name, positive in problems:
            residual = centred
            if found:
                basis = np.stack(found)
                residual = centred - (centred @ basis.T) @ basis
            # the probe lives in the span of the proxies' deltas: fit it on their principal components
            u, singular, vt = np.linalg.svd(residual, full_matrices=False)
            k = min(objective.components, int(np.count_nonzero(singular > 1e-9 * max(singular[0], 1e-30))))
            if k == 0:
                continue
            scores = u[:, :k] * singular[:k]
            deviation = scores.std(0)
            deviation[deviation < 1e-12] = 1.0
            w = fit_logistic(scores / deviation, positive, objective.l2)[:-1] / deviation
            direction = vt[:k].T @ w  # logit = direction · Δ (up to the intercept)
            for other in found:
                direction -= (direction @ other) * other
            norm = float(np.linalg.norm(direction))
            if norm < 1e-12:
                continue
            found.append(direction / norm)
            scales.append(norm)
            names.append(name)
    if not found:
        return Probe(np.zeros((0, x.shape[1]), np.float32), np.zeros(0), np.zeros(0), ())
    directions = np.stack(found)
    return Probe(directions.astype(np.float32), directions @ mean, np.array(scales), tuple(names))


def holdout_rank(
    shared: SharedParams,
    private: PrivateParams,
    history: IntArray,
    target: int,
    negatives: IntArray,
    text_vectors: FloatArray,
) -> int:
    """0-based rank of ``target`` among ``negatives`` (ties against it) for this history and these parameters.

    Only the history tail and the candidates are embedded, so it costs little more than the scores themselves.
    """
    candidates = np.concatenate([[target], np.asarray(negatives, dtype=np.int64)])
    state = user_state(shared, private, item_vectors(shared, text_vectors, history_tail(shared, history)))
    scores = first_stage_scores(state, item_vectors(shared, text_vectors, candidates), shared.item_bias[candidates])
    return int(np.count_nonzero(scores[1:] >= scores[0]))


def local_quality(rank_before: int, rank_after: int) -> float:
    """The agent's quality score of its own update: 1 when its held-out item ranks no worse, else 0.5."""
    return 1.0 if rank_after <= rank_before else 0.5
