"""The sync's local training of the language model's shared adapter φ_g (issue 13, item 1): the worker trains the
fetched φ_g on the person's own listwise lists and returns φ_after − φ_before, which lowers those lists' loss; a
profile that forms no list (or a budget of 0) sends zeros and says why. The real torch model, the real first stage
and the real store; ``agent sync`` against a real coordinator is in tests/sync/test_two_parts.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from agent.engine.profile import Profile
from agent.engine.worker import SYNC_PHI_DELTA_FILE, SYNC_PRIVATE_FILE, train_for_sync
from agent.errors import ProfileError
from agent.settings import load_settings
from agent.store.profile_store import ProfileStore
from models.firststage.scorer import FirstStageScorer, PrivateParams
from models.fm.assets import torch_dir
from models.fm.listwise import OWN_LIST_CONFIG, ListwisePromptBuilder, cache_lists, cached_loss, sequence_lists
from models.types import FloatArray, IntArray
from sync.protocol.rules import SYNC_PHI_SIZE

pytestmark = pytest.mark.usefixtures("warm_embedding_cache")
runner = CliRunner()
LIKES = ("Toy Story", "Aladdin", "The Lion King (1994)", "Beauty and the Beast")


@pytest.fixture(scope="module")
def fm() -> Any:
    """One torch model for the module (the worker would load its own)."""
    from models.fm.torch_model import TorchFM  # torch: loaded by the torch tests only

    return TorchFM(threads=1)


def _config(text: str) -> None:
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text(text, encoding="utf-8")


def _rate(*titles: str) -> None:
    for title in titles:
        result = runner.invoke(app, ["rate", title, "like", "--no-train"])
        assert result.exit_code == 0, result.output


def _inputs(folder: Path, phi: FloatArray) -> tuple[Path, Path]:
    """The fetched θ_g (the profile's own) and φ_g as the sync hands them to the worker."""
    with ProfileStore.open() as store:
        theta = Profile.load(store).shared.to_vector()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "shared.npy", theta)
    np.save(folder / "phi.npy", phi.astype(np.float32))
    return folder / "shared.npy", folder / "phi.npy"


def test_the_worker_trains_phi_on_the_persons_lists_and_the_delta_lowers_their_loss(tmp_path: Path, fm: Any) -> None:
    _config("[sync]\nlm_train_seconds = 1\n")  # the smallest budget: one batch of lists, one step
    _rate(*LIKES)
    before = np.random.default_rng(0).normal(0.0, 1e-3, SYNC_PHI_SIZE).astype(np.float32)  # a published φ_g
    shared_path, phi_path = _inputs(tmp_path / "in", before)
    out = tmp_path / "out"
    with ProfileStore.open() as store:
        result = train_for_sync(store, shared_path, out, phi_path, fm=fm)
        profile = Profile.load(store)
        liked, _ = profile.feedback()
        lora_before = store.shared_lora_with(before)
        delta = np.load(out / SYNC_PHI_DELTA_FILE, allow_pickle=False)
        lora_after = store.shared_lora_with(before + delta)
    lm = result["language_model"]
    assert lm["trained"] and lm["lists"] == len(LIKES) - 1 and lm["steps"] >= 1, lm
    # the φ part: the FFA B factors only (the size every agent sends), finite and nonzero
    assert delta.shape == (SYNC_PHI_SIZE,) and delta.dtype == np.float32
    assert np.all(np.isfinite(delta)) and float(np.linalg.norm(delta)) > 0
    assert lm["delta_norm"] == pytest.approx(float(np.linalg.norm(delta)), rel=1e-4)
    assert all(np.array_equal(lora_after.a[k], lora_before.a[k]) for k in lora_before.a)  # A is frozen

    # independently: the same lists, ranked by the same first stage, score better under the new φ than the old one
    private = PrivateParams(user_vector=np.load(out / SYNC_PRIVATE_FILE, allow_pickle=False))
    scorer = FirstStageScorer(profile.shared.with_vector(np.load(shared_path)), profile.text_vectors)

    def score_all(_user: int, history: IntArray) -> FloatArray:
        return scorer.score_all(history, private)

    lists = sequence_lists(0, liked, profile.shared.n_items, score_all, OWN_LIST_CONFIG)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", profile.catalog)
    cached = cache_lists(fm, builder, lists, lora_before.spec.layers[0], OWN_LIST_CONFIG)
    losses = []
    for weights in (lora_before, lora_after):
        fm.attach("shared", weights)
        losses.append(cached_loss(fm, cached, OWN_LIST_CONFIG.lam))
    fm.attach("shared", None)
    assert losses[1] < losses[0], losses
    assert losses == pytest.approx([lm["loss_before"], lm["loss_after"]], abs=1e-3)  # what the summary reports


def test_a_profile_that_forms_no_list_or_a_zero_budget_sends_zeros_and_says_why(tmp_path: Path) -> None:
    _rate(LIKES[0])  # one liked item: no item after a history
    shared_path, phi_path = _inputs(tmp_path / "in", np.full(SYNC_PHI_SIZE, 0.01, dtype=np.float32))
    with ProfileStore.open() as store:
        result = train_for_sync(store, shared_path, tmp_path / "out", phi_path)
    assert result["language_model"] == {
        "trained": False,
        "skipped": "needs at least 2 liked items to form a list (you have 1)",
    }
    assert np.array_equal(np.load(tmp_path / "out" / SYNC_PHI_DELTA_FILE), np.zeros(SYNC_PHI_SIZE, np.float32))

    _rate(*LIKES[1:])
    _config("[sync]\nlm_train_seconds = 0\n")
    with ProfileStore.open() as store:
        result = train_for_sync(store, shared_path, tmp_path / "out0", phi_path)
        assert result["language_model"]["skipped"] == "[sync] lm_train_seconds is 0"
        assert not np.any(np.load(tmp_path / "out0" / SYNC_PHI_DELTA_FILE))
        without = train_for_sync(store, shared_path, tmp_path / "theta-only")  # a round without φ_g
    assert "language_model" not in without and not (tmp_path / "theta-only" / SYNC_PHI_DELTA_FILE).exists()
    with pytest.raises(ProfileError, match="language-model adapter has 5 values"):
        np.save(tmp_path / "short.npy", np.zeros(5, np.float32))
        with ProfileStore.open() as store:
            train_for_sync(store, shared_path, tmp_path / "bad", tmp_path / "short.npy")


@pytest.mark.parametrize("value", ["-1", "inf", "true", '"60"'])
def test_a_bad_lm_train_seconds_is_a_clear_error(value: str) -> None:
    _config(f"[sync]\nlm_train_seconds = {value}\n")
    with pytest.raises(ProfileError, match="lm_train_seconds"):
        load_settings()


def test_lm_train_seconds_defaults_to_sixty() -> None:
    assert load_settings().sync.lm_train_seconds == 60.0
    _config("[sync]\nlm_train_seconds = 5\n")
    assert load_settings().sync.lm_train_seconds == 5.0
