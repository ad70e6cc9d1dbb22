"""The per-user part of ``agent eval --model persona``: each sampled user's private LoRA (when measured) and the
foundation model's listwise rescoring (:func:`models.fm.listwise.score_list`, the prompt the product serves) of their
validation and test candidates under each adapter variant, over a pool of processes.

The private LoRA trains as the product's worker trains it (:func:`models.fm.listwise.train_on_own_lists`, the shared
adapter attached and frozen, within ``RerankJob.private_seconds``: the device's
:data:`~models.fm.listwise.PRIVATE_SECONDS` by default), which costs about 30 s a user here: within the 60-minute
budget it trains for a seeded sample of the validation users (``RerankJob.private_users``), and the ``both`` variant
is measured on those users only.

Workers are spawned (the parent's torch and OpenMP state is never forked), with one thread each; each loads its own
llama.cpp model and, when private adapters are measured, its own torch copy to train them.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.metrics import summarize
from models.firststage.fit import scorer_model
from models.firststage.scorer import PrivateParams, SharedParams
from models.fm.assets import gguf_path, torch_dir
from models.fm.blend import RerankedList, fm_auc, supported_weight, weight_curve
from models.fm.listwise import (
    PRIVATE_MAX_EPOCHS,
    ListwisePromptBuilder,
    score_list,
    train_on_own_lists,
)
from models.fm.lora import LoraWeights, default_private_spec, export_gguf
from models.fm.serving import FoundationModel
from models.types import FloatArray, IntArray, Progress, ScoreAllFn

VARIANTS: tuple[str, ...] = ("base", "shared", "both")  # adapters on when the FM rescores: none, φ_g, φ_g + φ_u


@dataclass
class Candidates:
    """One user's candidate list under a protocol and what the first stage makes of it."""

    items: IntArray  # the positive first
    first: FloatArray
    top: IntArray
    positive_first_rank: int


def candidates_for(
    split: Split,
    user: int,
    which: Literal["valid", "test"],
    protocol: Literal["loo99", "full"],
    score_all: ScoreAllFn,
    k: int,
) -> Candidates:
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
    return Candidates(items, first.astype(np.float32), top, int(np.count_nonzero(first[1:] >= first[0])))


@dataclass(frozen=True)
class RerankJob:
    """Everything a rerank worker needs (pickled once per worker process)."""

    split: Split
    text_vectors: FloatArray
    catalog: Catalog
    first_stage: tuple[SharedParams, dict[int, PrivateParams]]  # the selected first stage's parameters
    shared: LoraWeights  # φ_g, attached (frozen) to the torch copy while private adapters train
    shared_gguf: str  # the same adapter for llama.cpp
    rerank_k: int
    threads: int
    protocol: Literal["loo99", "full"]
    private: bool
    variants: tuple[str, ...]
    valid_users: frozenset[int]
    test_users: frozenset[int]
    private_users: frozenset[int]  # users whose private LoRA trains (with ``private``); only they get ``both``
    private_seconds: float  # each private LoRA's training budget (the device's: PRIVATE_SECONDS)
    workdir: str


@dataclass
class UserResult:
    """One user's reranked lists per (variant, valid/test), their private adapter's loss and the seconds spent."""

    user: int
    lists: dict[tuple[str, str], RerankedList]
    private_loss: float | None
    private_s: float
    rerank_s: float


class _Reranker:
    """One process's foundation models: the torch copy (only to train private adapters) and the llama.cpp one."""

    def __init__(self, job: RerankJob) -> None:
        self.job = job
        shared, privates = job.first_stage
        self.score_all = scorer_model(shared, privates, job.text_vectors).score_all
        self.builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", job.catalog)
        self.fm: Any = None
        if job.private:
            from models.fm.torch_model import TorchFM  # torch: loaded only where private adapters train

            self.fm = TorchFM(threads=job.threads)
            self.fm.attach("shared", job.shared)
        self.served = FoundationModel(gguf_path(), n_threads=job.threads, n_ctx=1024, max_candidates=job.rerank_k)
        self.served.load_adapter("shared", Path(job.shared_gguf))
        self.private_path = Path(job.workdir) / f"private-{os.getpid()}.gguf"

    def close(self) -> None:
        self.served.close()

    def serves(self, job: RerankJob) -> bool:
        """Whether this process's models fit ``job`` as loaded: same catalog, shared adapter, threads, ``rerank_k``
        and private training (jobs that differ only in their users' data, like the cold-start protocol's k)."""
        old = self.job
        same = job.shared_gguf == old.shared_gguf and job.threads == old.threads and job.rerank_k == old.rerank_k
        return same and job.catalog is old.catalog and job.private == old.private and job.shared is old.shared

    def rebind(self, job: RerankJob) -> None:
        """Rerank for ``job`` (which :meth:`serves` must accept) with the models already loaded: only the first
        stage's scorer is rebuilt. A previous user's private adapter stays loaded but never scores (:meth:`user`)."""
        if not self.serves(job):
            raise ValueError("the loaded models do not fit this job")
        shared, privates = job.first_stage
        self.score_all = scorer_model(shared, privates, job.text_vectors).score_all
        self.private_path = Path(job.workdir) / f"private-{os.getpid()}.gguf"
        self.job = job

    def user(self, u: int) -> UserResult:
        """Train ``u``'s private adapter (when sampled) and rescore their validation and test candidates."""
        job = self.job
        s = job.split.users[u]
        assert self.score_all is not None
        loss: float | None = None
        clock = time.perf_counter()
        trained = job.private and u in job.private_users and len(s.train) >= 2  # a list needs a history
        if trained:
            score_all = self.score_all

            def own_scores(_user: int, history: IntArray) -> FloatArray:  # the lists number their user 0
                return score_all(u, history)

            start = LoraWeights.init(default_private_spec(len(self.fm.layers)), self.fm.shapes())
            own = train_on_own_lists(
                self.fm,
                self.builder,
                "private",
                start,
                s.train,
                job.split.n_items,
                own_scores,
                deadline=time.monotonic() + job.private_seconds,
                max_epochs=PRIVATE_MAX_EPOCHS,
            )
            self.fm.attach("private", None)
            loss = own.training.loss_after
            export_gguf(own.training.weights, self.private_path)
            self.served.load_adapter("private", self.private_path)
        private_s = time.perf_counter() - clock
        clock = time.perf_counter()
        lists: dict[tuple[str, str], RerankedList] = {}
        which: Literal["valid", "test"]
        for which, chosen in (("valid", job.valid_users), ("test", job.test_users)):
            if u not in chosen:
                continue
            c = candidates_for(job.split, u, which, job.protocol, self.score_all, job.rerank_k)
            for variant in job.variants:
                if variant == "both" and u not in job.private_users:
                    continue  # the private sample only; a sampled user too new for a private LoRA is served shared
                scales = {"shared": 0.0 if variant == "base" else 1.0}
                if "private" in self.served.adapters:  # a previous user's adapter never scores this user
                    scales["private"] = 1.0 if variant == "both" and trained else 0.0
                self.served.set_scales(**scales)
                fm_scores = score_list(self.served, self.builder, s.train, c.items[c.top].tolist())
                lists[(variant, which)] = RerankedList(c.top, c.first[c.top], fm_scores, c.positive_first_rank)
        return UserResult(u, lists, loss, private_s, time.perf_counter() - clock)


_worker: _Reranker | None = None


def _init_worker(job: RerankJob) -> None:
    global _worker
    _worker = _Reranker(job)


def _work(users: list[int]) -> list[UserResult]:
    assert _worker is not None
    return [_worker.user(u) for u in users]


class Reranking:
    """Rerank workers for one or more jobs in turn (:meth:`run`); close it (or use it as a context manager) after.

    With one worker the models are loaded once and kept for every later job they fit (:meth:`_Reranker.serves`):
    the cold-start protocol reranks once per k with the same models. With more, each job gets its own pool of
    spawned processes, as the job is their initial state."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._serial: _Reranker | None = None

    def __enter__(self) -> Reranking:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the models kept for the next job."""
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def run(self, job: RerankJob, users: list[int], progress: Progress | None) -> list[UserResult]:
        """Every user's results in user order; with more than one worker the users are spread over the processes."""
        results: list[UserResult] = []

        def tick() -> None:
            if progress is not None and (len(results) % 50 < 10 or len(results) == len(users)):
                progress("rerank", {"users": len(results), "of": len(users)})

        if self.workers <= 1:
            if self._serial is not None and self._serial.serves(job):
                self._serial.rebind(job)
            else:
                self.close()
                self._serial = _Reranker(job)
            for u in users:
                results.append(self._serial.user(u))
                tick()
            return results
        chunks = [users[i : i + 10] for i in range(0, len(users), 10)]
        with ProcessPoolExecutor(
            self.workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(job,)
        ) as pool:
            for chunk in pool.map(_work, chunks):
                results.extend(chunk)
                tick()
        return results


def rerank_all(job: RerankJob, users: list[int], workers: int, progress: Progress | None) -> list[UserResult]:
    """Every user's results in user order; with ``workers`` > 1 the users are spread over that many processes."""
    with Reranking(workers) as reranking:
        return reranking.run(job, users, progress)


def summaries(
    results: list[UserResult], variants: tuple[str, ...], recall: tuple[int, ...]
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Per variant: the blend weight validation supports (:func:`~models.fm.blend.supported_weight`: the best on the
    validation lists, or 0 when its gain there is within the noise) and the test/validation metrics with it; then
    the first stage alone (weight 0) on the same test and validation lists."""
    report: dict[str, Any] = {}
    for variant in variants:
        lists = {w: [r.lists[(variant, w)] for r in results if (variant, w) in r.lists] for w in ("valid", "test")}
        chosen = supported_weight(lists["valid"])
        weight = chosen.weight
        report[variant] = {
            "blend_weight": weight,
            "best_valid_weight": chosen.best,
            "valid_gain_at_best": chosen.gain,
            "fm_auc_in_top_k": {w: fm_auc(lists[w]) for w in ("valid", "test")},
            "valid_NDCG@10_by_weight": {str(k): v["NDCG@10"] for k, v in weight_curve(lists["valid"]).items()},
            "test": summarize([lst.rank(weight) for lst in lists["test"]], recall_ks=recall),
            "valid": summarize([lst.rank(weight) for lst in lists["valid"]], recall_ks=recall),
        }
        if variant == variants[0]:
            first_test = summarize([lst.rank(0.0) for lst in lists["test"]], recall_ks=recall)
            first_valid = summarize([lst.rank(0.0) for lst in lists["valid"]], recall_ks=recall)
    return report, first_test, first_valid


def first_stage_where(
    results: list[UserResult], variant: str, recall: tuple[int, ...] = ()
) -> tuple[dict[str, float], int]:
    """The first stage alone on the test lists ``variant`` was measured on (``both``: the private sample), and how
    many there are."""
    ranks = [r.lists[("base", "test")].rank(0.0) for r in results if (variant, "test") in r.lists]
    return summarize(ranks, recall_ks=recall), len(ranks)
