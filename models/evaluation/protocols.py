"""Evaluation protocols (EVALUATION.md) and the models they compare.

Protocols: ``loo99`` (held-out item vs its 99 sampled negatives), ``full`` (vs every item outside the user's
training set) and ``coldstart`` (held-out users whose history is cut to their first k items). Models:
``popularity`` (training counts), ``central`` (the first-stage scorer trained on pooled data) and ``federated``
(the same scorer trained by simulated agents with federated averaging). Model selection — the epoch or round to
keep — uses validation only; test numbers are computed once, for the selected model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.errors import PersonaError
from models.firststage.federated import Aggregator, FedAdam, FederatedState, WeightedMeanAggregator, run_round
from models.evaluation.metrics import summarize
from models.firststage.scorer import FirstStageScorer, FloatArray, IntArray, PrivateParams, SharedParams
from models.data.split import Split

Protocol = Literal["loo99", "full", "coldstart"]
ModelName = Literal["popularity", "central", "federated"]
PROTOCOLS: tuple[str, ...] = ("loo99", "full", "coldstart")
MODELS: tuple[str, ...] = ("popularity", "central", "federated", "persona-base", "persona-shared", "persona")
RERANK_K = 20
COLDSTART_KS = (0, 1, 3, 5)
Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class FederatedConfig:
    """Settings of the federated simulation (defaults measured on ML-100K; see README)."""

    rounds: int = 40
    server_lr: float = 0.1
    local_optimizer: str = "sgd"
    local_lr: float = 1.0
    private_lr: float = 0.05
    local_epochs: int = 1
    batch_size: int = 64
    n_negatives: int = 100
    seed: int = 0

    def train_config(self) -> Any:
        """The local training recipe every agent runs (:class:`models.firststage.training.TrainConfig`): the simulation, the
        audit and ``agent sync`` all train with it, so what a real agent sends matches what was measured."""
        from models.firststage.training import TrainConfig

        return TrainConfig(
            n_negatives=self.n_negatives,
            batch_size=self.batch_size,
            lr=self.local_lr,
            epochs=self.local_epochs,
            private_lr=self.private_lr,
            optimizer=self.local_optimizer,
        )


@dataclass(frozen=True)
class CentralConfig:
    """Settings of the centralized baseline."""

    epochs: int = 10
    lr: float = 0.003
    batch_size: int = 512
    n_negatives: int = 100
    seed: int = 0


# A scorer maps (user, history, candidate items) to scores.
ScoreFn = Callable[[int, IntArray, IntArray], FloatArray]


@dataclass
class TrainedModel:
    """A scorer for users plus how it was selected."""

    score: ScoreFn
    selected: dict[str, Any] = field(default_factory=dict)
    score_all: Callable[[int, IntArray], FloatArray] | None = None
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


def ranks(
    model: TrainedModel, split: Split, protocol: Literal["loo99", "full"], which: Literal["valid", "test"]
) -> list[int]:
    """0-based rank of each user's held-out item (ties against it) under the protocol."""
    out: list[int] = []
    for u, s in split.users.items():
        pos = s.valid if which == "valid" else s.test
        if protocol == "loo99":
            negs = s.valid_negs if which == "valid" else s.test_negs
            scores = model.score(u, s.train, np.concatenate([[pos], negs]).astype(np.int64))
            out.append(int(np.count_nonzero(scores[1:] >= scores[0])))
        else:
            assert model.score_all is not None
            scores = model.score_all(u, s.train).astype(np.float64)
            allowed = np.ones(split.n_items, dtype=bool)
            allowed[s.train] = False
            if which == "test":
                allowed[s.valid] = False
            allowed[pos] = False
            out.append(int(np.count_nonzero(scores[allowed] >= scores[pos])))
    return out


def metrics_for(model: TrainedModel, split: Split, protocol: Literal["loo99", "full"], which: str) -> dict[str, float]:
    """HR@10, NDCG@10 (and Recall@20 for full ranking) on the validation or test items."""
    assert which in ("valid", "test")
    r = ranks(model, split, protocol, "valid" if which == "valid" else "test")
    return summarize(r, ks=(10,), recall_ks=(20,) if protocol == "full" else ())


def _text_tensor(text_vectors: FloatArray) -> Any:
    """The frozen text vectors as a contiguous float32 torch tensor (torch is imported only here, lazily)."""
    import torch

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

    from models.firststage.training import local_train

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

    from models.firststage.training import TrainConfig, central_train

    cohort = sorted(split.users) if users is None else users
    eval_split = split.subset(cohort)
    best: list[Any] = [None]

    def on_epoch(epoch: int, shared: SharedParams, table: NDArray[np.float32]) -> None:
        privates = {u: PrivateParams(user_vector=table[i].copy()) for i, u in enumerate(cohort)}
        valid = metrics_for(scorer_model(shared, privates, text_vectors), eval_split, select_protocol, "valid")
        if best[0] is None or valid["NDCG@10"] > best[0][0]:
            best[0] = (valid["NDCG@10"], epoch + 1, shared, privates)
        if progress is not None:
            report = {"epoch": epoch + 1, "epochs": config.epochs, **{f"valid_{k}": v for k, v in valid.items()}}
            progress("epoch", report)

    central_train(
        SharedParams.init(split.n_items, seed=config.seed),
        [split.users[u].train for u in cohort],
        _text_tensor(text_vectors),
        TrainConfig(n_negatives=config.n_negatives, batch_size=config.batch_size, lr=config.lr, epochs=config.epochs),
        seed=config.seed,
        on_epoch=on_epoch,
    )
    score, epoch, shared, privates = best[0]
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


def coldstart_users(split: Split, *, fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Hold out a seeded ``fraction`` of users as newcomers: (warm users to train on, cold users to test)."""
    users = np.array(sorted(split.users), dtype=np.int64)
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(users, size=max(1, round(fraction * len(users))), replace=False))
    warm = np.setdiff1d(users, cold)
    return [int(u) for u in warm], [int(u) for u in cold]


def coldstart_cut(split: Split, cold: list[int], k: int) -> Split:
    """The cold users only, each with their training history cut to its first ``k`` items."""
    cut = Split(split.dataset, split.seed, split.n_items, {})
    for u in cold:
        s = split.users[u]
        cut.users[u] = type(s)(s.train[:k], s.valid, s.test, s.valid_negs, s.test_negs)
    return cut


def evaluate_coldstart(
    name: str,
    split: Split,
    text_vectors: FloatArray,
    *,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    progress: Progress | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, Any]]:
    """Train on the warm users only; score each cold user from their first k items (k in 0, 1, 3, 5).

    A cold user's private vector is trained on those k items alone (zero for k = 0). Returns test and validation
    LOO-99 metrics per k, and the model-selection record.
    """
    warm, cold = coldstart_users(split)
    model = train_model(name, split, text_vectors, users=warm, federated=federated, central=central, progress=progress)
    test: dict[str, dict[str, float]] = {}
    valid: dict[str, dict[str, float]] = {}
    shared = model.shared
    for k in COLDSTART_KS:
        cut = coldstart_cut(split, cold, k)
        if name == "popularity" or shared is None:
            k_model = model
        else:
            k_model = cold_private_model(shared, cut, text_vectors, federated)
        test[f"k={k}"] = metrics_for(k_model, cut, "loo99", "test")
        valid[f"k={k}"] = metrics_for(k_model, cut, "loo99", "valid")
    return test, valid, {**model.selected, "cold_users": len(cold), "warm_users": len(warm)}


def cold_private_model(
    shared: SharedParams, cut: Split, text_vectors: FloatArray, config: FederatedConfig
) -> TrainedModel:
    """Each cold user trains only a private vector on their k items; the shared part stays as published."""

    from models.firststage.training import TrainConfig, local_train

    text_t = _text_tensor(text_vectors)
    cfg = TrainConfig(lr=0.0, private_lr=config.private_lr, epochs=3, batch_size=config.batch_size)
    privates: dict[int, PrivateParams] = {}
    for u, s in cut.users.items():
        if len(s.train) == 0:
            continue
        privates[u] = local_train(shared, PrivateParams.init(shared.dim), s.train, text_t, cfg, seed=u).private
    return scorer_model(shared, privates, text_vectors)


def evaluate_two_stage(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    federated: FederatedConfig = FederatedConfig(),
    k: int = RERANK_K,
    progress: Progress | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """LOO-99 of the federated first stage with its top ``k`` rescored by the foundation model (no adapters yet).

    The blend weight is picked on validation; weight 0 is the first stage alone, so the selection can only
    keep the foundation model where validation says it helps.
    """
    from models.fm.assets import gguf_path, torch_dir
    from models.fm.serving import FoundationModel
    from models.fm.prompts import PromptBuilder
    from models.fm.blend import pick_weight, rerank_lists

    first = train_federated(split, text_vectors, config=federated, progress=progress)
    builder = PromptBuilder(torch_dir() / "tokenizer.json", catalog)
    with FoundationModel(gguf_path(), max_candidates=k) as fm:

        def fm_score(_u: int, history: IntArray, items: IntArray) -> FloatArray:
            suffixes = [builder.suffix(int(i)) for i in items]
            return fm.score(builder.prefix(history.tolist()), suffixes, builder.answers)

        valid_lists = rerank_lists(split, "valid", first.score, fm_score, k=k)
        weight, valid = pick_weight(valid_lists)
        test_lists = rerank_lists(split, "test", first.score, fm_score, k=k)
    test = summarize([lst.rank(weight) for lst in test_lists])
    first_stage = summarize([lst.rank(0.0) for lst in test_lists])
    selected = {**first.selected, "rerank_k": k, "blend_weight": weight, "first_stage_metrics": first_stage}
    return test, valid, selected


def evaluate(
    name: str,
    protocol: str,
    split: Split,
    text_vectors: FloatArray,
    *,
    federated: FederatedConfig = FederatedConfig(),
    central: CentralConfig = CentralConfig(),
    aggregator: Aggregator | None = None,
    catalog: Catalog | None = None,
    persona: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train or load the model, select on validation, and report test metrics: the ``agent eval`` JSON body.

    ``persona`` and ``persona-shared`` (the whole system with both foundation-model adapters, or the shared one
    only) are described in :mod:`models.experiments.persona`; ``persona`` takes a :class:`models.experiments.persona.PersonaConfig`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    start = time.perf_counter()
    metrics: dict[str, Any]
    valid_metrics: dict[str, Any]
    if name == "persona-base":
        if protocol != "loo99" or catalog is None:
            raise PersonaError(
                "persona-base is measured on the loo99 protocol only.", hint="Use --protocol loo99 with this model."
            )
        metrics, valid_metrics, selected = evaluate_two_stage(
            split, text_vectors, catalog, federated=federated, progress=progress
        )
    elif name in ("persona", "persona-shared"):
        from models.experiments.persona import PersonaConfig, evaluate_persona, evaluate_persona_coldstart

        if catalog is None:
            raise PersonaError(f"{name} needs the catalog's text.", hint="Pass the dataset's catalog.")
        if protocol == "coldstart":
            metrics, valid_metrics, selected = evaluate_persona_coldstart(
                split,
                text_vectors,
                catalog,
                private=name == "persona",
                federated=federated,
                config=persona or PersonaConfig(),
                progress=progress,
            )
        else:
            metrics, valid_metrics, selected = evaluate_persona(
                split,
                text_vectors,
                catalog,
                protocol="loo99" if protocol == "loo99" else "full",
                private=name == "persona",
                federated=federated,
                config=persona or PersonaConfig(),
                aggregator=aggregator,
                progress=progress,
            )
    elif protocol == "coldstart":
        test, valid, selected = evaluate_coldstart(
            name, split, text_vectors, federated=federated, central=central, progress=progress
        )
        metrics = dict(test)
        valid_metrics = dict(valid)
    else:
        proto: Literal["loo99", "full"] = "loo99" if protocol == "loo99" else "full"
        model = train_model(
            name,
            split,
            text_vectors,
            select_protocol=proto,
            federated=federated,
            central=central,
            aggregator=aggregator,
            progress=progress,
        )
        metrics = metrics_for(model, split, proto, "test")
        valid_metrics = metrics_for(model, split, proto, "valid")
        selected = model.selected
    return {
        "protocol": protocol,
        "model": name,
        "history": "train",
        "metrics": metrics,
        "valid_metrics": valid_metrics,
        "selected": selected,
        "wall_s": round(time.perf_counter() - start, 2),
    }
