"""The whole system, measured end to end: ``agent eval --model persona`` and ``--model persona-shared``.

1. The first stage is trained by the federated simulation (:func:`models.firststage.fit.train_federated`).
2. The foundation model's **shared** LoRA φ_g is trained by federated rounds of agents on their own pairs
   (:func:`models.fm.adapter_training.train_shared_adapter`), through the same
   :class:`~models.federation.Aggregator` interface the first stage uses (so the secure aggregator can
   carry it too).
3. Each user's **private** LoRA φ_u trains on that user's own pairs with the shared adapter attached and frozen
   (:func:`models.fm.adapter_training.train_private_adapter`), in the worker pool of
   :mod:`models.experiments.persona_rerank`.
4. Serving is llama.cpp with both adapters exported to GGUF; the first stage's top ``rerank_k`` are rescored and
   blended (:mod:`models.fm.blend`) with a weight picked on validation users only.

Compute budget (2-core laptop, see README): the rerank of every user's test list is the largest cost, so the
validation lists that pick the blend weight are scored for a seeded sample of ``valid_users`` users. The cold-start
protocol is in :mod:`models.experiments.persona_coldstart`.
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
from models.experiments.persona_rerank import VARIANTS, RerankJob, UserResult, rerank_all, summaries
from models.federation import Aggregator
from models.firststage.fit import TrainedModel, train_federated
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.fm.adapter_training import AdapterConfig, train_shared_adapter
from models.fm.assets import torch_dir
from models.fm.lora import LoraWeights, export_gguf
from models.fm.prompts import PromptBuilder
from models.types import FloatArray, Progress


@dataclass(frozen=True)
class PersonaConfig:
    """Settings of the foundation-model part of the evaluation: the adapters' recipe (the fields and defaults of
    :class:`~models.fm.adapter_training.AdapterConfig`) and how the evaluation runs (see README)."""

    rounds: int = AdapterConfig.rounds
    cohort: int = AdapterConfig.cohort
    pairs_per_agent: int = AdapterConfig.pairs_per_agent
    local_lr: float = AdapterConfig.local_lr
    server_lr: float = AdapterConfig.server_lr
    private_pairs: int = AdapterConfig.private_pairs
    private_epochs: int = AdapterConfig.private_epochs
    private_lr: float = AdapterConfig.private_lr
    rerank_k: int = 20
    candidate_pool: int = AdapterConfig.candidate_pool
    valid_users: int = 150  # users whose validation lists pick the blend weight (seeded sample)
    test_users: int | None = None  # None: every user's test list (the protocol); a number: a seeded sample (pilots)
    threads: int | None = None  # torch threads while training the shared adapter; rerank workers use 1 each
    workers: int | None = None  # rerank processes (None: one per core; this is a batch job, not the suggest path)
    seed: int = AdapterConfig.seed

    def adapters(self) -> AdapterConfig:
        """The adapters' training recipe within these settings."""
        return AdapterConfig(**{f.name: getattr(self, f.name) for f in fields(AdapterConfig)})


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
    builder = PromptBuilder(torch_dir() / "tokenizer.json", catalog)
    fm = TorchFM(threads=config.threads or config.workers or os.cpu_count())
    agents = split if users is None else split.subset(users)
    shared, fm_log = train_shared_adapter(
        agents, first.score_all, fm, builder, config.adapters(), aggregator=fm_aggregator, progress=progress
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
) -> RerankJob:
    """The rerank workers' job: the adapter variants to measure and the users whose valid/test lists to score."""
    return RerankJob(
        split=split,
        text_vectors=text_vectors,
        catalog=catalog,
        first_stage=first_stage,
        shared_gguf=str(Path(folder) / "shared.gguf"),
        adapters=config.adapters(),
        rerank_k=config.rerank_k,
        threads=config.threads or 1,
        protocol=protocol,
        private=private,
        variants=VARIANTS if private else VARIANTS[:2],
        valid_users=frozenset(valid_users),
        test_users=frozenset(test_users),
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
    the adapters: the first stage alone, the base FM (no adapter) and, with ``private``, the shared adapter alone."""
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
    if config.test_users is not None and config.test_users < len(users):
        test_rng = np.random.default_rng([config.seed, 17])
        test_users = set(int(u) for u in test_rng.choice(users, size=config.test_users, replace=False))
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


def variant_comparisons(results: list[UserResult], report: dict[str, Any], private: bool) -> dict[str, Any]:
    """Each row's ΔNDCG@10 and ΔHR@10 against the first stage on the same test lists, with paired bootstrap
    intervals over users: ``base_fm``, ``shared_only`` (with ``private``) and the evaluated model."""
    rows = {"base_fm": "base", "shared_only": "shared"} if private else {"base_fm": "base"}
    rows["persona" if private else "persona-shared"] = VARIANTS[-1] if private else VARIANTS[1]
    tested = [r for r in results if ("base", "test") in r.lists]
    first = [r.lists[("base", "test")].rank(0.0) for r in tested]
    return {
        row: compare_ranks([r.lists[(v, "test")].rank(report[v]["blend_weight"]) for r in tested], first)
        for row, v in rows.items()
    }
