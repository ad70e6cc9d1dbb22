"""The key-share relay (issue 14: the database's per-round writes must not grow with the cohort).

On PostgreSQL the relay — every agent's encrypted shares for its neighbours and the survivors' revealed shares — is in
UNLOGGED partitions, so it writes no WAL; PostgreSQL empties unlogged tables when it recovers from a crash, so a round
whose relay vanished must be abandoned, never unmasked with shares missing. One test crashes a server of its own
(immediate shutdown, then recovery) to show what a crash leaves; the round tests play the crash by truncating the
unlogged tables, which is what recovery does to them. SQLite keeps the relay in its file, without an index by
recipient (one page of it rewritten per share).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sync.coordinator.postgres import PostgresStore, create_database, server_binaries, temporary_server
from sync.coordinator.rejection import Rejection
from sync.coordinator.rounds import RELAY_LOST
from sync.coordinator.state import SqliteStore
from sync.protocol import secagg
from tests.sync.test_shards import CONTRIBUTIONS, IDENTITIES, Cluster, N, _cluster

RELAY = (
    *("members_r0", "members_r0_pkey", "shares_r0", "shares_r0_pkey", "reveals_r0", "reveals_r0_pkey"),
    *("relays", "relays_pkey", "partials", "sums", "nonces"),
)
LOGGED = ("rounds", "agents", "published", "meta", "enrollment")


def _wal(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


def test_the_relay_is_in_unlogged_partitions_and_writes_no_wal_on_postgresql(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    try:
        store.add_round(0, 100.0, b"seed", 0, 0.0)
        assert store.relay_intact(0)  # armed as the round opens
        store.start_relay(0)  # and again as its share-keys stage opens: nothing changes
        assert store.relay_intact(0)
        with psycopg.connect(postgres_url) as conn:
            found = conn.execute("SELECT relname, relpersistence FROM pg_class").fetchall()
        persistence = {str(name): str(kind) for name, kind in found}
        assert {name: persistence.get(name) for name in RELAY} == dict.fromkeys(RELAY, "u")
        assert {name: persistence.get(name) for name in LOGGED} == dict.fromkeys(LOGGED, "p")
        agents = [f"agent-{i:03d}" for i in range(40)]
        for agent in agents:
            store.add_agent(agent, b"k" * 32, 0, 0.0)
            store.add_member(0, agent, b"c" * 32, b"s" * 32, b"g" * 64)
        payload = 0
        before = _wal(postgres_url)
        for i, agent in enumerate(agents):  # 40 agents x 39 shares of 180 bytes: 281 KB relayed
            shares = {to: bytes([i]) * 180 for to in agents if to != agent}
            store.add_shares(0, agent, shares)
            store.set_nonce(agent, i + 1)
            payload += sum(len(blob) for blob in shares.values())
        wal = _wal(postgres_url) - before
        # No share, mark or nonce is logged: only the 80 commits (~3.7 KB). WAL is the server's, and other work on it
        # (autovacuum, a timed checkpoint's record and first-touch page images) can add a page or two, so the bound is
        # a tenth of what logging the shares would write, not an exact count.
        assert wal < payload // 10, (wal, payload)
        assert store.agent(agents[5]) == (b"k" * 32, 6)  # the nonce consumed, read back
        assert store.inbox(0, agents[0], agents[1:3]) == {agents[1]: b"\x01" * 180, agents[2]: b"\x02" * 180}
        store.update_round(0, stage="abandoned")  # the round ends: its partitions and its mark go
        assert not store.relay_intact(0) and store.count_rows("shares") == 0 and store.count_rows("members") == 0
        with psycopg.connect(postgres_url) as conn:
            for gone in ("members_r0", "shares_r0", "reveals_r0"):
                assert conn.execute("SELECT to_regclass(%s)", (gone,)).fetchone() == (None,)
    finally:
        store.close()


def test_a_database_from_before_the_unlogged_relay_keeps_its_open_rounds(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    store.add_round(1, 100.0, b"seed", 0, 0.0)
    store.update_round(0, stage="done")
    store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE relays")  # as the schema was before it
    again = PostgresStore(postgres_url)
    try:
        assert again.relay_intact(1) and not again.relay_intact(0)  # the open round's (logged) relay was kept
    finally:
        again.close()


def test_a_database_from_before_the_unlogged_cohort_keeps_its_open_rounds_members(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    store.add_member(0, "old", b"c", b"s", b"g")
    store.update_round(0, stage="done")
    store.add_round(1, 100.0, b"seed", 0, 0.0)
    store.add_member(1, "a", b"c", b"s", b"g")
    store.add_input(1, "a", "shard-1")
    store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as the schema was before: one logged table
        conn.execute("CREATE TABLE members_flat AS SELECT * FROM members")
        conn.execute("DROP TABLE members CASCADE")
        conn.execute("ALTER TABLE members_flat RENAME TO members")
        conn.execute("ALTER TABLE members ADD PRIMARY KEY (round_id, agent_id)")
        conn.execute("ALTER TABLE partials SET LOGGED")
        conn.execute("DROP TABLE nonces")
    again = PostgresStore(postgres_url)
    try:
        member = again.member(1, "a")
        assert member is not None and member.sent_input and again.input_shards(1) == {"shard-1": 1}
        assert again.relay_intact(1)
        with psycopg.connect(postgres_url) as conn:
            found = conn.execute("SELECT relname, relkind::text || relpersistence::text FROM pg_class").fetchall()
        kinds = {str(name): str(kind) for name, kind in found}
        assert kinds["members"] == "pp" and kinds["members_r1"] == "ru" and kinds["partials"] == "ru"
        assert "members_logged" not in kinds and kinds["nonces"] == "ru"
    finally:
        again.close()


def _restart_after_crash(url: str, log: Path) -> subprocess.Popen[bytes]:
    """Stop the server of ``url`` as a crash would (immediate shutdown: no checkpoint, recovery at the next start) and
    start it again on the same data folder, port and user; the new server process."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory'), current_setting('port'),"
            " current_setting('unix_socket_directories')"
        ).fetchone()
    assert row is not None
    settings = dict(zip(("data_directory", "port", "unix_socket_directories"), map(str, row), strict=True))
    data = Path(settings["data_directory"])
    os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
    give_up = time.monotonic() + 30
    while (data / "postmaster.pid").exists() and time.monotonic() < give_up:
        time.sleep(0.1)
    owner = data.stat()
    credentials: dict[str, Any] = {}
    if os.geteuid() == 0:  # as temporary_server runs it: as the data folder's owner
        credentials = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                server_binaries()["postgres"],
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                settings["port"],
                "-k",
                settings["unix_socket_directories"],
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"},
            stdout=out,
            stderr=subprocess.STDOUT,
            **credentials,
        )
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            assert server.poll() is None and time.monotonic() < give_up, log.read_text()[-800:]
            time.sleep(0.2)


def test_a_postgresql_crash_empties_the_relay_and_keeps_the_rest(postgres_server: str, tmp_path: Path) -> None:
    del postgres_server  # asked for only to be skipped, saying why, where PostgreSQL cannot run
    with temporary_server() as server_url:  # a server of its own: this test crashes it
        url = create_database(server_url, "crash")
        store = PostgresStore(url)
        store.add_round(0, 100.0, b"seed", 0, 0.0)
        store.add_agent("a", b"k", 3, 0.0)
        store.set_nonce("a", 9)
        store.add_member(0, "a", b"c", b"s", b"g")
        store.add_shares(0, "a", {"b": b"x" * 180})
        store.close()
        restarted = _restart_after_crash(url, tmp_path / "restarted.log")
        try:
            again = PostgresStore(url)
            try:
                row = again.open_round()
                assert row is not None and row["stage"] == "advertise" and again.agent("a") == (b"k", 3)  # logged
                assert again.member(0, "a") is None and again.count_rows("shares", 0) == 0  # the relay is gone,
                assert not again.relay_intact(0)  # and says so
            finally:
                again.close()
        finally:
            restarted.send_signal(signal.SIGINT)
            restarted.wait(timeout=30)
        assert "database system was interrupted" in (tmp_path / "restarted.log").read_text()  # it did recover


def _crash(url: str, round_id: int) -> None:
    """What PostgreSQL's crash recovery does to the relay: every unlogged table emptied."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [sql.Identifier(f"{t}_r{round_id}") for t in ("members", "shares", "reveals")]
        tables += [sql.Identifier(name) for name in ("relays", "partials", "sums", "nonces")]
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))


def _to_masked_input(cluster: Cluster) -> tuple[int, list[secagg.AgentSession]]:
    """A round through advertise and share keys, agent ``i`` on shard ``i % 2``: it is in the masked-input stage."""
    cluster.coordinator.checkin(IDENTITIES[0].agent_id, 0)
    cluster.tick()
    round_id = int(cluster.coordinator.status()["round"]["round_id"])
    sessions = [secagg.AgentSession(identity.agent_id, identity.key, round_id) for identity in IDENTITIES]
    for i, session in enumerate(sessions):
        cluster.call(i % 2, "advertise", round_id, session.agent_id, *session.advertise())
    cluster.tick(1)
    for i, session in enumerate(sessions):
        setup, peers = cluster.call(i % 2, "setup", round_id, session.agent_id)
        cluster.call(i % 2, "post_shares", round_id, session.agent_id, session.share_keys(setup, peers))
    cluster.tick(1)
    assert cluster.coordinator.round_info(round_id)["stage"] == "masked_input"
    return round_id, sessions


def _assert_abandoned_for_the_relay(cluster: Cluster, round_id: int) -> None:
    info = cluster.coordinator.round_info(round_id)
    assert info["stage"] == "abandoned" and info["outcome"]["abandoned"] == RELAY_LOST, info
    assert cluster.coordinator.latest().version == 0  # nothing published
    with pytest.raises(Rejection, match="abandoned"):
        cluster.coordinator.unmasked_sum(round_id)
    assert cluster.coordinator.state.count_rows("shares") == 0


@pytest.mark.parametrize("crash_in", ["masked_input", "unmask"])
def test_a_round_whose_key_shares_vanished_is_abandoned_not_completed(postgres_server: str, crash_in: str) -> None:
    url = create_database(postgres_server, f"test_{uuid.uuid4().hex[:16]}")
    cluster = _cluster(url, 2)
    try:
        round_id, sessions = _to_masked_input(cluster)
        if crash_in == "masked_input":
            _crash(url, round_id)
            with pytest.raises(Rejection, match="key shares were lost") as refused:  # a replica that does not lead
                cluster.call(1, "inbox", round_id, sessions[1].agent_id)
            assert refused.value.status == 409 and refused.value.reason == "round_abandoned"
            cluster.tick(1)  # the leader sees it at its next tick
            _assert_abandoned_for_the_relay(cluster, round_id)
            return
        for i, session in enumerate(sessions):
            u2, inbox = cluster.call(i % 2, "inbox", round_id, session.agent_id)
            cluster.call(
                i % 2, "post_input", round_id, session.agent_id, session.masked_input(u2, inbox, CONTRIBUTIONS[i])
            )
        cluster.tick(1)
        cluster.tick(1)
        assert cluster.coordinator.round_info(round_id)["stage"] == "unmask"
        u2, u3 = cluster.call(0, "survivors", round_id, sessions[0].agent_id)
        assert len(u3) == N
        early = 2  # answers before the crash: those after it hold enough shares to unmask (without the check: done)
        for i, session in enumerate(sessions[:early]):
            cluster.call(i % 2, "post_unmask", round_id, session.agent_id, *session.unmask(u2, u3))
        _crash(url, round_id)  # the early revealed shares are gone, and the cohort with its marks
        for session in sessions[early:]:
            # enough answers arrive after the crash to unmask, but the relay was lost: each is refused, and the
            # leader abandons the round rather than unmask it on what happened to survive
            with pytest.raises(Rejection, match="abandoned") as refused:
                cluster.coordinator.post_unmask(round_id, session.agent_id, *session.unmask(u2, u3))
            assert refused.value.status == 409 and refused.value.reason == "round_abandoned"
            assert session is not sessions[early] or RELAY_LOST in str(refused.value)  # the first one says why
        _assert_abandoned_for_the_relay(cluster, round_id)
    finally:
        cluster.coordinator.close()


def test_sqlite_keeps_no_index_by_recipient_and_reads_an_inbox_by_primary_key(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    with sqlite3.connect(path) as old:  # a file from before: the relay had an index by recipient
        old.execute(
            "CREATE TABLE shares (round_id INTEGER NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
            " ciphertext BLOB NOT NULL, PRIMARY KEY (round_id, sender, recipient))"
        )
        old.execute("CREATE INDEX shares_by_recipient ON shares (round_id, recipient)")
    store = SqliteStore(path)
    try:
        indexes = [
            str(r[0])
            for r in store.db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'shares' AND type = 'index'")
        ]
        assert indexes == ["sqlite_autoindex_shares_1"]  # the primary key's only
        store.add_round(0, 100.0, b"seed", 0, 0.0)
        for agent in ("a", "b", "c"):
            store.add_member(0, agent, b"c", b"s", b"g")
        store.add_shares(0, "a", {"b": b"a->b", "c": b"a->c"})
        plan = " ".join(
            str(r[-1])
            for r in store.db.execute(
                "EXPLAIN QUERY PLAN SELECT ciphertext FROM shares WHERE round_id = ? AND sender IN (?, ?)"
                " AND recipient = ?",
                (0, "a", "b", "c"),
            )
        )
        assert "USING PRIMARY KEY" in plan or "sqlite_autoindex_shares_1" in plan, plan
        assert store.inbox(0, "c", ["a", "b"]) == {"a": b"a->c"} and store.relay_intact(0)
    finally:
        store.close()
