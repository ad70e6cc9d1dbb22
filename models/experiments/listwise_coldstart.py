"""The listwise language model on the cold-start protocol (``scripts/pilot_fm.py --listwise --coldstart``).

Issue 12's no-go path asks whether the model earns its place where text should beat history: a newcomer with k
items (k in :data:`models.evaluation.protocols.COLDSTART_KS`). The protocol is ``agent eval --protocol coldstart``'s:
the federated first stage trains on the warm 80 % of users; each cold user arrives with their first k items, trains
only a private vector on them (:func:`models.firststage.fit.cold_private_model`), and is measured on their LOO-99
validation and test lists.

For each k the first stage's top 20 of each cold user's list are rescored by the listwise prompt
(:mod:`models.fm.listwise`: the k history titles, then the 20 candidates lettered in first-stage order), once by the
base model and, when ``train_users`` > 0, once with a shared listwise adapter trained centrally on warm users' lists
built the same way (history = their first k training items, target = their last training item, 99 negatives from
outside their history, the first stage's top 20 under a private vector trained on those k items). The blend weight
is picked per k on the cold users' **validation** lists; test lists are scored once and never steer anything.

Reported per k: the first stage's test HR@10 / NDCG@10, each blend's at its picked weight, the model-alone
within-list AUC, and for each blend against the first stage the paired bootstrap 95 % interval over the cold users of
ΔHR@10 / ΔNDCG@10 and of the ratio HR@10 − 1 (:func:`models.evaluation.stats.compare_runs`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.metrics import summarize
from models.evaluation.protocols import COLDSTART_KS, coldstart_cut, coldstart_users
from models.evaluation.stats import compare_runs, seeded_sample
from models.experiments.feature_rerank import candidate_lists
from models.experiments.persona_rerank import Candidates
from models.experiments.pilot import listwise_reranked
from models.firststage.fit import TrainedModel, cold_private_model, train_federated
from models.firststage.recipe import FederatedConfig
from models.fm.assets import gguf_path, torch_dir
from models.fm.blend import RerankedList, fm_auc, pick_weight, weight_curve
from models.fm.listwise import (
    LIST_SIZE,
    ListExample,
    ListwiseConfig,
    ListwisePromptBuilder,
    cache_lists,
    ranked_list,
    train_listwise_adapter,
)
from models.fm.lora import LoraWeights, default_shared_spec, export_gguf
from models.fm.serving import FoundationModel
from models.types import FloatArray, Progress, ScoreAllFn


@dataclass(frozen=True)
class ListwiseColdstartConfig:
    """How big the listwise cold-start measurement is (every sample seeded)."""

    rounds: int = 40  # federated rounds of the first stage on the warm users (``agent eval``'s default)
    ks: tuple[int, ...] = COLDSTART_KS
    cold_users: int | None = None  # a seeded sample of the cold users (None: all of them, 189 on ML-100K)
    train_users: int = 75  # warm users with one training list per k for the shared listwise adapter (0: none)
    epochs: int = 2
    lr: float = 3e-3  # the listwise pilot's, untuned
    lam: float = 0.5
    tau: float = 0.5
    shuffle: bool = False  # letter candidates in a seeded random order (training and scoring), not first-stage order
    threads: int | None = None
    seed: int = 0


def coldstart_training_lists(
    split: Split, score_all: ScoreAllFn, users: Sequence[int], k: int, config: ListwiseConfig
) -> list[ListExample]:
    """Warm users' training lists shaped like a newcomer's: history = their first ``k`` training items, target =
    their last training item, ``config.negatives`` negatives drawn from outside their whole history (training,
    validation and test items), ranked by ``score_all`` (a first stage whose private vectors saw only the k items).
    Users with fewer than k + 1 training items give no list; validation and test items are never a target."""
    out: list[ListExample] = []
    for user in users:
        s = split.users[user]
        train = np.asarray(s.train, dtype=np.int64)
        if len(train) < k + 1:
            continue
        history, target = train[:k], int(train[-1])
        seen = np.concatenate([train, [s.valid, s.test]]).astype(np.int64)
        outside = np.setdiff1d(np.arange(split.n_items), seen)
        rng = np.random.default_rng([config.seed, int(user), k, 29])
        negatives = rng.choice(outside, size=min(config.negatives, len(outside)), replace=False)
        out.append(
            ranked_list(int(user), history, target, negatives, score_all, config.k, rng if config.shuffle else None)
        )
    return out


def _row(
    users: list[int], valid: list[RerankedList], test: list[RerankedList], first_test: list[int]
) -> dict[str, Any]:
    """One reranker's row for one k: the weight validation picks, its test figures and intervals against the first
    stage, and the model-alone AUC."""
    weight, valid_metrics = pick_weight(valid)
    ranks = [lst.rank(weight) for lst in test]
    return {
        "blend_weight": weight,
        "valid_curve": {str(w): m for w, m in weight_curve(valid).items()},
        "valid": valid_metrics,
        "test": summarize(ranks),
        "vs_first_stage": compare_runs(dict(zip(users, ranks, strict=True)), dict(zip(users, first_test, strict=True))),
        "auc_in_top_k": {"valid": fm_auc(valid), "test": fm_auc(test)},
        "lm_alone_test": summarize([lst.rank(1e6) for lst in test]),
    }


def _train_adapter(
    split: Split,
    first: TrainedModel,
    text_vectors: FloatArray,
    builder: ListwisePromptBuilder,
    warm: list[int],
    config: ListwiseColdstartConfig,
    federated: FederatedConfig,
    folder: Path,
    progress: Progress | None,
) -> tuple[Path, dict[str, Any]]:
    """Train the shared listwise adapter on warm users' k-item lists (every k) and export it for llama.cpp."""
    # torch: only this step trains, in this process
    from models.fm.torch_model import TorchFM

    assert first.shared is not None
    lw = ListwiseConfig(
        epochs=config.epochs, lr=config.lr, lam=config.lam, tau=config.tau, shuffle=config.shuffle, seed=config.seed
    )
    users = seeded_sample(warm, config.train_users, [config.seed, 37])
    examples: list[ListExample] = []
    for k in config.ks:
        cut = coldstart_cut(split, users, k)
        examples += coldstart_training_lists(
            split, cold_private_model(first.shared, cut, text_vectors, federated).score_all, users, k, lw
        )
    order = np.random.default_rng([config.seed, 43]).permutation(len(examples))  # mix the ks across batches
    examples = [examples[i] for i in order]
    torch_fm = TorchFM(threads=config.threads)
    weights = LoraWeights.init(default_shared_spec(len(torch_fm.layers)), torch_fm.shapes())
    cached = cache_lists(torch_fm, builder, examples, weights.spec.layers[0], lw, progress=progress)
    trained, losses = train_listwise_adapter(torch_fm, "shared", weights, cached, lw, progress=progress)
    path = folder / "shared_listwise_cold.gguf"
    export_gguf(trained, path)
    return path, {
        "lists": len(examples),
        "with_target_in_top_k": sum(e.target is not None for e in examples),
        "warm_users": len(users),
        "epoch_losses": losses,
    }


def run_listwise_coldstart(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    config: ListwiseColdstartConfig,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The measurement the module docstring describes; its JSON."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    warm, cold_all = coldstart_users(split)
    cold = seeded_sample(cold_all, config.cold_users, [config.seed, 53])
    federated = FederatedConfig(rounds=config.rounds, seed=config.seed)
    first = train_federated(split, text_vectors, config=federated, users=warm, progress=progress)
    assert first.shared is not None
    timings["first_stage_s"] = time.perf_counter() - clock
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
    per_k: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter: Path | None = None
        training: dict[str, Any] | None = None
        if config.train_users > 0:
            clock = time.perf_counter()
            adapter, training = _train_adapter(
                split, first, text_vectors, builder, warm, config, federated, Path(tmp), progress
            )
            timings["adapter_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        shuffle_seed = config.seed if config.shuffle else None
        with FoundationModel(gguf_path(), n_threads=config.threads, n_ctx=1024) as fm:
            if adapter is not None:
                fm.load_adapter("shared", adapter)
            for k in config.ks:
                cut = coldstart_cut(split, cold, k)
                score_all = cold_private_model(first.shared, cut, text_vectors, federated).score_all
                lists: dict[Literal["valid", "test"], dict[int, Candidates]] = {
                    which: candidate_lists(cut, score_all, cold, which, LIST_SIZE) for which in ("valid", "test")
                }
                first_test = [c.positive_first_rank for c in lists["test"].values()]
                row: dict[str, Any] = {"first_stage": {"test": summarize(first_test)}}
                variants = [("base", 0.0)] + ([("shared_listwise", 1.0)] if adapter is not None else [])
                for name, scale in variants:
                    if adapter is not None:
                        fm.set_scales(shared=scale)
                    valid = listwise_reranked(fm, builder, cut, lists["valid"], shuffle_seed=shuffle_seed)
                    test = listwise_reranked(fm, builder, cut, lists["test"], shuffle_seed=shuffle_seed)
                    row[name] = _row(cold, valid, test, first_test)
                per_k[f"k={k}"] = row
                if progress is not None:
                    progress("listwise_coldstart", {"k": k, "seconds": round(time.perf_counter() - clock, 1)})
        timings["scoring_s"] = time.perf_counter() - clock
    return {
        "config": asdict(config),
        "cold_users": len(cold),
        "warm_users": len(warm),
        "first_stage_selected": {key: v for key, v in first.selected.items() if key != "history"},
        "adapter_training": training,
        "per_k": per_k,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }
