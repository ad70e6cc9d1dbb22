"""The go/no-go pilot of the foundation model as a reranker (``scripts/pilot_fm.py``).

On a seeded cohort of users: the federated first stage (trained on the cohort only, with ``rounds`` rounds), then
the foundation model as it is today (pointwise " Yes"/" No" scoring of the top K, base model, no adapter) on the
validation lists of ``valid_users`` and the test lists of ``test_users`` of them. Measured:

* the model-alone AUC within the top K (validation and test lists),
* a likelihood-ratio test that its score adds to the first stage's (nested logistic models on the validation
  candidates: first-stage z vs first-stage z + FM z; chi-square, 1 df),
* ΔNDCG@10 of the blend (weight picked on validation) against the first stage on the test lists, with its paired
  bootstrap 95 % interval over users, and the same for :mod:`models.experiments.feature_rerank` (fitted on the
  cohort's validation lists) on the same test users and on every cohort user.

:func:`run_listwise_pilot` (``--listwise``) measures the listwise scoring instead (:mod:`models.fm.listwise`): a
shared listwise adapter trained centrally on the cohort's training lists, scored on validation lists only.

Verdict (issue 12): GO iff AUC ≥ 0.60, the LR test is significant (p < 0.05), the blend's ΔNDCG@10 is at least
+2 % of the first stage's NDCG@10 and above feature_rerank's on the same users; else NO-GO.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.data.split import Split
from models.evaluation.metrics import summarize
from models.evaluation.stats import compare_ranks, likelihood_ratio_test, seeded_sample
from models.experiments.feature_rerank import FeatureContext, candidate_lists, feature_rerank_row, positive_slot
from models.experiments.persona_rerank import Candidates
from models.firststage.fit import TrainedModel, train_federated
from models.firststage.recipe import FederatedConfig
from models.fm.assets import gguf_path, torch_dir
from models.fm.blend import RerankedList, fm_auc, pick_weight, zscore
from models.fm.listwise import (
    ListwiseConfig,
    ListwisePromptBuilder,
    cache_lists,
    score_list_shuffled,
    train_listwise_adapter,
    training_lists,
)
from models.fm.lora import LoraWeights, default_shared_spec, export_gguf
from models.fm.prompts import PromptBuilder
from models.fm.scoring import score_items
from models.fm.serving import FoundationModel
from models.types import FloatArray, Progress

MIN_AUC = 0.60
MAX_P = 0.05
MIN_RELATIVE_GAIN = 0.02


@dataclass(frozen=True)
class PilotConfig:
    """How big the pilot is (seeded samples; see the module docstring)."""

    cohort: int = 300  # users the first stage trains on and feature_rerank is measured on
    rounds: int = 15  # federated rounds of the first stage (the tuned recipe runs 40)
    valid_users: int = 60  # cohort users whose validation lists the FM scores (blend weight, LR test)
    test_users: int = 100  # cohort users whose test lists the FM scores
    rerank_k: int = 20
    threads: int | None = None
    seed: int = 0


def _fm_lists(
    fm: FoundationModel, builder: PromptBuilder, split: Split, lists: dict[int, Candidates]
) -> list[RerankedList]:
    """The FM's scores of each list's top K, as blendable lists (user order)."""
    out = []
    for u, c in lists.items():
        scores = score_items(fm, builder, split.users[u].train, c.items[c.top])
        out.append(RerankedList(c.top, c.first[c.top], scores, c.positive_first_rank))
    return out


def lr_rows(lists: list[RerankedList]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """First-stage z, FM z and the 0/1 label of every top-K candidate of the lists that hold their positive."""
    first, fm, label = [], [], []
    for lst in lists:
        where = np.flatnonzero(lst.top == 0)
        if len(where) == 0:
            continue
        first.append(zscore(lst.first))
        fm.append(zscore(lst.fm))
        y = np.zeros(len(lst.top))
        y[where[0]] = 1.0
        label.append(y)
    return np.concatenate(first), np.concatenate(fm), np.concatenate(label)


def verdict(auc: float | None, p_value: float, blend_gain: float, first_ndcg: float, feature_gain: float) -> str:
    """GO iff every criterion of issue 12 holds (see the module docstring)."""
    ok = (
        auc is not None
        and auc >= MIN_AUC
        and p_value < MAX_P
        and blend_gain >= MIN_RELATIVE_GAIN * first_ndcg
        and blend_gain > feature_gain
    )
    return "GO" if ok else "NO-GO"


def _cohort_first_stage(
    split: Split, text_vectors: FloatArray, config: PilotConfig | ListwisePilotConfig, progress: Progress | None
) -> tuple[list[int], TrainedModel]:
    """The pilot's seeded cohort and its federated first stage (``config.rounds`` rounds)."""
    cohort = seeded_sample(sorted(split.users), config.cohort, [config.seed, 31])
    first = train_federated(
        split,
        text_vectors,
        config=FederatedConfig(rounds=config.rounds, seed=config.seed),
        users=cohort,
        progress=progress,
    )
    return cohort, first


def run_pilot(
    split: Split, text_vectors: FloatArray, catalog: Catalog, config: PilotConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Train the cohort's first stage, score the sampled lists with the base FM, and return the pilot's JSON."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    cohort, first = _cohort_first_stage(split, text_vectors, config, progress)
    timings["first_stage_s"] = time.perf_counter() - clock
    ctx = FeatureContext.build(split.subset(cohort), text_vectors, catalog)
    valid_users = seeded_sample(cohort, config.valid_users, [config.seed, 13])
    test_users = seeded_sample(cohort, config.test_users, [config.seed, 17])
    k = config.rerank_k
    clock = time.perf_counter()
    feature_all, feature_all_vs = feature_rerank_row(
        split, first.score_all, ctx, fit_users=cohort, test_users=cohort, k=k
    )
    feature_row, feature_vs = feature_rerank_row(
        split, first.score_all, ctx, fit_users=cohort, test_users=test_users, k=k
    )
    timings["feature_rerank_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    valid_lists = candidate_lists(split, first.score_all, valid_users, "valid", k)
    test_lists = candidate_lists(split, first.score_all, test_users, "test", k)
    builder = PromptBuilder(torch_dir() / "tokenizer.json", catalog)
    with FoundationModel(gguf_path(), n_threads=config.threads, max_candidates=k) as fm:
        valid = _fm_lists(fm, builder, split, valid_lists)
        if progress is not None:
            progress("pilot", {"scored": "validation lists", "users": len(valid)})
        test = _fm_lists(fm, builder, split, test_lists)
    timings["fm_scoring_s"] = time.perf_counter() - clock
    weight, _ = pick_weight(valid)
    first_ranks = [lst.rank(0.0) for lst in test]
    blend_vs = compare_ranks([lst.rank(weight) for lst in test], first_ranks)
    lr = likelihood_ratio_test(*lr_rows(valid))
    auc = {"valid": fm_auc(valid), "test": fm_auc(test)}
    first_ndcg = summarize(first_ranks)["NDCG@10"]
    return {
        "config": asdict(config),
        "sampled": {"cohort": len(cohort), "valid_users": len(valid_users), "test_users": len(test_users)},
        "first_stage": {"test": summarize(first_ranks), "selected_round": first.selected["round"]},
        "fm": {"variant": "base (no adapter)", "auc_in_top_k": auc, "lr_test_valid": lr, "blend_weight": weight},
        "feature_rerank": feature_row,
        "vs_first_stage": {"blend": blend_vs, "feature_rerank": feature_vs},
        "feature_rerank_cohort": {**feature_all, "vs_first_stage": feature_all_vs},
        "valid_lists_with_positive_in_top_k": sum(positive_slot(c) is not None for c in valid_lists.values()),
        "verdict": verdict(
            auc["test"], lr["p_value"], blend_vs["delta_ndcg10"], first_ndcg, feature_vs["delta_ndcg10"]
        ),
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }


@dataclass(frozen=True)
class ListwisePilotConfig:
    """How big the listwise pilot is (``scripts/pilot_fm.py --listwise``; seeded samples)."""

    cohort: int = 300  # users the first stage trains on; their training lists train the adapter
    rounds: int = 15  # federated rounds of the first stage
    train_users: int = 300  # cohort users with training lists (the last training items, each after its prefix)
    lists_per_user: int = 1  # training lists per user (ListwiseConfig.lists_per_user)
    valid_users: int = 100  # cohort users whose validation lists are scored (halves: weight pick / report)
    epochs: int = 2
    lr: float = 3e-3  # untuned: no listwise run at this scale yet
    lams: tuple[float, ...] = (0.5,)  # distillation weights: one adapter each, same cached lists and start
    tau: float = 0.5
    shuffle: bool = False  # letter candidates in a seeded random order (training and scoring), not first-stage order
    threads: int | None = None
    seed: int = 0


def listwise_reranked(
    fm: FoundationModel,
    builder: ListwisePromptBuilder,
    split: Split,
    lists: dict[int, Candidates],
    *,
    shuffle_seed: int | None = None,
) -> list[RerankedList]:
    """One listwise prompt per user (after the user's training items in ``split``): the letter logits of the first
    stage's top K, as blendable lists. With ``shuffle_seed`` the candidates are lettered in a random order seeded by
    it and the user (the scores still come back in first-stage order)."""
    out = []
    for u, c in lists.items():
        seed = None if shuffle_seed is None else [shuffle_seed, u, 29]
        scores = score_list_shuffled(fm, builder, split.users[u].train, c.items[c.top].tolist(), seed)
        out.append(RerankedList(c.top, c.first[c.top], scores, c.positive_first_rank))
    return out


def _blend_report(lists: list[RerankedList], seed: int) -> dict[str, Any]:
    """Within-list AUC, the LR test, and ΔNDCG@10 of the blend vs the first stage on the second half of the users
    with the weight picked on the first half (selection never sees the users it is reported on)."""
    order = np.random.default_rng([seed, 41]).permutation(len(lists))
    pick = [lists[i] for i in order[: len(lists) // 2]]
    report = [lists[i] for i in order[len(lists) // 2 :]]
    weight, _ = pick_weight(pick)
    first_ranks = [lst.rank(0.0) for lst in report]
    return {
        "auc_in_top_k": fm_auc(lists),
        "lr_test": likelihood_ratio_test(*lr_rows(lists)),
        "blend_weight_picked_on_half": weight,
        "vs_first_stage_other_half": compare_ranks([lst.rank(weight) for lst in report], first_ranks),
        "first_stage_other_half": summarize(first_ranks),
        "lm_alone_other_half": summarize([lst.rank(1e6) for lst in report]),
    }


def run_listwise_pilot(
    split: Split,
    text_vectors: FloatArray,
    catalog: Catalog,
    config: ListwisePilotConfig,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a shared listwise adapter centrally on the cohort's training lists and measure it on validation lists
    (base model and adapter), as :func:`_blend_report` describes. Test lists are never read."""
    # torch: the pilot trains the adapter in this process
    from models.fm.torch_model import TorchFM

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    cohort, first = _cohort_first_stage(split, text_vectors, config, progress)
    timings["first_stage_s"] = time.perf_counter() - clock
    train_users = seeded_sample(cohort, config.train_users, [config.seed, 19])
    valid_users = seeded_sample(cohort, config.valid_users, [config.seed, 13])
    lw = ListwiseConfig(
        lists_per_user=config.lists_per_user,
        epochs=config.epochs,
        lr=config.lr,
        tau=config.tau,
        shuffle=config.shuffle,
        seed=config.seed,
    )
    if not config.lams:
        raise ValueError("the listwise pilot needs at least one distillation weight (lams)")
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
    clock = time.perf_counter()
    examples = training_lists(split, first.score_all, train_users, lw)
    torch_fm = TorchFM(threads=config.threads)
    weights = LoraWeights.init(default_shared_spec(len(torch_fm.layers)), torch_fm.shapes())
    cached = cache_lists(torch_fm, builder, examples, weights.spec.layers[0], lw, progress=progress)
    timings["cache_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    trained: list[LoraWeights] = []
    losses: dict[str, list[float]] = {}
    for lam in config.lams:  # attach replaces "shared": each adapter starts from the same weights
        adapter, losses[str(lam)] = train_listwise_adapter(
            torch_fm, "shared", weights, cached, replace(lw, lam=lam), progress=progress
        )
        trained.append(adapter)
    timings["train_s"] = time.perf_counter() - clock
    del cached, torch_fm
    clock = time.perf_counter()
    valid_lists = candidate_lists(split, first.score_all, valid_users, "valid", lw.k)
    shuffle_seed = config.seed if config.shuffle else None
    adapted: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        FoundationModel(gguf_path(), n_threads=config.threads, n_ctx=1024) as fm,
    ):
        base = listwise_reranked(fm, builder, split, valid_lists, shuffle_seed=shuffle_seed)
        for lam, adapter in zip(config.lams, trained, strict=True):
            path = Path(folder) / f"shared_listwise_{len(adapted)}.gguf"
            export_gguf(adapter, path)
            fm.load_adapter("shared", path)
            fm.set_scales(shared=1.0)
            scored = listwise_reranked(fm, builder, split, valid_lists, shuffle_seed=shuffle_seed)
            adapted[str(lam)] = _blend_report(scored, config.seed)
    timings["valid_scoring_s"] = time.perf_counter() - clock
    return {
        "config": asdict(config),
        "training_lists": {
            "lists": len(examples),
            "with_target_in_top_k": sum(e.target is not None for e in examples),
            "epoch_losses": losses[str(config.lams[0])],
            "epoch_losses_by_lam": losses,
        },
        "valid_lists_with_positive_in_top_k": sum(positive_slot(c) is not None for c in valid_lists.values()),
        "base_listwise": _blend_report(base, config.seed),
        "shared_listwise": adapted[str(config.lams[0])],
        "shared_listwise_by_lam": adapted,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }
