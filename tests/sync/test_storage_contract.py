"""The storage contract: every method of :class:`CoordinatorStore` behaves the same over SQLite and over a real
PostgreSQL server (started once for the session by ``tests/sync/conftest.py``), a full round runs through the real
HTTP app on PostgreSQL, and ``--db`` takes the forms it documents and refuses others with a clear error.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sync.client.http_client import RoundResult
from sync.coordinator.cli import main as coordinator_main
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import coordinator_process, free_port, serve_in_thread
from sync.coordinator.service import Coordinator
from sync.coordinator.state import SqliteStore
from sync.coordinator.storage import CoordinatorStore, DbLocation, Published, open_store, parse_db, redacted
from sync.protocol.wire import shared_message
from tests.sync.helpers import cohort_round, noise

# -- meta, agents, published -------------------------------------------------------------------------------------


def test_meta_round_trips_and_is_replaced(store: CoordinatorStore) -> None:
    assert store.meta("signing_key") is None
    store.put_meta("signing_key", b"\x00first")
    store.put_meta("signing_key", b"\x01second")
    assert store.meta("signing_key") == b"\x01second"
    assert store.count_rows("meta") == 1


def test_agents_register_and_consume_nonces(store: CoordinatorStore) -> None:
    assert store.agent("a1") is None
    store.add_agent("a1", b"k" * 32, 1_700_000_000_000_000_000, 12.5)  # nanosecond nonces fit
    store.set_nonce("a1", 1_700_000_000_000_000_001)
    assert store.agent("a1") == (b"k" * 32, 1_700_000_000_000_000_001)
    store.set_nonce("nobody", 5)  # an unknown agent changes nothing
    assert store.count_rows("agents") == 1


def test_published_versions_are_numbered_and_kept(store: CoordinatorStore) -> None:
    assert store.latest_published() is None and store.latest_vector() is None and store.next_version() == 0
    store.add_published(Published(0, "aa", b"sig0", None), b"\x00" * 16, 1.0)
    store.add_published(Published(1, "bb", b"sig1", 7), b"\x01" * 16, 2.0)
    assert store.next_version() == 2
    assert store.latest_published() == Published(1, "bb", b"sig1", 7)
    assert store.latest_vector() == b"\x01" * 16
    assert store.published_vector(0) == b"\x00" * 16
    assert store.published_vector(5) is None


# -- rounds ------------------------------------------------------------------------------------------------------


def test_rounds_open_update_and_compare_and_set(store: CoordinatorStore) -> None:
    assert store.open_round() is None and store.last_round_id() is None
    store.add_round(0, 100.0, b"seed0", 0, 1.0)
    row = store.open_round()
    assert row == {
        "round_id": 0,
        "stage": "advertise",
        "deadline": 100.0,
        "seed": b"seed0",
        "base_version": 0,
        "setup": None,
        "u2": None,
        "u3": None,
        "outcome": None,
        "created": 1.0,
    }
    assert store.update_round(0, stage="share_keys", deadline=130.0, setup='{"cohort": []}')
    assert not store.update_round(0, expect_stage="advertise", stage="masked_input")  # lost the race: unchanged
    assert store.round(0) == {**row, "stage": "share_keys", "deadline": 130.0, "setup": '{"cohort": []}'}
    assert store.update_round(0, expect_stage="share_keys", stage="masked_input", u2='["a"]')
    assert not store.update_round(9, stage="done")  # no such round
    assert store.update_round(0, expect_stage="masked_input", stage="abandoned", outcome='{"abandoned": "test"}')
    assert store.open_round() is None
    store.add_round(1, 200.0, b"seed1", 0, 2.0)
    opened = store.open_round()
    assert opened is not None and opened["round_id"] == 1 and store.last_round_id() == 1
    with pytest.raises(ValueError, match="not a round column: seed"):
        store.update_round(1, seed=b"other")
    with pytest.raises(ValueError, match="not a member flag: stage"):
        store.member_ids(1, stage=1)
    with pytest.raises(ValueError, match="not a coordinator table"):
        store.count_rows("rounds; DROP TABLE rounds")


# -- members, shares, inputs, reveals ----------------------------------------------------------------------------


def _cohort(store: CoordinatorStore, round_id: int, agents: list[str]) -> None:
    for agent in agents:
        if store.agent(agent) is None:
            store.add_agent(agent, f"id-{agent}".encode(), 0, 0.0)
        store.add_member(round_id, agent, f"c-{agent}".encode(), f"s-{agent}".encode(), f"sig-{agent}".encode())


def test_members_flags_counts_and_keys(store: CoordinatorStore) -> None:
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    _cohort(store, 0, ["b", "a", "c"])
    assert store.member(0, "zz") is None
    assert store.member(0, "a") == (b"c-a", b"s-a", b"sig-a", False, False, False)
    assert store.member_ids(0) == ["a", "b", "c"]
    assert store.member_counts(0) == (3, 0, 0, 0)
    assert store.member_keys(0, ["a", "c", "zz"]) == {
        "a": (b"id-a", b"c-a", b"s-a", b"sig-a"),
        "c": (b"id-c", b"c-c", b"s-c", b"sig-c"),
    }
    assert store.mask_keys(0) == {"a": b"s-a", "b": b"s-b", "c": b"s-c"}
    assert not store.all_shared_keys(0)
    store.add_shares(0, "a", {"b": b"a->b", "c": b"a->c"})
    store.add_shares(0, "b", {"a": b"b->a", "c": b"b->c"})
    assert store.member_ids(0, shared_keys=1) == ["a", "b"]
    assert store.member_ids(0, shared_keys=0) == ["c"]
    assert store.count_members(0, shared_keys=1, sent_input=0) == 2
    assert store.inbox(0, "c", ["a", "b"]) == {"a": b"a->c", "b": b"b->c"}
    assert store.inbox(0, "c", ["b", "zz"]) == {"b": b"b->c"}  # only the senders asked for
    assert store.inbox(0, "a", ["c"]) == {} and store.inbox(0, "c", []) == {}
    store.add_shares(0, "c", {"a": b"c->a"})
    assert store.all_shared_keys(0)
    assert store.member_counts(0) == (3, 3, 0, 0)
    assert store.member_counts(5) == (0, 0, 0, 0)


def test_inputs_store_only_the_sent_mark_and_the_shard_and_checkpoints_replace(store: CoordinatorStore) -> None:
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    _cohort(store, 0, ["a", "b", "c"])
    assert store.running_sum(0) is None and store.input_shards(0) == {}
    store.add_input(0, "a", "shard-1")
    store.add_input(0, "b", "shard-2")
    store.add_input(0, "c", "shard-2")
    assert store.member_ids(0, sent_input=1) == ["a", "b", "c"]
    assert store.input_shards(0) == {"shard-1": 1, "shard-2": 2}
    assert store.running_sum(0) is None and store.count_rows("partials") == 0  # no sum written per input
    store.put_partial(0, "shard-2", b"\x01" * 16, ["b"], 1.0)
    store.put_partial(0, "shard-2", b"\x02" * 16, ["b", "c"], 2.0)  # a later checkpoint replaces the earlier
    store.put_partial(0, "shard-1", b"\x03" * 16, ["a"], 2.0)
    assert store.partials(0) == [("shard-1", b"\x03" * 16, ["a"]), ("shard-2", b"\x02" * 16, ["b", "c"])]
    assert store.partial_counts(0) == {"shard-1": 1, "shard-2": 2} and store.partials(1) == []
    store.update_round(0, stage="abandoned")  # a round that ends drops its partial sums with its key shares
    assert store.partials(0) == [] and store.count_rows("partials") == 0
    store.put_sum(0, b"\x09" * 16)
    assert store.running_sum(0) == b"\x09" * 16
    store.delete_sum(0)
    assert store.running_sum(0) is None and store.count_rows("sums") == 0


def test_reveals_mark_the_holder_and_are_read_by_holder(store: CoordinatorStore) -> None:
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    _cohort(store, 0, ["a", "b", "c"])
    store.add_reveals(0, "b", {"a": b"b:a"}, {"c": b"b:c"})
    store.add_reveals(0, "a", {"b": b"a:b"}, {})
    assert store.member_ids(0, unmasked=1) == ["a", "b"]
    found = store.reveals(0)
    assert [holder for holder, *_ in found] == ["a", "b", "b"]
    assert sorted(found) == [("a", "b", "b", b"a:b"), ("b", "a", "b", b"b:a"), ("b", "c", "s", b"b:c")]


@pytest.mark.parametrize("end", ["done", "abandoned"])
def test_ending_a_round_drops_its_key_shares_and_only_its_own(store: CoordinatorStore, end: str) -> None:
    for round_id in (0, 1, 2):
        store.add_round(round_id, 100.0, b"seed", 0, 0.0)
        _cohort(store, round_id, ["a", "b"])
        store.add_shares(round_id, "a", {"b": b"a->b"})
        store.add_reveals(round_id, "b", {"a": b"b:a"}, {})
    store.update_round(0, stage="unmask")
    assert store.count_rows("shares", 0) == 1 and store.count_rows("reveals", 0) == 1  # not ended: kept
    store.update_round(0, stage=end)
    assert store.count_rows("shares", 0) == 0 and store.count_rows("reveals", 0) == 0
    assert store.inbox(0, "b", ["a"]) == {} and store.reveals(0) == []
    assert store.inbox(1, "b", ["a"]) == {"a": b"a->b"} and len(store.reveals(1)) == 1
    store.forget_shares(1)
    store.forget_shares(1)  # twice is harmless
    assert store.count_rows("shares", 1) == 0 and store.count_rows("reveals", 1) == 0
    # another round's cohort and relay stay (an ended round's cohort may go: PostgreSQL drops it with the round)
    assert store.member_ids(2, shared_keys=1) == ["a"] and store.inbox(2, "b", ["a"]) == {"a": b"a->b"}
    assert len(store.reveals(2)) == 1


def test_sqlite_zeroes_the_key_shares_of_an_ended_round_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SqliteStore(path)
    store.add_round(0, 100.0, b"seed", 0, 0.0)
    _cohort(store, 0, ["a", "b"])
    store.add_shares(0, "a", {"b": b"ENCRYPTED-SHARE-MARKER" * 8})
    store.add_reveals(0, "b", {"a": b"REVEALED-SHARE-MARKER" * 4}, {})
    store.put_partial(0, "s", b"\x07" * 4096, ["a"], 1.0)
    store.put_partial(0, "s", b"\x08" * 4096, ["a", "b"], 2.0)  # replaces the first: its overflow pages are freed
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = path.read_bytes()
    assert b"ENCRYPTED-SHARE-MARKER" in on_disk and b"REVEALED-SHARE-MARKER" in on_disk  # the check can see them
    store.update_round(0, stage="done")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    on_disk = path.read_bytes()
    assert b"ENCRYPTED-SHARE-MARKER" not in on_disk and b"REVEALED-SHARE-MARKER" not in on_disk


# -- transactions and persistence --------------------------------------------------------------------------------


def test_a_transaction_commits_together_or_not_at_all_and_nests(store: CoordinatorStore) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.put_meta("x", b"1")
        store.add_round(0, 1.0, b"s", 0, 0.0)
        with store.transaction():  # joins the outer transaction
            store.add_agent("a", b"k", 0, 0.0)
        raise RuntimeError("boom")
    assert store.meta("x") is None and store.round(0) is None and store.agent("a") is None
    with store.transaction():
        store.put_meta("x", b"1")
        with store.transaction():
            store.add_agent("a", b"k", 0, 0.0)
    assert store.meta("x") == b"1" and store.agent("a") == (b"k", 0)


def test_the_state_survives_reopening(db_url: str) -> None:
    first = open_store(db_url)
    first.add_round(0, 1.0, b"seed", 0, 0.0)
    _cohort(first, 0, ["a", "b"])
    first.add_shares(0, "a", {"b": b"a->b"})
    first.close()
    again = open_store(db_url)  # the schema is created again over existing tables: nothing lost
    try:
        assert again.member_ids(0, shared_keys=1) == ["a"] and again.inbox(0, "b", ["a"]) == {"a": b"a->b"}
    finally:
        again.close()


def test_enrollment_tokens_register_one_agent_each(store: CoordinatorStore) -> None:
    from sync.coordinator.access import enrollment_store

    tokens = enrollment_store(store)
    tokens.add_enrollment_tokens(["h1", "h2"], 1.0)
    assert tokens.enrollment_counts() == (2, 0)
    assert tokens.claim_enrollment("h1", "agent-a", 2.0) == "claimed"
    assert tokens.claim_enrollment("h1", "agent-a", 3.0) == "claimed"  # the same agent again
    assert tokens.claim_enrollment("h1", "agent-b", 3.0) == "used"
    assert tokens.claim_enrollment("nope", "agent-b", 3.0) == "unknown"
    assert tokens.enrollment_counts() == (2, 1)


# -- --db --------------------------------------------------------------------------------------------------------


def test_db_takes_a_path_a_sqlite_url_or_a_postgresql_url() -> None:
    assert parse_db(Path("state/c.sqlite3")) == DbLocation("sqlite", "state/c.sqlite3")
    assert parse_db("sqlite:///state/c.sqlite3") == DbLocation("sqlite", "state/c.sqlite3")
    assert parse_db("sqlite:////var/lib/c.sqlite3") == DbLocation("sqlite", "/var/lib/c.sqlite3")
    assert parse_db("postgresql://u:pw@db:5432/persona") == DbLocation(
        "postgresql", "postgresql://u:pw@db:5432/persona"
    )
    assert parse_db("postgres://db/persona").kind == "postgresql"
    assert redacted("postgresql://u:pw@db:5432/p?password=pw2&sslmode=require") == (
        "postgresql://u:***@db:5432/p?password=***&sslmode=require"
    )
    for bad in ("mysql://u:secret@db/persona", "sqlite://c.sqlite3", "sqlite:///", "  "):
        with pytest.raises(ValueError, match="--db") as error:
            parse_db(bad)
        assert "secret" not in str(error.value)


def test_serve_refuses_an_unknown_or_unreachable_database_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    unreachable = f"postgresql://persona:hunter2@127.0.0.1:{free_port()}/persona"
    for db, said in (("mysql://db/persona", "mysql:// is not a database"), (unreachable, "cannot use the PostgreSQL")):
        with pytest.raises(SystemExit) as stopped:
            coordinator_main(["serve", "--db", db, "--vector-size", "8"])
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and "hunter2" not in err


def test_serve_runs_on_a_postgresql_url_and_never_prints_its_password(postgres_url: str, tmp_path: Path) -> None:
    with_password = postgres_url.replace("://persona@", "://persona:sekret@")  # the test server trusts 127.0.0.1
    log = tmp_path / "serve.log"
    with coordinator_process(with_password, args=["--vector-size", "8"], log=log) as (url, _process):
        status = httpx.get(f"{url}/status").json()
    assert status["published_version"] == 0
    said = log.read_text()
    assert "state in postgresql://persona:***@127.0.0.1" in said and "sekret" not in said


# -- a full round over HTTP on PostgreSQL ------------------------------------------------------------------------

SIZE = 64


def test_a_full_round_through_the_http_app_on_postgresql(postgres_url: str) -> None:
    config = CoordinatorConfig(
        db=postgres_url, vector_size=SIZE, min_cohort=3, target_cohort=5, over_selection=0.0, sigma=0.5, clip=1.0
    )
    coordinator = Coordinator(config)
    try:
        with serve_in_thread(coordinator) as url:
            results = asyncio.run(cohort_round(url, noise(5, SIZE, 0.05, 5), 40.0, timeout=120.0))
        done = [r for r in results if isinstance(r, RoundResult) and r.status == "done"]
        assert len(done) == 5, results
        round_id, q = done[0].round_id, done[0].quantization
        assert q is not None
        exact = np.sum([r.contribution.vector for r in done if r.contribution is not None], axis=0)
        decoded = q.to_float(coordinator.unmasked_sum(round_id))
        assert np.linalg.norm(decoded - exact) <= len(done) * (q.bound / q.levels) * np.sqrt(exact.size)
        info = coordinator.round_info(round_id)
        assert info["outcome"]["survivors"] == 5 and info["outcome"]["published_version"] == 1
        assert coordinator.state.count_rows("shares") == 0 and coordinator.state.count_rows("reveals") == 0
        replica = Coordinator(config)  # a second process on the same database is a replica: it does not lead
        try:
            assert coordinator.is_leader() and not replica.is_leader()
        finally:
            replica.close()
    finally:
        coordinator.close()
    again = Coordinator(config)  # a restarted coordinator on the same database
    try:
        latest = again.latest()
        assert latest.version == 1 and latest.round_id == round_id
        blob = again.blob(1)
        assert hashlib.sha256(blob).hexdigest() == latest.sha256
        Ed25519PublicKey.from_public_bytes(again.public_key).verify(latest.signature, shared_message(1, latest.sha256))
        assert len(blob) == 4 * SIZE
    finally:
        again.close()
