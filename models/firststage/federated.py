"""Federated rounds of the first stage's shared parameters, in simulation, over the federation interface
(:mod:`models.federation`): each agent trains its private and shared parts locally; only the shared delta goes to
the aggregator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from models.federation import Aggregator, FedAdam, aggregate_round
from models.firststage.scorer import PrivateParams, SharedParams
from models.types import FloatArray, IntArray

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
    sequences = dict(agents)

    def contribute(agent_id: int) -> tuple[FloatArray, float]:
        private = state.privates.setdefault(agent_id, PrivateParams.init(state.shared.dim))
        new_shared, new_private, weight = local_train(state.shared, private, sequences[agent_id], round_id)
        state.privates[agent_id] = new_private
        return new_shared.to_vector() - base, float(weight)

    mean_delta, cohort = aggregate_round(round_id, list(sequences), base.size, contribute, aggregator)
    if mean_delta is not None:
        state.shared = state.shared.with_vector(server.step(base, mean_delta))
    return len(cohort)
