"""Federated training of the shared parameters, in simulation, behind an aggregation interface.

Each agent trains on its own data from the current global shared parameters and hands its **delta** and weight
(its number of training examples, n_u) to an :class:`Aggregator`; the aggregator returns only the weighted mean
of the deltas. The in-process :class:`WeightedMeanAggregator` adds them up in memory; the real sync protocol
(secure aggregation over the network) implements the same interface, so the training code does not change.

The server applies the mean delta with an adaptive server optimizer (FedAdam, Reddi et al., ICLR 2021), which
needs only the aggregate: item rows that few agents touch still move at a useful pace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from models.firststage.scorer import FloatArray, IntArray, PrivateParams, SharedParams


class Aggregator(Protocol):
    """Turns one round's per-agent contributions into their weighted mean, seeing each only as the protocol allows."""

    def select(self, round_id: int, agent_ids: list[int]) -> list[int]:
        """The agents that take part in this round (the cohort); only they train and submit."""

    def begin_round(self, round_id: int, vector_size: int) -> None:
        """Start a round for vectors of ``vector_size`` floats."""

    def submit(self, agent_id: int, delta: FloatArray, weight: float) -> None:
        """Hand over one agent's shared delta and its weight (n_u)."""

    def finish(self) -> FloatArray | None:
        """The weighted mean delta of the round, or None when the round could not complete."""


class WeightedMeanAggregator:
    """In-process aggregation: a running sum of weight·delta and of the weights (memory O(vector length))."""

    def __init__(self) -> None:
        self._sum: NDArray[np.float64] | None = None
        self._weight = 0.0
        self.round_id = -1

    def select(self, round_id: int, agent_ids: list[int]) -> list[int]:
        """Every agent takes part in every round."""
        return agent_ids

    def begin_round(self, round_id: int, vector_size: int) -> None:
        """Reset the running sums."""
        self.round_id = round_id
        self._sum = np.zeros(vector_size, dtype=np.float64)
        self._weight = 0.0

    def submit(self, agent_id: int, delta: FloatArray, weight: float) -> None:
        """Add one contribution."""
        if self._sum is None:
            raise RuntimeError("submit() before begin_round()")
        if delta.shape != self._sum.shape:
            raise ValueError(f"delta has shape {delta.shape}, expected {self._sum.shape}")
        self._sum += weight * delta.astype(np.float64)
        self._weight += weight

    def finish(self) -> FloatArray | None:
        """The weighted mean, or None if nobody contributed."""
        if self._sum is None or self._weight <= 0:
            return None
        mean = (self._sum / self._weight).astype(np.float32)
        self._sum = None
        return mean


@dataclass
class FedAdam:
    """Server-side Adam on the aggregated pseudo-gradient (the mean delta)."""

    lr: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: NDArray[np.float64] | None = None
    v: NDArray[np.float64] | None = None

    def step(self, global_vector: FloatArray, mean_delta: FloatArray) -> FloatArray:
        """Move the global vector along the mean delta, scaled per coordinate."""
        delta = mean_delta.astype(np.float64)
        if self.m is None or self.v is None:
            self.m = np.zeros_like(delta)
            self.v = np.full_like(delta, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        self.v = self.beta2 * self.v + (1 - self.beta2) * delta**2
        return (global_vector + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)


LocalTrainFn = Callable[[SharedParams, PrivateParams, IntArray, int], tuple[SharedParams, PrivateParams, int]]


@dataclass
class RoundReport:
    """What happened in one round: who took part and the validation metrics afterwards."""

    round_id: int
    n_agents: int
    valid_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FederatedState:
    """The global shared parameters and every agent's private parameters (each kept by its own agent)."""

    shared: SharedParams
    privates: dict[int, PrivateParams]


def run_round(
    round_id: int,
    state: FederatedState,
    agents: Iterable[tuple[int, IntArray]],
    local_train: LocalTrainFn,
    aggregator: Aggregator,
    server: FedAdam,
) -> int:
    """One federated round: local training on each agent, aggregation of shared deltas, a server step.

    The aggregator picks the round's cohort; only those agents train. Private parameters are updated in place on
    each agent; only the shared delta goes to the aggregator. Returns the number of agents that contributed.
    """
    base = state.shared.to_vector()
    candidates = dict(agents)
    cohort = aggregator.select(round_id, list(candidates))
    aggregator.begin_round(round_id, base.size)
    n = 0
    for agent_id in cohort:
        train_seq = candidates[agent_id]
        private = state.privates.setdefault(agent_id, PrivateParams.init(state.shared.dim))
        new_shared, new_private, weight = local_train(state.shared, private, train_seq, round_id)
        state.privates[agent_id] = new_private
        aggregator.submit(agent_id, new_shared.to_vector() - base, float(weight))
        n += 1
    mean_delta = aggregator.finish()
    if mean_delta is not None:
        state.shared = state.shared.with_vector(server.step(base, mean_delta))
    return n
