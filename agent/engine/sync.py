"""The sync service: one sync of the profile (``agent sync`` and the TUI's "sync now", :func:`tui_sync`), and the
``--via-sync`` aggregator of ``agent eval`` and ``agent demo``.

One sync (:func:`sync_profile`, shared by the CLI and the TUI): check the yearly privacy budget allows one more
round (:mod:`agent.engine.budget`; if not, the skip is recorded and the coordinator is not contacted), check the
coordinator answers, register the profile's Ed25519 identity (a 0600 key file in the data folder), fetch and verify
the published shared vector, train shared + private on the profile's own history in the worker process (torch stays
out of this process), send only the shared delta through one secure-aggregation round (rounds offering less noise
than the budget was checked at are refused), then apply the new shared vector (a new stored version) and the new
private vector. When the federation also carries the language model's shared adapter φ_g (the published vector is
θ_g then φ_g), the worker also trains φ_g on the person's listwise lists for ``[sync] lm_train_seconds``
(:mod:`agent.engine.shared_lora`) and its delta follows θ_g's in the one masked vector (zeros, and the summary's
``language_model`` says why, when the profile forms no list); the new θ_g and φ_g are applied together in one store
transaction. The round is recorded in the store's egress ledger whatever happens after joining; on
any failure nothing is applied.

When the coordinator runs federated evaluation (its rounds carry an evaluation plan, ``sync.protocol.evaluation``),
the agent holds out its latest liked item and scores it against 99 sampled unseen items with the fetched shared
vector (θ_u left at zero: the private vector has seen the held-out item) and, when it has the language model and an
adapter (``[rerank] enabled``, the GGUF prepared, a private or shared LoRA), rescoring the first stage's top k at
each candidate blend weight (:func:`local_evaluator`). Only the bounded HR@10/NDCG@10 per setting ride in the masked
vector. The blend weight the coordinator signs with the new version is verified and recorded
(:func:`agent.engine.rerank_weight.save_federation_blend`); it is in force unless ``[rerank] weight`` is set.

The connection (:mod:`sync.client.tls`): an https coordinator is verified against the system trust store, the
``[sync] coordinator_ca_file`` or the certificate pinned by ``[sync] coordinator_fingerprint``; plain http to
another machine is refused before any connection unless ``--insecure-http`` / ``[sync] insecure_http``. A
coordinator that requires enrollment takes the operator's one-time token (``agent sync --enroll TOKEN``) when this
profile's identity registers the first time; it knows the identity afterwards, so no token is needed again.

``agent eval --model federated --via-sync`` starts a coordinator on 127.0.0.1 (a subprocess, SQLite in a temporary
folder) seeded with the same initial shared vector as the simulation, and trains through the real protocol:
each round a cohort of agents (:attr:`agent.settings.SyncSettings.cohort`) is sampled from those that trained; their
deltas are clipped, weighted, noised, quantized, masked and summed by the coordinator. The protocol settings are
:func:`agent.settings.sync_settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
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
from agent.engine.rerank_weight import save_federation_blend, weight_in_force
from agent.errors import ProfileError
from agent.settings import COORDINATOR_ENV, coordinator_url, load_settings, passphrase_from_env, sync_settings
from agent.store.egress import StoreLedger
from agent.store.profile_store import ProfileStore
from models.data.split import Split
from models.errors import PersonaError
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams
from models.types import FloatArray, IntArray
from sync.client.evaluate import ScoreFn, evaluate_held_out
from sync.client.http_client import AgentClient
from sync.client.identity import Identity
from sync.client.run import run_sync
from sync.client.tls import TransportPolicy, check_url, connection_error, ssl_context
from sync.errors import CoordinatorError, SyncError
from sync.protocol.evaluation import NOTHING, EvalPlan, LocalEvaluation
from sync.protocol.privacy import DEFAULT_DELTA
from sync.protocol.rules import SYNC_PHI_SIZE
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


def _check_reachable(url: str, verify: ssl.SSLContext | bool = True) -> None:
    try:
        response = httpx.get(f"{url}/healthz", timeout=5.0, verify=verify)
    except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise connection_error(url, error) from error
    if response.status_code != 200:
        raise SyncError(f"The coordinator at {url} is not healthy (HTTP {response.status_code}).")


def transport_policy(*, insecure_http: bool = False) -> TransportPolicy:
    """How this agent checks its coordinator: the ``[sync]`` settings, ``insecure_http`` also allowed by the flag."""
    preferences = load_settings().sync
    return TransportPolicy(
        fingerprint=preferences.coordinator_fingerprint or None,
        ca_file=Path(preferences.coordinator_ca_file) if preferences.coordinator_ca_file else None,
        insecure_http=insecure_http or preferences.insecure_http,
    )


_ENROLLMENT_HINTS = {
    "enrollment_required": "This coordinator admits new agents with an enrollment token from its operator: run "
    "`agent sync --enroll TOKEN` once (afterwards it knows this profile).",
    "invalid_enrollment": "Check the token you were given (one line printed by `agent-coordinator enroll`), or ask "
    "the operator for another.",
    "enrollment_used": "Each token registers one agent; ask the operator for a new one.",
}


def split_shared(
    vector: NDArray[np.float32], theta_size: int, catalog: str
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """(θ_g, φ_g) of a published shared vector: θ_g alone, or θ_g then the language model's shared adapter's
    :data:`~sync.protocol.rules.SYNC_PHI_SIZE` values; ProfileError for any other length."""
    if vector.shape == (theta_size,):
        return vector, None
    if vector.shape == (theta_size + SYNC_PHI_SIZE,):
        return vector[:theta_size], vector[theta_size:]
    raise ProfileError(
        f"The coordinator's shared adapter has {vector.size} values; this profile's catalog {catalog!r} needs "
        f"{theta_size} (θ_g) or {theta_size + SYNC_PHI_SIZE} (θ_g and the language model's shared adapter).",
        hint="Sync works on the catalog the federation trains (the built-in one).",
    )


def register(url: str, identity: Identity, verify: ssl.SSLContext | bool, enrollment: str | None) -> None:
    """Register the identity with the coordinator (idempotent; the coordinator remembers it, so ``enrollment`` — the
    operator's one-time token — matters only the first time). A refused enrollment raises SyncError with what to do.
    """

    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0), verify=verify) as http:
            await AgentClient(http, identity, retry_seconds=30.0).register(enrollment)

    try:
        asyncio.run(go())
    except CoordinatorError as error:
        if error.reason not in _ENROLLMENT_HINTS:
            raise
        raise SyncError(
            f"The coordinator at {url} refused to register this agent: {error.detail}",
            hint=_ENROLLMENT_HINTS[error.reason],
        ) from error


def _language_model_scores(profile: Profile) -> ScoreFn | None:
    """The language model's scores with the profile's adapters (as the rerank serves them), or None when this agent
    cannot score with it: the rerank switched off, the model not prepared, or no trained adapter."""
    from agent.store.records import SHARED_LORA
    from models.fm.assets import gguf_path

    if not load_settings().rerank.enabled or not gguf_path().is_file():
        return None
    from agent.engine.rerank import SERVED, private_lora_usable  # reason: the language model's code, when it can run

    use_private = private_lora_usable(profile)
    if not use_private and profile.store.adapter_record(SHARED_LORA) is None:
        return None

    def score(history: IntArray, items: IntArray) -> FloatArray:
        scores = SERVED.score(profile, history, [int(i) for i in items], use_private=use_private)
        return np.asarray(scores, dtype=np.float32)

    return score


def local_evaluator(
    profile: Profile, fetched: Callable[[], NDArray[np.float32]]
) -> Callable[[EvalPlan, int], LocalEvaluation]:
    """What this profile measures when a round evaluates: its latest liked item held out and scored with the
    ``fetched()`` θ_g (the version the round is based on) and θ_u = 0, and with the language model when it can
    (:func:`sync.client.evaluate.evaluate_held_out`). A language-model failure falls back to the first stage alone;
    any other failure sends nothing (count 0) rather than failing the round."""

    def evaluate(plan: EvalPlan, base_version: int) -> LocalEvaluation:
        try:
            theta = fetched()
            scorer = FirstStageScorer(profile.shared.with_vector(theta), profile.text_vectors)
            zero = PrivateParams.init(profile.shared.dim)
            liked, disliked = profile.feedback()

            def first(history: IntArray, items: IntArray) -> FloatArray:
                return scorer.score_items(history, zero, items)

            def run(lm: ScoreFn | None) -> LocalEvaluation:
                return evaluate_held_out(liked, disliked, profile.shared.n_items, plan, first, lm, seed=base_version)

            lm = _language_model_scores(profile) if len(liked) >= 2 else None
            if lm is not None:
                with contextlib.suppress(PersonaError, OSError, RuntimeError, ValueError):
                    return run(lm)
            return run(None)
        except (PersonaError, OSError, ValueError):
            return NOTHING

    return evaluate


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
    enrollment: str | None = None,
    insecure_http: bool = False,
) -> dict[str, Any]:
    """One sync of this profile (see the module docstring); returns the summary ``agent sync --json`` prints.

    ``enrollment`` is the operator's one-time token for a first registration; ``insecure_http`` allows plain http to
    another machine. Raises :class:`ProfileError` when no coordinator is configured and :class:`SyncError` (and
    subclasses) when the URL is insecure, the coordinator is unreachable or untrusted, refuses, or the round times out
    or is abandoned; nothing is applied then.
    """
    report = progress or (lambda _fraction, _text: None)
    url = (url or coordinator_url() or "").rstrip("/")
    if not url:
        raise no_coordinator_error()
    policy = transport_policy(insecure_http=insecure_http)
    check_url(url, policy)  # before anything is recorded or sent
    check_budget(store)
    report(0.0, f"contacting {url}")
    verify = ssl_context(url, policy)
    _check_reachable(url, verify)
    identity = identity_for(store)
    register(url, identity, verify, enrollment)  # before the profile is loaded and trained: a refusal comes first
    profile = Profile.load(store)
    template = profile.shared
    trained: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".sync-", dir=store.folder) as scratch:
        work = Path(scratch)

        def compute_delta(shared: NDArray[np.float32]) -> tuple[NDArray[np.floating], float]:
            theta, phi = split_shared(shared, template.size, profile.catalog.name)
            np.save(work / "shared.npy", theta.astype(np.float32))
            args: tuple[str, ...] = ("sync-train", str(work / "shared.npy"), str(work / "out"))
            lm_seconds = 0.0
            if phi is not None:
                np.save(work / "phi.npy", phi.astype(np.float32))
                args += (str(work / "phi.npy"),)
                lm_seconds = load_settings().sync.lm_train_seconds
                report(0.15, "training shared + private and the language model's shared adapter (worker process)")
            else:
                report(0.15, "training shared + private locally (worker process)")
            result = run_training(passphrase=passphrase, args=args, timeout=600.0 + lm_seconds)
            trained.update(result)
            trained["private"] = np.load(work / "out" / "private.npy", allow_pickle=False)
            trained["theta"] = theta
            on_stage("trained", {"n_examples": result["n_examples"]})
            delta = np.load(work / "out" / "shared_delta.npy", allow_pickle=False)
            if phi is not None:  # θ_g's delta, then φ_g's (zeros when the worker did not train it)
                phi_delta = np.load(work / "out" / "phi_delta.npy", allow_pickle=False)
                delta = np.concatenate([delta, phi_delta.astype(delta.dtype)])
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
            verify=verify,  # it registers again (idempotent, no token): the ledger counts that request as before
            evaluate=local_evaluator(profile, lambda: trained["theta"]),
        )
    new_theta, new_phi = split_shared(outcome.shared.vector, template.size, profile.catalog.name)
    new_shared = template.with_vector(new_theta)
    published = outcome.shared.version != trained.get("fetched_version")  # the noised total weight can be ≤ 0
    stored = store.load_shared()
    have = (stored[1].get("coordinator"), stored[1].get("published_version")) if stored else None
    if have != (url, outcome.shared.version):
        version = f"federation-v{outcome.shared.version}"
        meta = {
            "catalog": profile.catalog.name,
            "coordinator": url,
            "published_version": outcome.shared.version,
            "sha256": outcome.shared.sha256,
            "round": outcome.round.round_id,
        }
        if new_phi is None:
            store.save_shared(new_shared, version=version, meta=meta)
        else:  # θ_g and φ_g of one signed version, in one store transaction
            store.save_shared_pair(new_shared, store.shared_lora_with(new_phi), version=version, meta=meta)
    if "private" in trained:
        private = PrivateParams(user_vector=np.asarray(trained["private"], dtype=np.float32))
        store.save_private(
            private,
            meta={"catalog": profile.catalog.name, "shared_version": f"federation-v{outcome.shared.version}"},
        )
    blend = outcome.shared.blend  # verified against the coordinator's key with the version
    if blend is not None:
        save_federation_blend(
            blend.weight,
            version=outcome.shared.version,
            measured_version=blend.measured_version,
            agents=blend.agents,
            round_id=blend.round_id,
        )
    entry = outcome.entry
    report(1.0, f"applied shared vector v{outcome.shared.version}" if published else "no new shared vector published")
    return {
        "evaluation": outcome.round.evaluation,
        "blend": None
        if blend is None
        else {
            **blend.as_dict(),
            "version": outcome.shared.version,
            "in_force": weight_in_force(load_settings().rerank).as_dict(),
        },
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
        "language_model": trained.get("language_model"),
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
    enabled: bool,
    split: Split,
    seed: int,
    server_lr: float,
    *,
    cohort: int | None = None,
    initial: FloatArray | None = None,
    clip: float | None = None,
) -> Iterator[SecureAggregator | None]:
    """A SecureAggregator bound to a fresh local coordinator when ``enabled`` (``cohort`` agents a round, default
    the sync settings' cohort), else None. The coordinator starts from ``initial`` (default: the first stage's θ_g
    for ``split``) with clip bound ``clip`` (default: the sync settings' θ_g bound) — the language model's shared
    adapter passes its own vector and :data:`~sync.protocol.rules.SYNC_CLIP_PHI`."""
    if not enabled:
        yield None
        return
    settings = sync_settings()
    # a round closes its advertise stage once the whole cohort is in
    cohort = min(settings.cohort if cohort is None else cohort, len(split.users))
    if initial is None:
        initial = SharedParams.init(split.n_items, seed=seed).to_vector()
    args = (
        "--clip",
        str(settings.clip if clip is None else clip),
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
