"""Training of the foundation model's adapters from an agent's own pairs: the shared LoRA φ_g by federated rounds,
the private LoRA φ_u on one user's pairs — the recipe every agent runs, and the one the evaluation measures.

A pair is (history, candidate, label): each of the agent's latest training items after the items before it
(label 1), each against a negative drawn from the first stage's top candidates for the same history, outside the
training set (label 0) — the candidates the reranker will face. The shared adapter's rounds submit the change of
the FFA ``B`` factors to the same :class:`~models.federation.Aggregator` interface the first stage uses;
``A`` is frozen at a public seed, so averaging ``B`` averages the adapters exactly. The private adapter trains with
the shared one attached and frozen, from the cached input of its first layer (:meth:`TorchFM.cache_top`).

Torch-free at import: the torch model is passed in by the caller (the training worker or the evaluation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from models.data.split import Split
from models.federation import Aggregator, WeightedMeanAggregator, aggregate_round
from models.fm.lora import LoraWeights, default_private_spec, default_shared_spec
from models.fm.prompts import PromptBuilder
from models.types import FloatArray, IntArray, Progress, ScoreAllFn

if TYPE_CHECKING:
    from models.fm.torch_model import TorchFM

Pairs = list[tuple[list[int], int, int]]  # (history, candidate item, label 1 = liked)


@dataclass(frozen=True)
class AdapterConfig:
    """How the adapters train (defaults fit the 60-minute evaluation budget; see README)."""

    rounds: int = 8  # federated rounds of the shared LoRA
    cohort: int = 32  # agents per round
    pairs_per_agent: int = 8  # half positives, half first-stage negatives
    local_lr: float = 1e-3  # Adam on the shared B factors, one pass (5e-3: held-out loss 0.77 → 1.86 in one round)
    server_lr: float = 1.0  # FedAvg step on the mean delta
    private_pairs: int = 4
    private_epochs: int = 4  # epochs over cached inputs cost six layers each
    private_lr: float = 2e-3  # Adam; 1e-2 oscillates on 8 pairs, 1e-3 descends steadily but slowly
    candidate_pool: int = 20  # first-stage top-N that training negatives are drawn from
    seed: int = 0


def first_stage_top(score_all: ScoreAllFn, user: int, history: IntArray, exclude: IntArray, n: int) -> IntArray:
    """The first stage's ``n`` best items for ``user`` after ``history``, never one of ``exclude``."""
    scores = np.asarray(score_all(user, history), dtype=np.float64).copy()
    scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:n]


def agent_pairs(
    user: int, train: IntArray, score_all: ScoreAllFn, n_pairs: int, rng: np.random.Generator, *, pool: int = 20
) -> Pairs:
    """Training pairs from one agent's own training sequence (see the module docstring); nothing else is read."""
    n_pos = max(1, n_pairs // 2)
    out: Pairs = []
    for position in range(max(1, len(train) - n_pos), len(train)):
        history = train[:position]
        out.append((history.tolist(), int(train[position]), 1))
        top = first_stage_top(score_all, user, history, train, pool)
        out.append((history.tolist(), int(rng.choice(top)), 0))
    return out


def pair_prompts(builder: PromptBuilder, pairs: Pairs) -> tuple[list[list[int]], list[int]]:
    """The full prompt (history prefix + candidate suffix) and the label of each pair."""
    return [builder.prefix(h) + builder.suffix(i) for h, i, _ in pairs], [y for _, _, y in pairs]


def train_shared_adapter(
    split: Split,
    score_all: ScoreAllFn,
    fm: TorchFM,
    builder: PromptBuilder,
    config: AdapterConfig,
    *,
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[LoraWeights, list[dict[str, Any]]]:
    """Federated rounds of the shared LoRA (FedAvg of the agents' ``B`` deltas); the adapter and per-round log."""
    spec = default_shared_spec(len(fm.layers))
    weights = LoraWeights.init(spec, fm.shapes())
    vector = weights.trainable_vector()
    aggregator = aggregator or WeightedMeanAggregator()
    users = sorted(split.users)
    log: list[dict[str, Any]] = []

    def contribute(
        u: int, *, round_id: int, vector: FloatArray, rng: np.random.Generator, losses: list[float]
    ) -> tuple[FloatArray, float]:
        """One agent's local round: train the shared adapter on its own pairs; its delta of ``B`` and weight."""
        pairs = agent_pairs(u, split.users[u].train, score_all, config.pairs_per_agent, rng, pool=config.candidate_pool)
        prompts, labels = pair_prompts(builder, pairs)
        fm.attach("shared", weights.with_trainable_vector(vector), trainable=True)
        losses.append(
            fm.train_pairs(
                "shared",
                prompts,
                labels,
                builder.answers,
                lr=config.local_lr,
                steps_batch=len(prompts),
                seed=config.seed * 7919 + round_id,
            )
        )
        delta = fm.read("shared", weights).trainable_vector() - vector
        return delta.astype(np.float32), float(len(pairs))

    for round_id in range(config.rounds):
        start = time.perf_counter()
        rng = np.random.default_rng([config.seed, round_id, 7])
        sampled = sorted(int(u) for u in rng.choice(users, size=min(config.cohort, len(users)), replace=False))
        losses: list[float] = []
        local = partial(contribute, round_id=round_id, vector=vector, rng=rng, losses=losses)
        mean, cohort = aggregate_round(round_id, sampled, vector.size, local, aggregator)
        if mean is not None:
            vector = (vector + config.server_lr * mean).astype(np.float32)
        log.append(
            {
                "round": round_id + 1,
                "agents": len(cohort),
                "train_loss": float(np.mean(losses)) if losses else None,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        if progress is not None:
            progress("fm_round", log[-1] | {"rounds": config.rounds})
    trained = weights.with_trainable_vector(vector)
    fm.attach("shared", trained)
    return trained, log


def train_private_adapter(
    user: int, train: IntArray, score_all: ScoreAllFn, fm: TorchFM, builder: PromptBuilder, config: AdapterConfig
) -> tuple[LoraWeights, float, int]:
    """One user's private LoRA on their own pairs (shared adapter attached, frozen): the adapter, its mean loss and
    the number of pairs it saw."""
    spec = default_private_spec(len(fm.layers))
    weights = LoraWeights.init(spec, fm.shapes())
    fm.attach("private", weights, trainable=True)
    rng = np.random.default_rng([config.seed, user, 11])
    pairs = agent_pairs(user, train, score_all, config.private_pairs, rng, pool=config.candidate_pool)
    prompts, labels = pair_prompts(builder, pairs)
    cache = fm.cache_top(prompts, spec.layers[0])
    loss = fm.train_cached(
        "private", [cache], [labels], builder.answers, lr=config.private_lr, epochs=config.private_epochs
    )
    trained = fm.read("private", weights)
    fm.attach("private", None)
    return trained, loss, len(pairs)
