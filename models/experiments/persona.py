"""The whole system, measured end to end: ``agent eval --model persona`` and ``--model persona-shared``.

1. The first stage is trained by the federated simulation (:func:`models.evaluation.protocols.train_federated`).
2. The foundation model's **shared** LoRA φ_g is trained by federated rounds: each round a seeded cohort of agents
   builds training pairs from its *own* training sequence only (its latest items as positives, each against a
   negative drawn from the first stage's top candidates for the same history, outside the training set — the
   candidates the reranker will face), runs one local pass, and submits the change of the FFA ``B`` factors to the
   same :class:`~models.firststage.federated.Aggregator` interface the first stage uses (so the secure aggregator can carry
   it too). ``A`` is frozen at a public seed, so averaging ``B`` averages the adapters exactly.
3. Each user's **private** LoRA φ_u (rank 4 on the top six layers) trains on that user's own pairs with the shared
   adapter attached and frozen. The input of its first layer is computed once per prompt
   (:meth:`~models.fm.torch_model.TorchFM.cache_top`), so its epochs cost six layers, not eighteen.
4. Serving is llama.cpp with both adapters exported to GGUF; the first stage's top ``rerank_k`` are rescored and
   blended (:mod:`models.fm.blend`) with a weight picked on validation users only.

Compute budget (2-core laptop, see README): the rerank of every user's test list is the largest cost, so the
validation lists that pick the blend weight are scored for a seeded sample of ``valid_users`` users.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.firststage.federated import Aggregator, WeightedMeanAggregator
from models.evaluation.metrics import summarize
from models.fm.blend import RerankedList, fm_auc, pick_weight, weight_curve
from models.firststage.scorer import FloatArray, IntArray
from models.data.split import Split

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
    private_pairs: int = 4
    private_epochs: int = 4  # epochs over cached inputs cost six layers each
    private_lr: float = 2e-3  # Adam; 1e-2 oscillates on 8 pairs, 1e-3 descends steadily but slowly
    rerank_k: int = 20
    candidate_pool: int = 20  # first-stage top-N that training negatives are drawn from
    valid_users: int = 150  # users whose validation lists pick the blend weight (seeded sample)
    test_users: int | None = None  # None: every user's test list (the protocol); a number: a seeded sample (pilots)
    threads: int | None = None  # torch threads while training the shared adapter; rerank workers use 1 each
    workers: int | None = None  # rerank processes (None: one per core; this is a batch job, not the suggest path)
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
    from models.fm.lora import LoraWeights, default_shared_spec

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
    from models.fm.lora import LoraWeights, default_private_spec

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


VARIANTS: tuple[str, ...] = ("base", "shared", "both")  # adapters on when the FM rescores: none, φ_g, φ_g + φ_u


@dataclass(frozen=True)
class _Job:
    """Everything a rerank worker needs (pickled once per worker process)."""

    split: Split
    text_vectors: FloatArray
    catalog: Catalog
    first_stage: tuple[Any, dict[int, Any]]  # the selected first stage's shared and private parameters
    shared_gguf: str
    config: PersonaConfig
    protocol: Literal["loo99", "full"]
    private: bool
    variants: tuple[str, ...]
    valid_users: frozenset[int]
    test_users: frozenset[int]
    workdir: str


@dataclass
class _UserResult:
    user: int
    lists: dict[tuple[str, str], RerankedList]
    private_loss: float | None
    private_s: float
    rerank_s: float


class _Reranker:
    """One process's foundation models: the torch copy (only to train private adapters) and the llama.cpp one."""

    def __init__(self, job: _Job) -> None:
        from models.evaluation.protocols import scorer_model
        from models.fm.assets import gguf_path, torch_dir
        from models.fm.serving import FoundationModel
        from models.fm.prompts import PromptBuilder

        self.job = job
        shared, privates = job.first_stage
        self.score_all = scorer_model(shared, privates, job.text_vectors).score_all
        self.builder = PromptBuilder(torch_dir() / "tokenizer.json", job.catalog)
        self.fm: Any = None
        if job.private:
            from models.fm.torch_model import TorchFM

            self.fm = TorchFM(threads=job.config.threads or 1)
        self.served = FoundationModel(
            gguf_path(), n_threads=job.config.threads or 1, max_candidates=job.config.rerank_k
        )
        self.served.load_adapter("shared", Path(job.shared_gguf))
        self.private_path = Path(job.workdir) / f"private-{os.getpid()}.gguf"

    def close(self) -> None:
        self.served.close()

    def user(self, u: int) -> _UserResult:
        """Train ``u``'s private adapter (when measured) and rescore their validation and test candidates."""
        from models.fm.lora import export_gguf

        job = self.job
        s = job.split.users[u]
        assert self.score_all is not None
        loss: float | None = None
        clock = time.perf_counter()
        trained = job.private and len(s.train) >= 2  # a pair needs a history before a positive
        if trained:
            adapter, loss, _ = train_private_adapter(u, s.train, self.score_all, self.fm, self.builder, job.config)
            export_gguf(adapter, self.private_path)
            self.served.load_adapter("private", self.private_path)
        private_s = time.perf_counter() - clock
        clock = time.perf_counter()
        prefix = self.builder.prefix(s.train.tolist())
        lists: dict[tuple[str, str], RerankedList] = {}
        which: Literal["valid", "test"]
        for which, chosen in (("valid", job.valid_users), ("test", job.test_users)):
            if u not in chosen:
                continue
            c = candidates_for(job.split, u, which, job.protocol, self.score_all, job.config.rerank_k)
            suffixes = [self.builder.suffix(int(i)) for i in c.items[c.top]]
            for variant in job.variants:
                scales = {"shared": 0.0 if variant == "base" else 1.0}
                if "private" in self.served.adapters:  # a previous user's adapter never scores this user
                    scales["private"] = 1.0 if variant == "both" and trained else 0.0
                self.served.set_scales(**scales)
                fm_scores = self.served.score(prefix, suffixes, self.builder.answers)
                lists[(variant, which)] = RerankedList(c.top, c.first[c.top], fm_scores, c.positive_first_rank)
        return _UserResult(u, lists, loss, private_s, time.perf_counter() - clock)


_worker: _Reranker | None = None


def _init_worker(job: _Job) -> None:
    global _worker
    _worker = _Reranker(job)


def _work(users: list[int]) -> list[_UserResult]:
    assert _worker is not None
    return [_worker.user(u) for u in users]


def _rerank_all(job: _Job, users: list[int], workers: int, progress: Progress | None) -> list[_UserResult]:
    """Every user's results in user order; with ``workers`` > 1 the users are spread over that many processes
    (spawned: the parent's torch and OpenMP state is never forked), each with one thread."""
    results: list[_UserResult] = []

    def tick() -> None:
        if progress is not None and (len(results) % 50 < 10 or len(results) == len(users)):
            progress("rerank", {"users": len(results), "of": len(users)})

    if workers <= 1:
        reranker = _Reranker(job)
        try:
            for u in users:
                results.append(reranker.user(u))
                tick()
        finally:
            reranker.close()
        return results
    chunks = [users[i : i + 10] for i in range(0, len(users), 10)]
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(job,)
    ) as pool:
        for chunk in pool.map(_work, chunks):
            results.extend(chunk)
            tick()
    return results


def _summaries(
    results: list[_UserResult], variants: tuple[str, ...], recall: tuple[int, ...]
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Per variant: the blend weight picked on the validation lists and the test/validation metrics with it; then
    the first stage alone (weight 0) on the same test and validation lists."""
    report: dict[str, Any] = {}
    for variant in variants:
        lists = {w: [r.lists[(variant, w)] for r in results if (variant, w) in r.lists] for w in ("valid", "test")}
        weight, _ = pick_weight(lists["valid"])
        report[variant] = {
            "blend_weight": weight,
            "fm_auc_in_top_k": {w: fm_auc(lists[w]) for w in ("valid", "test")},
            "valid_NDCG@10_by_weight": {str(k): v["NDCG@10"] for k, v in weight_curve(lists["valid"]).items()},
            "test": summarize([lst.rank(weight) for lst in lists["test"]], recall_ks=recall),
            "valid": summarize([lst.rank(weight) for lst in lists["valid"]], recall_ks=recall),
        }
        if variant == variants[0]:
            first_test = summarize([lst.rank(0.0) for lst in lists["test"]], recall_ks=recall)
            first_valid = summarize([lst.rank(0.0) for lst in lists["valid"]], recall_ks=recall)
    return report, first_test, first_valid


def _train_stages(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    config: PersonaConfig,
    federated: Any,
    *,
    protocol: Literal["loo99", "full"] = "loo99",
    users: list[int] | None = None,
    aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[Any, Any, list[dict[str, Any]], dict[str, float]]:
    """The federated first stage (selected on ``protocol``) and then the shared LoRA, both trained on ``users``
    (default: all): the first stage, the shared adapter, its round log and the two stages' seconds."""
    from models.evaluation.protocols import FederatedConfig, train_federated
    from models.fm.assets import torch_dir
    from models.fm.torch_model import TorchFM
    from models.fm.prompts import PromptBuilder

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    first = train_federated(
        split,
        text_vectors,
        config=federated or FederatedConfig(),
        select_protocol=protocol,
        users=users,
        progress=progress,
    )
    assert first.score_all is not None and first.shared is not None
    timings["first_stage_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    builder = PromptBuilder(torch_dir() / "tokenizer.json", catalog)
    fm = TorchFM(threads=config.threads or config.workers or os.cpu_count())
    agents = split if users is None else split.subset(users)
    shared, fm_log = train_shared_adapter(
        agents, first.score_all, fm, builder, config, aggregator=aggregator, progress=progress
    )
    del fm  # the rerank workers load their own copy; the parent's would only hold memory
    timings["shared_adapter_s"] = time.perf_counter() - clock
    return first, shared, fm_log, timings


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
    a selection record that also carries, measured on the same users and candidates so the rows differ only in
    the adapters: the first stage alone, the base FM (no adapter) and, with ``private``, the shared adapter alone."""
    from models.fm.lora import export_gguf

    first, shared, fm_log, timings = _train_stages(
        split, text_vectors, catalog, config, federated, protocol=protocol, aggregator=aggregator, progress=progress
    )

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
    variants = VARIANTS if private else VARIANTS[:2]
    workers = config.workers or os.cpu_count() or 1
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="persona-eval-") as tmp:
        export_gguf(shared, Path(tmp) / "shared.gguf")
        job = _Job(
            split,
            text_vectors,
            catalog,
            (first.shared, first.privates),
            str(Path(tmp) / "shared.gguf"),
            config,
            protocol,
            private,
            variants,
            frozenset(valid_users),
            frozenset(test_users),
            tmp,
        )
        results = _rerank_all(job, users, min(workers, len(users)), progress)
    timings["per_user_wall_s"] = time.perf_counter() - clock
    timings["private_adapter_cpu_s"] = sum(r.private_s for r in results)
    timings["rerank_cpu_s"] = sum(r.rerank_s for r in results)

    recall = (20,) if protocol == "full" else ()
    report, first_test, first_valid = _summaries(results, variants, recall)
    final = report[variants[-1]]
    selected = {
        **{k: v for k, v in first.selected.items() if k != "history"},
        "first_stage_metrics": first_test,
        "first_stage_valid_metrics": first_valid,
        "blend_weight": final["blend_weight"],
        "rerank_k": config.rerank_k,
        "valid_users": n_valid,
        "test_users": len(test_users),
        "workers": min(workers, len(users)),
        "fm_rounds": fm_log,
        "persona_config": asdict(config),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "base_fm": report["base"],
    }
    if private:
        selected["shared_only"] = report["shared"]
        losses = [r.private_loss for r in results if r.private_loss is not None]
        selected["private_train_loss_mean"] = float(np.mean(losses))
    return final["test"], final["valid"], selected


def evaluate_persona_coldstart(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    private: bool = True,
    federated: Any = None,
    config: PersonaConfig = PersonaConfig(),
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The cold-start protocol for the two-stage system: the first stage and the shared adapter train on the warm
    users only; each cold user then has their first k items (k in 0, 1, 3, 5) — the first stage trains their
    private vector on them, the private LoRA trains on their pairs when there are any (k ≥ 2), and the FM
    rescores their top ``rerank_k`` with that k-item history. The blend weight is picked per k on the cold users'
    validation lists; the first stage, base FM and shared-only rows are on the same lists."""
    from models.evaluation.protocols import COLDSTART_KS, FederatedConfig, cold_private_model, coldstart_cut, coldstart_users
    from models.fm.lora import export_gguf

    federated = federated or FederatedConfig()
    warm, cold = coldstart_users(split)
    first, shared, fm_log, timings = _train_stages(
        split, text_vectors, catalog, config, federated, users=warm, progress=progress
    )
    variants = VARIANTS if private else VARIANTS[:2]
    workers = min(config.workers or os.cpu_count() or 1, len(cold))
    test: dict[str, Any] = {}
    valid: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {"first_stage_metrics": {}, "base_fm": {}, "shared_only": {}, "blend_weight": {}}
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="persona-cold-") as tmp:
        export_gguf(shared, Path(tmp) / "shared.gguf")
        for k in COLDSTART_KS:
            cut = coldstart_cut(split, cold, k)
            cold_model = cold_private_model(first.shared, cut, text_vectors, federated)
            job = _Job(
                cut,
                text_vectors,
                catalog,
                (first.shared, cold_model.privates),
                str(Path(tmp) / "shared.gguf"),
                config,
                "loo99",
                private,
                variants,
                frozenset(cold),
                frozenset(cold),
                tmp,
            )
            results = _rerank_all(job, cold, workers, progress)
            report, first_test, _ = _summaries(results, variants, ())
            key = f"k={k}"
            test[key] = report[variants[-1]]["test"]
            valid[key] = report[variants[-1]]["valid"]
            rows["first_stage_metrics"][key] = first_test
            rows["base_fm"][key] = report["base"]["test"]
            rows["shared_only"][key] = report["shared"]["test"]
            rows["blend_weight"][key] = report[variants[-1]]["blend_weight"]
    timings["per_user_wall_s"] = time.perf_counter() - clock
    if not private:
        del rows["shared_only"]
    selected = {
        **{k: v for k, v in first.selected.items() if k != "history"},
        **rows,
        "cold_users": len(cold),
        "warm_users": len(warm),
        "rerank_k": config.rerank_k,
        "workers": workers,
        "fm_rounds": fm_log,
        "persona_config": asdict(config),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    return test, valid, selected
