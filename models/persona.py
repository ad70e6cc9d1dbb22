"""The whole system, measured end to end: ``agent eval --model persona`` and ``--model persona-shared``.

1. The first stage is trained by the federated simulation (:func:`models.evaluate.train_federated`).
2. The foundation model's **shared** LoRA φ_g is trained by federated rounds: each round a seeded cohort of agents
   builds training pairs from its *own* training sequence only (its latest items as positives, each against a
   negative drawn from the first stage's top candidates for the same history, outside the training set — the
   candidates the reranker will face), runs one local pass, and submits the change of the FFA ``B`` factors to the
   same :class:`~models.federated.Aggregator` interface the first stage uses (so the secure aggregator can carry
   it too). ``A`` is frozen at a public seed, so averaging ``B`` averages the adapters exactly.
3. Each user's **private** LoRA φ_u (rank 4 on the top six layers) trains on that user's own pairs with the shared
   adapter attached and frozen. The input of its first layer is computed once per prompt
   (:meth:`~models.fm_train.TorchFM.cache_top`), so its epochs cost six layers, not eighteen.
4. Serving is llama.cpp with both adapters exported to GGUF; the first stage's top ``rerank_k`` are rescored and
   blended (:mod:`models.rerank`) with a weight picked on validation users only.

Compute budget (2-core laptop, see README): the rerank of every user's test list is the largest cost, so the
validation lists that pick the blend weight are scored for a seeded sample of ``valid_users`` users.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.data import Catalog
from models.federated import Aggregator, WeightedMeanAggregator
from models.metrics import summarize
from models.rerank import RerankedList, pick_weight
from models.retrieval import FloatArray, IntArray
from models.split import Split

Pairs = list[tuple[list[int], int, int]]  # (history, candidate item, label 1 = liked)
Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class PersonaConfig:
    """Settings of the foundation-model part of the system (defaults fit the 60-minute budget; see README)."""

    rounds: int = 8  # federated rounds of the shared LoRA
    cohort: int = 32  # agents per round
    pairs_per_agent: int = 8  # half positives, half first-stage negatives
    local_lr: float = 1e-3  # Adam on the shared B factors, one pass (5e-3: held-out loss 0.77 → 1.86 in one round)
    server_lr: float = 1.0  # FedAvg step on the mean delta
    private_pairs: int = 8
    private_epochs: int = 8  # epochs over cached inputs cost six layers each
    private_lr: float = 2e-3  # Adam; 1e-2 oscillates on 8 pairs, 1e-3 descends steadily but slowly
    rerank_k: int = 20
    candidate_pool: int = 20  # first-stage top-N that training negatives are drawn from
    valid_users: int = 300  # users whose validation lists pick the blend weight (seeded sample)
    test_users: int | None = None  # None: every user's test list (the protocol); a number: a seeded sample (pilots)
    threads: int | None = None
    seed: int = 0


def first_stage_top(
    score_all: Callable[[int, IntArray], FloatArray], user: int, history: IntArray, exclude: IntArray, n: int
) -> IntArray:
    """The first stage's ``n`` best items for ``user`` after ``history``, never one of ``exclude``."""
    scores = np.asarray(score_all(user, history), dtype=np.float64).copy()
    scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:n]


def agent_pairs(
    user: int,
    train: IntArray,
    score_all: Callable[[int, IntArray], FloatArray],
    n_pairs: int,
    rng: np.random.Generator,
    *,
    pool: int = 20,
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


def train_shared_adapter(
    split: Split,
    score_all: Callable[[int, IntArray], FloatArray],
    fm: Any,
    builder: Any,
    config: PersonaConfig,
    *,
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Federated rounds of the shared LoRA (FedAvg of the agents' ``B`` deltas); the adapter and per-round log."""
    from models.lora import LoraWeights, default_shared_spec

    spec = default_shared_spec(len(fm.layers))
    weights = LoraWeights.init(spec, fm.shapes())
    vector = weights.trainable_vector()
    aggregator = aggregator or WeightedMeanAggregator()
    users = sorted(split.users)
    log: list[dict[str, Any]] = []
    for round_id in range(config.rounds):
        start = time.perf_counter()
        rng = np.random.default_rng([config.seed, round_id, 7])
        sampled = sorted(int(u) for u in rng.choice(users, size=min(config.cohort, len(users)), replace=False))
        cohort = aggregator.select(round_id, sampled)
        aggregator.begin_round(round_id, vector.size)
        losses = []
        for u in cohort:
            pairs = agent_pairs(
                u, split.users[u].train, score_all, config.pairs_per_agent, rng, pool=config.candidate_pool
            )
            prompts = [builder.prefix(h) + builder.suffix(i) for h, i, _ in pairs]
            fm.attach("shared", weights.with_trainable_vector(vector), trainable=True)
            losses.append(
                fm.train_pairs(
                    "shared",
                    prompts,
                    [y for _, _, y in pairs],
                    builder.answers,
                    lr=config.local_lr,
                    steps_batch=len(prompts),
                    seed=config.seed * 7919 + round_id,
                )
            )
            delta = fm.read("shared", weights).trainable_vector() - vector
            aggregator.submit(u, delta.astype(np.float32), float(len(pairs)))
        mean = aggregator.finish()
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
    user: int,
    train: IntArray,
    score_all: Callable[[int, IntArray], FloatArray],
    fm: Any,
    builder: Any,
    config: PersonaConfig,
) -> tuple[Any, float, int]:
    """One user's private LoRA on their own pairs (shared adapter attached, frozen): the adapter, its mean loss and
    the number of pairs it saw."""
    from models.lora import LoraWeights, default_private_spec

    spec = default_private_spec(len(fm.layers))
    weights = LoraWeights.init(spec, fm.shapes())
    fm.attach("private", weights, trainable=True)
    rng = np.random.default_rng([config.seed, user, 11])
    pairs = agent_pairs(user, train, score_all, config.private_pairs, rng, pool=config.candidate_pool)
    prompts = [builder.prefix(h) + builder.suffix(i) for h, i, _ in pairs]
    cache = fm.cache_top(prompts, spec.layers[0])
    loss = fm.train_cached(
        "private",
        [cache],
        [[y for _, _, y in pairs]],
        builder.answers,
        lr=config.private_lr,
        epochs=config.private_epochs,
    )
    trained = fm.read("private", weights)
    fm.attach("private", None)
    return trained, loss, len(pairs)


@dataclass
class _Candidates:
    items: IntArray  # the positive first
    first: FloatArray
    top: IntArray
    positive_first_rank: int


def candidates_for(
    split: Split,
    user: int,
    which: Literal["valid", "test"],
    protocol: Literal["loo99", "full"],
    score_all: Callable[[int, IntArray], FloatArray],
    k: int,
) -> _Candidates:
    """The protocol's candidate list for one user (positive first), the first stage's scores and its top ``k``."""
    s = split.users[user]
    positive = s.valid if which == "valid" else s.test
    scores_all = np.asarray(score_all(user, s.train), dtype=np.float64)
    if protocol == "loo99":
        negatives = s.valid_negs if which == "valid" else s.test_negs
        items = np.concatenate([[positive], negatives]).astype(np.int64)
    else:
        allowed = np.ones(split.n_items, dtype=bool)
        allowed[s.train] = False
        if which == "test":
            allowed[s.valid] = False
        allowed[positive] = False
        items = np.concatenate([[positive], np.flatnonzero(allowed)]).astype(np.int64)
    first = scores_all[items]
    top = np.argsort(-first, kind="stable")[:k]
    return _Candidates(items, first.astype(np.float32), top, int(np.count_nonzero(first[1:] >= first[0])))


def evaluate_persona(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    protocol: Literal["loo99", "full"] = "loo99",
    private: bool = True,
    federated: Any = None,
    config: PersonaConfig = PersonaConfig(),
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Train the whole system and report test metrics (blend weight chosen on validation), validation metrics and
    a selection record that also carries the first stage alone and, with ``private``, the shared adapter alone —
    measured on the same users and candidates, so the table's rows differ only in the adapters."""
    from models.evaluate import FederatedConfig, train_federated
    from models.fm_assets import gguf_path, torch_dir
    from models.fm_train import TorchFM
    from models.llm import FoundationModel
    from models.lora import export_gguf
    from models.prompts import PromptBuilder

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    first = train_federated(
        split, text_vectors, config=federated or FederatedConfig(), select_protocol=protocol, progress=progress
    )
    assert first.score_all is not None
    score_all = first.score_all
    timings["first_stage_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    builder = PromptBuilder(torch_dir() / "tokenizer.json", catalog)
    fm = TorchFM(threads=config.threads)
    shared, fm_log = train_shared_adapter(
        split, score_all, fm, builder, config, aggregator=aggregator, progress=progress
    )
    timings["shared_adapter_s"] = time.perf_counter() - clock

    users = sorted(split.users)
    rng = np.random.default_rng([config.seed, 13])
    n_valid = min(config.valid_users, len(users))
    valid_users = set(int(u) for u in rng.choice(users, size=n_valid, replace=False))
    if config.test_users is not None and config.test_users < len(users):
        test_rng = np.random.default_rng([config.seed, 17])
        test_users = set(int(u) for u in test_rng.choice(users, size=config.test_users, replace=False))
        users = sorted(test_users | valid_users)
    else:
        test_users = set(users)
    variants = ["shared", "both"] if private else ["shared"]
    lists: dict[tuple[str, str], list[RerankedList]] = {(v, w): [] for v in variants for w in ("valid", "test")}
    private_losses: list[float] = []
    timings["private_adapter_s"] = 0.0
    timings["rerank_s"] = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="persona-eval-") as tmp,
        FoundationModel(gguf_path(), n_threads=config.threads, max_candidates=config.rerank_k) as served,
    ):
        export_gguf(shared, Path(tmp) / "shared.gguf")
        served.load_adapter("shared", Path(tmp) / "shared.gguf")
        served.set_scales(shared=1.0)
        for done, u in enumerate(users, start=1):
            s = split.users[u]
            if private:
                clock = time.perf_counter()
                adapter, loss, _ = train_private_adapter(u, s.train, score_all, fm, builder, config)
                private_losses.append(loss)
                export_gguf(adapter, Path(tmp) / "private.gguf")
                served.load_adapter("private", Path(tmp) / "private.gguf")
                timings["private_adapter_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            prefix = builder.prefix(s.train.tolist())
            which: Literal["valid", "test"]
            for which, chosen in (("valid", valid_users), ("test", test_users)):
                if u not in chosen:
                    continue
                c = candidates_for(split, u, which, protocol, score_all, config.rerank_k)
                suffixes = [builder.suffix(int(i)) for i in c.items[c.top]]
                for variant in variants:
                    if private:
                        served.set_scales(private=1.0 if variant == "both" else 0.0)
                    fm_scores = served.score(prefix, suffixes, builder.answers)
                    lists[(variant, which)].append(
                        RerankedList(c.top, c.first[c.top], fm_scores, c.positive_first_rank)
                    )
            timings["rerank_s"] += time.perf_counter() - clock
            if progress is not None and (done % 50 == 0 or done == len(users)):
                progress("rerank", {"users": done, "of": len(users)})
    recall = (20,) if protocol == "full" else ()
    report: dict[str, Any] = {}
    for variant in variants:
        weight, _ = pick_weight(lists[(variant, "valid")])
        report[variant] = {
            "blend_weight": weight,
            "test": summarize([lst.rank(weight) for lst in lists[(variant, "test")]], recall_ks=recall),
            "valid": summarize([lst.rank(weight) for lst in lists[(variant, "valid")]], recall_ks=recall),
        }
    final = report["both" if private else "shared"]
    selected = {
        **{k: v for k, v in first.selected.items() if k != "history"},
        "first_stage_metrics": summarize([lst.rank(0.0) for lst in lists[(variants[0], "test")]], recall_ks=recall),
        "first_stage_valid_metrics": summarize(
            [lst.rank(0.0) for lst in lists[(variants[0], "valid")]], recall_ks=recall
        ),
        "blend_weight": final["blend_weight"],
        "rerank_k": config.rerank_k,
        "valid_users": n_valid,
        "test_users": len(test_users),
        "fm_rounds": fm_log,
        "persona_config": asdict(config),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    if private:
        selected["shared_only"] = report["shared"]
        selected["private_train_loss_mean"] = float(np.mean(private_losses))
    return final["test"], final["valid"], selected
