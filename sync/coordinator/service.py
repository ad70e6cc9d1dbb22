"""The coordinator service: one object the ASGI app (:mod:`sync.coordinator.app`) calls, thread-safe under one lock.
No HTTP here: the app turns requests into calls and :class:`Rejection` into 4xx answers with a machine-readable
reason.

:class:`Coordinator` wires three parts: the state (:mod:`.storage`: SQLite or PostgreSQL), the published versions
(:mod:`.publishing`) and the round state machine (:mod:`.rounds`); it authenticates agents itself. Each call (one
HTTP request) runs in one transaction of the store: what a request accepts commits with it, a request refused with a
:class:`Rejection` keeps what it did before the refusal (a stage closed by its tick), and any other error rolls the
whole request back (and this process's partial sum with it). So a coordinator killed at any moment restarts where it
was: an open round resumes with its stored deadlines (a stage whose deadline passed meanwhile closes at the first
tick), the published shared vectors — content-addressed, signed — are never rewritten, and only the masked inputs
this process held since its last checkpoint are lost: their agents become dropouts, which secure aggregation
recovers (:mod:`sync.coordinator.shards`). Memory holds one partial sum, O(vector length).

Replicas (PostgreSQL only; a SQLite file is served by one process, which leads): any number of processes serve one
database and all answer agents. The one holding a PostgreSQL advisory lock leads — it alone opens rounds, closes
stages, unmasks, applies the server optimizer and signs; the others try to take the lock about once a second
(:meth:`Coordinator.is_leader`), so when the leader dies another takes over within a few seconds and carries on the
open round from the database. Every replica LISTENs: stage changes wake its long polls at once, and a replica that
takes the last answer of a stage NOTIFYs the leader.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.publishing import InitialVector, Publisher
from sync.coordinator.rejection import Rejection
from sync.coordinator.rounds import LEADER_CHANNEL, ROUND_CHANNEL, Rounds, StageMoved
from sync.coordinator.shards import Shard
from sync.coordinator.storage import CoordinatorStore, Published, open_store, parse_db
from sync.protocol import secagg
from sync.protocol.wire import request_message


def check_self_signed(public_key: bytes, agent_id: str, signature: bytes, message: bytes) -> None:
    """A registration's key, id and signature agree: a 32-byte Ed25519 key, the id derived from it, and a signature
    by that key over ``message``; otherwise a :class:`Rejection` (400 or 401) that says which."""
    if len(public_key) != 32:
        raise Rejection(400, "invalid_public_key", "an Ed25519 public key is 32 bytes")
    if secagg.agent_id_for(public_key) != agent_id:
        raise Rejection(400, "agent_id_mismatch", "x-agent-id must be the id derived from the public key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature as error:
        raise Rejection(401, "bad_signature", "registration must be signed by the key registered") from error


LEAD_RETRY_S = 1.0
"""How often a replica that does not lead tries to take the leader's lock (and the leader checks it still holds it)."""


class Coordinator:
    """Agents, rounds, cohorts, deadlines, relay, aggregation and publication; thread-safe (one lock)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        initial: InitialVector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the state where ``config.db`` points (a SQLite file or a PostgreSQL URL, see
        :func:`sync.coordinator.storage.parse_db`); ``initial`` (or what it makes) is published as version 0 if
        nothing is yet. Raises ValueError for a ``db`` of no known form, ConnectionError for an unreachable server."""
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.on_change: Callable[[], None] = lambda: None
        self.replicated = parse_db(config.db).kind == "postgresql"
        """Whether other processes may serve the same state (PostgreSQL): then only the leader moves rounds."""
        self.shard = Shard()
        self._leader = not self.replicated
        self._lead_checked = -LEAD_RETRY_S
        self._lead_lock = threading.Lock()
        self.state: CoordinatorStore = open_store(config.db)
        if not self.replicated and not self.state.claim_serving():
            where = self.state.describe()
            self.state.close()
            # a SQLite file has no leader election: one process serves it (replicas need PostgreSQL)
            raise ValueError(f"another agent-coordinator already serves {where}: one process per SQLite file")
        with self.state.transaction():  # the signing key and version 0 are written together, or neither
            self.publisher = Publisher(self.state, clock)
            self.vector_size = self.publisher.ensure_initial(initial, config.vector_size, phi_size=config.phi_size)
        self.rounds = self._new_rounds()
        if self.replicated:
            self.state.listen([ROUND_CHANNEL, LEADER_CHANNEL], self._notified)

    def _new_rounds(self) -> Rounds:
        return Rounds(
            self.config,
            self.state,
            self.publisher,
            self.vector_size,
            clock=self.clock,
            notify=self._notify,
            shard=self.shard,
            is_leader=self.is_leader,
            wake_leader=lambda: self.state.notify(LEADER_CHANNEL, "settle"),
        )

    def _notify(self) -> None:
        self.on_change()

    # -- replicas ------------------------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this process leads (always, over SQLite); among PostgreSQL replicas the answer is refreshed at most
        every :data:`LEAD_RETRY_S` seconds (a deposed leader's stale belief is harmless: every stage change is a
        compare-and-set)."""
        if not self.replicated:
            return True
        with self._lead_lock:  # request threads and the listener thread ask
            now = time.monotonic()
            if now - self._lead_checked >= LEAD_RETRY_S:
                self._lead_checked = now
                self._leader = self.state.try_lead()
            return self._leader

    def _notified(self, channel: str, payload: str) -> None:
        """A notification from a replica (listener thread): wake the long polls; the leader looks at the open round
        when asked."""
        try:
            self.on_change()
            if channel == LEADER_CHANNEL and self.is_leader():
                self.tick()
        except Exception:  # the listener must outlive any one request; the ticker retries
            pass

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        """One request: under the lock, in one transaction. A Rejection commits what was done before it (a stage
        closed by the tick); any other error rolls everything back and drops what the round logic holds in memory."""
        with self.lock:
            refused: Rejection | None = None
            saved = self.shard.snapshot()
            try:
                with self.state.transaction():
                    try:
                        yield
                    except Rejection as rejection:
                        refused = rejection
            except StageMoved as moved:  # another leader moved the round: everything this request did is undone
                self.shard.restore(saved)
                self.rounds = self._new_rounds()
                raise Rejection(409, "wrong_stage", str(moved)) from moved
            except BaseException:
                self.shard.restore(saved)  # the partial sum must not hold an input the rollback took back
                self.rounds = self._new_rounds()
                raise
            if refused is not None:
                raise refused

    def close(self) -> None:
        """Release the state's connections."""
        self.state.close()

    # -- published vectors ---------------------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The coordinator's Ed25519 public key (raw), which signs every published shared vector."""
        return self.publisher.public_key

    def latest(self) -> Published:
        """The newest published shared vector's metadata."""
        return self.publisher.latest()

    def blob(self, version: int) -> bytes:
        """The bytes (float32, little-endian) of a published version."""
        return self.publisher.blob(version)

    # -- authentication ------------------------------------------------------------------------------------------

    def register(self, public_key: bytes, agent_id: str, nonce: int, signature: bytes, message: bytes) -> str:
        """Register an Ed25519 key (signed by itself); idempotent. Returns the agent id."""
        check_self_signed(public_key, agent_id, signature, message)
        with self._request():
            known = self.state.agent(agent_id)
            if known is not None:
                if nonce <= known[1]:
                    raise Rejection(409, "replayed_nonce", "nonce not greater than the last one seen")
                self.state.set_nonce(agent_id, nonce)
            else:
                self.state.add_agent(agent_id, public_key, nonce, self.clock())
        return agent_id

    def authenticate(self, agent_id: str, nonce: int, signature: bytes, method: str, path: str, body: bytes) -> None:
        """Check a signed request and consume its nonce; raises Rejection (401 / 409).

        A read (GET) is checked the same way — its nonce must be above the last one consumed — but consumes nothing
        and writes nothing, outside any transaction: reads do not contend for the database. Replaying a read gives
        its owner's data back to whoever replays it, which the signed request already carried to them. A write is
        refused on a replayed nonce, and each write is applied at most once per (round, stage, agent) whatever the
        nonce (a second one is 409 ``already_submitted``)."""
        if method in ("GET", "HEAD"):
            with self.lock:
                self._verify(self.state.agent(agent_id), agent_id, nonce, signature, method, path, body)
            return
        with self._request():
            self._verify(self.state.agent(agent_id), agent_id, nonce, signature, method, path, body)
            self.state.set_nonce(agent_id, nonce)

    @staticmethod
    def _verify(
        known: tuple[bytes, int] | None,
        agent_id: str,
        nonce: int,
        signature: bytes,
        method: str,
        path: str,
        body: bytes,
    ) -> tuple[bytes, int]:
        """The agent's (key, last nonce) if the request is signed by it with a nonce above the last; else Rejection."""
        if known is None:
            raise Rejection(401, "unknown_agent", f"agent {agent_id!r} is not registered")
        public_key, last_nonce = known
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, request_message(method, path, nonce, body))
        except InvalidSignature as error:
            raise Rejection(401, "bad_signature", "the request signature does not verify") from error
        if nonce <= last_nonce:
            raise Rejection(409, "replayed_nonce", "nonce not greater than the last one seen from this agent")
        return known

    # -- rounds (see sync.coordinator.rounds) --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /status shows: the published version, the open (else the newest) round, and this process (its shard id
        and whether it leads)."""
        with self._request():
            self.rounds.tick()
            row = self.state.open_round()
            latest = self.publisher.latest()
            body: dict[str, Any] = {"published_version": latest.version, "published_sha256": latest.sha256}
            body["replica"] = {"shard": self.shard.shard_id, "leader": self.is_leader()}
            rid = int(row["round_id"]) if row is not None else self.state.last_round_id()
            body["round"] = self.rounds.round_info(rid) if rid is not None else None
            history = self.publisher.quality_history()
            if self.rounds.eval_plan is not None or history:  # federated evaluation: the last 20 rounds' quality
                body["evaluation"] = {"blend": self.publisher.blend_in_force(), "history": history[-20:]}
            return body

    def tick(self) -> None:
        """Every process: checkpoint this shard's partial sum when due. The leader: close the open round's stage if
        its deadline passed, everyone answered, or its masked-input stage is closing."""
        leads = self.is_leader()
        round_id = self.shard.round_id
        if round_id is not None and self.shard.dirty(round_id):  # else nothing to write: no transaction
            with self._request():
                self.rounds.follow()
        if leads:
            with contextlib.suppress(Rejection), self._request():  # a round another leader moved: nothing to do
                self.rounds.tick()
                self.rounds.settle()

    def current_round(self) -> dict[str, Any]:
        """The open round, else the newest one with when the next opens (rounds open on the schedule, by the
        leader's tick: :meth:`sync.coordinator.rounds.Rounds.open_scheduled`)."""
        with self._request():
            return self.rounds.current_round()

    def checkin(self, agent_id: str, base_version: int) -> dict[str, Any]:
        """An agent ready to take part: admitted to the round in advertise, told when to come back, or told to fetch
        the newest version first (:meth:`sync.coordinator.rounds.Rounds.checkin`)."""
        with self._request():
            return self.rounds.checkin(agent_id, base_version)

    def round_info(self, round_id: int) -> dict[str, Any]:
        """Public facts about a round (what /status and the long poll show)."""
        with self._request():
            return self.rounds.round_info(round_id)

    def advertise(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, signature: bytes) -> None:
        """Join the round's cohort with signed ephemeral keys."""
        with self._request():
            self.rounds.advertise(round_id, agent_id, c_pk, s_pk, signature)

    def setup(self, round_id: int, agent_id: str) -> tuple[secagg.RoundSetup, list[secagg.PeerKeys]]:
        """The round setup and this agent's neighbours' keys (from the share-keys stage on)."""
        with self._request():
            return self.rounds.setup(round_id, agent_id)

    def post_shares(self, round_id: int, agent_id: str, shares: dict[str, bytes]) -> None:
        """Store an agent's encrypted shares, exactly one per neighbour."""
        with self._request():
            self.rounds.post_shares(round_id, agent_id, shares)

    def inbox(self, round_id: int, agent_id: str) -> tuple[list[str], dict[str, bytes]]:
        """U2 and the shares addressed to this agent by members of U2 (from the masked-input stage on)."""
        with self._request():
            return self.rounds.inbox(round_id, agent_id)

    def post_input(self, round_id: int, agent_id: str, body: bytes) -> None:
        """Add a masked input to the running sum (one transaction with the 'sent' mark)."""
        with self._request():
            self.rounds.post_input(round_id, agent_id, body)

    def survivors(self, round_id: int, agent_id: str) -> tuple[list[str], list[str]]:
        """(U2, U3) for the unmask stage."""
        with self._request():
            return self.rounds.survivors(round_id, agent_id)

    def post_unmask(self, round_id: int, agent_id: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares after checking it never reveals both secrets of one peer."""
        with self._request():
            self.rounds.post_unmask(round_id, agent_id, b_shares, s_shares)

    def unmasked_sum(self, round_id: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The exact integer sum of a finished round (for tests and audits of correctness)."""
        with self._request():
            return self.rounds.unmasked_sum(round_id)
