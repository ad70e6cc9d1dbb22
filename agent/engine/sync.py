"""The sync service: one sync of the profile (``agent sync`` and the TUI's "sync now", :func:`tui_sync`), and the
``--via-sync`` aggregator of ``agent eval`` and ``agent demo``.

One sync (:func:`sync_profile`, shared by the CLI and the TUI): check the yearly privacy budget allows one more
round (:mod:`agent.engine.budget`; if not, the skip is recorded and the coordinator is not contacted), check the
coordinator answers, register the profile's Ed25519 identity (a 0600 key file in the data folder), fetch and verify
the published shared vector, train shared + private on the profile's own history in the worker process (torch stays
out of this process), send only the shared delta through one secure-aggregation round (rounds offering less noise
than the budget was checked at are refused), then apply the new shared vector (a new stored version) and the new
private vector. The round is recorded in the store's egress ledger whatever happens after joining; on
any failure nothing is applied.

``agent eval --model federated --via-sync`` starts a coordinator on 127.0.0.1 (a subprocess, SQLite in a temporary
folder) seeded with the same initial shared vector as the simulation, and trains through the real protocol:
each round a cohort of agents (:attr:`agent.settings.SyncSettings.cohort`) is sampled from those that trained; their
deltas are clipped, weighted, noised, quantized, masked and summed by the coordinator. The protocol settings are
:func:`agent.settings.sync_settings`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from agent.engine.budget import accepted_privacy, check_budget, privacy_budget
from agent.engine.jobs import run_training
from agent.engine.profile import Profile
from agent.errors import ProfileError
from agent.settings import COORDINATOR_ENV, coordinator_url, passphrase_from_env, sync_settings
from agent.store.egress import StoreLedger
from agent.store.profile_store import ProfileStore
from models.data.split import Split
from models.firststage.scorer import PrivateParams, SharedParams
from sync.client.identity import Identity
from sync.client.run import run_sync
from sync.errors import SyncError
from sync.protocol.privacy import DEFAULT_DELTA
from sync.simulation.aggregator import SecureAggregator

IDENTITY_FILE = "sync_identity.key"
DEFAULT_TIMEOUT = 300.0

ProgressFn = Callable[[float, str], None]
"""``progress(fraction, text)``: how far one sync is (0 to 1) and what it is doing."""

# How far along a sync is after each protocol step (training takes most of the wall time of a small round).
_STAGES = {
    "fetched": (0.10, "fetched and verified shared vector v{version}"),
    "trained": (0.45, "trained locally on {n_examples} examples"),
    "advertised": (0.55, "joined round {round_id}, waiting for the cohort"),
    "shared_keys": (0.70, "round {round_id}: sent encrypted key shares to {neighbours} peers of {cohort}"),
    "sent_input": (0.80, "round {round_id}: sent the masked shared delta ({bytes:,} bytes)"),
    "unmasking": (0.90, "round {round_id}: unmasking with {survivors} survivors"),
    "done": (0.97, "round {round_id} done: published v{version}"),
}


def no_coordinator_error() -> ProfileError:
    """The error to show when no coordinator is configured (it says the three ways to configure one)."""
    return ProfileError(
        "No coordinator is configured.",
        hint=f'Pass --coordinator URL, set {COORDINATOR_ENV}, or put coordinator_url = "http://..." in config.toml.',
    )


def _check_reachable(url: str) -> None:
    try:
        response = httpx.get(f"{url}/healthz", timeout=5.0)
    except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise SyncError(
            f"The coordinator at {url} is unreachable: {error}", hint="Check the URL and that it is running."
        ) from error
    if response.status_code != 200:
        raise SyncError(f"The coordinator at {url} is not healthy (HTTP {response.status_code}).")


def identity_for(store: ProfileStore) -> Identity:
    """The profile's long-term sync identity (created on first use; a 0600 file in the data folder)."""
    return Identity.load_or_create(store.folder / IDENTITY_FILE)


def sync_profile(
    store: ProfileStore,
    url: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: ProgressFn | None = None,
    passphrase: str | None = None,
) -> dict[str, Any]:
    """One sync of this profile (see the module docstring); returns the summary ``agent sync --json`` prints.

    Raises :class:`ProfileError` when no coordinator is configured and :class:`SyncError` (and subclasses) when
    the coordinator is unreachable, refuses, or the round times out or is abandoned; nothing is applied then.
    """
    report = progress or (lambda _fraction, _text: None)
    url = (url or coordinator_url() or "").rstrip("/")
    if not url:
        raise no_coordinator_error()
    check_budget(store)
    report(0.0, f"contacting {url}")
    _check_reachable(url)
    profile = Profile.load(store)
    template = profile.shared
    identity = identity_for(store)
    trained: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".sync-", dir=store.folder) as scratch:
        work = Path(scratch)

        def compute_delta(shared: NDArray[np.float32]) -> tuple[NDArray[np.floating], float]:
            if shared.shape != (template.size,):
                raise ProfileError(
                    f"The coordinator's shared adapter has {shared.size} values; this profile's catalog "
                    f"{profile.catalog.name!r} needs {template.size}.",
                    hint="Sync works on the catalog the federation trains (the built-in one).",
                )
            np.save(work / "shared.npy", shared.astype(np.float32))
            report(0.15, "training shared + private locally (worker process)")
            result = run_training(
                passphrase=passphrase, args=("sync-train", str(work / "shared.npy"), str(work / "out"))
            )
            trained.update(result)
            trained["private"] = np.load(work / "out" / "private.npy", allow_pickle=False)
            on_stage("trained", {"n_examples": result["n_examples"]})
            delta = np.load(work / "out" / "shared_delta.npy", allow_pickle=False)
            return delta, float(result["n_examples"])

        def on_stage(stage: str, info: dict[str, Any]) -> None:
            if stage == "fetched":
                trained["fetched_version"] = info["version"]
            if stage in _STAGES:
                fraction, text = _STAGES[stage]
                with contextlib.suppress(KeyError, ValueError):
                    text = text.format(**info)
                report(fraction, text)

        outcome = run_sync(
            url,
            identity,
            compute_delta,
            StoreLedger(store),
            min_sigma=accepted_privacy().sigma,
            timeout=timeout,
            progress=on_stage,
        )
    new_shared = template.with_vector(outcome.shared.vector)
    published = outcome.shared.version != trained.get("fetched_version")  # the noised total weight can be ≤ 0
    stored = store.load_shared()
    have = (stored[1].get("coordinator"), stored[1].get("published_version")) if stored else None
    if have != (url, outcome.shared.version):
        store.save_shared(
            new_shared,
            version=f"federation-v{outcome.shared.version}",
            meta={
                "catalog": profile.catalog.name,
                "coordinator": url,
                "published_version": outcome.shared.version,
                "sha256": outcome.shared.sha256,
                "round": outcome.round.round_id,
            },
        )
    if "private" in trained:
        private = PrivateParams(user_vector=np.asarray(trained["private"], dtype=np.float32))
        store.save_private(
            private,
            meta={"catalog": profile.catalog.name, "shared_version": f"federation-v{outcome.shared.version}"},
        )
    entry = outcome.entry
    report(1.0, f"applied shared vector v{outcome.shared.version}" if published else "no new shared vector published")
    return {
        "round": entry.round_id,
        "version": outcome.shared.version,
        "bytes_up": entry.bytes_sent,
        "bytes_down": entry.bytes_received,
        "C": entry.clip,
        "sigma": entry.sigma,
        "cohort": entry.cohort_size,
        "epsilon": entry.epsilon,
        "delta": entry.delta,
        "privacy_budget": privacy_budget(store).as_dict(),
        "n_examples": int(trained.get("n_examples", 0)),
        "published": published,
        "coordinator": url,
    }


def tui_sync(store: ProfileStore, progress: ProgressFn, *, passphrase: str | None = None) -> dict[str, Any]:
    """The TUI's "sync now" (run in a thread worker): :func:`sync_profile` with the configured coordinator.

    ``passphrase`` unlocks an encrypted profile for the training worker (default: PERSONA_PASSPHRASE).
    """
    if store.encrypted and passphrase is None:
        passphrase = passphrase_from_env()
    return sync_profile(store, progress=progress, passphrase=passphrase)


@contextlib.contextmanager
def sync_aggregator(
    enabled: bool, split: Split, seed: int, server_lr: float, *, cohort: int | None = None
) -> Iterator[SecureAggregator | None]:
    """A SecureAggregator bound to a fresh local coordinator when ``enabled`` (``cohort`` agents a round, default
    the sync settings' cohort), else None."""
    if not enabled:
        yield None
        return
    settings = sync_settings()
    # a round closes its advertise stage once the whole cohort is in
    cohort = min(settings.cohort if cohort is None else cohort, len(split.users))
    initial = SharedParams.init(split.n_items, seed=seed).to_vector()
    args = (
        "--clip",
        str(settings.clip),
        "--sigma",
        str(settings.sigma),
        "--weight-cap",
        str(settings.weight_cap),
        "--server-lr",
        str(server_lr),
        "--min-cohort",
        str(min(10, cohort)),
        "--max-dropout",
        str(settings.max_dropout),
        # one process simulates every agent: generous stage deadlines so a busy laptop does not drop them
        "--share-keys-s",
        "300",
        "--masked-input-s",
        "300",
        "--unmask-s",
        "300",
    )
    with SecureAggregator.local(initial, cohort, coordinator_args=args, cohort_size=cohort, seed=seed) as aggregator:
        yield aggregator


def sync_summary(aggregator: SecureAggregator) -> dict[str, Any]:
    """What the protocol did over the run: settings, ε, bytes and time per round."""
    stats = aggregator.stats
    n = max(1, len(stats))
    settings = sync_settings()
    return {
        "cohort": aggregator.cohort_size or settings.cohort,
        "clip": settings.clip,
        "sigma": settings.sigma,
        "weight_cap": settings.weight_cap,
        "max_dropout": settings.max_dropout,
        "noise_multiplier": aggregator.noise_multiplier,
        "rounds_done": sum(s.status == "done" for s in stats),
        "rounds_abandoned": sum(s.status != "done" for s in stats),
        "max_rounds_per_agent": max(aggregator.released_rounds.values(), default=0),
        "epsilon": aggregator.epsilon(),
        "delta": DEFAULT_DELTA,
        "bytes_up_per_agent_round": round(sum(s.bytes_up_per_agent for s in stats) / n),
        "bytes_down_per_agent_round": round(sum(s.bytes_down_per_agent for s in stats) / n),
        "protocol_wall_s_per_round": round(sum(s.wall_s for s in stats) / n, 2),
    }
