"""Check-in and pace steering (``POST /v1/checkin``), rounds opening on the coordinator's schedule, and signed reads
that write nothing: a real coordinator over a real SQLite file, driven with a hand-moved clock where the schedule
matters (no timing assertions), and over HTTP on 127.0.0.1 where the wire matters."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sync.client.http_client import AgentClient
from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.pacing import JITTER_SHARE, WINDOW_END_SHARE
from sync.coordinator.rejection import Rejection
from sync.coordinator.service import Coordinator
from sync.errors import ComeBackLater
from sync.protocol import secagg
from sync.protocol.wire import API, JSON_TYPE, advertise_body, b64e, request_message

START = 1_800_000_000.0
STAGES = {"advertise_s": 20.0, "share_keys_s": 30.0, "masked_input_s": 60.0, "unmask_s": 30.0}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _coordinator(tmp_path: Path, clock: Clock | None = None, **overrides: Any) -> Coordinator:
    settings: dict[str, Any] = {
        "db": tmp_path / "coordinator.sqlite3",
        "vector_size": 16,
        "min_cohort": 3,
        "target_cohort": 10,
        "over_selection": 0.3,
        "round_interval_s": 600.0,
        **STAGES,
    }
    settings.update(overrides)
    if clock is None:
        return Coordinator(CoordinatorConfig(**settings))
    return Coordinator(CoordinatorConfig(**settings), clock=clock)


def test_rounds_open_on_the_schedule_when_agents_wait_not_when_an_agent_asks(tmp_path: Path) -> None:
    clock = Clock()
    coordinator = _coordinator(tmp_path, clock)
    coordinator.tick()  # nobody is waiting: no round, and reading the current round opens none
    with pytest.raises(Rejection, match="no_round"):
        coordinator.current_round()
    assert coordinator.checkin("a", 0)["admit"]["round_id"] == 0  # the first slot is now: the first check-in takes it
    clock.now += STAGES["advertise_s"] + 1
    coordinator.tick()  # one agent is too few: abandoned at its deadline
    assert coordinator.round_info(0)["stage"] == "abandoned"
    clock.now = START + 599
    for agent in ("a", "b", "c"):  # agents asking before the next slot do not open it: they are told to come back
        assert coordinator.checkin(agent, 0)["retry_after"]["round_id"] == 1
    info = coordinator.current_round()
    assert info["round_id"] == 0 and info["next_open_at"] == START + 600
    assert coordinator.state.last_round_id() == 0
    clock.now = START + 600
    coordinator.tick()  # the slot's time: the tick opens it for the three waiting agents
    opened = coordinator.current_round()
    assert (opened["round_id"], opened["stage"]) == (1, "advertise") and opened["deadline"] == START + 620
    clock.now += STAGES["advertise_s"]
    coordinator.tick()
    clock.now = START + 1200
    coordinator.tick()  # a slot nobody waits for opens no round ...
    assert coordinator.state.last_round_id() == 1
    clock.now = START + 1250  # ... and an agent arriving after its window waits for the next slot
    retry = coordinator.checkin("d", 0)["retry_after"]
    assert retry["round_id"] == 2 and START + 1800 <= retry["not_before"] < START + 1820
    assert coordinator.state.last_round_id() == 1
    coordinator.close()


def test_admission_gives_the_round_and_its_stage_deadlines(tmp_path: Path) -> None:
    clock = Clock()
    coordinator = _coordinator(tmp_path, clock)
    answer = coordinator.checkin("agent-1", 0)
    admit = answer["admit"]
    assert admit["round_id"] == 0 and admit["stage"] == "advertise" and answer["now"] == START
    assert admit["privacy"] == coordinator.rounds.privacy.as_json()
    deadlines = admit["deadlines"]
    assert deadlines["advertise"] == START + 20
    assert deadlines["share_keys"] == START + 50
    assert deadlines["masked_input"] == START + 110
    assert deadlines["unmask"] == START + 140
    assert coordinator.checkin("agent-1", 0)["admit"]["round_id"] == 0  # asking again keeps the seat
    coordinator.close()


def test_a_base_three_versions_behind_is_told_to_fetch_the_newest_two_behind_may_contribute(tmp_path: Path) -> None:
    clock = Clock()
    coordinator = _coordinator(tmp_path, clock)
    with coordinator.state.transaction():
        for _ in range(3):
            coordinator.publisher.publish(np.zeros(16, dtype=np.float32), None)
    assert coordinator.latest().version == 3
    update = coordinator.checkin("old", 0)
    assert "admit" not in update and update["update"]["latest_version"] == 3
    assert coordinator.state.last_round_id() is None  # a refused check-in is no reason to open a round
    assert "fetch version 3" in update["update"]["detail"]
    assert coordinator.checkin("recent", 1)["admit"]["round_id"] == 0
    assert coordinator.checkin("newest", 3)["admit"]["round_id"] == 0
    coordinator.close()


def test_come_back_window_lies_in_the_advertise_stage_of_a_coming_round(tmp_path: Path) -> None:
    clock = Clock()
    coordinator = _coordinator(tmp_path, clock)
    assert "admit" in coordinator.checkin("first", 0)
    clock.now += 25  # round 0's advertise stage closed (too few came): the next slot is at START + 600
    answer = coordinator.checkin("late", 0)
    retry = answer["retry_after"]
    assert retry["round_id"] == 1 and "after_round" not in retry
    opens = START + 600
    assert opens <= retry["not_before"] <= opens + JITTER_SHARE * STAGES["advertise_s"]
    assert retry["not_after"] == opens + WINDOW_END_SHARE * STAGES["advertise_s"]
    clock.now += 60
    assert coordinator.checkin("late", 0)["retry_after"] == retry  # asking again: the same window (seeded)
    clock.now = retry["not_before"]
    coordinator.tick()
    assert coordinator.checkin("late", 0)["admit"]["round_id"] == 1  # coming back in the window: admitted
    coordinator.close()


def test_pace_steering_spreads_a_burst_of_check_ins_over_rounds_at_the_target(tmp_path: Path) -> None:
    """200 agents check in within one second while round 0 is in advertise: 13 get its seats; the windows given to
    the other 187 put about target_cohort (10) agents into each following round interval, never more."""
    clock = Clock()
    coordinator = _coordinator(tmp_path, clock)
    target, interval = 10, 600.0
    answers = {}
    for i in range(200):
        clock.now = START + i / 200
        answers[f"agent-{i:03d}"] = coordinator.checkin(f"agent-{i:03d}", 0)
    admitted = [a for a, answer in answers.items() if "admit" in answer]
    assert len(admitted) == coordinator.config.max_cohort == 13
    windows = {a: answer["retry_after"] for a, answer in answers.items() if "retry_after" in answer}
    assert len(windows) == 187
    # arrivals per round interval: where each agent's window starts, binned by the schedule's intervals
    per_interval = Counter(math.floor((w["not_before"] - START) / interval) for w in windows.values())
    assert sorted(per_interval) == list(range(1, 20))  # ⌈187 / 10⌉ = 19 intervals, none skipped
    assert max(per_interval.values()) == target  # never more than the target in one interval
    assert sum(1 for n in per_interval.values() if n == target) == 18  # all full but the last (7)
    for w in windows.values():
        opens = START + interval * w["round_id"]
        assert opens <= w["not_before"] <= w["not_after"] <= opens + STAGES["advertise_s"]
    # and within a round the arrivals are jittered over the first half of its advertise stage, not all at once
    offsets = [w["not_before"] - START - interval * w["round_id"] for w in windows.values()]
    assert len({round(o, 3) for o in offsets}) > 150
    assert np.std(offsets) > 0.2 * JITTER_SHARE * STAGES["advertise_s"]
    # without pace steering all 187 would come back at the next opening; here none of it is crowded
    assert per_interval[1] == target
    coordinator.close()


def _signed(identity: Identity, method: str, path: str, body: bytes, nonce: int) -> dict[str, str]:
    signature = identity.key.sign(request_message(method, path, nonce, body))
    return {"x-agent-id": identity.agent_id, "x-nonce": str(nonce), "x-signature": b64e(signature)}


def test_a_signed_read_writes_no_nonce_and_a_replayed_write_is_refused(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path, round_interval_s=0.0)
    me = Identity.generate()
    with serve_in_thread(coordinator) as url, httpx.Client(base_url=url, timeout=30.0) as http:
        body = json.dumps({"public_key": b64e(me.public)}).encode()
        headers = {"content-type": JSON_TYPE, **_signed(me, "POST", f"{API}/agents", body, 10)}
        assert http.post(f"{API}/agents", content=body, headers=headers).status_code == 201
        assert coordinator.state.agent(me.agent_id) == (me.public, 10)
        setup = f"{API}/rounds/0/setup"
        for nonce in (20, 20, 15):  # reads: authenticated, answered (no round yet), nothing written
            answer = http.get(setup, headers=_signed(me, "GET", setup, b"", nonce))
            assert (answer.status_code, answer.json()["error"]) == (404, "unknown_round")
        assert coordinator.state.agent(me.agent_id) == (me.public, 10)
        stale = http.get(setup, headers=_signed(me, "GET", setup, b"", 10))  # not above the last one consumed
        assert (stale.status_code, stale.json()["error"]) == (409, "replayed_nonce")
        checkin = f"{API}/checkin"
        body = json.dumps({"base_version": 0}).encode()
        headers = {"content-type": JSON_TYPE, **_signed(me, "POST", checkin, body, 30)}
        first = http.post(checkin, content=body, headers=headers)
        assert first.status_code == 200 and first.json()["admit"]["round_id"] == 0
        assert coordinator.state.agent(me.agent_id) == (me.public, 30)  # a write consumes its nonce
        replayed = http.post(checkin, content=body, headers=headers)
        assert (replayed.status_code, replayed.json()["error"]) == (409, "replayed_nonce")
        bad = json.dumps({"base_version": -1}).encode()
        refused = http.post(
            checkin, content=bad, headers={"content-type": JSON_TYPE, **_signed(me, "POST", checkin, bad, 31)}
        )
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_body")
    coordinator.close()


class LosesOneAnswer(httpx.AsyncBaseTransport):
    """Passes every request to the coordinator but loses the answer to the first advertise (a dropped connection
    after the coordinator accepted it)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/advertise") and not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset after the coordinator answered", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_the_agent_checks_in_comes_back_later_and_a_retried_write_lands_once(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path, target_cohort=3, over_selection=0.0, advertise_s=3600.0)
    with serve_in_thread(coordinator) as url:

        async def scenario() -> tuple[list[AgentClient], ComeBackLater, LosesOneAnswer]:
            transport = LosesOneAnswer()
            async with httpx.AsyncClient(base_url=url, timeout=30.0, transport=transport) as http:
                agents = [AgentClient(http, Identity.generate(), max_checkin_wait=0.0) for _ in range(4)]
                await asyncio.gather(*(a.register() for a in agents))
                await agents[0].fetch_shared()
                for agent in agents[:3]:  # three seats: admitted, then each advertises its round keys
                    answer = await agent.checkin()
                    assert answer["admit"]["round_id"] == 0
                    session = secagg.AgentSession(agent.identity.agent_id, agent.identity.key, 0)
                    await agent.request(
                        "POST", f"{API}/rounds/0/advertise", json_body=advertise_body(*session.advertise())
                    )
                with pytest.raises(ComeBackLater) as refused:  # round 0 is full: come back for round 1
                    await agents[3].take_part(np.zeros(16), 1.0, timeout=30.0)
                return agents, refused.value, transport

        agents, later, transport = asyncio.run(scenario())
    assert transport.lost == 1  # the first advertise was accepted, its answer lost, the retry answered 409 ...
    members = coordinator.state.member_ids(0)
    assert sorted(members) == sorted(a.identity.agent_id for a in agents[:3])  # ... and it counts once
    assert later.round_id == 1 and later.not_before <= later.not_after
    assert agents[3].come_back == (later.not_before, later.not_after)
    assert "come back between" in str(later)
    coordinator.close()
