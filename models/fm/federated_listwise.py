"""The shared LoRA φ_g trained by simulated federated rounds of agents on their own **listwise** lists: the recipe a
sync runs on each device (:func:`models.fm.listwise.train_on_own_lists` in :mod:`agent.engine.shared_lora`), as the
evaluation (``agent eval --model persona``) measures it.

Each round, the aggregator picks a cohort; each member starts from the current φ_g, takes ``local_epochs`` Adam
steps on its own latest lists (:func:`~models.fm.listwise.sequence_lists`: its liked items in time order, ranked by
the first stage; nothing else about it is read) and submits the change of the FFA ``B`` factors through the same
:class:`~models.federation.Aggregator` interface the first stage uses (``--via-sync``: a secure aggregator on a
local coordinator). ``A`` is frozen at a public seed, so averaging ``B`` averages the adapters exactly.

Cost: the inputs of φ_g's first layer do not depend on φ_g, so an agent's lists are cached the first time it is
picked (:func:`~models.fm.listwise.cache_lists`, one forward through the lower layers) and reused in later rounds.

Torch-free at import: the torch model is passed in by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from models.data.split import Split
from models.federation import Aggregator, WeightedMeanAggregator, aggregate_round
from models.fm.listwise import (
    OWN_LIST_CONFIG,
    CachedLists,
    ListwiseConfig,
    ListwisePromptBuilder,
    cache_lists,
    sequence_lists,
    train_listwise_adapter,
)
from models.fm.lora import LoraWeights, default_shared_spec
from models.types import FloatArray, Progress, ScoreAllFn

if TYPE_CHECKING:
    from models.fm.torch_model import TorchFM


@dataclass(frozen=True)
class SharedListwiseConfig:
    """The federated rounds of φ_g in the evaluation. An agent in a real sync trains on up to
    :data:`~models.fm.listwise.OWN_LISTS` lists; the evaluation gives each agent fewer (``lists_per_agent``) to
    fit its 60-minute budget on the 2-core laptop (README); the loss, λ, τ and learning rate are the sync's
    (:data:`~models.fm.listwise.OWN_LIST_CONFIG`)."""

    rounds: int = 16
    cohort: int = 16  # agents per round
    lists_per_agent: int = 2  # the agent's latest liked items, each after the items before it
    local_epochs: int = 1  # passes over the agent's lists, one Adam step per pass (its lists form one batch)
    server_lr: float = 1.0  # FedAvg step on the mean delta
    seed: int = 0

    def own_lists(self) -> ListwiseConfig:
        """How each agent builds and trains on its lists: the sync's recipe with this many lists, one batch."""
        return replace(
            OWN_LIST_CONFIG,
            lists_per_user=self.lists_per_agent,
            batch=self.lists_per_agent,
            epochs=self.local_epochs,
            seed=self.seed,
        )


def train_shared_listwise(
    split: Split,
    score_all: ScoreAllFn,
    fm: TorchFM,
    builder: ListwisePromptBuilder,
    config: SharedListwiseConfig,
    *,
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[LoraWeights, list[dict[str, Any]]]:
    """Federated rounds of the shared LoRA on the agents' own lists (module docstring); the adapter and per-round
    log: agents, their mean local loss, ``lists_trained`` (not ``lists``, which the progress bars read as a count
    done) and seconds. ``fm`` must carry no adapter below φ_g's first layer."""
    weights = LoraWeights.init(default_shared_spec(len(fm.layers)), fm.shapes())
    vector = weights.trainable_vector()
    aggregator = aggregator or WeightedMeanAggregator()
    own = config.own_lists()
    users = [u for u in sorted(split.users) if len(split.users[u].train) >= 2]  # a list needs a history
    cached: dict[int, CachedLists] = {}
    log: list[dict[str, Any]] = []

    def contribute(u: int, *, vector: FloatArray, losses: list[float], lists: list[int]) -> tuple[FloatArray, float]:
        """One agent's local round: train φ_g on its own lists from ``vector``; its delta of ``B`` and weight."""
        if u not in cached:
            examples = sequence_lists(u, split.users[u].train, split.n_items, score_all, own)
            cached[u] = cache_lists(fm, builder, examples, weights.spec.layers[0], own)
        start = weights.with_trainable_vector(vector)
        trained, epoch_losses = train_listwise_adapter(fm, "shared", start, cached[u], own)
        losses.append(epoch_losses[0])
        lists.append(len(cached[u]))
        delta = trained.trainable_vector() - vector
        return delta.astype(np.float32), float(len(cached[u]))

    for round_id in range(config.rounds):
        start = time.perf_counter()
        rng = np.random.default_rng([config.seed, round_id, 7])
        sampled = sorted(int(u) for u in rng.choice(users, size=min(config.cohort, len(users)), replace=False))
        losses: list[float] = []
        lists: list[int] = []
        local = partial(contribute, vector=vector, losses=losses, lists=lists)
        mean, cohort = aggregate_round(round_id, sampled, vector.size, local, aggregator)
        if mean is not None:
            vector = (vector + config.server_lr * mean).astype(np.float32)
        log.append(
            {
                "round": round_id + 1,
                "agents": len(cohort),
                "lists_trained": sum(lists),
                "train_loss": float(np.mean(losses)) if losses else None,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        if progress is not None:
            progress("fm_round", log[-1] | {"rounds": config.rounds})
    trained = weights.with_trainable_vector(vector)
    fm.attach("shared", trained)
    return trained, log
