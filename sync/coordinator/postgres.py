"""The coordinator's state in PostgreSQL: :class:`PostgresStore`, the same :class:`CoordinatorStore` as SQLite's.

psycopg 3 with a connection pool (``psycopg_pool``). A call outside a transaction borrows a connection and commits
on its own; :meth:`PostgresStore.transaction` holds one connection for everything inside (re-entrant, per thread) and
takes a transaction-scoped advisory lock first, so transactions that write run one at a time across every process
sharing the database, as SQLite's ``BEGIN IMMEDIATE`` does for one file. Large blobs (running sums, published vectors)
are stored uncompressed: they are random bytes, pglz would only burn CPU.

Everything a round writes per agent — its cohort (``members_r<ID>``: round keys and the "shared keys", "sent input"
and "unmasked" marks), the key-share relay (``shares_r<ID>``, ``reveals_r<ID>``) — lives in **UNLOGGED** partitions
of its own, created with the round and dropped when it ends; the shards' partial sums (``partials``), the unmasked
totals (``sums``) and the nonces agents consumed (``nonces``) are unlogged tables too. None of it writes WAL,
checkpoints skip its dirty pages, and it reaches the data files only if the background writer or a backend evicts it
from shared buffers before the round ends (its files still grow page by page, zero-filled, as any table's do:
``scripts/bench_sync.py`` measures both). What a round writes to the WAL is then what must survive it: its row, the
published version and the server optimizer's state, not a row per agent. A round's relay is ephemeral by nature (a
round without its shares cannot be unmasked), so the one thing to get right is a crash: PostgreSQL empties unlogged
tables when it recovers (and a promoted standby has them empty). The unlogged table ``relays`` holds one row per
round whose relay is intact (written with the round, :meth:`PostgresStore.add_round`); a crash empties it with the
rest, so :meth:`PostgresStore.relay_intact` is False for every round that was open, and the leader abandons such a
round (:mod:`sync.coordinator.rounds`) rather than unmask it with a cohort or shares missing.

:func:`temporary_server` runs a throwaway PostgreSQL on 127.0.0.1 from the machine's own binaries (initdb into a
temporary folder) for the tests and ``scripts/bench_sync.py --backend postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from sync.coordinator.storage import (
    Member,
    Published,
    RoundRow,
    check_member_flags,
    check_round_columns,
    check_table,
    ended,
    redacted,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, public_key BYTEA NOT NULL, last_nonce BIGINT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id BIGINT PRIMARY KEY, stage TEXT NOT NULL, deadline DOUBLE PRECISION NOT NULL, seed BYTEA NOT NULL,
    base_version BIGINT NOT NULL, setup TEXT, u2 TEXT, u3 TEXT, outcome TEXT, created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS rounds_open ON rounds (round_id) WHERE stage NOT IN ('done', 'abandoned');
CREATE TABLE IF NOT EXISTS members (
    round_id BIGINT NOT NULL, agent_id TEXT NOT NULL, c_pk BYTEA NOT NULL, s_pk BYTEA NOT NULL, key_sig BYTEA NOT NULL,
    shared_keys SMALLINT NOT NULL DEFAULT 0, sent_input SMALLINT NOT NULL DEFAULT 0,
    unmasked SMALLINT NOT NULL DEFAULT 0, shard TEXT, PRIMARY KEY (round_id, agent_id)) PARTITION BY LIST (round_id);
CREATE UNLOGGED TABLE IF NOT EXISTS nonces (agent_id TEXT PRIMARY KEY, last_nonce BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS shares (
    round_id BIGINT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL, ciphertext BYTEA NOT NULL,
    PRIMARY KEY (round_id, sender, recipient)) PARTITION BY LIST (round_id);
DROP INDEX IF EXISTS shares_by_recipient;
CREATE UNLOGGED TABLE IF NOT EXISTS relays (round_id BIGINT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS reveals (
    round_id BIGINT NOT NULL, holder TEXT NOT NULL, owner TEXT NOT NULL, kind TEXT NOT NULL, share BYTEA NOT NULL,
    PRIMARY KEY (round_id, holder, owner)) PARTITION BY LIST (round_id);
CREATE UNLOGGED TABLE IF NOT EXISTS sums (round_id BIGINT PRIMARY KEY, total BYTEA NOT NULL);
ALTER TABLE sums ALTER COLUMN total SET STORAGE EXTERNAL;
CREATE UNLOGGED TABLE IF NOT EXISTS partials (
    round_id BIGINT NOT NULL, shard TEXT NOT NULL, total BYTEA NOT NULL, agents TEXT NOT NULL,
    n_agents INTEGER NOT NULL, written DOUBLE PRECISION NOT NULL, PRIMARY KEY (round_id, shard));
ALTER TABLE partials ALTER COLUMN total SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS published (
    version BIGINT PRIMARY KEY, sha256 TEXT NOT NULL, signature BYTEA NOT NULL, vector BYTEA NOT NULL,
    round_id BIGINT, created DOUBLE PRECISION NOT NULL);
ALTER TABLE published ALTER COLUMN vector SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS enrollment (
    token_hash TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, agent_id TEXT, used_at DOUBLE PRECISION);
"""

Statement = str | sql.SQL | sql.Composed
"""One SQL statement: literal text, or composed with :mod:`psycopg.sql` (identifiers of partitions, columns)."""
WRITER_LOCK = 0x70657273_6F6E6131  # "persona1": the advisory lock every writing transaction holds
SERVING_LOCK = 0x70657273_6F6E6132  # "persona2": held for its whole life by the one process serving the database
LEADER_LOCK = 0x70657273_6F6E6133  # "persona3": held by the replica that leads (moves stages, unmasks, publishes)
KEEPALIVE = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
ROUND_FIELDS = ("round_id", "stage", "deadline", "seed", "base_version", "setup", "u2", "u3", "outcome", "created")
PARTITIONED = ("members", "shares", "reveals")
"""The round's relay tables (cohort members and their marks, key shares, revealed shares): one UNLOGGED partition per
round each."""
UNLOGGED = ("relays", "sums", "partials", "nonces")
"""Unlogged tables that are not partitioned (a database from before this layout has some of them logged)."""
CONNECT_TIMEOUT_S = 10


def _partition(table: str, round_id: int) -> sql.Identifier:
    return sql.Identifier(f"{table}_r{int(round_id)}")


class PostgresStore:
    """The PostgreSQL database of one coordinator: the tables of :mod:`.state`, key shares partitioned per round."""

    def __init__(self, url: str, *, max_connections: int = 8) -> None:
        """Connect to ``url`` (``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``) and create the tables.

        Raises ConnectionError (naming the server, never the password) when the server cannot be reached.
        """
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection,
            open=False,
            name="persona-coordinator",
        )
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()  # a clear error, at once
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConnectionError(f"cannot use the PostgreSQL database {redacted(url)}: {message}") from error
        self._local = threading.local()
        self._serving: psycopg.Connection[Any] | None = None
        self._leading: psycopg.Connection[Any] | None = None
        self._listening = threading.Event()
        self._closed = threading.Event()
        with self.transaction(), self._conn() as conn:
            self._create_schema(conn)

    @classmethod
    def _create_schema(cls, conn: psycopg.Connection[Any]) -> None:
        """Create the tables, and bring a database from before up to this layout without losing an open round."""
        had_relays = bool(conn.execute("SELECT to_regclass('relays') IS NOT NULL").fetchone()[0])  # type: ignore[index]
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('members')").fetchone()
        logged_members = kind is not None and str(kind[0]) == "r"  # before: one logged table for every round
        if logged_members:
            conn.execute("ALTER TABLE members RENAME TO members_logged")
            conn.execute("ALTER INDEX members_pkey RENAME TO members_logged_pkey")
            conn.execute("ALTER TABLE members_logged ADD COLUMN IF NOT EXISTS shard TEXT")
        conn.execute(SCHEMA)
        for table in UNLOGGED:
            if conn.execute("SELECT relpersistence FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone() == (
                "p",
            ):
                conn.execute(sql.SQL("ALTER TABLE {} SET UNLOGGED").format(sql.Identifier(table)))
        open_rounds = [
            int(row[0]) for row in conn.execute("SELECT round_id FROM rounds WHERE stage NOT IN ('done', 'abandoned')")
        ]
        for round_id in open_rounds:
            if not had_relays:  # its relay was in logged partitions, which a crash left intact
                conn.execute("INSERT INTO relays (round_id) VALUES (%s) ON CONFLICT DO NOTHING", (round_id,))
            if logged_members:  # its cohort moves to its own partition; a round still advertising arms its mark
                cls._create_partitions(conn, round_id)
                columns = "round_id, agent_id, c_pk, s_pk, key_sig, shared_keys, sent_input, unmasked, shard"
                conn.execute(
                    f"INSERT INTO members ({columns}) SELECT {columns} FROM members_logged WHERE round_id = %s",
                    (round_id,),
                )
                conn.execute(
                    "INSERT INTO relays (round_id) SELECT round_id FROM rounds WHERE round_id = %s"
                    " AND stage = 'advertise' ON CONFLICT DO NOTHING",
                    (round_id,),
                )
        if logged_members:
            conn.execute("DROP TABLE members_logged")

    # -- connections and transactions ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection of this thread's transaction, else one borrowed from the pool for one statement."""
        current: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self.pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or not at all; inside a transaction, joins it."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _execute(self, query: Statement, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._conn() as conn:
            return conn.execute(query, args).rowcount

    def _one(self, query: Statement, *args: Any) -> Any:
        with self._conn() as conn:
            return conn.execute(query, args).fetchone()

    def _all(self, query: Statement, *args: Any) -> list[Any]:
        with self._conn() as conn:
            return conn.execute(query, args).fetchall()

    def close(self) -> None:
        """Close the pool's connections (and give up serving, leading and listening)."""
        self._closed.set()
        for held in (self._serving, self._leading):
            if held is not None:
                with contextlib.suppress(psycopg.Error):
                    held.close()
        self._serving = self._leading = None
        self.pool.close()

    # -- replicas: one leader (an advisory lock), wake-ups by LISTEN/NOTIFY ---------------------------------------

    def try_lead(self) -> bool:
        """Whether this process leads: it holds the leader's session advisory lock on a connection of its own (checked
        alive here), or takes it now if no one holds it. A leader whose process or machine dies loses it when the
        server sees the connection gone (at once for a killed process, within ~30 s for a vanished machine)."""
        if self._closed.is_set():
            return False
        if self._leading is not None:
            try:
                self._leading.execute("SELECT 1")
                return True
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    self._leading.close()
                self._leading = None
                return False  # the lock went with the connection; try again at the next call
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error:
            return False
        try:
            conn.execute(KEEPALIVE)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        except psycopg.Error:
            conn.close()
            return False
        if row is None or not row[0]:
            conn.close()
            return False
        self._leading = conn
        return True

    def notify(self, channel: str, payload: str = "") -> None:
        """Wake the replicas listening on ``channel`` (delivered when the current transaction commits)."""
        self._execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def listen(self, channels: Sequence[str], callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, payload)`` from a daemon thread for every notification on ``channels`` until
        :meth:`close`; a lost connection is reopened (and ``callback(channel, "")`` called once per channel then,
        since notifications sent meanwhile are lost)."""
        if self._listening.is_set():
            raise RuntimeError("this store already listens")
        self._listening.set()

        def run() -> None:
            while not self._closed.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                        conn.execute(KEEPALIVE)
                        for channel in channels:
                            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                        for channel in channels:
                            callback(channel, "")
                        while not self._closed.is_set():
                            for note in conn.notifies(timeout=1.0):
                                callback(note.channel, note.payload)
                except psycopg.Error:
                    self._closed.wait(1.0)

        threading.Thread(target=run, name="persona-listen", daemon=True).start()

    def claim_serving(self) -> bool:
        """Make this process the one coordinator serving the database, until :meth:`close` or its end (a session
        advisory lock on a connection of its own); False if another process holds it."""
        if self._serving is not None:
            return True
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        # if this machine vanishes without closing the connection, the server notices within ~30 s (not hours)
        conn.execute(KEEPALIVE)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SERVING_LOCK,)).fetchone()
        if row is None or not row[0]:
            conn.close()
            return False
        self._serving = conn
        return True

    def describe(self) -> str:
        """The database URL without its password."""
        return redacted(self.url)

    def count_rows(self, table: str, round_id: int | None = None) -> int:
        """How many rows ``table`` holds (of one round, if given): for audits and tests."""
        check_table(table)
        query = sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table))
        if round_id is None:
            return int(self._one(query)[0])
        return int(self._one(query + sql.SQL(" WHERE round_id = %s"), round_id)[0])

    # -- meta ----------------------------------------------------------------------------------------------------

    def meta(self, key: str) -> bytes | None:
        """A stored value (the signing key, the server optimizer's moments)."""
        row = self._one("SELECT value FROM meta WHERE key = %s", key)
        return None if row is None else bytes(row[0])

    def put_meta(self, key: str, value: bytes) -> None:
        """Store (or replace) a value."""
        self._execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    # -- agents --------------------------------------------------------------------------------------------------

    def agent(self, agent_id: str) -> tuple[bytes, int] | None:
        """A registered agent's (public key, last nonce): the last nonce consumed (unlogged), else the one it
        registered with (after a crash emptied the unlogged ``nonces``; see :meth:`set_nonce`)."""
        row = self._one(
            "SELECT a.public_key, GREATEST(a.last_nonce, n.last_nonce) FROM agents a"
            " LEFT JOIN nonces n ON n.agent_id = a.agent_id WHERE a.agent_id = %s",
            agent_id,
        )
        return None if row is None else (bytes(row[0]), int(row[1]))

    def add_agent(self, agent_id: str, public_key: bytes, nonce: int, registered_at: float) -> None:
        """Register an agent's key."""
        self._execute(
            "INSERT INTO agents (agent_id, public_key, last_nonce, registered_at) VALUES (%s, %s, %s, %s)",
            (agent_id, public_key, nonce, registered_at),
        )

    def set_nonce(self, agent_id: str, nonce: int) -> None:
        """Consume a nonce of the agent, in the unlogged ``nonces``: one row rewritten per signed write would
        otherwise put every agent's requests in the WAL. A crash empties it, which reopens the nonces consumed since
        registration to a replay; every such write is still applied at most once per (round, stage, agent), and the
        rounds that were open are abandoned (their relay was lost), so a replay changes nothing."""
        self._execute(
            "INSERT INTO nonces (agent_id, last_nonce) VALUES (%s, %s)"
            " ON CONFLICT (agent_id) DO UPDATE SET last_nonce = EXCLUDED.last_nonce",
            (agent_id, nonce),
        )

    # -- published vectors ---------------------------------------------------------------------------------------

    def latest_published(self) -> Published | None:
        """The newest published version's metadata, None before the first."""
        row = self._one("SELECT version, sha256, signature, round_id FROM published ORDER BY version DESC LIMIT 1")
        if row is None:
            return None
        return Published(int(row[0]), str(row[1]), bytes(row[2]), None if row[3] is None else int(row[3]))

    def latest_vector(self) -> bytes | None:
        """The newest published vector's bytes, None before the first."""
        row = self._one("SELECT vector FROM published ORDER BY version DESC LIMIT 1")
        return None if row is None else bytes(row[0])

    def published_vector(self, version: int) -> bytes | None:
        """The bytes of one published version."""
        row = self._one("SELECT vector FROM published WHERE version = %s", version)
        return None if row is None else bytes(row[0])

    def next_version(self) -> int:
        """The version number the next publication takes."""
        return int(self._one("SELECT COALESCE(MAX(version), -1) FROM published")[0]) + 1

    def add_published(self, entry: Published, vector: bytes, created: float) -> None:
        """Store a published vector (never rewritten)."""
        self._execute(
            "INSERT INTO published (version, sha256, signature, vector, round_id, created)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (entry.version, entry.sha256, entry.signature, vector, entry.round_id, created),
        )

    # -- rounds --------------------------------------------------------------------------------------------------

    def _round_row(self, query: str, *args: Any) -> RoundRow | None:
        row = self._one(query, *args)
        if row is None:
            return None
        found = dict(zip(ROUND_FIELDS, row, strict=True))
        found["seed"] = bytes(found["seed"])
        return found

    def open_round(self) -> RoundRow | None:
        """The newest round that is neither done nor abandoned."""
        return self._round_row(
            f"SELECT {', '.join(ROUND_FIELDS)} FROM rounds WHERE stage NOT IN ('done', 'abandoned')"
            " ORDER BY round_id DESC LIMIT 1"
        )

    def round(self, round_id: int) -> RoundRow | None:
        """One round's row (columns by name)."""
        return self._round_row(f"SELECT {', '.join(ROUND_FIELDS)} FROM rounds WHERE round_id = %s", round_id)

    def last_round_id(self) -> int | None:
        """The newest round's id, None before the first."""
        last = self._one("SELECT MAX(round_id) FROM rounds")[0]
        return None if last is None else int(last)

    def add_round(self, round_id: int, deadline: float, seed: bytes, base_version: int, created: float) -> None:
        """Open a round in the advertise stage, with its own (unlogged) partitions for its cohort and key shares,
        and its relay marked intact (:meth:`relay_intact`)."""
        with self.transaction(), self._conn() as conn:
            conn.execute(
                "INSERT INTO rounds (round_id, stage, deadline, seed, base_version, created)"
                " VALUES (%s, 'advertise', %s, %s, %s, %s)",
                (round_id, deadline, seed, base_version, created),
            )
            self._create_partitions(conn, round_id)
            conn.execute("INSERT INTO relays (round_id) VALUES (%s) ON CONFLICT DO NOTHING", (round_id,))

    @staticmethod
    def _create_partitions(conn: psycopg.Connection[Any], round_id: int) -> None:
        """The round's relay partitions: unlogged, and left alone by autovacuum (short-lived and dropped with the
        round: vacuuming or analysing one would only read it and write its pages out)."""
        for table in PARTITIONED:
            conn.execute(
                sql.SQL(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})"
                    " WITH (autovacuum_enabled = false)"
                ).format(_partition(table, round_id), sql.Identifier(table), sql.Literal(int(round_id)))
            )

    def update_round(self, round_id: int, *, expect_stage: str | None = None, **columns: Any) -> bool:
        """Set columns of a round (stage, deadline, setup, u2, u3, outcome); whether the round was updated.

        With ``expect_stage`` it is a compare-and-set: nothing changes (False) unless the round is in that stage.
        Setting the stage to done or abandoned drops the round's key shares in the same transaction.
        """
        check_round_columns(columns)
        if not columns:
            raise ValueError("update_round needs at least one column")
        query = sql.SQL("UPDATE rounds SET {} WHERE round_id = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns)
        )
        args = [*columns.values(), round_id]
        if expect_stage is not None:
            query, args = query + sql.SQL(" AND stage = %s"), [*args, expect_stage]
        with self.transaction():
            updated = self._execute(query, args) == 1
            if updated and ended(columns):
                self.forget_shares(round_id)
        return updated

    # -- members -------------------------------------------------------------------------------------------------

    def member(self, round_id: int, agent_id: str) -> Member | None:
        """One cohort member, None if the agent is not in the round's cohort."""
        row = self._one(
            "SELECT c_pk, s_pk, key_sig, shared_keys, sent_input, unmasked FROM members"
            " WHERE round_id = %s AND agent_id = %s",
            round_id,
            agent_id,
        )
        if row is None:
            return None
        return Member(bytes(row[0]), bytes(row[1]), bytes(row[2]), bool(row[3]), bool(row[4]), bool(row[5]))

    def add_member(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, key_sig: bytes) -> None:
        """Admit an agent to a round's cohort with its signed round keys."""
        self._execute(
            "INSERT INTO members (round_id, agent_id, c_pk, s_pk, key_sig) VALUES (%s, %s, %s, %s, %s)",
            (round_id, agent_id, c_pk, s_pk, key_sig),
        )

    def _where(self, flags: dict[str, int]) -> tuple[sql.Composable, list[int]]:
        check_member_flags(flags)
        clause = sql.SQL("").join(sql.SQL(" AND {} = %s").format(sql.Identifier(name)) for name in flags)
        return clause, [int(value) for value in flags.values()]

    def member_ids(self, round_id: int, **flags: int) -> list[str]:
        """The ids of a round's members with these flag values (``shared_keys=1``, ...), sorted."""
        clause, values = self._where(flags)
        found = self._all(sql.SQL("SELECT agent_id FROM members WHERE round_id = %s") + clause, round_id, *values)
        return sorted(str(r[0]) for r in found)

    def count_members(self, round_id: int, **flags: int) -> int:
        """How many of a round's members have these flag values."""
        clause, values = self._where(flags)
        return int(
            self._one(sql.SQL("SELECT COUNT(*) FROM members WHERE round_id = %s") + clause, round_id, *values)[0]
        )

    def member_counts(self, round_id: int) -> tuple[int, int, int, int]:
        """(members, of which shared keys, sent inputs, answered the unmask stage)."""
        row = self._one(
            "SELECT COUNT(*), SUM(shared_keys), SUM(sent_input), SUM(unmasked) FROM members WHERE round_id = %s",
            round_id,
        )
        return int(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0)

    def member_keys(self, round_id: int, agent_ids: Sequence[str]) -> dict[str, tuple[bytes, bytes, bytes, bytes]]:
        """(identity key, c_pk, s_pk, signature) of these members."""
        found = self._all(
            "SELECT m.agent_id, a.public_key, m.c_pk, m.s_pk, m.key_sig FROM members m"
            " JOIN agents a ON a.agent_id = m.agent_id WHERE m.round_id = %s AND m.agent_id = ANY(%s)",
            round_id,
            list(agent_ids),
        )
        return {str(a): (bytes(key), bytes(c_pk), bytes(s_pk), bytes(sig)) for a, key, c_pk, s_pk, sig in found}

    def mask_keys(self, round_id: int) -> dict[str, bytes]:
        """Every member's public mask key (s_pk)."""
        found = self._all("SELECT agent_id, s_pk FROM members WHERE round_id = %s", round_id)
        return {str(a): bytes(pk) for a, pk in found}

    # -- shares, inputs, reveals ---------------------------------------------------------------------------------

    def start_relay(self, round_id: int) -> None:
        """Make sure the round's partitions exist and its relay is marked (called as the share-keys stage opens;
        :meth:`add_round` already did both, so this only re-arms a round created before that was so)."""
        with self.transaction(), self._conn() as conn:
            self._create_partitions(conn, round_id)
            conn.execute("INSERT INTO relays (round_id) VALUES (%s) ON CONFLICT DO NOTHING", (round_id,))

    def relay_intact(self, round_id: int) -> bool:
        """Whether the round's relay (its cohort, key shares, partial sums) holds everything written since the round
        opened: False once a crash of the server emptied the unlogged tables (the round's mark with them)."""
        return self._one("SELECT 1 FROM relays WHERE round_id = %s", round_id) is not None

    def add_shares(self, round_id: int, sender: str, shares: dict[str, bytes]) -> None:
        """Store a member's encrypted shares and mark it as having shared keys (atomically)."""
        with self.transaction(), self._conn() as conn:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO shares (round_id, sender, recipient, ciphertext) VALUES (%s, %s, %s, %s)",
                    [(round_id, sender, to, blob) for to, blob in shares.items()],
                )
            conn.execute("UPDATE members SET shared_keys = 1 WHERE round_id = %s AND agent_id = %s", (round_id, sender))

    def all_shared_keys(self, round_id: int) -> bool:
        """Whether every member of the round has shared keys."""
        return bool(self._one("SELECT COUNT(*) = SUM(shared_keys) FROM members WHERE round_id = %s", round_id)[0])

    def inbox(self, round_id: int, recipient: str, senders: Sequence[str]) -> dict[str, bytes]:
        """The shares addressed to ``recipient`` by those of ``senders`` (its neighbours) that shared keys, by sender:
        one primary-key lookup per sender (no index by recipient to update per share)."""
        found = self._all(
            "SELECT s.sender, s.ciphertext FROM shares s JOIN members m"
            " ON m.round_id = s.round_id AND m.agent_id = s.sender"
            " WHERE s.round_id = %s AND s.sender = ANY(%s) AND s.recipient = %s AND m.shared_keys = 1",
            round_id,
            list(senders),
            recipient,
        )
        return {str(s): bytes(c) for s, c in found}

    def running_sum(self, round_id: int) -> bytes | None:
        """The stored sum of a round's masked inputs (uint32 little-endian)."""
        row = self._one("SELECT total FROM sums WHERE round_id = %s", round_id)
        return None if row is None else bytes(row[0])

    def put_sum(self, round_id: int, total: bytes) -> None:
        """Store (or replace) a round's sum."""
        self._execute(
            "INSERT INTO sums (round_id, total) VALUES (%s, %s)"
            " ON CONFLICT (round_id) DO UPDATE SET total = EXCLUDED.total",
            (round_id, total),
        )

    def delete_sum(self, round_id: int) -> None:
        """Forget a round's sum."""
        self._execute("DELETE FROM sums WHERE round_id = %s", (round_id,))

    def add_input(self, round_id: int, agent_id: str, shard: str) -> None:
        """Mark the member's input as received by ``shard`` (which holds it in its partial sum)."""
        self._execute(
            "UPDATE members SET sent_input = 1, shard = %s WHERE round_id = %s AND agent_id = %s",
            (shard, round_id, agent_id),
        )

    def input_shards(self, round_id: int) -> dict[str, int]:
        """How many inputs of the round each shard received (by the members' marks)."""
        found = self._all(
            "SELECT shard, COUNT(*) FROM members WHERE round_id = %s AND sent_input = 1 GROUP BY shard", round_id
        )
        return {str(shard): int(n) for shard, n in found}

    def put_partial(self, round_id: int, shard: str, total: bytes, agents: Sequence[str], written: float) -> None:
        """Store (or replace) a shard's checkpoint: its partial sum (uint32 little-endian) and the agents in it."""
        self._execute(
            "INSERT INTO partials (round_id, shard, total, agents, n_agents, written) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (round_id, shard) DO UPDATE SET total = EXCLUDED.total, agents = EXCLUDED.agents,"
            " n_agents = EXCLUDED.n_agents, written = EXCLUDED.written",
            (round_id, shard, total, json.dumps(list(agents)), len(agents), written),
        )

    def partials(self, round_id: int) -> list[tuple[str, bytes, list[str]]]:
        """(shard, partial sum, agents in it) of every checkpoint of the round, by shard."""
        found = self._all(
            'SELECT shard, total, agents FROM partials WHERE round_id = %s ORDER BY shard COLLATE "C"', round_id
        )
        return [(str(shard), bytes(total), list(json.loads(agents))) for shard, total, agents in found]

    def partial_counts(self, round_id: int) -> dict[str, int]:
        """How many agents each shard's checkpoint of the round holds (without reading the sums)."""
        found = self._all("SELECT shard, n_agents FROM partials WHERE round_id = %s", round_id)
        return {str(shard): int(n) for shard, n in found}

    def add_reveals(self, round_id: int, holder: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares and mark it as having answered (atomically)."""
        with self.transaction(), self._conn() as conn:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO reveals (round_id, holder, owner, kind, share) VALUES (%s, %s, %s, %s, %s)",
                    [(round_id, holder, o, "b", s) for o, s in b_shares.items()]
                    + [(round_id, holder, o, "s", s) for o, s in s_shares.items()],
                )
            conn.execute("UPDATE members SET unmasked = 1 WHERE round_id = %s AND agent_id = %s", (round_id, holder))

    def reveals(self, round_id: int) -> list[tuple[str, str, str, bytes]]:
        """(holder, owner, kind, share) of every revealed share of the round, by holder."""
        found = self._all(
            'SELECT holder, owner, kind, share FROM reveals WHERE round_id = %s ORDER BY holder COLLATE "C"',
            round_id,
        )
        return [(str(h), str(o), str(k), bytes(s)) for h, o, k, s in found]

    def forget_shares(self, round_id: int) -> None:
        """Forget a round's relay once it ended: drop its partitions (cohort members, encrypted and revealed shares),
        its mark and its shards' partial sums (the round's outcome keeps the cohort's counts)."""
        with self.transaction(), self._conn() as conn:
            for table in PARTITIONED:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_partition(table, round_id)))
            conn.execute("DELETE FROM relays WHERE round_id = %s", (round_id,))
            conn.execute("DELETE FROM partials WHERE round_id = %s", (round_id,))

    # -- enrollment (issue 14.4; the same three methods as the SQLite store's) ------------------------------------

    def add_enrollment_tokens(self, token_hashes: Sequence[str], created: float) -> None:
        """Store the hashes of new one-time enrollment tokens (all or none)."""
        with self.transaction(), self._conn() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO enrollment (token_hash, created) VALUES (%s, %s)", [(h, created) for h in token_hashes]
            )

    def claim_enrollment(self, token_hash: str, agent_id: str, used_at: float) -> str:
        """Use a token for ``agent_id``: "claimed" (now, or before by this same agent), "used" (by another agent) or
        "unknown". One statement decides, so two agents racing for one token cannot both get it."""
        claimed = self._execute(
            "UPDATE enrollment SET agent_id = %s, used_at = %s WHERE token_hash = %s AND agent_id IS NULL",
            (agent_id, used_at, token_hash),
        )
        if claimed == 1:
            return "claimed"
        row = self._one("SELECT agent_id FROM enrollment WHERE token_hash = %s", token_hash)
        if row is None:
            return "unknown"
        return "claimed" if row[0] == agent_id else "used"

    def enrollment_counts(self) -> tuple[int, int]:
        """(tokens issued, of which used)."""
        row = self._one("SELECT COUNT(*), COUNT(agent_id) FROM enrollment")
        return int(row[0]), int(row[1])


# -- a throwaway server (tests, benchmarks) ---------------------------------------------------------------------

INITDB_OPTIONS = ("-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
BINARY_FOLDERS = ("/usr/local/bin", "/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (no binaries, or they fail): the reason is the message."""


def server_binaries() -> dict[str, str]:
    """Paths of initdb and postgres: on PATH, else in the usual folders (the newest major version first)."""
    found: dict[str, str] = {}
    for name in ("initdb", "postgres"):
        candidates = [shutil.which(name)]
        for pattern in BINARY_FOLDERS:
            candidates += sorted(glob.glob(os.path.join(pattern, name)), reverse=True)
        path = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
        if path is None:
            raise ServerUnavailable(
                f"no PostgreSQL server binaries ({name} is neither on PATH nor in {', '.join(BINARY_FOLDERS)}); "
                "install the postgresql package"
            )
        found[name] = path
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def temporary_server(settings: Mapping[str, str] | None = None, *, timeout: float = 60.0) -> Iterator[str]:
    """A new PostgreSQL server on 127.0.0.1 in a temporary folder; yields the URL of its ``postgres`` database (user
    ``persona``, no password), then stops it and removes the folder.

    PostgreSQL refuses to run as root: as root the server runs as the unprivileged user ``nobody``. ``settings`` are
    server settings (``-c name=value``). Raises :class:`ServerUnavailable` when there are no binaries or the server
    does not start (with the end of its log).
    """
    binaries = server_binaries()
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="persona-postgres-", dir=_reachable_temp() if as_root else None))
    credentials: dict[str, Any] = {}
    if as_root:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        credentials = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    log = folder / "server.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        initdb = subprocess.run(
            [binaries["initdb"], "-D", str(folder / "data"), "-U", "persona", "--auth=trust", *INITDB_OPTIONS],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **credentials,
        )
        if initdb.returncode != 0:
            raise ServerUnavailable(f"initdb failed ({initdb.returncode}): {initdb.stderr.strip()[-800:]}")
        port = _free_port()
        options = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binaries["postgres"],
                    "-D",
                    str(folder / "data"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(folder),
                    *options,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                **credentials,
            )
        url = f"postgresql://persona@127.0.0.1:{port}/postgres"
        give_up = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServerUnavailable(f"postgres exited with {process.returncode}: {_tail(log)}")
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError as error:
                if time.monotonic() > give_up:
                    raise ServerUnavailable(
                        f"postgres did not accept connections in {timeout:.0f} s: {error}"
                    ) from error
                time.sleep(0.1)
        yield url
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, stop cleanly
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _reachable_temp() -> str:
    """The temporary folder, if every folder above it lets other users through (``nobody`` must reach the data
    folder), else /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if all(folder.stat().st_mode & 0o001 for folder in (base, *base.parents)):
        return str(base)
    return "/tmp"


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace").strip()[-800:]
    except OSError:
        return "(no log)"


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; the URL of the new database."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server_url.rsplit("/", 1)[0] + "/" + name
