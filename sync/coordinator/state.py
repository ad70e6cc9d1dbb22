"""The coordinator's state in SQLite: the schema and every SQL statement, behind :class:`SqliteStore`.

One file in WAL mode, the embedded default of :func:`sync.coordinator.storage.open_store`. Single statements commit
on their own; what must be atomic runs in :meth:`SqliteStore.transaction` (``BEGIN IMMEDIATE``: one writer at a
time; an inner ``transaction()`` joins the outer one). The round logic (:mod:`sync.coordinator.rounds`) never writes
SQL: it calls the :class:`sync.coordinator.storage.CoordinatorStore` interface, which
:class:`sync.coordinator.postgres.PostgresStore` implements over PostgreSQL with the same behaviour.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sync.coordinator.storage import (
    MEMBER_FLAGS,
    ROUND_COLUMNS,
    Member,
    Published,
    RoundRow,
    check_member_flags,
    check_round_columns,
    check_table,
    ended,
)

__all__ = [
    "MEMBER_FLAGS",
    "ROUND_COLUMNS",
    "SCHEMA",
    "CoordinatorState",
    "Member",
    "Published",
    "RoundRow",
    "SqliteStore",
]

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
DROP INDEX IF EXISTS shares_by_recipient;
CREATE TABLE IF NOT EXISTS reveals (
    round_id INTEGER NOT NULL, holder TEXT NOT NULL, owner TEXT NOT NULL, kind TEXT NOT NULL, share BLOB NOT NULL,
    PRIMARY KEY (round_id, holder, owner));
CREATE TABLE IF NOT EXISTS sums (round_id INTEGER PRIMARY KEY, total BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS partials (
    round_id INTEGER NOT NULL, shard TEXT NOT NULL, total BLOB NOT NULL, agents TEXT NOT NULL,
    n_agents INTEGER NOT NULL, written REAL NOT NULL, PRIMARY KEY (round_id, shard));
CREATE TABLE IF NOT EXISTS published (
    version INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, signature BLOB NOT NULL, vector BLOB NOT NULL,
    round_id INTEGER, created REAL NOT NULL);
"""

# No index by recipient: an agent's 60 shares would dirty one page of it per recipient, one 4 KB page in the WAL per
# share per commit (measured: 365 MB of writes for 1,000 agents' shares, 71 MB without it). A recipient's inbox is
# read by primary key instead, one lookup per neighbour (SqliteStore.inbox).

# --- enrollment (issue 14.4) ---
ENROLLMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollment (
    token_hash TEXT PRIMARY KEY, created REAL NOT NULL, agent_id TEXT, used_at REAL);
"""
"""One row per one-time enrollment token: only its SHA-256 is stored; ``agent_id`` is set once it is used."""
SCHEMA += ENROLLMENT_SCHEMA
# --- end enrollment (issue 14.4) ---


class SqliteStore:
    """The SQLite database of one coordinator: meta, agents, rounds, members, shares, reveals, sums, published."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Deleted rows (key shares, revealed shares: small, inside b-tree pages) are still zeroed on disk; freed
        # overflow pages (replaced running sums and optimizer moments, nothing the coordinator did not see anyway)
        # are not zeroed too. Builds with SECURE_DELETE on (Debian's) otherwise write every running sum twice.
        self.db.execute("PRAGMA secure_delete=FAST")
        self.db.executescript(SCHEMA)
        # which shard (coordinator process) holds each member's masked input; added to files that predate shards
        if "shard" not in {str(row[1]) for row in self.db.execute("PRAGMA table_info(members)")}:
            self.db.execute("ALTER TABLE members ADD COLUMN shard TEXT")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or not at all; inside a transaction, joins it."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database file."""
        self.db.close()

    def describe(self) -> str:
        """The database file's path."""
        return str(self.path)

    def claim_serving(self) -> bool:
        """True: a SQLite file is served by the one process that opens it (not checked)."""
        return True

    def count_rows(self, table: str, round_id: int | None = None) -> int:
        """How many rows ``table`` holds (of one round, if given): for audits and tests."""
        check_table(table)
        if round_id is None:
            return int(self._one(f"SELECT COUNT(*) FROM {table}")[0])
        return int(self._one(f"SELECT COUNT(*) FROM {table} WHERE round_id = ?", round_id)[0])

    def _one(self, sql: str, *args: Any) -> Any:
        return self.db.execute(sql, args).fetchone()

    # -- meta ----------------------------------------------------------------------------------------------------

    def meta(self, key: str) -> bytes | None:
        """A stored value (the signing key, the server optimizer's moments)."""
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else bytes(row[0])

    def put_meta(self, key: str, value: bytes) -> None:
        """Store (or replace) a value."""
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- agents --------------------------------------------------------------------------------------------------

    def agent(self, agent_id: str) -> tuple[bytes, int] | None:
        """A registered agent's (public key, last nonce)."""
        row = self._one("SELECT public_key, last_nonce FROM agents WHERE agent_id = ?", agent_id)
        return None if row is None else (bytes(row[0]), int(row[1]))

    def add_agent(self, agent_id: str, public_key: bytes, nonce: int, registered_at: float) -> None:
        """Register an agent's key."""
        self.db.execute(
            "INSERT INTO agents (agent_id, public_key, last_nonce, registered_at) VALUES (?, ?, ?, ?)",
            (agent_id, public_key, nonce, registered_at),
        )

    def set_nonce(self, agent_id: str, nonce: int) -> None:
        """Consume a nonce of the agent."""
        self.db.execute("UPDATE agents SET last_nonce = ? WHERE agent_id = ?", (nonce, agent_id))

    # -- published vectors ---------------------------------------------------------------------------------------

    def latest_published(self) -> Published | None:
        """The newest published version's metadata, None before the first."""
        row = self._one("SELECT version, sha256, signature, round_id FROM published ORDER BY version DESC LIMIT 1")
        return None if row is None else Published(int(row[0]), str(row[1]), bytes(row[2]), row[3])

    def latest_vector(self) -> bytes | None:
        """The newest published vector's bytes, None before the first."""
        row = self._one("SELECT vector FROM published ORDER BY version DESC LIMIT 1")
        return None if row is None else bytes(row[0])

    def published_vector(self, version: int) -> bytes | None:
        """The bytes of one published version."""
        row = self._one("SELECT vector FROM published WHERE version = ?", version)
        return None if row is None else bytes(row[0])

    def next_version(self) -> int:
        """The version number the next publication takes."""
        return int(self._one("SELECT COALESCE(MAX(version), -1) FROM published")[0]) + 1

    def add_published(self, entry: Published, vector: bytes, created: float) -> None:
        """Store a published vector (never rewritten)."""
        self.db.execute(
            "INSERT INTO published (version, sha256, signature, vector, round_id, created) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.version, entry.sha256, entry.signature, vector, entry.round_id, created),
        )

    # -- rounds --------------------------------------------------------------------------------------------------

    def _round_row(self, sql: str, *args: Any) -> RoundRow | None:
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row
        row: sqlite3.Row | None = cursor.execute(sql, args).fetchone()
        return None if row is None else dict(zip(row.keys(), row, strict=True))

    def open_round(self) -> RoundRow | None:
        """The newest round that is neither done nor abandoned."""
        return self._round_row(
            "SELECT * FROM rounds WHERE stage NOT IN ('done', 'abandoned') ORDER BY round_id DESC LIMIT 1"
        )

    def round(self, round_id: int) -> RoundRow | None:
        """One round's row (columns by name)."""
        return self._round_row("SELECT * FROM rounds WHERE round_id = ?", round_id)

    def last_round_id(self) -> int | None:
        """The newest round's id, None before the first."""
        last = self._one("SELECT MAX(round_id) FROM rounds")[0]
        return None if last is None else int(last)

    def add_round(self, round_id: int, deadline: float, seed: bytes, base_version: int, created: float) -> None:
        """Open a round in the advertise stage."""
        self.db.execute(
            "INSERT INTO rounds (round_id, stage, deadline, seed, base_version, created)"
            " VALUES (?, 'advertise', ?, ?, ?, ?)",
            (round_id, deadline, seed, base_version, created),
        )

    def update_round(self, round_id: int, *, expect_stage: str | None = None, **columns: Any) -> bool:
        """Set columns of a round (stage, deadline, setup, u2, u3, outcome); whether the round was updated.

        With ``expect_stage`` it is a compare-and-set: nothing changes (False) unless the round is in that stage.
        Setting the stage to done or abandoned drops the round's key shares in the same transaction.
        """
        check_round_columns(columns)
        if not columns:
            raise ValueError("update_round needs at least one column")
        sets = ", ".join(f"{name} = ?" for name in columns)
        where, args = " WHERE round_id = ?", [*columns.values(), round_id]
        if expect_stage is not None:
            where, args = where + " AND stage = ?", [*args, expect_stage]
        with self.transaction():
            updated = self.db.execute(f"UPDATE rounds SET {sets}{where}", args).rowcount == 1
            if updated and ended(columns):
                self.forget_shares(round_id)
        return updated

    # -- members -------------------------------------------------------------------------------------------------

    def member(self, round_id: int, agent_id: str) -> Member | None:
        """One cohort member, None if the agent is not in the round's cohort."""
        row = self._one(
            "SELECT c_pk, s_pk, key_sig, shared_keys, sent_input, unmasked FROM members"
            " WHERE round_id = ? AND agent_id = ?",
            round_id,
            agent_id,
        )
        if row is None:
            return None
        return Member(bytes(row[0]), bytes(row[1]), bytes(row[2]), bool(row[3]), bool(row[4]), bool(row[5]))

    def add_member(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, key_sig: bytes) -> None:
        """Admit an agent to a round's cohort with its signed round keys."""
        self.db.execute(
            "INSERT INTO members (round_id, agent_id, c_pk, s_pk, key_sig) VALUES (?, ?, ?, ?, ?)",
            (round_id, agent_id, c_pk, s_pk, key_sig),
        )

    def _where(self, flags: dict[str, int]) -> str:
        check_member_flags(flags)
        return "".join(f" AND {name} = {int(value)}" for name, value in flags.items())

    def member_ids(self, round_id: int, **flags: int) -> list[str]:
        """The ids of a round's members with these flag values (``shared_keys=1``, ...), sorted."""
        sql = "SELECT agent_id FROM members WHERE round_id = ?" + self._where(flags)
        return sorted(str(r[0]) for r in self.db.execute(sql, (round_id,)))

    def count_members(self, round_id: int, **flags: int) -> int:
        """How many of a round's members have these flag values."""
        return int(self._one("SELECT COUNT(*) FROM members WHERE round_id = ?" + self._where(flags), round_id)[0])

    def member_counts(self, round_id: int) -> tuple[int, int, int, int]:
        """(members, of which shared keys, sent inputs, answered the unmask stage)."""
        row = self._one(
            "SELECT COUNT(*), SUM(shared_keys), SUM(sent_input), SUM(unmasked) FROM members WHERE round_id = ?",
            round_id,
        )
        return int(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0)

    def member_keys(self, round_id: int, agent_ids: Sequence[str]) -> dict[str, tuple[bytes, bytes, bytes, bytes]]:
        """(identity key, c_pk, s_pk, signature) of these members."""
        found = self.db.execute(
            "SELECT m.agent_id, a.public_key, m.c_pk, m.s_pk, m.key_sig FROM members m"
            " JOIN agents a ON a.agent_id = m.agent_id"
            f" WHERE m.round_id = ? AND m.agent_id IN ({', '.join('?' * len(agent_ids))})",
            (round_id, *agent_ids),
        )
        return {str(a): (bytes(key), bytes(c_pk), bytes(s_pk), bytes(sig)) for a, key, c_pk, s_pk, sig in found}

    def mask_keys(self, round_id: int) -> dict[str, bytes]:
        """Every member's public mask key (s_pk)."""
        found = self.db.execute("SELECT agent_id, s_pk FROM members WHERE round_id = ?", (round_id,))
        return {str(a): bytes(pk) for a, pk in found}

    # -- shares, inputs, reveals ---------------------------------------------------------------------------------

    def start_relay(self, round_id: int) -> None:
        """Nothing: the relay is in the file with everything else (a restart keeps it)."""

    def relay_intact(self, round_id: int) -> bool:
        """True: the relay is in the file with everything else, as durable as the rest of the round."""
        return True

    def add_shares(self, round_id: int, sender: str, shares: dict[str, bytes]) -> None:
        """Store a member's encrypted shares and mark it as having shared keys (atomically)."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO shares (round_id, sender, recipient, ciphertext) VALUES (?, ?, ?, ?)",
                [(round_id, sender, to, blob) for to, blob in shares.items()],
            )
            self.db.execute(
                "UPDATE members SET shared_keys = 1 WHERE round_id = ? AND agent_id = ?", (round_id, sender)
            )

    def all_shared_keys(self, round_id: int) -> bool:
        """Whether every member of the round has shared keys."""
        return bool(self._one("SELECT COUNT(*) = SUM(shared_keys) FROM members WHERE round_id = ?", round_id)[0])

    def inbox(self, round_id: int, recipient: str, senders: Sequence[str]) -> dict[str, bytes]:
        """The shares addressed to ``recipient`` by those of ``senders`` (its neighbours) that shared keys, by sender:
        one primary-key lookup per sender."""
        found = self.db.execute(
            "SELECT s.sender, s.ciphertext FROM shares s JOIN members m"
            " ON m.round_id = s.round_id AND m.agent_id = s.sender"
            f" WHERE s.round_id = ? AND s.sender IN ({', '.join('?' * len(senders))}) AND s.recipient = ?"
            " AND m.shared_keys = 1",
            (round_id, *senders, recipient),
        ).fetchall()
        return {str(s): bytes(c) for s, c in found}

    def running_sum(self, round_id: int) -> bytes | None:
        """The stored sum of a round's masked inputs (uint32 little-endian)."""
        row = self._one("SELECT total FROM sums WHERE round_id = ?", round_id)
        return None if row is None else bytes(row[0])

    def put_sum(self, round_id: int, total: bytes) -> None:
        """Store (or replace) a round's sum."""
        self.db.execute("INSERT OR REPLACE INTO sums (round_id, total) VALUES (?, ?)", (round_id, total))

    def delete_sum(self, round_id: int) -> None:
        """Forget a round's sum."""
        self.db.execute("DELETE FROM sums WHERE round_id = ?", (round_id,))

    def add_input(self, round_id: int, agent_id: str, shard: str) -> None:
        """Mark the member's input as received by ``shard`` (which holds it in its partial sum)."""
        self.db.execute(
            "UPDATE members SET sent_input = 1, shard = ? WHERE round_id = ? AND agent_id = ?",
            (shard, round_id, agent_id),
        )

    def input_shards(self, round_id: int) -> dict[str, int]:
        """How many inputs of the round each shard received (by the members' marks)."""
        found = self.db.execute(
            "SELECT shard, COUNT(*) FROM members WHERE round_id = ? AND sent_input = 1 GROUP BY shard", (round_id,)
        )
        return {str(shard): int(n) for shard, n in found}

    def put_partial(self, round_id: int, shard: str, total: bytes, agents: Sequence[str], written: float) -> None:
        """Store (or replace) a shard's checkpoint: its partial sum (uint32 little-endian) and the agents in it."""
        self.db.execute(
            "INSERT OR REPLACE INTO partials (round_id, shard, total, agents, n_agents, written)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (round_id, shard, total, json.dumps(list(agents)), len(agents), written),
        )

    def partials(self, round_id: int) -> list[tuple[str, bytes, list[str]]]:
        """(shard, partial sum, agents in it) of every checkpoint of the round, by shard."""
        found = self.db.execute(
            "SELECT shard, total, agents FROM partials WHERE round_id = ? ORDER BY shard", (round_id,)
        )
        return [(str(shard), bytes(total), list(json.loads(agents))) for shard, total, agents in found]

    def partial_counts(self, round_id: int) -> dict[str, int]:
        """How many agents each shard's checkpoint of the round holds (without reading the sums)."""
        found = self.db.execute("SELECT shard, n_agents FROM partials WHERE round_id = ?", (round_id,))
        return {str(shard): int(n) for shard, n in found}

    def add_reveals(self, round_id: int, holder: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares and mark it as having answered (atomically)."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO reveals (round_id, holder, owner, kind, share) VALUES (?, ?, ?, ?, ?)",
                [(round_id, holder, o, "b", s) for o, s in b_shares.items()]
                + [(round_id, holder, o, "s", s) for o, s in s_shares.items()],
            )
            self.db.execute("UPDATE members SET unmasked = 1 WHERE round_id = ? AND agent_id = ?", (round_id, holder))

    def reveals(self, round_id: int) -> list[tuple[str, str, str, bytes]]:
        """(holder, owner, kind, share) of every revealed share of the round, by holder."""
        found = self.db.execute(
            "SELECT holder, owner, kind, share FROM reveals WHERE round_id = ? ORDER BY holder", (round_id,)
        )
        return [(str(h), str(o), str(k), bytes(s)) for h, o, k, s in found]

    def forget_shares(self, round_id: int) -> None:
        """Delete a round's encrypted and revealed shares and its shards' partial sums."""
        with self.transaction():
            self.db.execute("DELETE FROM shares WHERE round_id = ?", (round_id,))
            self.db.execute("DELETE FROM reveals WHERE round_id = ?", (round_id,))
            self.db.execute("DELETE FROM partials WHERE round_id = ?", (round_id,))

    # -- replicas: a SQLite file has one process, which leads ----------------------------------------------------

    def try_lead(self) -> bool:
        """True: the one process serving a SQLite file leads."""
        return True

    def notify(self, channel: str, payload: str = "") -> None:
        """Nothing: no other process serves this file."""

    def listen(self, channels: Sequence[str], callback: Callable[[str, str], None]) -> None:
        """Nothing: no other process serves this file, so nothing is ever notified."""

    # --- enrollment (issue 14.4) ------------------------------------------------------------------------------
    # Three methods over the enrollment table; a PostgreSQL state implements the same (claim is a compare-and-set).

    def add_enrollment_tokens(self, token_hashes: Sequence[str], created: float) -> None:
        """Store the hashes of new one-time enrollment tokens (all or none)."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO enrollment (token_hash, created) VALUES (?, ?)", [(h, created) for h in token_hashes]
            )

    def claim_enrollment(self, token_hash: str, agent_id: str, used_at: float) -> str:
        """Use a token for ``agent_id``: "claimed" (now, or before by this same agent), "used" (by another agent) or
        "unknown". One statement decides, so two agents racing for one token cannot both get it."""
        claimed = self.db.execute(
            "UPDATE enrollment SET agent_id = ?, used_at = ? WHERE token_hash = ? AND agent_id IS NULL",
            (agent_id, used_at, token_hash),
        ).rowcount
        if claimed == 1:
            return "claimed"
        row = self._one("SELECT agent_id FROM enrollment WHERE token_hash = ?", token_hash)
        if row is None:
            return "unknown"
        return "claimed" if row[0] == agent_id else "used"

    def enrollment_counts(self) -> tuple[int, int]:
        """(tokens issued, of which used)."""
        row = self._one("SELECT COUNT(*), COUNT(agent_id) FROM enrollment")
        return int(row[0]), int(row[1])

    # --- end enrollment (issue 14.4) --------------------------------------------------------------------------


CoordinatorState = SqliteStore
"""The SQLite store's former name."""
