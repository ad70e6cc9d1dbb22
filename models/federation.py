"""The federation interface, shared by every model that agents train together: the aggregation seam, one
round of aggregation, and the server optimizer.

Each agent trains on its own data from the current global parameters and hands its **delta** and weight (its
number of training examples, n_u) to an :class:`Aggregator`; the aggregator returns only the weighted mean of the
deltas. The in-process :class:`WeightedMeanAggregator` adds them up in memory; the real sync protocol (secure
aggregation over the network) implements the same interface, so the training code does not change. The server
applies the mean delta with an adaptive server optimizer (FedAdam, Reddi et al., ICLR 2021), which needs only the
aggregate: item rows that few agents touch still move at a useful pace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from models.types import FloatArray


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


Contribution = Callable[[int], tuple[FloatArray, float]]
"""``contribute(agent_id) -> (delta, weight)``: one agent trains locally and returns its shared delta and n_u."""


def aggregate_round(
    round_id: int, candidates: Sequence[int], vector_size: int, contribute: Contribution, aggregator: Aggregator
) -> tuple[FloatArray | None, list[int]]:
    """One round of aggregation: the aggregator picks the cohort among ``candidates``, each member contributes,
    and the weighted mean delta comes back (None when the round could not complete) with the cohort."""
    cohort = aggregator.select(round_id, list(candidates))
    aggregator.begin_round(round_id, vector_size)
    for agent_id in cohort:
        delta, weight = contribute(agent_id)
        aggregator.submit(agent_id, delta, weight)
    return aggregator.finish(), cohort
