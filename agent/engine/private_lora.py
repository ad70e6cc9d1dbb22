"""The private LoRA φ_u of the foundation model, trained in the worker process on the person's own lists.

Each run of the training worker replaces the private LoRA. It trains on the same listwise lists and loss the rerank
serves and a sync's shared φ_g trains on (:func:`models.fm.listwise.train_on_own_lists`): each of the person's
latest liked items (up to 8) after the items before it, among the first stage's top 20 of it and 99 unseen items,
cross-entropy over the letters plus distillation towards the first stage. The current shared LoRA is attached and
frozen; the private one (:func:`models.fm.lora.default_private_spec`) trains from the cached inputs of its first
layer for at most :data:`models.fm.listwise.PRIVATE_SECONDS` (model load excluded) and
:data:`models.fm.listwise.PRIVATE_MAX_EPOCHS` epochs. It is exported to
GGUF and stored through :class:`agent.store.profile_store.ProfileStore` (new file, then the row switch). The shared
LoRA is the synced one when the profile has one (:data:`agent.store.records.SHARED_LORA`), else the zero-initialised
default (B = 0: it changes nothing).

When there is too little history (fewer than :data:`MIN_LIKED` liked items), the second stage is switched off or
the foundation model's files are not prepared, no LoRA is trained and any stored one is removed: it was trained on
feedback that has changed since (e.g. a forgotten item), and must not outlive it.

Imports torch (through :mod:`models.fm.torch_model`) only inside :func:`train_private_lora`, in the worker process.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from agent.engine.profile import Profile
from agent.engine.rerank_weight import weight_in_force
from agent.settings import RerankSettings
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_LORA, PRIVATE_LORA_PROMPT
from models.errors import AssetError
from models.firststage.scorer import PrivateParams
from models.fm.assets import gguf_path, require_torch_copy, torch_dir
from models.fm.listwise import PRIVATE_MAX_EPOCHS, PRIVATE_SECONDS, ListwisePromptBuilder, train_on_own_lists
from models.fm.lora import LoraWeights, default_private_spec, default_shared_spec, export_gguf, verify_gguf
from models.types import FloatArray, IntArray

MIN_LIKED = 5
"""Liked items needed before a private LoRA is trained (fewer give three lists or less: noise, not taste)."""


def skip_reason(n_liked: int, rerank: RerankSettings) -> str | None:
    """Why no private LoRA is trained now, or None when it is."""
    if not rerank.enabled:
        return "the language-model rerank is switched off ([rerank] enabled = false)"
    if n_liked < MIN_LIKED:
        return f"needs at least {MIN_LIKED} liked items (you have {n_liked})"
    in_force = weight_in_force(rerank)
    if not in_force.on:
        return f"{in_force.summary()}: nothing would use the adapter"
    if not gguf_path().is_file():
        return "the foundation model is not prepared (run scripts/setup)"
    try:
        require_torch_copy()
    except AssetError:
        return "the trainable copy of the foundation model is not prepared (run scripts/setup)"
    return None


def train_private_lora(
    store: ProfileStore, profile: Profile, liked: IntArray, private: PrivateParams, rerank: RerankSettings
) -> dict[str, Any]:
    """Train, export and store this profile's private LoRA (or remove a stale one); returns what the run did."""
    reason = skip_reason(len(liked), rerank)
    if reason is not None:
        removed = store.delete_adapter(PRIVATE_LORA)
        return {"trained": False, "skipped": reason, "removed_previous": removed}

    from models.fm.torch_model import TorchFM  # torch: loaded here, in the worker process, never in the app

    started = time.perf_counter()
    scorer = profile.scorer

    def score_all(_user: int, history: IntArray) -> FloatArray:
        return scorer.score_all(history, private)

    fm = TorchFM()
    synced = store.load_shared_lora()
    if synced is not None:
        shared, shared_meta = synced
        shared_version = str(shared_meta.get("version"))
    else:
        shared = LoraWeights.init(default_shared_spec(len(fm.layers)), fm.shapes())
        shared_version = "zero default (B = 0, no sync yet)"
    fm.attach("shared", shared)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", profile.catalog)
    start = LoraWeights.init(default_private_spec(len(fm.layers)), fm.shapes())
    own = train_on_own_lists(
        fm,
        builder,
        PRIVATE_LORA,
        start,
        liked,
        scorer.item_vectors.shape[0],
        score_all,
        deadline=time.monotonic() + PRIVATE_SECONDS,
        max_epochs=PRIVATE_MAX_EPOCHS,
    )
    weights, loss = own.training.weights, own.training.loss_after
    with tempfile.TemporaryDirectory(dir=store.folder, prefix=".lora-") as tmp:
        path = Path(tmp) / "private.gguf"
        digest = export_gguf(weights, path)
        if not verify_gguf(path):
            raise AssetError("The exported private LoRA does not match its checksum.", hint="Run `agent train` again.")
        data = path.read_bytes()
    seconds = time.perf_counter() - started
    delta_norm = weights.delta_norm()
    record = store.save_private_lora(
        data,
        meta={
            "catalog": profile.catalog.name,
            "prompt": PRIVATE_LORA_PROMPT,
            "gguf_sha256": digest,
            "layers": list(weights.spec.layers),
            "rank": weights.spec.rank,
            "lists": own.lists,
            "lists_with_target": own.lists_with_target,
            "epochs": own.training.epochs,
            "loss_before": round(own.training.loss_before, 5),
            "loss": round(loss, 5),
            "delta_norm": round(delta_norm, 5),
            "shared_lora": shared_version,
        },
    )
    store.record_training(adapter=PRIVATE_LORA, n_examples=own.lists, mean_loss=loss, seconds=seconds)
    return {
        "trained": True,
        "lists": own.lists,
        "loss": round(loss, 5),
        "delta_norm": round(delta_norm, 5),
        "bytes": len(data),
        "version": record.version,
        "seconds": round(seconds, 3),
    }
