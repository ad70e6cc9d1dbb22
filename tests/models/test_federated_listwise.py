"""The shared LoRA's federated listwise rounds as ``agent eval --model persona`` runs them: real torch model, real
ML-100K users, the in-process aggregator (``tests/agent/test_eval_via_sync.py`` runs them through a coordinator)."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.fm.assets import torch_dir
from models.fm.federated_listwise import SharedListwiseConfig, train_shared_listwise
from models.fm.listwise import ListwisePromptBuilder
from models.fm.torch_model import TorchFM


def test_agents_train_on_their_own_training_items_and_cache_their_lists_once() -> None:
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    split = full.subset(sorted(full.users)[:3])
    popularity = np.bincount(np.concatenate([s.train for s in full.users.values()]), minlength=full.n_items)
    histories: list[tuple[int, set[int]]] = []

    def score_all(user: int, history: np.ndarray) -> np.ndarray:
        histories.append((user, set(history.tolist())))
        return popularity.astype(np.float64)

    fm = TorchFM(threads=1)
    cached_prompts: list[int] = []
    cache_top = fm.cache_top

    def counting_cache_top(prompts: Any, first: int) -> Any:
        cached_prompts.append(len(prompts))
        return cache_top(prompts, first)

    fm.cache_top = counting_cache_top  # type: ignore[method-assign]
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    config = SharedListwiseConfig(rounds=2, cohort=3, lists_per_agent=2)
    shared, log = train_shared_listwise(split, score_all, fm, builder, config)

    assert [r["agents"] for r in log] == [3, 3] and [r["lists_trained"] for r in log] == [6, 6]
    assert all(np.isfinite(r["train_loss"]) for r in log)
    assert np.abs(shared.trainable_vector()).max() > 0  # the rounds moved φ_g (B starts at zero)
    # every agent was in both rounds, and its two lists went through the lower layers once
    assert cached_prompts == [2, 2, 2]
    # a list's history is a prefix of the agent's training items: validation and test items are never read
    for user, history in histories:
        s = split.users[user]
        assert history <= set(s.train.tolist()) and not history & {int(s.valid), int(s.test)}
    assert {user for user, _ in histories} == set(split.users)
