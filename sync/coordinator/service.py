"""The coordinator service: one object the ASGI app (:mod:`sync.coordinator.app`) calls, thread-safe under one lock.
No HTTP here: the app turns requests into calls and :class:`Rejection` into 4xx answers with a machine-readable
reason.

:class:`Coordinator` wires three parts: the state (:mod:`.storage`: SQLite or PostgreSQL), the published versions
(:mod:`.publishing`) and the round state machine (:mod:`.rounds`); it authenticates agents itself. Each call (one
HTTP request) runs in one transaction of the store: what a request accepts — including the running sum of masked
inputs — commits with it, a request refused with a :class:`Rejection` keeps what it did before the refusal (a stage
closed by its tick), and any other error rolls the whole request back. So a coordinator killed at any moment
restarts where it was: an open round resumes with its stored deadlines (a stage whose deadline passed meanwhile
closes at the first tick) and the published shared vectors — content-addressed, signed — are never rewritten. Memory
holds one running sum, O(vector length).
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
from sync.coordinator.rounds import Rounds
from sync.coordinator.storage import CoordinatorStore, Published, open_store
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
        self.state: CoordinatorStore = open_store(config.db)
        if not self.state.claim_serving():
            where = self.state.describe()
            self.state.close()
            # the round logic keeps the running sum in memory between inputs: two processes would each miss the
            # other's inputs, so one process per database until replicas with one leader exist (issue 14, item 2)
            raise ValueError(
                f"another agent-coordinator already serves {where}: one process per database (one whose machine "
                "died is let go by PostgreSQL within about 30 s)"
            )
        with self.state.transaction():  # the signing key and version 0 are written together, or neither
            self.publisher = Publisher(self.state, clock)
            self.vector_size = self.publisher.ensure_initial(initial, config.vector_size, phi_size=config.phi_size)
        self.rounds = self._new_rounds()

    def _new_rounds(self) -> Rounds:
        return Rounds(self.config, self.state, self.publisher, self.vector_size, clock=self.clock, notify=self._notify)

    def _notify(self) -> None:
        self.on_change()

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        """One request: under the lock, in one transaction. A Rejection commits what was done before it (a stage
        closed by the tick); any other error rolls everything back and drops what the round logic holds in memory."""
        with self.lock:
            refused: Rejection | None = None
            try:
                with self.state.transaction():
                    try:
                        yield
                    except Rejection as rejection:
                        refused = rejection
            except BaseException:
                self.rounds = self._new_rounds()  # its running sum may hold an input the rollback took back
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
        """Check a signed request and consume its nonce; raises Rejection (401 / 409)."""
        with self._request():
            known = self.state.agent(agent_id)
            if known is None:
                raise Rejection(401, "unknown_agent", f"agent {agent_id!r} is not registered")
            public_key, last_nonce = known
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(
                    signature, request_message(method, path, nonce, body)
                )
            except InvalidSignature as error:
                raise Rejection(401, "bad_signature", "the request signature does not verify") from error
            if nonce <= last_nonce:
                raise Rejection(409, "replayed_nonce", "nonce not greater than the last one seen from this agent")
            self.state.set_nonce(agent_id, nonce)

    # -- rounds (see sync.coordinator.rounds) --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What /status shows: the published version and the open (else the newest) round."""
        with self._request():
            self.rounds.tick()
            row = self.state.open_round()
            latest = self.publisher.latest()
            body: dict[str, Any] = {"published_version": latest.version, "published_sha256": latest.sha256}
            rid = int(row["round_id"]) if row is not None else self.state.last_round_id()
            body["round"] = self.rounds.round_info(rid) if rid is not None else None
            return body

    def tick(self) -> None:
        """Close the open round's stage if its deadline passed."""
        with self._request():
            self.rounds.tick()

    def current_round(self) -> dict[str, Any]:
        """The open round, opening a new one (advertise stage) when none is open."""
        with self._request():
            return self.rounds.current_round()

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
