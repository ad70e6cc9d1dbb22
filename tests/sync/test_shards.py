"""Sharded aggregation (issue 14, item 3), in-process on both backends: several Rounds objects over one store are
several coordinator processes (shards), each summing the masked inputs it accepts; the leader adds their checkpoints.

Real secure aggregation throughout (each agent an :class:`AgentSession` with its own keys); the unmasked total is
checked against the exact sum of the agents' quantized contributions.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.postgres import create_database
from sync.coordinator.rounds import Rounds
from sync.coordinator.service import Coordinator
from sync.coordinator.shards import Shard, closing_key
from sync.protocol import secagg

SIZE = 200
N = 8
IDENTITIES = [Identity.generate() for _ in range(N)]
CONTRIBUTIONS = [np.random.default_rng(i).normal(0, 0.05, SIZE + 1) for i in range(N)]


@pytest.fixture(params=("sqlite", "postgresql"))
def db_for_each(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A maker of fresh ``--db`` values of one backend (SQLite files, or databases on the session's server)."""
    count = itertools.count()

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / f'c{next(count)}.sqlite3'}"
        return create_database(str(request.getfixturevalue("postgres_server")), f"test_{uuid.uuid4().hex[:16]}")

    return make


@dataclass
class Cluster:
    """One leader (a Coordinator) and follower shards over the same store, on a clock the test moves."""

    coordinator: Coordinator
    shards: list[Rounds]
    now: list[float]

    def call(self, shard: int, method: str, *args: Any) -> Any:
        """One request to one shard (``Rounds.METHOD(*args)``), in one transaction."""
        with self.coordinator.lock, self.coordinator.state.transaction():
            return getattr(self.shards[shard], method)(*args)

    def tick(self, *followers: int) -> None:
        """The followers' ticks (checkpoints when due), then the leader's."""
        for shard in followers:
            self.call(shard, "follow")
        self.coordinator.tick()


def _cluster(db: str, shards: int) -> Cluster:
    now = [1_000_000.0]
    config = CoordinatorConfig(
        db=db,
        vector_size=SIZE,
        min_cohort=3,
        target_cohort=N,
        over_selection=0.0,
        masked_input_s=600,
        checkpoint_s=0,  # only when the stage closes: the test decides when shards write
        checkpoint_grace_s=5,
    )
    coordinator = Coordinator(config, clock=lambda: now[0])
    followers = [
        Rounds(
            config,
            coordinator.state,
            coordinator.publisher,
            coordinator.vector_size,
            clock=lambda: now[0],
            notify=lambda: None,
            shard=Shard(),
            is_leader=lambda: False,
        )
        for _ in range(shards - 1)
    ]
    with coordinator.state.transaction():
        for identity in IDENTITIES:
            coordinator.state.add_agent(identity.agent_id, identity.public, 0, 0.0)
    return Cluster(coordinator, [coordinator.rounds, *followers], now)


def _round_until_inputs(cluster: Cluster, shards: int) -> tuple[int, list[secagg.AgentSession], secagg.RoundSetup]:
    """Open a round (a fixed public seed), and run every agent through advertise, shares and its masked input, agent
    ``i`` talking to shard ``i % shards``."""
    cluster.coordinator.checkin(IDENTITIES[0].agent_id, 0)  # an agent waiting: the leader opens a round
    cluster.tick()
    round_id = int(cluster.coordinator.status()["round"]["round_id"])
    sessions = []
    for i, identity in enumerate(IDENTITIES):
        session = secagg.AgentSession(identity.agent_id, identity.key, round_id)
        c_pk, s_pk, sig = session.advertise()
        cluster.call(i % shards, "advertise", round_id, identity.agent_id, c_pk, s_pk, sig)
        sessions.append(session)
    cluster.tick(*range(1, shards))
    setup: secagg.RoundSetup | None = None
    for i, session in enumerate(sessions):
        setup, peers = cluster.call(i % shards, "setup", round_id, session.agent_id)
        shares = session.share_keys(setup, peers)
        cluster.call(i % shards, "post_shares", round_id, session.agent_id, shares)
    cluster.tick(*range(1, shards))
    assert setup is not None
    for i, session in enumerate(sessions):
        u2, inbox = cluster.call(i % shards, "inbox", round_id, session.agent_id)
        masked = session.masked_input(u2, inbox, CONTRIBUTIONS[i])
        cluster.call(i % shards, "post_input", round_id, session.agent_id, masked)
    return round_id, sessions, setup


def _unmask(cluster: Cluster, round_id: int, sessions: list[secagg.AgentSession], shards: int) -> list[str]:
    u2, u3 = cluster.call(0, "survivors", round_id, sessions[0].agent_id)
    for i, session in enumerate(sessions):
        if session.agent_id in u3:
            b, s = session.unmask(u2, u3)
            cluster.call(i % shards, "post_unmask", round_id, session.agent_id, b, s)
    cluster.tick()
    return list(u3)


def _expected(setup: secagg.RoundSetup, agents: list[int]) -> np.ndarray[Any, np.dtype[np.int64]]:
    total: np.ndarray[Any, np.dtype[np.int64]] = np.sum(
        [setup.quantization.integers(CONTRIBUTIONS[i]) for i in agents], axis=0, dtype=np.int64
    )
    return total


def test_one_shard_and_four_shards_unmask_bit_identical_totals(
    db_for_each: Callable[[], str], monkeypatch: Any
) -> None:
    monkeypatch.setattr(secagg, "new_round_seed", lambda: bytes(range(32)))  # the same rotation in both runs
    totals = []
    for shards in (1, 4):
        cluster = _cluster(db_for_each(), shards)
        try:
            round_id, sessions, setup = _round_until_inputs(cluster, shards)
            state = cluster.coordinator.state
            assert state.running_sum(round_id) is None  # nothing summed in the database while inputs arrive
            assert state.input_shards(round_id) == {
                s.shard.shard_id: len(range(k, N, shards)) for k, s in enumerate(cluster.shards)
            }
            cluster.tick(*range(1, shards))  # everyone answered: the leader marks the round closing
            assert state.meta(closing_key(round_id)) is not None
            cluster.tick(*range(1, shards))  # the followers see the mark and checkpoint, then the leader closes
            assert cluster.coordinator.round_info(round_id)["stage"] == "unmask"
            assert len(state.partials(round_id)) == shards
            _unmask(cluster, round_id, sessions, shards)
            info = cluster.coordinator.round_info(round_id)
            assert info["stage"] == "done", info
            total = cluster.coordinator.unmasked_sum(round_id)
            assert np.array_equal(total, _expected(setup, list(range(N))))
            assert state.count_rows("partials", round_id) == 0  # the partial sums go with the round
            totals.append(total)
        finally:
            cluster.coordinator.close()
    assert totals[0].dtype == totals[1].dtype and totals[0].tobytes() == totals[1].tobytes()


def test_a_shard_that_dies_before_its_checkpoint_turns_its_agents_into_dropouts(
    db_for_each: Callable[[], str],
) -> None:
    shards = 4
    cluster = _cluster(db_for_each(), shards)
    try:
        round_id, sessions, setup = _round_until_inputs(cluster, shards)
        state = cluster.coordinator.state
        dead = cluster.shards.pop()  # shard 3 dies holding agents 3 and 7: it never checkpoints
        cluster.tick(1, 2)
        assert state.meta(closing_key(round_id)) is not None  # everyone answered: the leader started closing
        lost = [sessions[i].agent_id for i in range(shards - 1, N, shards)]
        assert sorted(dead.shard.agents) == sorted(lost)
        cluster.tick(1, 2)
        assert cluster.coordinator.round_info(round_id)["stage"] == "masked_input"  # waiting for shard 3
        cluster.now[0] += 6  # the grace period passes
        cluster.tick(1, 2)
        assert cluster.coordinator.round_info(round_id)["stage"] == "unmask"
        assert set(state.member_ids(round_id, sent_input=1)) >= set(lost)  # they did send: the sum lost them
        u3 = _unmask(cluster, round_id, sessions, shards)
        assert set(u3).isdisjoint(lost) and len(u3) == N - len(lost)
        info = cluster.coordinator.round_info(round_id)
        assert info["stage"] == "done" and info["outcome"]["survivors"] == N - len(lost), info
        assert info["masked_inputs"] == N  # the cohort's counts outlive it (PostgreSQL forgets the cohort)
        survivors = [i for i in range(N) if sessions[i].agent_id not in lost]
        assert np.array_equal(cluster.coordinator.unmasked_sum(round_id), _expected(setup, survivors))
    finally:
        cluster.coordinator.close()


def test_a_restored_shard_forgets_the_inputs_of_a_rolled_back_request() -> None:
    shard = Shard("s")
    shard.add(0, "a", np.array([1, 2], dtype=np.uint32), 0xFF)
    saved = shard.snapshot()
    shard.add(0, "b", np.array([255, 255], dtype=np.uint32), 0xFF)
    assert shard.total is not None and shard.total.tolist() == [0, 1] and shard.agents == ["a", "b"]
    shard.restore(saved)  # the request that added b rolled back
    assert shard.total is not None and shard.total.tolist() == [1, 2] and shard.agents == ["a"]
    shard.add(1, "c", np.array([7, 7], dtype=np.uint32), 0xFF)  # a new round starts a new partial sum
    assert shard.round_id == 1 and shard.agents == ["c"] and shard.dirty(1) and not shard.holds(0)
    shard.restore(saved)
    assert shard.round_id == 0 and shard.agents == ["a"]
