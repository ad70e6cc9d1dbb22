"""The local training worker: ``python -m agent.engine.worker train`` retrains the private adapter, in its own process;
``python -m agent.engine.worker sync-train SHARED.npy OUT_DIR [PHI.npy]`` trains for a sync (see :func:`train_for_sync`;
with ``PHI.npy``, the language model's shared adapter too: :mod:`agent.engine.shared_lora`).

The app (CLI and TUI) never imports torch; it runs this module as a subprocess (:func:`agent.engine.jobs.run_training`).
The private first-stage vector θ_u is trained from zero, with the shared adapter frozen (learning rate 0 for θ_g),
on the person's own feedback only, so a forgotten item leaves no trace in it:

* next-item prediction over the liked items in time order (sampled softmax, as ``models.firststage.training`` does for
  federated agents), with every disliked item added to each example's candidates as a hard negative;
* a pairwise term that ranks each disliked item below random items;
* an L2 penalty on θ_u (the Ψ(φ_u) of the objective).

Then the foundation model's private LoRA is retrained on the same feedback (:mod:`agent.engine.private_lora`; skipped,
and any stale one removed, with fewer than five liked items). Both are written through
:class:`agent.store.profile_store.ProfileStore` (new file, then the row switch), so a crash leaves the previous adapter.
The result is one JSON object on stdout; errors go to stderr with exit code 1.

This module is the app's torch boundary: it imports torch at the top and is only ever run as that subprocess.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from agent.engine.private_lora import train_private_lora
from agent.engine.profile import Profile
from agent.engine.shared_lora import train_shared_lora
from agent.errors import ProfileError
from agent.settings import load_settings, passphrase_from_env
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_FIRST_STAGE
from models.assets import atomic_write_bytes
from models.errors import PersonaError
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import FirstStageScorer, PrivateParams
from models.firststage.training import local_train
from models.types import IntArray
from sync.protocol.rules import SYNC_PHI_SIZE

if TYPE_CHECKING:
    from models.fm.torch_model import TorchFM


@dataclass(frozen=True)
class PrivateTrainConfig:
    """Hyper-parameters of the private-only step."""

    steps: int = 80
    lr: float = 0.05
    l2: float = 1e-2
    n_negatives: int = 100
    seed: int = 0


def train_private(
    scorer: FirstStageScorer, liked: IntArray, disliked: IntArray, config: PrivateTrainConfig = PrivateTrainConfig()
) -> tuple[PrivateParams, int, float]:
    """θ_u trained from zero on this feedback with θ_g frozen: (params, number of examples, final loss)."""
    torch.set_num_threads(1)
    n_items, dim = scorer.item_vectors.shape
    zero = PrivateParams.init(dim)
    n = len(liked)
    if n == 0 and len(disliked) == 0:
        return zero, 0, 0.0
    items = torch.from_numpy(scorer.item_vectors)
    bias = torch.from_numpy(scorer.item_bias)
    pooled_np = np.stack([scorer.user_state(liked[:t], zero) for t in range(n)]) if n else np.zeros((0, dim))
    pooled = torch.from_numpy(pooled_np.astype(np.float32))
    final_state = torch.from_numpy(scorer.user_state(liked, zero))
    targets = torch.from_numpy(np.asarray(liked, dtype=np.int64))
    hard = torch.from_numpy(np.asarray(disliked, dtype=np.int64))
    in_liked = torch.zeros(n_items, dtype=torch.bool)
    in_liked[targets] = True
    user = torch.zeros(dim, requires_grad=True)
    # Adam by hand: constructing a torch.optim optimizer imports torch._dynamo, measured at 1.9-3.3 s here (2 busy
    # cores) for one 32-wide vector; the LoRA and sync trainings pay it anyway, a retrain with few likes need not.
    moment1, moment2 = torch.zeros(dim), torch.zeros(dim)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    generator = torch.Generator().manual_seed(config.seed)
    loss_value = 0.0
    for step in range(config.steps):
        loss = config.l2 * (user * user).sum()
        negatives = torch.randint(0, n_items, (max(n, 1), config.n_negatives), generator=generator)
        if n:
            cand = torch.cat([targets[:, None], hard[None, :].expand(n, -1), negatives], 1)
            scores = ((pooled + user)[:, None, :] * items[cand]).sum(-1) + bias[cand]
            blocked = torch.cat([torch.zeros(n, 1 + len(hard), dtype=torch.bool), in_liked[negatives]], 1)
            scores = scores.masked_fill(blocked, -1e9)
            loss = loss + torch.nn.functional.cross_entropy(scores, torch.zeros(n, dtype=torch.long))
        if len(hard):
            state = final_state + user
            bad = items[hard] @ state + bias[hard]
            random_items = negatives[0]
            good = items[random_items] @ state + bias[random_items]
            loss = loss + torch.nn.functional.softplus(bad[:, None] - good[None, :]).mean()
        user.grad = None
        loss.backward()  # type: ignore[no-untyped-call]
        assert user.grad is not None
        with torch.no_grad():
            moment1.mul_(beta1).add_(user.grad, alpha=1 - beta1)
            moment2.mul_(beta2).addcmul_(user.grad, user.grad, value=1 - beta2)
            corrected1 = moment1 / (1 - beta1 ** (step + 1))
            corrected2 = moment2 / (1 - beta2 ** (step + 1))
            user -= config.lr * corrected1 / (corrected2.sqrt() + eps)
        loss_value = float(loss.detach())
    vector = user.detach().numpy().astype(np.float32, copy=True)
    return PrivateParams(user_vector=vector), n + len(disliked), loss_value


def train_profile(store: ProfileStore, config: PrivateTrainConfig = PrivateTrainConfig()) -> dict[str, Any]:
    """Retrain and store this profile's private adapter (first-stage vector, then LoRA); returns what the run did."""
    started = time.perf_counter()
    profile = Profile.load(store)
    liked, disliked = profile.feedback()
    private, n_examples, loss = train_private(profile.scorer, liked, disliked, config)
    seconds = time.perf_counter() - started
    store.save_private(
        private, meta={"catalog": profile.catalog.name, "shared_version": profile.shared_meta["version"]}
    )
    store.record_training(adapter=PRIVATE_FIRST_STAGE, n_examples=n_examples, mean_loss=loss, seconds=seconds)
    lora = train_private_lora(store, profile, liked, private, load_settings().rerank)
    return {
        "n_examples": n_examples,
        "loss": round(loss, 5),
        "seconds": round(seconds, 3),
        "norm": round(float(np.linalg.norm(private.user_vector)), 5),
        "private_lora": lora,
    }


SYNC_DELTA_FILE = "shared_delta.npy"
SYNC_PRIVATE_FILE = "private.npy"
SYNC_PHI_DELTA_FILE = "phi_delta.npy"


def _atomic_save(path: Path, array: NDArray[np.float32]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def train_for_sync(
    store: ProfileStore, shared_path: Path, out_dir: Path, phi_path: Path | None = None, *, fm: TorchFM | None = None
) -> dict[str, Any]:
    """Train shared + private on this profile's liked items, starting from the coordinator's shared vector.

    Reads the shared vector (``.npy``) the sync client fetched and verified, runs
    :func:`models.firststage.training.local_train` on the person's liked items in time order (the federation's
    objective), and writes the new shared *delta* (:data:`SYNC_DELTA_FILE`) and the new private vector
    (:data:`SYNC_PRIVATE_FILE`) to ``out_dir``, each atomically. The store is not changed: the caller applies the
    private vector once the round succeeded.

    With ``phi_path`` (the round carries the language model's shared adapter φ_g: its fetched trainable values), φ_g
    is trained too (:func:`agent.engine.shared_lora.train_shared_lora`, for ``[sync] lm_train_seconds``, on lists
    ranked by the fetched θ_g and the new private vector) and its delta is written to :data:`SYNC_PHI_DELTA_FILE`
    (zeros when it is skipped; the result's ``language_model`` says why). ``fm``: a loaded torch model to use.
    """
    started = time.perf_counter()
    profile = Profile.load(store)
    vector = np.load(shared_path, allow_pickle=False).astype(np.float32).ravel()
    if vector.shape != (profile.shared.size,):
        raise ProfileError(
            f"The coordinator's shared adapter has {vector.size} values; this profile's catalog "
            f"{profile.catalog.name!r} needs {profile.shared.size}.",
            hint="Sync works on the catalog the federation trains (the built-in one): `agent catalogs`.",
        )
    shared = profile.shared.with_vector(vector)
    liked, _disliked = profile.feedback()
    if len(liked) == 0:
        delta = np.zeros_like(vector)
        private, n_examples, loss = profile.private(), 0, 0.0
    else:
        result = local_train(
            shared,
            profile.private(),
            liked,
            torch.from_numpy(profile.text_vectors),
            FederatedConfig().train_config(),  # the recipe the federation was measured with
            seed=0,
        )
        delta = result.shared.to_vector() - vector
        private, n_examples, loss = result.private, result.n_examples, result.mean_loss
    out: dict[str, Any] = {}
    phi_delta: NDArray[np.float32] | None = None
    if phi_path is not None:
        phi = np.load(phi_path, allow_pickle=False).astype(np.float32).ravel()
        if phi.shape != (SYNC_PHI_SIZE,):
            raise ProfileError(
                f"The coordinator's language-model adapter has {phi.size} values; this agent's has {SYNC_PHI_SIZE}."
            )
        scorer = FirstStageScorer(shared, profile.text_vectors)
        seconds = load_settings().sync.lm_train_seconds
        phi_delta, out["language_model"] = train_shared_lora(
            store, profile.catalog, scorer, private, liked, phi, seconds, fm=fm
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save(out_dir / SYNC_DELTA_FILE, delta)
    _atomic_save(out_dir / SYNC_PRIVATE_FILE, private.user_vector)
    if phi_delta is not None:
        _atomic_save(out_dir / SYNC_PHI_DELTA_FILE, phi_delta)
    return {
        "n_examples": n_examples,
        "loss": round(loss, 5),
        "seconds": round(time.perf_counter() - started, 3),
        "delta_norm": round(float(np.linalg.norm(delta)), 5),
        **out,
    }


def main(argv: list[str]) -> int:
    """``train``: retrain the private adapter of the profile in the data folder (PERSONA_HOME honoured);
    ``sync-train SHARED.npy OUT_DIR [PHI.npy]``: train for a sync (:func:`train_for_sync`)."""
    if not (argv == ["train"] or (len(argv) in (3, 4) and argv[0] == "sync-train")):
        print("usage: python -m agent.engine.worker train | sync-train SHARED.npy OUT_DIR [PHI.npy]", file=sys.stderr)
        return 2
    os.nice(10)  # background work: the UI that started it keeps the CPU when both want it
    try:
        passphrase = passphrase_from_env()
        if ProfileStore.is_encrypted_at() and not passphrase:
            raise ProfileError("The training worker needs PERSONA_PASSPHRASE for an encrypted profile.")
        with ProfileStore.open(passphrase=passphrase) as store:
            if argv == ["train"]:
                result = train_profile(store)
            else:
                phi_path = Path(argv[3]) if len(argv) == 4 else None
                result = train_for_sync(store, Path(argv[1]), Path(argv[2]), phi_path)
    except PersonaError as error:
        print(f"{error.title}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
