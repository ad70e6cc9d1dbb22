"""The **pointwise** (Yes/No) recipe of the foundation model's adapters, kept for the comparisons that measure it
(``scripts/pilot_fm.py`` without ``--listwise``, ``scripts/bench_fm.py``'s pointwise figures): the product and
``agent eval --model persona`` train the listwise recipe instead (:mod:`models.fm.listwise`,
:mod:`models.fm.federated_listwise`).

A pair is (history, candidate, label): each of the agent's latest training items after the items before it
(label 1), each against a negative drawn from the first stage's top candidates for the same history, outside the
training set (label 0) — the candidates the reranker will face. The private adapter trains from the cached input
of its first layer (:meth:`TorchFM.cache_top`).

Torch-free at import: the torch model is passed in by the caller (the training worker or the evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.fm.lora import LoraWeights, default_private_spec
from models.fm.prompts import PromptBuilder
from models.types import IntArray, ScoreAllFn

if TYPE_CHECKING:
    from models.fm.torch_model import TorchFM

Pairs = list[tuple[list[int], int, int]]  # (history, candidate item, label 1 = liked)


@dataclass(frozen=True)
class AdapterConfig:
    """How the pointwise adapters train (the pairs, the shared adapter's local step, the private adapter)."""

    pairs_per_agent: int = 8  # half positives, half first-stage negatives
    local_lr: float = 1e-3  # Adam on the shared B factors, one pass (5e-3: held-out loss 0.77 → 1.86 in one round)
    private_pairs: int = 4
    private_epochs: int = 4  # epochs over cached inputs cost six layers each
    private_lr: float = 2e-3  # Adam; 1e-2 oscillates on 8 pairs, 1e-3 descends steadily but slowly
    candidate_pool: int = 20  # first-stage top-N that training negatives are drawn from
    seed: int = 0


def first_stage_top(score_all: ScoreAllFn, user: int, history: IntArray, exclude: IntArray, n: int) -> IntArray:
    """The first stage's ``n`` best items for ``user`` after ``history``, never one of ``exclude``."""
    scores = np.asarray(score_all(user, history), dtype=np.float64).copy()
    scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:n]


def agent_pairs(
    user: int, train: IntArray, score_all: ScoreAllFn, n_pairs: int, rng: np.random.Generator, *, pool: int = 20
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


def pair_prompts(builder: PromptBuilder, pairs: Pairs) -> tuple[list[list[int]], list[int]]:
    """The full prompt (history prefix + candidate suffix) and the label of each pair."""
    return [builder.prefix(h) + builder.suffix(i) for h, i, _ in pairs], [y for _, _, y in pairs]


def train_private_adapter(
    user: int, train: IntArray, score_all: ScoreAllFn, fm: TorchFM, builder: PromptBuilder, config: AdapterConfig
) -> tuple[LoraWeights, float, int]:
    """One user's private LoRA on their own pairs (shared adapter attached, frozen): the adapter, its mean loss and
    the number of pairs it saw."""
    spec = default_private_spec(len(fm.layers))
    weights = LoraWeights.init(spec, fm.shapes())
    fm.attach("private", weights, trainable=True)
    rng = np.random.default_rng([config.seed, user, 11])
    pairs = agent_pairs(user, train, score_all, config.private_pairs, rng, pool=config.candidate_pool)
    prompts, labels = pair_prompts(builder, pairs)
    cache = fm.cache_top(prompts, spec.layers[0])
    loss = fm.train_cached(
        "private", [cache], [labels], builder.answers, lr=config.private_lr, epochs=config.private_epochs
    )
    trained = fm.read("private", weights)
    fm.attach("private", None)
    return trained, loss, len(pairs)
