"""The four views of a user that the audit attacks, computed as one more round from the kept (published) model:

* (a) u's raw shared delta Δ_u from local training;
* (b) exactly what u's agent sends: the raw delta and weight, the clipped (noised) joint vector, or — under secure
  aggregation — the real packed masked integers from ``sync.protocol.secagg.AgentSession`` run for a cohort;
* (c) the coordinator's difference attack: the round sum over S ∪ {u} minus the round sum over S (|S| = cohort − 1,
  each sum with its own fresh noise), next to the difference of the two shared vectors it would publish. Without
  secure aggregation the coordinator sees u's contribution itself, so (c) holds (b) instead of the difference.
  The S members' noise is drawn as its exact distribution (a sum of independent Gaussian shares is Gaussian);
  the quantization rounding of their contributions (at most half a step, ~1e-5 per element) is left out;
* (d) u's top-10 suggestion list (multi-hot over items).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from models.firststage.scorer import FirstStageScorer, PrivateParams
from models.types import Status
from sync.protocol import secagg
from sync.protocol.masking import Quantization, unpack
from sync.simulation.federation import Federation, LocalOutcome, SettingRun, contribution, mean_delta, published_after

VIEWS = ("a", "b", "c", "d")
TOP_K = 10


def masked_uploads(
    vectors: Sequence[NDArray[np.floating]], quantization: Quantization, survivors: int, round_id: int
) -> list[NDArray[np.uint32]]:
    """What each agent of one cohort uploads: the real packed masked vectors of ``secagg.AgentSession``, unpacked.

    Every agent advertises fresh keys under a fresh identity, shares its secrets with its graph neighbours, and
    masks its contribution with its self mask and the pairwise masks of all neighbours (nobody drops out).
    """
    n = len(vectors)
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    ids = [secagg.agent_id_for(secagg.raw_public(k)) for k in keys]
    sessions = {i: secagg.AgentSession(i, k, round_id) for i, k in zip(ids, keys, strict=True)}
    cohort = tuple(sorted(ids))
    degree = secagg.graph_degree(n)
    setup = secagg.RoundSetup(
        round_id=round_id,
        cohort=cohort,
        seed=secagg.new_round_seed(),
        degree=degree,
        threshold=secagg.share_threshold(degree),
        min_survivors=min(survivors, n),
        quantization=quantization,
        vector_size=len(vectors[0]),
    )
    advertised = {}
    for agent_id, session in sessions.items():
        c_pk, s_pk, signature = session.advertise()
        public = secagg.raw_public(session.identity)
        advertised[agent_id] = secagg.PeerKeys(agent_id, public, c_pk, s_pk, signature)
    graph = secagg.neighbours(n, setup.seed, degree)
    inbox: dict[str, dict[str, bytes]] = {agent_id: {} for agent_id in cohort}
    for index, agent_id in enumerate(cohort):
        peers = [advertised[cohort[j]] for j in graph[index]]
        for peer, blob in sessions[agent_id].share_keys(setup, peers).items():
            inbox[peer][agent_id] = blob
    out = []
    for agent_id, vector in zip(ids, vectors, strict=True):
        packed = sessions[agent_id].masked_input(cohort, inbox[agent_id], vector)
        out.append(unpack(packed, quantization.bits, setup.vector_size))
    return out


@dataclass
class Views:
    """The four views of the audited users (rows in ``users`` order) and what the audit learned on the way."""

    users: list[int]
    features: dict[str, NDArray[np.float32]]
    factors: NDArray[np.float64]


def compute_views(
    federation: Federation, run: SettingRun, users: Sequence[int], *, progress: Status | None = None
) -> Views:
    """Views (a)–(d) of every user in ``users`` as one more round from the kept model (see the module docstring)."""
    config, mechanism = federation.config, run.mechanism
    privacy = config.privacy
    rng = np.random.default_rng([config.seed, 4])
    round_id = config.federated.rounds
    size = run.shared.size
    all_users = sorted(federation.split.users)
    n_round = min(config.cohort, len(all_users))
    survivors = config.min_survivors(n_round)
    quantization = config.quantization(n_round)
    scorer = FirstStageScorer(run.shared, federation.text_vectors)

    outcomes: dict[int, LocalOutcome] = {}

    def outcome_of(user: int) -> LocalOutcome:
        if user not in outcomes:
            private = run.privates.get(user, PrivateParams.init(run.shared.dim))
            outcomes[user] = federation.local(run.shared, private, user, round_id, run.probe)
        return outcomes[user]

    def clean(user: int) -> NDArray[np.float64]:
        o = outcome_of(user)
        return contribution(
            mechanism, o.delta, o.n_examples, privacy, survivors=survivors, factor=o.factor, noise=False
        )

    n = len(users)
    raw = np.zeros((n, size), dtype=np.float32)
    sent = np.zeros((n, size + 1), dtype=np.float32)
    coordinator = np.zeros((n, 2 * size + 1), dtype=np.float32)
    suggestions = np.zeros((n, federation.split.n_items), dtype=np.float32)
    factors = np.ones(n)
    noised: list[NDArray[np.float64]] = []
    for row, user in enumerate(users):
        o = outcome_of(user)
        raw[row] = o.delta
        factors[row] = o.factor
        x = contribution(mechanism, o.delta, o.n_examples, privacy, survivors=survivors, factor=o.factor, rng=rng)
        noised.append(x)
        if not mechanism.secure:
            sent[row] = np.concatenate([o.delta, [o.n_examples]]) if not mechanism.clip else x
        private = run.privates.get(user, PrivateParams.init(run.shared.dim))
        suggestions[row, scorer.top_k(federation.split.users[user].train, private, TOP_K)] = 1.0
        if progress is not None and (row + 1) % 200 == 0:
            progress(f"{mechanism.name}: local deltas {row + 1}/{n}")

    if mechanism.secure:
        order = np.random.default_rng([config.seed, 5]).permutation(n)
        for part, chunk in enumerate(np.array_split(order, math.ceil(n / n_round))):
            q = config.quantization(len(chunk))
            uploads = masked_uploads([noised[i] for i in chunk], q, config.min_survivors(len(chunk)), round_id + part)
            for i, upload in zip(chunk, uploads, strict=True):
                sent[i] = upload.astype(np.float32)
        if progress is not None:
            progress(f"{mechanism.name}: masked uploads of {n} agents")

    # the difference attack: S has cohort − 1 members, drawn once; u ∈ S is swapped for a fixed outsider
    pick = np.random.default_rng([config.seed, 6]).permutation(all_users)
    members, outsider = [int(u) for u in pick[: n_round - 1]], int(pick[n_round - 1])
    member_set = set(members)
    clean_members = np.sum([clean(u) for u in members], axis=0)
    share = privacy.noise_share(survivors) if mechanism.noise else 0.0
    base = run.shared.to_vector()
    for row, user in enumerate(users):
        others = clean_members - clean(user) + clean(outsider) if user in member_set else clean_members
        m = len(members)
        own = quantization.to_float(quantization.integers(noised[row])) if mechanism.secure else noised[row]
        with_user = others + own + (rng.normal(0.0, share * math.sqrt(m), size=size + 1) if share else 0.0)
        without = others + (rng.normal(0.0, share * math.sqrt(m), size=size + 1) if share else 0.0)
        published = published_after(run.server, base, mean_delta(mechanism, with_user, privacy)) - published_after(
            run.server, base, mean_delta(mechanism, without, privacy)
        )
        seen = with_user - without if mechanism.secure else sent[row]
        coordinator[row] = np.concatenate([seen, published])
    features = {"a": raw, "b": sent, "c": coordinator, "d": suggestions}
    return Views(list(users), features, factors)
