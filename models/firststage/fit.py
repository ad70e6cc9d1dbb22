"""First-stage models fitted for evaluation: popularity, the centralized baseline and the federated simulation.

Each returns a :class:`TrainedModel` (a :class:`models.evaluation.protocols.Ranker`) selected on validation only:
the epoch or round to keep is the one with the best validation NDCG@10. Training runs in torch
(:mod:`models.firststage.training`); scoring is the numpy :class:`~models.firststage.scorer.FirstStageScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from models.data.split import Split
from models.evaluation.protocols import MODELS, metrics_for
from models.federation import Aggregator, FedAdam, WeightedMeanAggregator
from models.firststage.federated import FederatedState, run_round
from models.firststage.recipe import CentralConfig, FederatedConfig, TrainConfig
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams
from models.firststage.training import central_train, local_train
from models.types import FloatArray, IntArray, Progress


@dataclass
class TrainedModel:
    """A scorer for users plus how it was selected (implements :class:`models.evaluation.protocols.Ranker`)."""

    score: Callable[[int, IntArray, IntArray], FloatArray]
    """Scores of the given items for (user, history, items)."""
    score_all: Callable[[int, IntArray], FloatArray]
    """Scores of every catalog item for (user, history)."""
    selected: dict[str, Any] = field(default_factory=dict)
    shared: SharedParams | None = None
    privates: dict[int, PrivateParams] = field(default_factory=dict)


def popularity_model(split: Split) -> TrainedModel:
    """Score = how often the item appears in training sets."""
    counts = np.zeros(split.n_items, dtype=np.float32)
    for s in split.users.values():
        np.add.at(counts, s.train, 1.0)
    return TrainedModel(
        score=lambda _u, _h, items: counts[items],
        score_all=lambda _u, _h: counts.copy(),
        selected={"kind": "train counts"},
    )


def scorer_model(shared: SharedParams, privates: dict[int, PrivateParams], text_vectors: FloatArray) -> TrainedModel:
    """Wrap first-stage parameters as a :class:`TrainedModel`."""
    scorer = FirstStageScorer(shared, text_vectors)
    zero = PrivateParams.init(shared.dim)
    return TrainedModel(
        score=lambda u, h, items: scorer.score_items(h, privates.get(u, zero), items),
        score_all=lambda u, h: scorer.score_all(h, privates.get(u, zero)),
        shared=shared,
        privates=privates,
    )


def _text_tensor(text_vectors: FloatArray) -> torch.Tensor:
    """The frozen text vectors as a contiguous float32 torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32))


def _agents(split: Split, users: list[int]) -> Iterator[tuple[int, IntArray]]:
    for u in users:
        yield u, split.users[u].train


def train_federated(
    split: Split,
    text_vectors: FloatArray,
    *,
    config: FederatedConfig = FederatedConfig(),
    aggregator: Aggregator | None = None,
    select_protocol: Literal["loo99", "full"] = "loo99",
    users: list[int] | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    """Simulate every user as an agent for ``config.rounds`` rounds; keep the round with the best validation NDCG@10."""
    text_t = _text_tensor(text_vectors)
    train_config = config.train_config()

    def local(
        shared: SharedParams, private: PrivateParams, seq: IntArray, round_id: int
    ) -> tuple[SharedParams, PrivateParams, int]:
        result = local_train(shared, private, seq, text_t, train_config, seed=config.seed * 7919 + round_id)
        return result.shared, result.private, result.n_examples

    cohort = sorted(split.users) if users is None else users
    eval_split = split.subset(cohort)
    state = FederatedState(shared=SharedParams.init(split.n_items, seed=config.seed), privates={})
    aggregator = aggregator or WeightedMeanAggregator()
    server = FedAdam(lr=config.server_lr)
    best: tuple[float, int, SharedParams, dict[int, PrivateParams]] | None = None
    history: list[dict[str, Any]] = []
    for round_id in range(config.rounds):
        n = run_round(round_id, state, _agents(split, cohort), local, aggregator, server)
        model = scorer_model(state.shared, state.privates, text_vectors)
        valid = metrics_for(model, eval_split, select_protocol, "valid")
        history.append({"round": round_id + 1, "agents": n, **{f"valid_{k}": v for k, v in valid.items()}})
        if best is None or valid["NDCG@10"] > best[0]:
            privates = {u: p.copy() for u, p in state.privates.items()}
            best = (valid["NDCG@10"], round_id + 1, state.shared.copy(), privates)
        if progress is not None:
            progress("round", history[-1] | {"rounds": config.rounds})
    assert best is not None
    model = scorer_model(best[2], best[3], text_vectors)
    model.selected = {"round": best[1], "rounds": config.rounds, "valid_NDCG@10": best[0], "history": history}
    return model


def train_central(
    split: Split,
    text_vectors: FloatArray,
    *,
    config: CentralConfig = CentralConfig(),
    select_protocol: Literal["loo99", "full"] = "loo99",
    users: list[int] | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    """Train the same scorer on pooled data; keep the epoch with the best validation NDCG@10."""
    cohort = sorted(split.users) if users is None else users
    eval_split = split.subset(cohort)
    best: tuple[float, int, SharedParams, dict[int, PrivateParams]] | None = None

    def on_epoch(epoch: int, shared: SharedParams, table: NDArray[np.float32]) -> None:
        nonlocal best
        privates = {u: PrivateParams(user_vector=table[i].copy()) for i, u in enumerate(cohort)}
        valid = metrics_for(scorer_model(shared, privates, text_vectors), eval_split, select_protocol, "valid")
        if best is None or valid["NDCG@10"] > best[0]:
            best = (valid["NDCG@10"], epoch + 1, shared, privates)
        if progress is not None:
            report = {"epoch": epoch + 1, "epochs": config.epochs, **{f"valid_{k}": v for k, v in valid.items()}}
            progress("epoch", report)

    central_train(
        SharedParams.init(split.n_items, seed=config.seed),
        [split.users[u].train for u in cohort],
        _text_tensor(text_vectors),
        config.train_config(),
        seed=config.seed,
        on_epoch=on_epoch,
    )
    assert best is not None
    score, epoch, shared, privates = best
    model = scorer_model(shared, privates, text_vectors)
    model.selected = {"epoch": epoch, "epochs": config.epochs, "valid_NDCG@10": score}
    return model


def train_model(
    name: str,
    split: Split,
    text_vectors: FloatArray,
    *,
    select_protocol: Literal["loo99", "full"] = "loo99",
    users: list[int] | None = None,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    """Train (or count) the named model on the split's training items."""
    if name == "popularity":
        return popularity_model(split if users is None else split.subset(users))
    if name == "central":
        return train_central(
            split, text_vectors, config=central, select_protocol=select_protocol, users=users, progress=progress
        )
    if name == "federated":
        return train_federated(
            split,
            text_vectors,
            config=federated,
            aggregator=aggregator,
            select_protocol=select_protocol,
            users=users,
            progress=progress,
        )
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def cold_private_model(
    shared: SharedParams, cut: Split, text_vectors: FloatArray, config: FederatedConfig
) -> TrainedModel:
    """Each cold user trains only a private vector on their k items; the shared part stays as published."""
    text_t = _text_tensor(text_vectors)
    cfg = TrainConfig(lr=0.0, private_lr=config.private_lr, epochs=3, batch_size=config.batch_size)
    privates: dict[int, PrivateParams] = {}
    for u, s in cut.users.items():
        if len(s.train) == 0:
            continue
        privates[u] = local_train(shared, PrivateParams.init(shared.dim), s.train, text_t, cfg, seed=u).private
    return scorer_model(shared, privates, text_vectors)
