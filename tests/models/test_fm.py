"""The foundation model: quiet llama.cpp runtime, LoRA adapters, GGUF export, torch ↔ llama.cpp agreement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.fm.assets import gguf_path, torch_dir
from models.fm.lora import (
    LoraWeights,
    default_private_spec,
    default_shared_spec,
    export_gguf,
    load_weights,
    save_weights,
    verify_gguf,
)
from models.fm.prompts import PromptBuilder
from models.fm.serving import FoundationModel


@pytest.fixture(scope="module")
def ml() -> Dataset:
    return load_ml100k()


@pytest.fixture(scope="module")
def builder(ml: Dataset) -> PromptBuilder:
    return PromptBuilder(torch_dir() / "tokenizer.json", ml.catalog)


@pytest.fixture(scope="module")
def llm() -> Iterator[FoundationModel]:
    model = FoundationModel(gguf_path(), n_threads=1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def user_prompt(ml: Dataset, builder: PromptBuilder) -> tuple[list[int], list[list[int]]]:
    split = make_loo_split(ml, seed=0)
    user = split.users[0]
    candidates = [user.test, *user.test_negs[:49].tolist()]
    return builder.prefix(user.train.tolist()), [builder.suffix(int(c)) for c in candidates]


def _random_adapters(shapes: dict[str, tuple[int, int]]) -> tuple[LoraWeights, LoraWeights]:
    """Adapters with non-zero B so that they change the model's answers noticeably."""
    rng = np.random.default_rng(7)
    shared = LoraWeights.init(default_shared_spec(), shapes)
    private = LoraWeights.init(default_private_spec(), shapes)
    for weights, scale in ((shared, 0.02), (private, 0.03)):
        for key in weights.b:
            weights.b[key] = rng.normal(0, scale, size=weights.b[key].shape).astype(np.float32)
    return shared, private


def test_runtime_is_quiet_and_deterministic(capfd: pytest.CaptureFixture[str], builder: PromptBuilder) -> None:
    model = FoundationModel(gguf_path(), n_threads=1)
    prefix = builder.prefix([0, 1, 2])
    suffixes = [builder.suffix(i) for i in (10, 20, 30)]
    first = model.score(prefix, suffixes, builder.answers)
    second = model.score(prefix, suffixes, builder.answers)
    model.close()
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing from the native library on the terminal
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_prefix_sharing_matches_scoring_one_by_one(
    llm: FoundationModel, builder: PromptBuilder, user_prompt: tuple[list[int], list[list[int]]]
) -> None:
    prefix, suffixes = user_prompt
    together = llm.score(prefix, suffixes[:8], builder.answers)
    alone = np.array([llm.score(prefix, [s], builder.answers)[0] for s in suffixes[:8]])
    # batching changes llama.cpp's kernels and so the logits a little (measured: up to ~0.4), never more
    assert np.abs(together - alone).max() < 0.5
    assert np.isfinite(together).all()


def test_adapter_export_load_and_scale(
    tmp_path: Path, llm: FoundationModel, builder: PromptBuilder, user_prompt: tuple[list[int], list[list[int]]]
) -> None:
    shapes = {"q_proj": (1024, 640), "v_proj": (256, 640)}
    shared, _ = _random_adapters(shapes)
    path = tmp_path / "shared.gguf"
    digest = export_gguf(shared, path)
    assert len(digest) == 64 and verify_gguf(path)
    prefix, suffixes = user_prompt
    base = llm.score(prefix, suffixes[:5], builder.answers)
    llm.load_adapter("shared", path)
    llm.set_scales(shared=1.0)
    adapted = llm.score(prefix, suffixes[:5], builder.answers)
    llm.set_scales(shared=0.0)
    again = llm.score(prefix, suffixes[:5], builder.answers)
    assert np.abs(adapted - base).max() > 0.05
    np.testing.assert_allclose(again, base, atol=1e-4)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # tampered
    with pytest.raises(Exception, match="checksum"):
        llm.load_adapter("shared", path)


def test_lora_vectors_and_files_round_trip(tmp_path: Path) -> None:
    shapes = {"q_proj": (1024, 640), "v_proj": (256, 640)}
    shared, private = _random_adapters(shapes)
    # FFA: only B travels, so the shared vector is half of a LoRA's numbers
    assert shared.trainable_vector().size == len(default_shared_spec().layers) * 8 * (1024 + 256)
    assert private.trainable_vector().size == len(default_private_spec().layers) * 4 * (1024 + 256 + 640 + 640)
    moved = shared.with_trainable_vector(shared.trainable_vector() * 2)
    np.testing.assert_array_equal(moved.a["12.q_proj"], shared.a["12.q_proj"])
    np.testing.assert_array_equal(moved.b["12.q_proj"], 2 * shared.b["12.q_proj"])
    assert moved.delta_norm() == pytest.approx(2 * shared.delta_norm(), rel=1e-5)
    # every agent derives the same frozen A from the public seed
    again = LoraWeights.init(default_shared_spec(), shapes)
    np.testing.assert_array_equal(again.a["17.v_proj"], shared.a["17.v_proj"])
    save_weights(private, tmp_path / "p.npz")
    back = load_weights(tmp_path / "p.npz")
    assert back.spec == private.spec
    np.testing.assert_array_equal(back.trainable_vector(), private.trainable_vector())


def test_prompt_pieces(builder: PromptBuilder, ml: Dataset) -> None:
    prefix = builder.prefix(list(range(30)))
    assert prefix[0] == 2  # BOS
    assert len(prefix) < 200  # only the last ten history items
    assert builder.prefix([5]) != builder.prefix([6])
    suffix = builder.suffix(0)
    assert builder.answers.yes != builder.answers.no
    assert suffix[-1] != builder.answers.yes


def test_torch_and_llama_cpp_agree_on_50_candidates(
    tmp_path: Path, ml: Dataset, builder: PromptBuilder, user_prompt: tuple[list[int], list[list[int]]]
) -> None:
    """Same trained adapters, same prompts: Spearman ≥ 0.9 between torch (training) and llama.cpp (serving).

    The adapters are trained on one user's next-item pairs until their scores spread well beyond llama.cpp's
    batching noise (~0.2 logit); the untrained base model's margins span only ~0.6 logit, too little to rank by.
    """
    from models.fm.torch_model import TorchFM  # torch: loaded by the torch tests only

    torch_fm = TorchFM(threads=2)
    shared = LoraWeights.init(default_shared_spec(), torch_fm.shapes())
    private = LoraWeights.init(default_private_spec(), torch_fm.shapes())
    torch_fm.attach("shared", shared)
    torch_fm.attach("private", private, trainable=True)
    user = make_loo_split(ml, seed=0).users[0]
    train = user.train.tolist()
    outside = np.setdiff1d(np.arange(len(ml.catalog)), user.train)
    rng = np.random.default_rng(0)
    prompts, labels = [], []
    for position in range(len(train) - 16, len(train)):
        prefix = builder.prefix(train[:position])
        prompts += [prefix + builder.suffix(train[position]), prefix + builder.suffix(int(rng.choice(outside)))]
        labels += [1, 0]
    # the private adapter's own fast path: cache the input of its first layer once, train only the top layers
    order = rng.permutation(len(prompts))
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    first = default_private_spec().layers[0]
    caches = [torch_fm.cache_top([prompts[i] for i in batch], first) for batch in batches]
    batch_labels = [[labels[i] for i in batch] for batch in batches]
    torch_fm.train_cached("private", caches, batch_labels, builder.answers, lr=1e-2, epochs=8)
    private = torch_fm.read("private", private)
    prefix, suffixes = user_prompt
    torch_scores = torch_fm.score(prefix, suffixes, builder.answers)
    export_gguf(shared, tmp_path / "shared.gguf")
    export_gguf(private, tmp_path / "private.gguf")
    with FoundationModel(gguf_path(), n_threads=2) as served:
        served.load_adapter("shared", tmp_path / "shared.gguf")
        served.load_adapter("private", tmp_path / "private.gguf")
        served.set_scales(shared=1.0, private=1.0)
        llama_scores = served.score(prefix, suffixes, builder.answers)
        served.set_scales(shared=0.0, private=0.0)
        llama_base = served.score(prefix, suffixes, builder.answers)
    rho = spearmanr(torch_scores, llama_scores).statistic
    assert rho >= 0.9, rho
    # the trained private adapter matters: the served ranking with it differs from the base model's
    assert spearmanr(llama_scores, llama_base).statistic < 0.9


def test_cached_top_layers_give_the_full_forward_and_train(
    builder: PromptBuilder, user_prompt: tuple[list[int], list[list[int]]]
) -> None:
    """Rerunning only the top layers from their cached input reproduces the full forward pass, and training an
    adapter on those layers from the cache moves its loss (the private adapter's fast path)."""
    # torch: loaded by the torch tests only
    import torch

    from models.fm.torch_model import TorchFM

    fm = TorchFM(threads=2)
    spec = default_private_spec()
    weights = LoraWeights.init(spec, fm.shapes())
    fm.attach("private", weights, trainable=True)
    prefix, suffixes = user_prompt
    prompts = [prefix + s for s in suffixes[:6]]
    cache = fm.cache_top(prompts, spec.layers[0])
    with torch.no_grad():
        full = fm.answer_logits(prompts, builder.answers)
        top = fm.top_answer_logits(cache, builder.answers)
    assert torch.allclose(full, top, atol=1e-3), (full - top).abs().max()
    labels = [[1, 0, 1, 0, 1, 0]]
    first = fm.train_cached("private", [cache], labels, builder.answers, lr=1e-3, epochs=1)
    later = fm.train_cached("private", [cache], labels, builder.answers, lr=1e-3, epochs=5)
    assert later < first
    trained = fm.read("private", weights)
    assert trained.delta_norm() > 0
    with torch.no_grad():
        assert not torch.allclose(fm.answer_logits(prompts, builder.answers), full)
