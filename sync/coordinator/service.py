"""The coordinator's round logic over its SQLite state. No HTTP here: the ASGI app (:mod:`sync.coordinator.app`)
turns requests into calls and :class:`Rejection` into 4xx answers with a machine-readable reason.

Everything accepted is written in the same SQLite transaction that accepts it (WAL mode), including the running
sum of masked inputs, so a coordinator killed at any moment restarts where it was: an open round resumes with
its stored deadlines (a stage whose deadline passed meanwhile closes at the first tick) and the published shared
vectors — content-addressed, signed — are never rewritten. Memory holds one running sum, O(vector length).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from models.firststage.federated import FedAdam
from sync.protocol import secagg
from sync.coordinator.config import CoordinatorConfig
from sync.errors import ProtocolError
from sync.protocol.masking import Quantization, unpack
from sync.protocol.privacy import weighted_mean
from sync.protocol.wire import TERMINAL, request_message, shared_message, stage_index

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, last_nonce INTEGER NOT NULL, registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY, stage TEXT NOT NULL, deadline REAL NOT NULL, seed BLOB NOT NULL,
    base_version INTEGER NOT NULL, setup TEXT, u2 TEXT, u3 TEXT, outcome TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    round_id INTEGER NOT NULL, agent_id TEXT NOT NULL, c_pk BLOB NOT NULL, s_pk BLOB NOT NULL, key_sig BLOB NOT NULL,
    shared_keys INTEGER NOT NULL DEFAULT 0, sent_input INTEGER NOT NULL DEFAULT 0, unmasked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (round_id, agent_id));
CREATE TABLE IF NOT EXISTS shares (
    round_id INTEGER NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL, ciphertext BLOB NOT NULL,
    PRIMARY KEY (round_id, sender, recipient));
CREATE INDEX IF NOT EXISTS shares_by_recipient ON shares (round_id, recipient);
CREATE TABLE IF NOT EXISTS reveals (
    round_id INTEGER NOT NULL, holder TEXT NOT NULL, owner TEXT NOT NULL, kind TEXT NOT NULL, share BLOB NOT NULL,
    PRIMARY KEY (round_id, holder, owner));
CREATE TABLE IF NOT EXISTS sums (round_id INTEGER PRIMARY KEY, total BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS published (
    version INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, signature BLOB NOT NULL, vector BLOB NOT NULL,
    round_id INTEGER, created REAL NOT NULL);
"""

STAGE_SECONDS = {
    "advertise": "advertise_s",
    "share_keys": "share_keys_s",
    "masked_input": "masked_input_s",
    "unmask": "unmask_s",
}


@lru_cache(maxsize=8)
def _parse_setup(round_id: int, text: str, seed: bytes) -> secagg.RoundSetup:
    """A round's stored setup (parsed once per round: every setup and share request consults it)."""
    doc = json.loads(text)
    q = doc["quantization"]
    return secagg.RoundSetup(
        round_id=round_id,
        cohort=tuple(doc["cohort"]),
        seed=seed,
        degree=doc["degree"],
        threshold=doc["threshold"],
        min_survivors=doc["min_survivors"],
        quantization=Quantization(bits=q["bits"], levels=q["levels"], bound=q["bound"]),
        vector_size=doc["vector_size"],
    )


@lru_cache(maxsize=8)
def _cohort_position(cohort: tuple[str, ...]) -> dict[str, int]:
    return secagg.cohort_index(cohort)


class Rejection(Exception):
    """A request the coordinator refuses: HTTP ``status`` and a machine-readable ``reason``."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Published:
    """One published shared vector."""

    version: int
    sha256: str
    signature: bytes
    round_id: int | None


class Coordinator:
    """Rounds, cohorts, deadlines, relay, aggregation and publication; thread-safe (one lock)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        initial: np.ndarray[Any, np.dtype[np.float32]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the state in ``config.db``; ``initial`` is published as version 0 if nothing is yet."""
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.on_change: Callable[[], None] = lambda: None
        config.db.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(config.db, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.signing_key = self._load_signing_key()
        self.vector_size = self._init_published(initial)
        self._sum: np.ndarray[Any, np.dtype[np.uint32]] | None = None
        self._sum_round: int | None = None

    # -- state helpers -------------------------------------------------------------------------------------------

    def _load_signing_key(self) -> Ed25519PrivateKey:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'signing_key'").fetchone()
        if row is not None:
            return Ed25519PrivateKey.from_private_bytes(bytes(row[0]))
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self.db.execute("INSERT INTO meta (key, value) VALUES ('signing_key', ?)", (raw,))
        return key

    @property
    def public_key(self) -> bytes:
        """The coordinator's Ed25519 public key (raw), which signs every published shared vector."""
        return secagg.raw_public(self.signing_key)

    def _init_published(self, initial: np.ndarray[Any, np.dtype[np.float32]] | None) -> int:
        row = self.db.execute("SELECT vector FROM published ORDER BY version DESC LIMIT 1").fetchone()
        if row is not None:
            return len(row[0]) // 4
        if initial is None:
            if self.config.vector_size <= 0:
                raise ValueError("nothing is published yet: give an initial vector (--init-shared) or --vector-size")
            initial = np.zeros(self.config.vector_size, dtype=np.float32)
        self._publish(np.asarray(initial, dtype="<f4").ravel(), None)
        return int(initial.size)

    def _publish(self, vector: np.ndarray[Any, np.dtype[Any]], round_id: int | None) -> Published:
        blob = np.asarray(vector, dtype="<f4").tobytes()
        digest = hashlib.sha256(blob).hexdigest()
        row = self.db.execute("SELECT COALESCE(MAX(version), -1) FROM published").fetchone()
        version = int(row[0]) + 1
        signature = self.signing_key.sign(shared_message(version, digest))
        self.db.execute(
            "INSERT INTO published (version, sha256, signature, vector, round_id, created) VALUES (?, ?, ?, ?, ?, ?)",
            (version, digest, signature, blob, round_id, self.clock()),
        )
        return Published(version, digest, signature, round_id)

    def latest(self) -> Published:
        """The newest published shared vector's metadata."""
        row = self.db.execute(
            "SELECT version, sha256, signature, round_id FROM published ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return Published(int(row[0]), str(row[1]), bytes(row[2]), row[3])

    def blob(self, version: int) -> bytes:
        """The bytes (float32, little-endian) of a published version."""
        row = self.db.execute("SELECT vector FROM published WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise Rejection(404, "unknown_version", f"no published version {version}")
        return bytes(row[0])

    def _tx(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    # -- authentication ------------------------------------------------------------------------------------------

    def register(self, public_key: bytes, agent_id: str, nonce: int, signature: bytes, message: bytes) -> str:
        """Register an Ed25519 key (signed by itself); idempotent. Returns the agent id."""
        if len(public_key) != 32:
            raise Rejection(400, "invalid_public_key", "an Ed25519 public key is 32 bytes")
        if secagg.agent_id_for(public_key) != agent_id:
            raise Rejection(400, "agent_id_mismatch", "x-agent-id must be the id derived from the public key")
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        except InvalidSignature as error:
            raise Rejection(401, "bad_signature", "registration must be signed by the key registered") from error
        with self.lock:
            row = self.db.execute("SELECT last_nonce FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
            if row is not None:
                if nonce <= row[0]:
                    raise Rejection(409, "replayed_nonce", "nonce not greater than the last one seen")
                self.db.execute("UPDATE agents SET last_nonce = ? WHERE agent_id = ?", (nonce, agent_id))
            else:
                self.db.execute(
                    "INSERT INTO agents (agent_id, public_key, last_nonce, registered_at) VALUES (?, ?, ?, ?)",
                    (agent_id, public_key, nonce, self.clock()),
                )
        return agent_id

    def authenticate(self, agent_id: str, nonce: int, signature: bytes, method: str, path: str, body: bytes) -> None:
        """Check a signed request and consume its nonce; raises Rejection (401 / 409)."""
        with self.lock:
            row = self.db.execute(
                "SELECT public_key, last_nonce FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                raise Rejection(401, "unknown_agent", f"agent {agent_id!r} is not registered")
            try:
                Ed25519PublicKey.from_public_bytes(bytes(row[0])).verify(
                    signature, request_message(method, path, nonce, body)
                )
            except InvalidSignature as error:
                raise Rejection(401, "bad_signature", "the request signature does not verify") from error
            if nonce <= int(row[1]):
                raise Rejection(409, "replayed_nonce", "nonce not greater than the last one seen from this agent")
            self.db.execute("UPDATE agents SET last_nonce = ? WHERE agent_id = ?", (nonce, agent_id))

    def identity_key(self, agent_id: str) -> bytes:
        """A registered agent's Ed25519 public key."""
        row = self.db.execute("SELECT public_key FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            raise Rejection(404, "unknown_agent", agent_id)
        return bytes(row[0])

    # -- rounds --------------------------------------------------------------------------------------------------

    def _active(self) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        try:
            row: sqlite3.Row | None = self.db.execute(
                "SELECT * FROM rounds WHERE stage NOT IN ('done', 'abandoned') ORDER BY round_id DESC LIMIT 1"
            ).fetchone()
        finally:
            self.db.row_factory = None
        return row

    def _round(self, round_id: int) -> sqlite3.Row:
        self.db.row_factory = sqlite3.Row
        try:
            row: sqlite3.Row | None = self.db.execute("SELECT * FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
        finally:
            self.db.row_factory = None
        if row is None:
            raise Rejection(404, "unknown_round", f"no round {round_id}")
        return row

    def current_round(self) -> dict[str, Any]:
        """The open round, opening a new one (advertise stage) when none is open."""
        with self.lock:
            self.tick()
            row = self._active()
            if row is None:
                last = self.db.execute("SELECT COALESCE(MAX(round_id), -1) FROM rounds").fetchone()[0]
                self.db.execute(
                    "INSERT INTO rounds (round_id, stage, deadline, seed, base_version, created)"
                    " VALUES (?, 'advertise', ?, ?, ?, ?)",
                    (
                        int(last) + 1,
                        self.clock() + self.config.advertise_s,
                        secagg.new_round_seed(),
                        self.latest().version,
                        self.clock(),
                    ),
                )
                self.on_change()
                row = self._active()
                assert row is not None
            return self.round_info(int(row["round_id"]))

    def round_info(self, round_id: int) -> dict[str, Any]:
        """Public facts about a round (what /status and the long poll show)."""
        with self.lock:
            row = self._round(round_id)
            members = self.db.execute(
                "SELECT COUNT(*), SUM(shared_keys), SUM(sent_input), SUM(unmasked) FROM members WHERE round_id = ?",
                (round_id,),
            ).fetchone()
            privacy = self.config.privacy
            info: dict[str, Any] = {
                "round_id": round_id,
                "stage": row["stage"],
                "deadline": row["deadline"],
                "seconds_left": max(0.0, row["deadline"] - self.clock()) if row["stage"] not in TERMINAL else 0.0,
                "base_version": row["base_version"],
                "vector_size": self.vector_size,
                "cohort_size": int(members[0]),
                "shared_keys": int(members[1] or 0),
                "masked_inputs": int(members[2] or 0),
                "unmask_responses": int(members[3] or 0),
                "max_cohort": self.config.max_cohort,
                "min_cohort": self.config.min_cohort,
                "privacy": {"clip": privacy.clip, "sigma": privacy.sigma, "weight_cap": privacy.weight_cap},
                "stage_seconds": {s: getattr(self.config, a) for s, a in STAGE_SECONDS.items()},
            }
            if row["outcome"]:
                info["outcome"] = json.loads(row["outcome"])
            return info

    def _require_stage(self, row: sqlite3.Row, stage: str) -> None:
        current = str(row["stage"])
        if current == stage:
            return
        if current == "abandoned":
            raise Rejection(409, "round_abandoned", f"round {row['round_id']} was abandoned")
        if stage_index(current) > stage_index(stage):
            raise Rejection(409, "late_submission", f"the {stage} stage of round {row['round_id']} is closed")
        raise Rejection(409, "wrong_stage", f"round {row['round_id']} is in stage {current}, not {stage}")

    def _open_round(self, round_id: int, stage: str) -> sqlite3.Row:
        self.tick()
        active = self._active()
        if active is None or int(active["round_id"]) != round_id:
            known = self.db.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
            if known is not None:
                self._require_stage(self._round(round_id), stage)
            raise Rejection(409, "wrong_round", f"round {round_id} is not the open round")
        row = self._round(round_id)
        self._require_stage(row, stage)
        return row

    def _member(self, round_id: int, agent_id: str) -> tuple[Any, ...]:
        row = self.db.execute(
            "SELECT c_pk, s_pk, key_sig, shared_keys, sent_input, unmasked FROM members"
            " WHERE round_id = ? AND agent_id = ?",
            (round_id, agent_id),
        ).fetchone()
        if row is None:
            raise Rejection(403, "not_in_cohort", f"agent {agent_id} is not in the cohort of round {round_id}")
        return tuple(row)

    def advertise(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, signature: bytes) -> None:
        """Join the round's cohort with signed ephemeral keys."""
        with self.lock:
            self._open_round(round_id, "advertise")
            if len(c_pk) != 32 or len(s_pk) != 32:
                raise Rejection(400, "invalid_public_key", "X25519 public keys are 32 bytes")
            peer = secagg.PeerKeys(agent_id, self.identity_key(agent_id), c_pk, s_pk, signature)
            try:
                peer.verify(round_id)
            except ProtocolError as error:
                raise Rejection(401, "bad_key_signature", str(error)) from error
            if self.db.execute(
                "SELECT 1 FROM members WHERE round_id = ? AND agent_id = ?", (round_id, agent_id)
            ).fetchone():
                raise Rejection(409, "already_submitted", "this agent already advertised keys for the round")
            count = self.db.execute("SELECT COUNT(*) FROM members WHERE round_id = ?", (round_id,)).fetchone()[0]
            if count >= self.config.max_cohort:
                raise Rejection(409, "cohort_full", "the round's cohort is full; try the next round")
            self.db.execute(
                "INSERT INTO members (round_id, agent_id, c_pk, s_pk, key_sig) VALUES (?, ?, ?, ?, ?)",
                (round_id, agent_id, c_pk, s_pk, signature),
            )
            if count + 1 >= self.config.max_cohort:
                self._close_advertise(round_id)

    def setup(self, round_id: int, agent_id: str) -> tuple[secagg.RoundSetup, list[secagg.PeerKeys]]:
        """The round setup and this agent's neighbours' keys (from the share-keys stage on)."""
        with self.lock:
            self.tick()
            row = self._round(round_id)
            if row["setup"] is None:
                self._require_stage(row, "share_keys")
            self._member(round_id, agent_id)
            setup = self._setup(row)
            wanted = self._neighbours_of(setup, agent_id)
            found = {
                str(a): secagg.PeerKeys(str(a), bytes(key), bytes(c_pk), bytes(s_pk), bytes(sig))
                for a, key, c_pk, s_pk, sig in self.db.execute(
                    "SELECT m.agent_id, a.public_key, m.c_pk, m.s_pk, m.key_sig FROM members m"
                    " JOIN agents a ON a.agent_id = m.agent_id"
                    f" WHERE m.round_id = ? AND m.agent_id IN ({', '.join('?' * len(wanted))})",
                    (round_id, *wanted),
                )
            }
            missing = [a for a in wanted if a not in found]
            if missing:
                raise Rejection(404, "unknown_agent", missing[0])
            return setup, [found[a] for a in wanted]

    @staticmethod
    def _neighbours_of(setup: secagg.RoundSetup, agent_id: str) -> list[str]:
        """``agent_id``'s neighbours in the round graph, in graph order (the graph is cached per round)."""
        me = _cohort_position(setup.cohort)[agent_id]
        return [setup.cohort[j] for j in secagg.neighbours(len(setup.cohort), setup.seed, setup.degree)[me]]

    @staticmethod
    def _setup(row: sqlite3.Row) -> secagg.RoundSetup:
        if row["setup"] is None:
            raise Rejection(409, "wrong_stage", "the round has no cohort yet")
        return _parse_setup(int(row["round_id"]), str(row["setup"]), bytes(row["seed"]))

    def post_shares(self, round_id: int, agent_id: str, shares: dict[str, bytes]) -> None:
        """Store an agent's encrypted shares, exactly one per neighbour."""
        with self.lock:
            row = self._open_round(round_id, "share_keys")
            member = self._member(round_id, agent_id)
            if member[3]:
                raise Rejection(409, "already_submitted", "shares already received from this agent")
            setup = self._setup(row)
            if set(shares) != set(self._neighbours_of(setup, agent_id)):
                raise Rejection(400, "wrong_recipients", "exactly one share per neighbour in the round graph")
            if any(len(c) > 1024 for c in shares.values()):
                raise Rejection(400, "share_too_large", "an encrypted share is at most 1 KiB")
            db = self._tx()
            try:
                db.executemany(
                    "INSERT INTO shares (round_id, sender, recipient, ciphertext) VALUES (?, ?, ?, ?)",
                    [(round_id, agent_id, to, blob) for to, blob in shares.items()],
                )
                db.execute(
                    "UPDATE members SET shared_keys = 1 WHERE round_id = ? AND agent_id = ?", (round_id, agent_id)
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            done = self.db.execute(
                "SELECT COUNT(*) = SUM(shared_keys) FROM members WHERE round_id = ?", (round_id,)
            ).fetchone()[0]
            if done:
                self._close_share_keys(round_id)

    def inbox(self, round_id: int, agent_id: str) -> tuple[list[str], dict[str, bytes]]:
        """U2 and the shares addressed to this agent by members of U2 (from the masked-input stage on)."""
        with self.lock:
            self.tick()
            row = self._round(round_id)
            if row["u2"] is None:
                self._require_stage(row, "masked_input")
            member = self._member(round_id, agent_id)
            if not member[3]:
                raise Rejection(403, "not_in_u2", "this agent did not share keys in time")
            u2: list[str] = json.loads(row["u2"])
            found = self.db.execute(
                "SELECT s.sender, s.ciphertext FROM shares s JOIN members m"
                " ON m.round_id = s.round_id AND m.agent_id = s.sender"
                " WHERE s.round_id = ? AND s.recipient = ? AND m.shared_keys = 1",
                (round_id, agent_id),
            ).fetchall()
            return u2, {str(s): bytes(c) for s, c in found}

    def _load_sum(self, round_id: int, setup: secagg.RoundSetup) -> np.ndarray[Any, np.dtype[np.uint32]]:
        if self._sum_round != round_id or self._sum is None:
            row = self.db.execute("SELECT total FROM sums WHERE round_id = ?", (round_id,)).fetchone()
            self._sum = (
                np.frombuffer(bytes(row[0]), dtype="<u4").astype(np.uint32)
                if row is not None
                else np.zeros(setup.vector_size, dtype=np.uint32)
            )
            self._sum_round = round_id
        return self._sum

    def post_input(self, round_id: int, agent_id: str, body: bytes) -> None:
        """Add a masked input to the running sum (one transaction with the 'sent' mark)."""
        with self.lock:
            row = self._open_round(round_id, "masked_input")
            member = self._member(round_id, agent_id)
            if agent_id not in json.loads(row["u2"]):
                raise Rejection(403, "not_in_u2", "this agent did not share keys in time")
            if member[4]:
                raise Rejection(409, "already_submitted", "a masked input was already received from this agent")
            setup = self._setup(row)
            q = setup.quantization
            try:
                values = unpack(body, q.bits, setup.vector_size)
            except ValueError as error:
                raise Rejection(400, "wrong_vector_length", str(error)) from error
            new_sum = (self._load_sum(round_id, setup) + values) & q.modulus_mask
            db = self._tx()
            try:
                db.execute(
                    "INSERT OR REPLACE INTO sums (round_id, total) VALUES (?, ?)",
                    (round_id, new_sum.astype("<u4").tobytes()),
                )
                db.execute(
                    "UPDATE members SET sent_input = 1 WHERE round_id = ? AND agent_id = ?", (round_id, agent_id)
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._sum = None
                raise
            self._sum = new_sum
            pending = self.db.execute(
                "SELECT COUNT(*) FROM members WHERE round_id = ? AND shared_keys = 1 AND sent_input = 0", (round_id,)
            ).fetchone()[0]
            if pending == 0:
                self._close_masked_input(round_id)

    def survivors(self, round_id: int, agent_id: str) -> tuple[list[str], list[str]]:
        """(U2, U3) for the unmask stage."""
        with self.lock:
            self.tick()
            row = self._round(round_id)
            if row["u3"] is None:
                self._require_stage(row, "unmask")
            self._member(round_id, agent_id)
            return json.loads(row["u2"]), json.loads(row["u3"])

    def post_unmask(self, round_id: int, agent_id: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares after checking it never reveals both secrets of one peer."""
        with self.lock:
            row = self._open_round(round_id, "unmask")
            member = self._member(round_id, agent_id)
            u2, u3 = set(json.loads(row["u2"])), set(json.loads(row["u3"]))
            if agent_id not in u3:
                raise Rejection(403, "not_in_u3", "only agents whose masked input arrived take part in unmasking")
            if member[5]:
                raise Rejection(409, "already_submitted", "unmask shares already received from this agent")
            if set(b_shares) & set(s_shares):
                raise Rejection(400, "both_secrets_revealed", "never both shares of the same peer")
            if not set(b_shares) <= u3 or not set(s_shares) <= u2 - u3:
                raise Rejection(400, "wrong_owners", "self-mask shares of U3 only, key shares of U2 minus U3 only")
            db = self._tx()
            try:
                db.executemany(
                    "INSERT INTO reveals (round_id, holder, owner, kind, share) VALUES (?, ?, ?, ?, ?)",
                    [(round_id, agent_id, o, "b", s) for o, s in b_shares.items()]
                    + [(round_id, agent_id, o, "s", s) for o, s in s_shares.items()],
                )
                db.execute("UPDATE members SET unmasked = 1 WHERE round_id = ? AND agent_id = ?", (round_id, agent_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            pending = self.db.execute(
                "SELECT COUNT(*) FROM members WHERE round_id = ? AND sent_input = 1 AND unmasked = 0", (round_id,)
            ).fetchone()[0]
            if pending == 0:
                self._finish(round_id)

    # -- stage transitions ---------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Close the open round's stage if its deadline passed."""
        with self.lock:
            row = self._active()
            if row is None or self.clock() < float(row["deadline"]):
                return
            round_id, stage = int(row["round_id"]), str(row["stage"])
            if stage == "advertise":
                self._close_advertise(round_id)
            elif stage == "share_keys":
                self._close_share_keys(round_id)
            elif stage == "masked_input":
                self._close_masked_input(round_id)
            elif stage == "unmask":
                self._finish(round_id)

    def _set_stage(self, round_id: int, stage: str, **columns: Any) -> None:
        seconds = getattr(self.config, STAGE_SECONDS[stage]) if stage in STAGE_SECONDS else 0.0
        sets = ", ".join(f"{k} = ?" for k in ["stage", "deadline", *columns])
        self.db.execute(
            f"UPDATE rounds SET {sets} WHERE round_id = ?", (stage, self.clock() + seconds, *columns.values(), round_id)
        )
        self.on_change()

    def _abandon(self, round_id: int, reason: str) -> None:
        self._set_stage(round_id, "abandoned", outcome=json.dumps({"abandoned": reason}))
        self.db.execute("DELETE FROM sums WHERE round_id = ?", (round_id,))
        self._sum, self._sum_round = None, None

    def _min_survivors(self, n: int, threshold: int) -> int:
        return max(self.config.min_cohort, threshold, n - math.floor(n * self.config.max_dropout + 1e-9))

    def _close_advertise(self, round_id: int) -> None:
        cohort = sorted(r[0] for r in self.db.execute("SELECT agent_id FROM members WHERE round_id = ?", (round_id,)))
        n = len(cohort)
        if n < max(self.config.min_cohort, 2):
            self._abandon(round_id, f"only {n} agents advertised keys; min_cohort is {self.config.min_cohort}")
            return
        degree = secagg.graph_degree(n)
        threshold = secagg.share_threshold(degree)
        min_survivors = self._min_survivors(n, threshold)
        privacy = self.config.privacy
        # Each element is at most C before noise; 6 noise standard deviations of headroom make clamping negligible.
        bound = privacy.clip * (1.0 + 6.0 * privacy.sigma / math.sqrt(min_survivors))
        q = Quantization.for_cohort(n, bound)
        setup = {
            "cohort": cohort,
            "degree": degree,
            "threshold": threshold,
            "min_survivors": min_survivors,
            "quantization": {"bits": q.bits, "levels": q.levels, "bound": q.bound},
            "vector_size": self.vector_size + 1,
        }
        self._set_stage(round_id, "share_keys", setup=json.dumps(setup))

    def _close_share_keys(self, round_id: int) -> None:
        setup = self._setup(self._round(round_id))
        u2 = sorted(
            r[0]
            for r in self.db.execute("SELECT agent_id FROM members WHERE round_id = ? AND shared_keys = 1", (round_id,))
        )
        if len(u2) < setup.min_survivors:
            self._abandon(round_id, f"only {len(u2)} agents shared keys; need {setup.min_survivors}")
            return
        self._set_stage(round_id, "masked_input", u2=json.dumps(u2))

    def _close_masked_input(self, round_id: int) -> None:
        setup = self._setup(self._round(round_id))
        u3 = sorted(
            r[0]
            for r in self.db.execute("SELECT agent_id FROM members WHERE round_id = ? AND sent_input = 1", (round_id,))
        )
        if len(u3) < setup.min_survivors:
            self._abandon(round_id, f"only {len(u3)} masked inputs arrived; need {setup.min_survivors}")
            return
        self._set_stage(round_id, "unmask", u3=json.dumps(u3))

    def _finish(self, round_id: int) -> None:
        row = self._round(round_id)
        setup = self._setup(row)
        u2, u3 = json.loads(row["u2"]), json.loads(row["u3"])
        responders = self.db.execute(
            "SELECT COUNT(*) FROM members WHERE round_id = ? AND unmasked = 1", (round_id,)
        ).fetchone()[0]
        if responders < setup.min_survivors:
            self._abandon(round_id, f"only {responders} agents answered the unmask stage; need {setup.min_survivors}")
            return
        index = {a: i + 1 for i, a in enumerate(setup.cohort)}
        b_shares: dict[str, list[tuple[int, bytes]]] = {}
        s_shares: dict[str, list[tuple[int, bytes]]] = {}
        for holder, owner, kind, share in self.db.execute(
            "SELECT holder, owner, kind, share FROM reveals WHERE round_id = ? ORDER BY holder", (round_id,)
        ):
            (b_shares if kind == "b" else s_shares).setdefault(owner, []).append((index[holder], bytes(share)))
        s_pks = {
            a: bytes(pk)
            for a, pk in self.db.execute("SELECT agent_id, s_pk FROM members WHERE round_id = ?", (round_id,))
        }
        try:
            correction = secagg.unmasking_vector(setup, u2, u3, s_pks, b_shares, s_shares)
        except (ProtocolError, ValueError) as error:
            self._abandon(round_id, f"unmasking failed: {error}")
            return
        q = setup.quantization
        total = (self._load_sum(round_id, setup) - correction) & q.modulus_mask
        joint = q.to_float(q.decode_sum(total))
        mean = weighted_mean(joint, self.config.clip)
        outcome: dict[str, Any] = {
            "survivors": len(u3),
            "shared_keys": len(u2),
            "cohort": len(setup.cohort),
            "total_weight": float(joint[-1] / self.config.clip),
        }
        db = self._tx()
        try:
            if mean is not None:
                published = self._publish(self._server_step(mean), round_id)
                outcome["published_version"] = published.version
            db.execute(
                "INSERT OR REPLACE INTO sums (round_id, total) VALUES (?, ?)", (round_id, total.astype("<u4").tobytes())
            )
            self._set_stage(round_id, "done", outcome=json.dumps(outcome))
            # the round is unmasked: its encrypted and revealed shares have served their purpose and go
            db.execute("DELETE FROM shares WHERE round_id = ?", (round_id,))
            db.execute("DELETE FROM reveals WHERE round_id = ?", (round_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._sum, self._sum_round = None, None

    def _server_step(self, mean: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """FedAdam on the unmasked mean delta; its moments live in the database with the published vector."""
        current = np.frombuffer(self.blob(self.latest().version), dtype="<f4").astype(np.float32)
        server = FedAdam(lr=self.config.server_lr)
        for name in ("m", "v"):
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (f"fedadam_{name}",)).fetchone()
            if row is not None:
                setattr(server, name, np.frombuffer(bytes(row[0]), dtype="<f8").copy())
        new = server.step(current, mean)
        assert server.m is not None and server.v is not None
        for name, value in (("m", server.m), ("v", server.v)):
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"fedadam_{name}", value.astype("<f8").tobytes()),
            )
        return new

    def unmasked_sum(self, round_id: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The exact integer sum of a finished round (for tests and audits of correctness)."""
        with self.lock:
            row = self._round(round_id)
            if row["stage"] != "done":
                raise Rejection(409, "not_unmasked", f"round {round_id} is {row['stage']}")
            setup = self._setup(row)
            blob = self.db.execute("SELECT total FROM sums WHERE round_id = ?", (round_id,)).fetchone()[0]
            return setup.quantization.decode_sum(np.frombuffer(bytes(blob), dtype="<u4").astype(np.uint32))
