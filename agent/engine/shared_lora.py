"""The language model's shared adapter φ_g, trained by a sync in the worker process on the person's own lists.

When a round carries φ_g (the coordinator runs with ``--phi-size``), the sync's local training
(:func:`agent.engine.worker.train_for_sync`) also trains φ_g: the fetched φ_g (the FFA ``B`` factors; ``A`` is the
public seeded one) is attached to the torch copy of the model, trained on this person's listwise lists — the same
lists and loss as the product's listwise training (:mod:`models.fm.listwise`): each of the latest liked items after
the items before it, among the first stage's top 20 of it and 99 unseen items, cross-entropy over the letters plus
distillation towards the first stage (:func:`models.fm.listwise.train_on_own_lists` with
:data:`models.fm.listwise.OWN_LIST_CONFIG`: up to 8 lists, four per step; the worker's private LoRA trains the same
way) — and φ_after − φ_before is the φ part of the delta (the sync client clips it to its own bound). Only the shared
``B`` factors are in it: the private LoRA is neither attached nor read, and nothing else about the person leaves.

The work is bounded by ``[sync] lm_train_seconds`` (model load included): the most recent lists are cached first
within half the time left after the load, then the steps use the rest; no batch or step starts that would not end
within its share at the pace of the one before, but at least one of each runs (on a slow or busy machine the budget
is passed by that much). It runs at the worker's low priority. A profile with fewer than two liked items forms no
list; then (or with the budget at 0, or the model not prepared) the φ delta is zero and the summary says why.

Imports torch (through :mod:`models.fm.torch_model`) only inside :func:`train_shared_lora`, in the worker process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agent.store.profile_store import ProfileStore
from models.errors import AssetError
from models.firststage.scorer import FirstStageScorer, PrivateParams
from models.fm.assets import require_torch_copy, torch_dir
from models.fm.listwise import ListwisePromptBuilder, train_on_own_lists
from models.types import FloatArray, IntArray

if TYPE_CHECKING:
    from models.data.catalog import Catalog
    from models.fm.torch_model import TorchFM

MAX_EPOCHS = 4
"""Epochs over the cached lists at most (one Adam step already moves φ_g by about its clip bound)."""


def skip_reason(n_liked: int, seconds: float) -> str | None:
    """Why this sync sends a zero φ_g delta, or None when it trains φ_g."""
    if seconds <= 0:
        return "[sync] lm_train_seconds is 0"
    if n_liked < 2:
        return f"needs at least 2 liked items to form a list (you have {n_liked})"
    try:
        require_torch_copy()
    except AssetError:
        return "the trainable copy of the foundation model is not prepared (run scripts/setup)"
    return None


def train_shared_lora(
    store: ProfileStore,
    catalog: Catalog,
    scorer: FirstStageScorer,
    private: PrivateParams,
    liked: IntArray,
    phi: NDArray[np.floating],
    seconds: float,
    *,
    fm: TorchFM | None = None,
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Train φ_g (its trainable values ``phi``, as fetched) on this person's lists for about ``seconds``; returns
    (φ_after − φ_before, what the run did). The lists are ranked by ``scorer`` with ``private`` (the person's first
    stage). ``fm``: a loaded torch model to train with (default: loaded here); no other adapter may be attached."""
    started = time.monotonic()
    phi = np.asarray(phi, dtype=np.float32).ravel()
    reason = skip_reason(len(liked), seconds)
    if reason is not None:
        return np.zeros_like(phi), {"trained": False, "skipped": reason}
    before = store.shared_lora_with(phi)  # on the stored frozen A, else the public seeded one

    def score_all(_user: int, history: IntArray) -> FloatArray:
        return scorer.score_all(history, private)

    if fm is None:
        from models.fm.torch_model import TorchFM  # torch: loaded here, in the worker process, never in the app

        fm = TorchFM()
    loaded = time.monotonic()
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", catalog)
    own = train_on_own_lists(
        fm,
        builder,
        "shared",
        before,
        liked,
        scorer.item_vectors.shape[0],
        score_all,
        deadline=started + seconds,
        max_epochs=MAX_EPOCHS,
    )
    fm.attach("shared", None)
    run = own.training
    delta = (run.weights.trainable_vector() - before.trainable_vector()).astype(np.float32)
    info: dict[str, Any] = {
        "lists": own.lists,
        "lists_with_target": own.lists_with_target,
        "epochs": run.epochs,
        "steps": run.steps,
        "loss_before": round(run.loss_before, 5),
        "loss_after": round(run.loss_after, 5),
        "seconds": round(time.monotonic() - started, 2),
        "load_s": round(loaded - started, 2),
        "cache_s": round(own.cache_s, 2),
    }
    if not np.all(np.isfinite(delta)):
        return np.zeros_like(phi), {"trained": False, "skipped": "the training gave non-finite values", **info}
    return delta, {"trained": True, **info, "delta_norm": round(float(np.linalg.norm(delta)), 5)}
