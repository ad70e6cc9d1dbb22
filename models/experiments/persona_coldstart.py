"""The cold-start protocol for the whole system: ``agent eval --model persona --protocol coldstart``.

The first stage and the shared adapter train on the warm users only (:func:`models.experiments.persona.train_stages`);
the held-out cold users then arrive with their first k items (k in :data:`models.evaluation.protocols.COLDSTART_KS`)
and are reranked by the same worker pool as the other protocols (:mod:`models.experiments.persona_rerank`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.protocols import COLDSTART_KS, coldstart_cut, coldstart_users
from models.evaluation.stats import compare_runs
from models.experiments.persona import (
    PersonaConfig,
    private_sample,
    rerank_job,
    shared_adapter_folder,
    train_stages,
    variant_ranks,
)
from models.experiments.persona_rerank import Reranking, first_stage_where, summaries
from models.firststage.fit import cold_private_model
from models.firststage.recipe import FederatedConfig
from models.types import FloatArray, Progress


def evaluate_persona_coldstart(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    *,
    private: bool = True,
    federated: FederatedConfig | None = None,
    config: PersonaConfig | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The cold-start protocol for the two-stage system: the first stage and the shared adapter train on the warm
    users only; each cold user then has their first k items (k in 0, 1, 3, 5) — the first stage trains their
    private vector on them, the private LoRA trains on their pairs when there are any (k ≥ 2), and the FM
    rescores their top ``rerank_k`` with that k-item history. The blend weight is picked per k on the cold users'
    validation lists (:func:`~models.fm.blend.supported_weight`); the first stage, base FM and shared-only rows are on
    the same lists. Per k, each row against the first stage on the same users (ΔNDCG@10, ΔHR@10 and the ratios,
    paired bootstrap 95 % intervals): ``vs_first_stage`` at the weight used, ``at_best_valid_weight`` at the best
    validation weight (what trusting validation's best, supported or not, would have given); ``weights`` says both.

    The private LoRA (about 30 s a user) trains for a seeded sample of ``private_users`` cold users, who alone
    measure ``both`` (``both_users``; with k < 2 they have no list to train on and are served the shared adapter, as
    the product serves them)."""
    federated = federated or FederatedConfig()
    config = config or PersonaConfig()
    warm, cold = coldstart_users(split)
    first, shared, fm_log, timings = train_stages(
        split, text_vectors, catalog, config, federated, users=warm, progress=progress
    )
    assert first.shared is not None
    workers = min(config.workers or os.cpu_count() or 1, len(cold))
    private_users = private_sample(set(cold), config) if private else set()
    test: dict[str, Any] = {}
    valid: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {
        "first_stage_metrics": {},
        "first_stage_on_both_users": {},
        "base_fm": {},
        "shared_only": {},
        "blend_weight": {},
        "vs_first_stage": {},
        "at_best_valid_weight": {},
        "weights": {},
    }
    clock = time.perf_counter()
    # one set of models for every k (with one worker; a pool per k otherwise): only the users' data changes
    with shared_adapter_folder(shared, "persona-cold-") as folder, Reranking(workers) as reranking:
        for k in COLDSTART_KS:
            cut = coldstart_cut(split, cold, k)
            cold_model = cold_private_model(first.shared, cut, text_vectors, federated)
            job = rerank_job(
                cut,
                text_vectors,
                catalog,
                (first.shared, cold_model.privates),
                config,
                folder,
                protocol="loo99",
                private=private,
                valid_users=set(cold),
                test_users=set(cold),
                private_users=private_users,
                shared=shared,
            )
            results = reranking.run(job, cold, progress)
            report, first_test, _ = summaries(results, job.variants, ())
            final = report[job.variants[-1]]
            key = f"k={k}"
            test[key] = final["test"]
            valid[key] = final["valid"]
            rows["first_stage_metrics"][key] = first_test
            rows["base_fm"][key] = report["base"]["test"]
            rows["shared_only"][key] = report["shared"]["test"]
            rows["first_stage_on_both_users"][key] = first_stage_where(results, "both")[0]
            rows["blend_weight"][key] = final["blend_weight"]
            for name, weight in (("vs_first_stage", "blend_weight"), ("at_best_valid_weight", "best_valid_weight")):
                rows[name][key] = {  # against the first stage on the same users: Δ and ratio, paired intervals
                    row: compare_runs(mine, first)
                    for row, (mine, first) in variant_ranks(results, report, private, weight=weight).items()
                }
            rows["weights"][key] = {
                variant: {
                    name: report[variant][name]
                    for name in ("blend_weight", "best_valid_weight", "valid_gain_at_best", "fm_auc_in_top_k")
                }
                for variant in job.variants
            }
    timings["per_user_wall_s"] = time.perf_counter() - clock
    if not private:
        del rows["shared_only"], rows["first_stage_on_both_users"]
    selected = {
        **{k: v for k, v in first.selected.items() if k != "history"},
        **rows,
        "cold_users": len(cold),
        "both_users": len(private_users),
        "warm_users": len(warm),
        "rerank_k": config.rerank_k,
        "workers": workers,
        "fm_rounds": fm_log,
        "persona_config": asdict(config),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    return test, valid, selected
