"""Secure aggregation (Bonawitz et al., CCS 2017) on the sparse SecAgg+ graph (Bell et al., CCS 2020), pure logic.

A round's cohort ``U1`` is a sorted list of agent ids; agent ``i`` (0-based) uses the Shamir point ``i + 1``.
From the round seed every party derives the same random k-regular Harary graph: a seeded permutation places the
agents on a ring and each is joined to the ``k / 2`` nearest on either side. ``k`` grows like ``6 · log2 n``
(the complete graph for small cohorts). Each agent shares its self-mask seed ``b_u`` and its mask key ``s_sk_u``
among its neighbours, threshold ``t = ⌊k / 2⌋ + 1`` — a strict majority, so a neighbourhood that never reveals both
shares of a peer can never hand out both of its secrets.

Stages (the coordinator relays everything): advertise signed round keys → share keys (encrypted Shamir shares
to each neighbour) → masked input ``y_u = q(x_u) + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)`` mod 2^bits →
unmask (each survivor reveals, per neighbour, the ``b`` share if it survived ``U3`` or the ``s_sk`` share if it
dropped after ``U2``; never both). :class:`AgentSession` is one agent's side; :func:`unmasking_vector` is what the
coordinator subtracts from the running sum after reconstructing the secrets.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from numpy.typing import NDArray

from sync.errors import ProtocolError
from sync.protocol import shamir
from sync.protocol.masking import Quantization, UIntArray, add_prg_mask, derive_key, pack, prg_mask

AGENT_ID_LEN = 16


def raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agent_id_for(identity_public: bytes) -> str:
    """An agent's id: the first 16 hex digits of the SHA-256 of its Ed25519 public key."""
    return hashlib.sha256(identity_public).hexdigest()[:AGENT_ID_LEN]


def round_keys_message(round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """The bytes an agent signs to advertise its round keys."""
    return f"persona-round-keys|{round_id}|{agent_id}|".encode() + c_pk + s_pk


def graph_degree(n: int) -> int:
    """Neighbours per agent for a cohort of ``n``: even, about 6·log2 n, at most n − 1 (the complete graph)."""
    if n <= 1:
        return 0
    return min(n - 1, 2 * math.ceil(3 * math.log2(n)))


def share_threshold(degree: int) -> int:
    """Shares needed to recover one agent's secret: a strict majority of its neighbours."""
    return degree // 2 + 1


@lru_cache(maxsize=8)
def neighbours(cohort_size: int, seed: bytes, degree: int) -> tuple[tuple[int, ...], ...]:
    """The random k-regular Harary graph of the round: for each cohort index, its neighbours' indices (sorted).

    Computed once per round and cached (the graph is a public function of the round's seed): the coordinator
    consults it on every setup and share request, and a simulation runs every agent of a cohort in one process.
    """
    n = cohort_size
    if degree >= n - 1:
        return tuple(tuple(j for j in range(n) if j != i) for i in range(n))
    order_keys = prg_mask(seed, n, 32)
    ring = np.argsort(order_keys, kind="stable")  # ring[p] = the agent at ring position p
    position = np.empty(n, dtype=np.int64)
    position[ring] = np.arange(n)
    half = degree // 2
    offsets = np.array([d for d in range(-half, half + 1) if d != 0], dtype=np.int64)
    graph = np.sort(ring[(position[:, None] + offsets[None, :]) % n], axis=1)
    return tuple(tuple(row) for row in graph.tolist())


def cohort_index(cohort: Sequence[str]) -> dict[str, int]:
    """Each cohort member's 0-based index (its Shamir point is the index + 1)."""
    return {agent: i for i, agent in enumerate(cohort)}


@lru_cache(maxsize=8)
def shared_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    """``ids`` itself, or an equal tuple seen before: one copy of a round's id list per process.

    A round's cohort, U2 and U3 are lists of up to ``n`` ids that every agent receives; where many agents share one
    process (the simulation, the benchmarks) keeping one copy per agent made memory grow like n² (≈ 2 MB an agent at
    10,000). Equality is by content, so what each agent checks is unchanged; the lookup hashes the tuple, O(n).
    """
    return ids


@lru_cache(maxsize=8)
def id_set(ids: tuple[str, ...]) -> frozenset[str]:
    """The ids of a (shared) id list as a frozenset, built once per process for equal lists (see :func:`shared_ids`)."""
    return frozenset(ids)


@lru_cache(maxsize=8)
def _cohort_facts(cohort: tuple[str, ...]) -> tuple[bool, dict[str, int]]:
    """(sorted without duplicates, each member's index) of a cohort: computed once per process for equal cohorts.
    The index is shared: read it, never change it."""
    return list(cohort) == sorted(set(cohort)), cohort_index(cohort)


@dataclass(frozen=True)
class PeerKeys:
    """A neighbour's identity key and signed round keys, as relayed by the coordinator."""

    agent_id: str
    identity_key: bytes
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def verify(self, round_id: int) -> None:
        """Check the id matches the identity key and the round keys are signed by it."""
        if agent_id_for(self.identity_key) != self.agent_id:
            raise ProtocolError(f"agent {self.agent_id}: identity key does not match its id")
        if not _signature_valid(
            self.identity_key, round_keys_message(round_id, self.agent_id, self.c_pk, self.s_pk), self.signature
        ):
            raise ProtocolError(f"agent {self.agent_id}: round keys are not signed by its identity key")


@lru_cache(maxsize=8192)
def _signature_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification, memoised on the exact bytes it is a pure function of.

    Every neighbour of an agent checks the same signed round keys; where many agents share one process (the
    simulation, the benchmarks) the answer for identical bytes is computed once instead of about 6·log2 n times.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class RoundSetup:
    """What the coordinator announces when the advertise stage closes."""

    round_id: int
    cohort: tuple[str, ...]  # U1, sorted
    seed: bytes
    degree: int
    threshold: int  # Shamir threshold per neighbourhood
    min_survivors: int  # never unmasked with fewer
    quantization: Quantization
    vector_size: int  # including the weight element


@dataclass
class AgentSession:
    """One agent's side of one round: its ephemeral keys, secrets, received shares and what it revealed."""

    agent_id: str
    identity: Ed25519PrivateKey
    round_id: int
    c_sk: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    s_sk: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    setup: RoundSetup | None = None
    peers: dict[str, PeerKeys] = field(default_factory=dict)  # my neighbours in U1
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # from U2 neighbours: (b, s_sk) shares
    u2: frozenset[str] | None = None
    revealed: dict[str, str] = field(default_factory=dict)  # peer -> "b" or "s"
    share_keys_by_peer: dict[str, bytes] = field(default_factory=dict, repr=False)  # share-encryption keys

    def advertise(self) -> tuple[bytes, bytes, bytes]:
        """(c_pk, s_pk, signature) for the advertise stage."""
        c_pk, s_pk = raw_public(self.c_sk), raw_public(self.s_sk)
        return c_pk, s_pk, self.identity.sign(round_keys_message(self.round_id, self.agent_id, c_pk, s_pk))

    def share_keys(self, setup: RoundSetup, peers: Sequence[PeerKeys]) -> dict[str, bytes]:
        """Verify the cohort, the graph and each neighbour's keys; return an encrypted share pair per neighbour."""
        if setup.round_id != self.round_id:
            raise ProtocolError(f"setup is for round {setup.round_id}, not {self.round_id}")
        cohort = setup.cohort
        well_formed, index = _cohort_facts(tuple(cohort))
        if not well_formed or self.agent_id not in index:
            raise ProtocolError("the cohort list is not sorted, has duplicates, or leaves this agent out")
        if setup.degree != graph_degree(len(cohort)) or setup.threshold != share_threshold(setup.degree):
            raise ProtocolError("the round's graph degree or threshold is not the protocol's")
        if setup.min_survivors < setup.threshold:
            raise ProtocolError("the round would unmask below the share threshold")
        q = setup.quantization
        if not 2 <= q.bits <= 32 or q.levels < 1 or q.levels * len(cohort) > (1 << (q.bits - 1)) - 1:
            raise ProtocolError(f"the round's quantization ({q.bits} bits, {q.levels} levels) could wrap its sum")
        expected = {cohort[j] for j in neighbours(len(cohort), setup.seed, setup.degree)[index[self.agent_id]]}
        if {p.agent_id for p in peers} != expected or len(peers) != len(expected):
            raise ProtocolError("the neighbours relayed are not this agent's neighbours in the round graph")
        for peer in peers:
            peer.verify(self.round_id)
        self.setup = replace(setup, cohort=shared_ids(tuple(cohort)))  # one copy of the cohort per process
        self.peers = {p.agent_id: p for p in peers}
        order = sorted(self.peers)
        xs = [index[v] + 1 for v in order]
        b_shares = shamir.split(self.self_seed, xs, setup.threshold)
        s_raw = self.s_sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        s_shares = shamir.split(s_raw, xs, setup.threshold)
        out: dict[str, bytes] = {}
        for v, b_share, s_share in zip(order, b_shares, s_shares, strict=True):
            key = self._share_key(v)
            nonce = os.urandom(12)
            plain = self.agent_id.encode() + v.encode() + b_share + s_share
            out[v] = nonce + AESGCM(key).encrypt(nonce, plain, str(self.round_id).encode())
        return out

    def masked_input(self, u2: Sequence[str], inbox: Mapping[str, bytes], contribution: NDArray[np.floating]) -> bytes:
        """Decrypt the shares received from U2 neighbours and return the packed masked vector."""
        setup = self._require_setup()
        survivors = id_set(shared_ids(tuple(u2)))
        if not survivors <= id_set(setup.cohort) or self.agent_id not in survivors:
            raise ProtocolError("U2 is not a subset of the cohort containing this agent")
        if len(survivors) < setup.min_survivors:
            raise ProtocolError(f"only {len(survivors)} agents shared keys; the round needs {setup.min_survivors}")
        if set(inbox) != survivors & set(self.peers):
            raise ProtocolError("the inbox does not hold exactly one share from each neighbour in U2")
        for v, blob in inbox.items():
            try:
                plain = AESGCM(self._share_key(v)).decrypt(blob[:12], blob[12:], str(self.round_id).encode())
            except InvalidTag as error:
                raise ProtocolError(f"share from {v} fails authentication") from error
            n = AGENT_ID_LEN
            if plain[:n].decode() != v or plain[n : 2 * n].decode() != self.agent_id:
                raise ProtocolError(f"share from {v} is addressed to someone else")
            rest = plain[2 * n :]
            self.received[v] = (rest[: shamir.SHARE_BYTES], rest[shamir.SHARE_BYTES :])
        self.u2 = survivors
        values = np.asarray(contribution, dtype=np.float64)
        if values.shape != (setup.vector_size,):
            raise ValueError(f"contribution has shape {values.shape}, expected ({setup.vector_size},)")
        q = setup.quantization
        y, _clamped = q.encode(values)
        add_prg_mask(y, self.self_seed)
        for v in sorted(survivors & set(self.peers)):
            seed = derive_key(
                self.s_sk, self.peers[v].s_pk, purpose="mask", round_id=self.round_id, a=self.agent_id, b=v
            )
            add_prg_mask(y, seed, subtract=self.agent_id > v)
        return pack(y & q.modulus_mask, q.bits)

    def unmask(self, u2: Sequence[str], u3: Sequence[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """(b shares of surviving neighbours, s_sk shares of neighbours that dropped after sharing keys)."""
        setup = self._require_setup()
        if self.u2 is None or id_set(shared_ids(tuple(u2))) != self.u2:
            raise ProtocolError("U2 changed between the masked-input and unmask stages")
        survived = id_set(shared_ids(tuple(u3)))
        if not survived <= self.u2 or self.agent_id not in survived:
            raise ProtocolError("U3 is not a subset of U2 containing this agent (survivor sets may only shrink)")
        if len(survived) < setup.min_survivors:
            raise ProtocolError(f"only {len(survived)} survivors; refusing to unmask below {setup.min_survivors}")
        b_out: dict[str, bytes] = {}
        s_out: dict[str, bytes] = {}
        for v, (b_share, s_share) in self.received.items():
            kind = "b" if v in survived else "s"
            if self.revealed.get(v, kind) != kind:
                raise ProtocolError(f"asked for both secrets of {v}; refusing")
            self.revealed[v] = kind
            (b_out if kind == "b" else s_out)[v] = b_share if kind == "b" else s_share
        return b_out, s_out

    def _share_key(self, peer: str) -> bytes:
        """The key encrypting the shares exchanged with ``peer`` (derived once, kept for the round)."""
        key = self.share_keys_by_peer.get(peer)
        if key is None:
            key = derive_key(
                self.c_sk, self.peers[peer].c_pk, purpose="share-enc", round_id=self.round_id, a=self.agent_id, b=peer
            )
            self.share_keys_by_peer[peer] = key
        return key

    def _require_setup(self) -> RoundSetup:
        if self.setup is None:
            raise ProtocolError("stage out of order: no round setup yet")
        return self.setup


def new_round_seed() -> bytes:
    """32 random bytes: the seed of a round's graph."""
    return _secrets.token_bytes(32)


def unmasking_vector(
    setup: RoundSetup,
    u2: Sequence[str],
    u3: Sequence[str],
    s_pks: Mapping[str, bytes],
    b_shares: Mapping[str, Sequence[tuple[int, bytes]]],
    s_shares: Mapping[str, Sequence[tuple[int, bytes]]],
) -> UIntArray:
    """What to subtract from the sum of U3's masked inputs: their self masks, and the pairwise masks they share
    with neighbours that dropped after U2. Raises ProtocolError when a needed secret lacks ``threshold`` shares.
    """
    q = setup.quantization
    cohort = list(setup.cohort)
    index = cohort_index(cohort)
    graph = neighbours(len(cohort), setup.seed, setup.degree)
    survived, shared = set(u3), set(u2)
    total = np.zeros(setup.vector_size, dtype=np.uint32)
    for u in sorted(survived):
        shares = b_shares.get(u, ())
        if len(shares) < setup.threshold:
            raise ProtocolError(f"only {len(shares)} shares of {u}'s self-mask seed; need {setup.threshold}")
        add_prg_mask(total, shamir.combine(list(shares), setup.threshold))
    for v in sorted(shared - survived):
        shares = s_shares.get(v, ())
        if len(shares) < setup.threshold:
            raise ProtocolError(f"only {len(shares)} shares of dropped {v}'s mask key; need {setup.threshold}")
        s_sk = X25519PrivateKey.from_private_bytes(shamir.combine(list(shares), setup.threshold))
        for j in graph[index[v]]:
            w = cohort[j]
            if w not in survived:
                continue
            seed = derive_key(s_sk, s_pks[w], purpose="mask", round_id=setup.round_id, a=v, b=w)
            add_prg_mask(total, seed, subtract=w > v)  # w added +mask iff w < v
    return total & q.modulus_mask
