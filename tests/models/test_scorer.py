"""The first-stage scorer: shared/private split, flat view, cold items, top-k, file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.firststage.recipe import TrainConfig
from models.firststage.scorer import (
    FirstStageScorer,
    PrivateParams,
    SharedParams,
    load_params,
    load_private,
    save_params,
    save_private,
)
from models.firststage.training import _FirstStageModule, local_train, sequence_examples


def _params(n_items: int = 12, dim: int = 4) -> tuple[SharedParams, np.ndarray]:
    shared = SharedParams.init(n_items, text_dim=6, dim=dim, window=5, seed=3)
    rng = np.random.default_rng(1)
    shared.item_residual[:] = rng.normal(size=shared.item_residual.shape)
    shared.item_bias[:] = rng.normal(size=n_items)
    text = rng.normal(size=(n_items, 6)).astype(np.float32)
    return shared, text


def test_flat_vector_round_trip() -> None:
    shared, _ = _params()
    vector = shared.to_vector()
    assert vector.shape == (shared.size,)
    assert vector.size == 6 * 4 + 12 * 4 + 12 + 5
    back = shared.with_vector(vector)
    for name in SharedParams.FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(shared, name))


def test_private_parameters_never_enter_the_shared_vector() -> None:
    shared, text = _params()
    sentinel = np.array([123.25, -77.5, 31.125, 999.0], dtype=np.float32)
    result = local_train(
        shared,
        PrivateParams(user_vector=sentinel.copy()),
        np.array([0, 3, 5, 7], dtype=np.int64),
        torch.from_numpy(text),
        TrainConfig(n_negatives=5, epochs=2, private_lr=0.01),
        seed=0,
    )
    vector = result.shared.to_vector()
    assert vector.size == shared.size  # the same fields, nothing user-specific added
    assert not np.isin(result.private.user_vector, vector).any()
    assert not np.isin(sentinel, vector).any()
    assert not np.array_equal(result.private.user_vector, sentinel)  # the private part did train, locally


def test_scores_match_the_formula_and_cold_items_score_from_text() -> None:
    shared, text = _params()
    shared.item_residual[7] = 0.0  # a cold item: nobody's interactions shaped it
    shared.item_bias[7] = 0.0
    scorer = FirstStageScorer(shared, text)
    private = PrivateParams(user_vector=np.array([0.1, -0.2, 0.3, 0.0], dtype=np.float32))
    history = np.array([1, 2], dtype=np.int64)
    weights = np.exp(shared.position_logits[-2:])
    weights /= weights.sum()
    items = text @ shared.text_proj + shared.item_residual
    state = weights @ items[history] + private.user_vector
    np.testing.assert_allclose(scorer.score_all(history, private), items @ state + shared.item_bias, rtol=1e-5)
    cold_score = scorer.score_items(history, private, np.array([7]))[0]
    assert np.isclose(cold_score, (text[7] @ shared.text_proj) @ state, rtol=1e-5)
    assert cold_score != 0.0


def test_top_k_excludes_history_and_is_sorted() -> None:
    shared, text = _params()
    scorer = FirstStageScorer(shared, text)
    private = PrivateParams.init(4)
    history = np.array([0, 1, 2], dtype=np.int64)
    top = scorer.top_k(history, private, 5)
    assert len(top) == 5 and not set(top.tolist()) & {0, 1, 2}
    scores = scorer.score_items(history, private, top)
    assert list(scores) == sorted(scores, reverse=True)
    everything = scorer.top_k(history, private, 100)
    assert len(everything) == 12 - 3


def test_params_file_round_trip(tmp_path: Path) -> None:
    shared, _ = _params()
    save_params(tmp_path / "s.npz", shared, meta={"catalog": "x"})
    back, meta = load_params(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.to_vector(), shared.to_vector())
    assert meta == {"catalog": "x"}
    private = PrivateParams(user_vector=np.arange(4, dtype=np.float32))
    save_private(tmp_path / "p.npy", private)
    np.testing.assert_array_equal(load_private(tmp_path / "p.npy").user_vector, private.user_vector)


def test_sequence_examples_are_the_items_before_each_position() -> None:
    hist, targets = sequence_examples(np.array([5, 6, 7, 8], dtype=np.int64), window=3, pad=99)
    np.testing.assert_array_equal(targets, [5, 6, 7, 8])
    np.testing.assert_array_equal(hist, [[99, 99, 99], [99, 99, 5], [99, 5, 6], [5, 6, 7]])


def test_torch_twin_scores_like_the_numpy_scorer() -> None:
    """Training differentiates a torch copy of the score formula; it must give the numpy scorer's scores."""
    shared, text = _params()
    shared.position_logits[:] = np.linspace(-1.0, 1.0, shared.window, dtype=np.float32)
    private = PrivateParams(user_vector=np.array([0.1, -0.2, 0.3, 0.05], dtype=np.float32))
    scorer = FirstStageScorer(shared, text)
    seq = np.array([3, 1, 4, 9, 2, 6, 5], dtype=np.int64)
    hist, _ = sequence_examples(seq, shared.window, shared.n_items)
    module = _FirstStageModule(shared, private.user_vector[None, :], torch.from_numpy(text))
    cand = torch.arange(shared.n_items)[None, :].expand(len(seq), -1)
    with torch.no_grad():
        twin = module(torch.zeros(len(seq), dtype=torch.long), torch.from_numpy(hist), cand).numpy()
    for t in range(len(seq)):
        np.testing.assert_allclose(twin[t], scorer.score_all(seq[:t], private), rtol=1e-4, atol=1e-5)
