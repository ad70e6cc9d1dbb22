"""The whole system, measured end to end: ``agent eval --model persona`` and ``--model persona-shared``.

It measures what the product runs: the listwise prompt (:mod:`models.fm.listwise`) and the adapters as agents train
them.

1. The first stage is trained by the federated simulation (:func:`models.firststage.fit.train_federated`).
2. The foundation model's **shared** LoRA φ_g is trained by federated rounds of agents on their own listwise lists
   (:func:`models.fm.federated_listwise.train_shared_listwise`), through the same
   :class:`~models.federation.Aggregator` interface the first stage uses (so the secure aggregator can
   carry it too).
3. A seeded sample of users' **private** LoRA φ_u trains on that user's own lists with the shared adapter attached
   and frozen, as ``agent train`` does (:func:`models.fm.listwise.train_on_own_lists`), in the worker pool of
   :mod:`models.experiments.persona_rerank`.
4. Serving is llama.cpp with both adapters exported to GGUF; the first stage's top ``rerank_k`` are rescored by one
   listwise prompt and blended (:mod:`models.fm.blend`) with a weight picked on validation users only.

Compute budget (2-core laptop, see README): the validation lists that pick the blend weight are scored for a seeded
sample of ``valid_users`` users, and a private LoRA (about 30 s each) trains for ``private_users`` of them, whose
validation lists pick the ``both`` weight and whose test lists report it (against the first stage on the same
lists). The cold-start protocol is in :mod:`models.experiments.persona_coldstart`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Set
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.protocols import user_ranks
from models.evaluation.stats import compare_ranks
from models.experiments.feature_rerank import FeatureContext, feature_rerank_row
from models.experiments.persona_rerank import (
    VARIANTS,
    RerankJob,
    UserResult,
    first_stage_where,
    rerank_all,
    summaries,
)
from models.federation import Aggregator
from models.firststage.fit import TrainedModel, train_federated
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.fm.assets import torch_dir
from models.fm.federated_listwise import SharedListwiseConfig, train_shared_listwise
from models.fm.listwise import LIST_SIZE, PRIVATE_SECONDS, ListwisePromptBuilder
from models.fm.lora import LoraWeights, export_gguf
from models.types import FloatArray, Progress


@dataclass(frozen=True)
class PersonaConfig:
    """Settings of the foundation-model part of the evaluation: the shared adapter's federated rounds (the fields and
    defaults of :class:`~models.fm.federated_listwise.SharedListwiseConfig`) and how the evaluation runs (README)."""

    rounds: int = SharedListwiseConfig.rounds
    cohort: int = SharedListwiseConfig.cohort
    lists_per_agent: int = SharedListwiseConfig.lists_per_agent
    local_epochs: int = SharedListwiseConfig.local_epochs
    server_lr: float = SharedListwiseConfig.server_lr
    rerank_k: int = LIST_SIZE
    valid_users: int = 150  # users whose validation lists pick the blend weight (seeded sample)
    private_users: int = 80  # of those, users whose private LoRA trains (≈ 30 s each): they measure ``both``
    private_seconds: float = PRIVATE_SECONDS  # each private LoRA's budget, as on the device (tests: less)
    test_users: int | None = None  # None: every user's test list (the protocol); a number: a seeded sample (pilots)
    threads: int | None = None  # torch threads while training the shared adapter; rerank workers use 1 each
    workers: int | None = None  # rerank processes (None: one per core; this is a batch job, not the suggest path)
    seed: int = SharedListwiseConfig.seed

    def __post_init__(self) -> None:
        if not 1 <= self.rerank_k <= LIST_SIZE:
            raise ValueError(f"the listwise prompt letters 1 to {LIST_SIZE} candidates, got rerank_k={self.rerank_k}")
        if self.private_users < 1:
            raise ValueError(f"private_users must be ≥ 1 (the private adapter's sample), got {self.private_users}")

    def shared_rounds(self) -> SharedListwiseConfig:
        """The shared adapter's federated rounds within these settings."""
        return SharedListwiseConfig(**{f.name: getattr(self, f.name) for f in fields(SharedListwiseConfig)})


def private_sample(users: Set[int], config: PersonaConfig) -> set[int]:
    """The seeded sample of ``config.private_users`` of ``users`` whose private LoRA trains (the warm protocols draw it
    from the validation users, the cold-start one from the cold users)."""
    order = np.random.default_rng([config.seed, 43]).permutation(sorted(users))
    return {int(u) for u in order[: config.private_users]}


def train_stages(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    config: PersonaConfig,
    federated: FederatedConfig | None,
    *,
    protocol: Literal["loo99", "full"] = "loo99",
    users: list[int] | None = None,
    aggregator: Aggregator | None = None,
    fm_aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[TrainedModel, LoraWeights, list[dict[str, Any]], dict[str, float]]:
    """The federated first stage (selected on ``protocol``) and then the shared LoRA, both trained on ``users``
    (default: all): the first stage, the shared adapter, its round log and the two stages' seconds.

    ``aggregator`` carries the first stage's rounds and ``fm_aggregator`` the shared adapter's (each default: the
    in-process weighted mean); ``agent eval --via-sync`` gives each a secure aggregator bound to its own local
    coordinator, since the two stages run one after the other here while a live round carries both parts."""
    from models.fm.torch_model import TorchFM  # torch: loaded only when the shared adapter trains

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    first = train_federated(
        split,
        text_vectors,
        config=federated or FederatedConfig(),
        aggregator=aggregator,
        select_protocol=protocol,
        users=users,
        progress=progress,
    )
    assert first.score_all is not None and first.shared is not None
    timings["first_stage_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
    fm = TorchFM(threads=config.threads or config.workers or os.cpu_count())
    agents = split if users is None else split.subset(users)
    shared, fm_log = train_shared_listwise(
        agents, first.score_all, fm, builder, config.shared_rounds(), aggregator=fm_aggregator, progress=progress
    )
    del fm  # the rerank workers load their own copy; the parent's would only hold memory
    timings["shared_adapter_s"] = time.perf_counter() - clock
    return first, shared, fm_log, timings


@contextmanager
def shared_adapter_folder(shared: LoraWeights, prefix: str) -> Iterator[str]:
    """A temporary folder holding the shared adapter as ``shared.gguf``, where the rerank workers load it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        export_gguf(shared, Path(tmp) / "shared.gguf")
        yield tmp


def rerank_job(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    first_stage: tuple[SharedParams, dict[int, PrivateParams]],
    config: PersonaConfig,
    folder: str,
    *,
    protocol: Literal["loo99", "full"],
    private: bool,
    valid_users: Set[int],
    test_users: Set[int],
    private_users: Set[int],
    shared: LoraWeights,
) -> RerankJob:
    """The rerank workers' job: the adapter variants to measure, the users whose valid/test lists to score and those
    whose private adapter trains."""
    return RerankJob(
        split=split,
        text_vectors=text_vectors,
        catalog=catalog,
        first_stage=first_stage,
        shared=shared,
        shared_gguf=str(Path(folder) / "shared.gguf"),
        rerank_k=config.rerank_k,
        threads=config.threads or 1,
        protocol=protocol,
        private=private,
        variants=VARIANTS if private else VARIANTS[:2],
        valid_users=frozenset(valid_users),
        test_users=frozenset(test_users),
        private_users=frozenset(private_users),
        private_seconds=config.private_seconds,
        workdir=folder,
    )


def evaluate_persona(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    protocol: Literal["loo99", "full"] = "loo99",
    private: bool = True,
    federated: FederatedConfig | None = None,
    config: PersonaConfig = PersonaConfig(),
    aggregator: Aggregator | None = None,
    fm_aggregator: Aggregator | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Train the whole system and report test metrics (blend weight chosen on validation), validation metrics and
    a selection record that also carries, measured on the same users and candidates so the rows differ only in
    the adapters: the first stage alone, the base FM (no adapter) and, with ``private``, the shared adapter alone.

    With ``private`` the reported metrics are those of the ``private_users`` sample (both adapters), and
    ``first_stage_on_private_users`` is the first stage on the same test lists; without, every test user's."""
    first, shared, fm_log, timings = train_stages(
        split,
        text_vectors,
        catalog,
        config,
        federated,
        protocol=protocol,
        aggregator=aggregator,
        fm_aggregator=fm_aggregator,
        progress=progress,
    )
    assert first.shared is not None

    users = sorted(split.users)
    rng = np.random.default_rng([config.seed, 13])
    n_valid = min(config.valid_users, len(users))
    valid_users = set(int(u) for u in rng.choice(users, size=n_valid, replace=False))
    private_users = private_sample(valid_users, config) if private else set()
    if config.test_users is not None and config.test_users < len(users):
        test_rng = np.random.default_rng([config.seed, 17])
        test_users = set(int(u) for u in test_rng.choice(users, size=config.test_users, replace=False))
        test_users |= private_users  # their test lists report the ``both`` row
        users = sorted(test_users | valid_users)
    else:
        test_users = set(users)
    workers = config.workers or os.cpu_count() or 1
    clock = time.perf_counter()
    with shared_adapter_folder(shared, "persona-eval-") as folder:
        job = rerank_job(
            split,
            text_vectors,
            catalog,
            (first.shared, first.privates),
            config,
            folder,
            protocol=protocol,
            private=private,
            valid_users=valid_users,
            test_users=test_users,
            private_users=private_users,
            shared=shared,
        )
        results = rerank_all(job, users, min(workers, len(users)), progress)
    timings["per_user_wall_s"] = time.perf_counter() - clock
    timings["private_adapter_cpu_s"] = sum(r.private_s for r in results)
    timings["rerank_cpu_s"] = sum(r.rerank_s for r in results)

    recall = (20,) if protocol == "full" else ()
    report, first_test, first_valid = summaries(results, job.variants, recall)
    final = report[job.variants[-1]]
    selected = {
        **{k: v for k, v in first.selected.items() if k != "history"},
        "first_stage_metrics": first_test,
        "first_stage_valid_metrics": first_valid,
        "blend_weight": final["blend_weight"],
        "best_valid_weight": final["best_valid_weight"],
        "valid_gain_at_best": final["valid_gain_at_best"],
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
        selected["private_train_loss_mean"] = float(np.mean(losses)) if losses else None
        on_private, n_private = first_stage_where(results, "both", recall)
        selected["first_stage_on_private_users"] = on_private
        selected["private_users"] = n_private
    ctx = FeatureContext.build(split, text_vectors, catalog)
    selected["feature_rerank"], feature_vs = feature_rerank_row(
        split,
        first.score_all,
        ctx,
        fit_users=sorted(split.users),
        test_users=sorted(test_users),
        k=config.rerank_k,
        protocol=protocol,
    )
    selected["vs_first_stage"] = {**variant_comparisons(results, report, private), "feature_rerank": feature_vs}
    last = job.variants[-1]
    selected["test_ranks"] = {  # per user, to compare two runs (agent eval --ranks): the first stage on every user
        "first_stage": user_ranks(first, split, protocol, "test"),
        "persona" if private else "persona-shared": {
            r.user: r.lists[(last, "test")].rank(final["blend_weight"]) for r in results if (last, "test") in r.lists
        },
    }
    return final["test"], final["valid"], selected


def variant_ranks(
    results: list[UserResult], report: dict[str, Any], private: bool, *, weight: str = "blend_weight"
) -> dict[str, tuple[dict[int, int], dict[int, int]]]:
    """Per row (``base_fm``, ``shared_only`` with ``private``, and the evaluated model: with ``private`` on the
    private sample), each test user's rank with the row's ``report[variant][weight]`` and the first stage's rank on
    the same list, in ``results``' order."""
    rows = {"base_fm": "base", "shared_only": "shared"} if private else {"base_fm": "base"}
    rows["persona" if private else "persona-shared"] = VARIANTS[-1] if private else VARIANTS[1]
    out = {}
    for row, v in rows.items():  # each row on the users it was measured on (``both``: the private sample)
        tested = [r for r in results if (v, "test") in r.lists]
        mine = {r.user: r.lists[(v, "test")].rank(report[v][weight]) for r in tested}
        out[row] = (mine, {r.user: r.lists[("base", "test")].rank(0.0) for r in tested})
    return out


def variant_comparisons(results: list[UserResult], report: dict[str, Any], private: bool) -> dict[str, Any]:
    """Each row's ΔNDCG@10 and ΔHR@10 against the first stage on the same test lists, with paired bootstrap
    intervals over users (rows: :func:`variant_ranks`)."""
    return {
        row: compare_ranks(list(mine.values()), list(first.values()))
        for row, (mine, first) in variant_ranks(results, report, private).items()
    }
