"""Who may join, against a real coordinator on 127.0.0.1 (uvicorn in a thread, SQLite in a temporary folder):
``agent-coordinator enroll`` prints one-time tokens and stores only their hashes; a new agent registers only with a
valid unused token (one token, one agent; a registered agent needs none again); signed requests of each agent and
new registrations from one address are rate-limited with 429 + Retry-After, which the agent's client honours
(bounded); ``agent sync`` says what to do when the coordinator wants a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from sync.client.http_client import AgentClient
from sync.client.identity import Identity
from sync.coordinator.access import AccessPolicy, enrollment_store, token_hash
from sync.coordinator.cli import main
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.service import Coordinator
from sync.errors import CoordinatorError
from sync.protocol.wire import API, JSON_TYPE, b64e, request_message


def _enroll(db: Path, count: int, capsys: pytest.CaptureFixture[str]) -> list[str]:
    main(["enroll", "--count", str(count), "--db", str(db)])
    printed = capsys.readouterr()
    assert "only their SHA-256 is stored" in printed.err
    return printed.out.split()


def test_enroll_prints_one_time_tokens_and_stores_only_their_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "coordinator.sqlite3"
    tokens = _enroll(db, 3, capsys) + _enroll(db, 2, capsys)
    assert len(set(tokens)) == 5 and all(t.startswith("pe1-") and len(t) > 50 for t in tokens)
    with sqlite3.connect(db) as stored:
        hashes = {row[0] for row in stored.execute("SELECT token_hash FROM enrollment WHERE agent_id IS NULL")}
    assert hashes == {token_hash(t) for t in tokens}
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("coordinator.sqlite3*"))
    assert not any(t.encode() in on_disk for t in tokens)
    with pytest.raises(SystemExit):
        main(["enroll", "--count", "0", "--db", str(db)])
    assert "--count must be from 1" in capsys.readouterr().err


@pytest.fixture
def coordinator(tmp_path: Path) -> Coordinator:
    return Coordinator(CoordinatorConfig(db=tmp_path / "coordinator.sqlite3", vector_size=16, min_cohort=3))


@pytest.fixture
def enrolling(coordinator: Coordinator) -> Iterator[str]:
    """The coordinator with the operator's defaults: tokens required, rate limits on."""
    with serve_in_thread(coordinator, access=AccessPolicy()) as url:
        yield url


def _issue(coordinator: Coordinator, *tokens: str) -> None:
    with coordinator.lock:
        enrollment_store(coordinator.state).add_enrollment_tokens([token_hash(t) for t in tokens], 0.0)


async def _register(url: str, identity: Identity, token: str | None) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        try:
            await AgentClient(http, identity, retry_seconds=0.0).register(token)
        except CoordinatorError as error:
            return error.status, error.reason
    return 201, "registered"


def test_a_new_agent_registers_only_with_a_valid_unused_token_and_needs_none_afterwards(
    coordinator: Coordinator, enrolling: str
) -> None:
    _issue(coordinator, "pe1-first", "pe1-second")
    alice, bob = Identity.generate(), Identity.generate()
    assert asyncio.run(_register(enrolling, alice, None)) == (401, "enrollment_required")
    assert asyncio.run(_register(enrolling, alice, "pe1-never-issued")) == (403, "invalid_enrollment")
    assert coordinator.state.agent(alice.agent_id) is None  # refused: nothing stored
    assert asyncio.run(_register(enrolling, alice, "pe1-first")) == (201, "registered")
    assert asyncio.run(_register(enrolling, alice, None)) == (201, "registered")  # known: no token needed again
    assert asyncio.run(_register(enrolling, alice, "pe1-first")) == (201, "registered")  # its own token: still fine
    assert asyncio.run(_register(enrolling, bob, "pe1-first")) == (403, "enrollment_used")  # one token, one agent
    assert coordinator.state.agent(bob.agent_id) is None
    assert enrollment_store(coordinator.state).enrollment_counts() == (2, 1)


def test_a_registration_its_key_did_not_sign_spends_no_token(coordinator: Coordinator, enrolling: str) -> None:
    _issue(coordinator, "pe1-only")
    owner = Identity.generate()
    body = f'{{"public_key": "{b64e(owner.public)}", "enrollment": "pe1-only"}}'.encode()
    forged = request_message("POST", f"{API}/agents", 1, body + b" ")  # signs other bytes than those sent
    answer = httpx.post(
        f"{enrolling}{API}/agents",
        content=body,
        headers={
            "content-type": JSON_TYPE,
            "x-agent-id": owner.agent_id,
            "x-nonce": "1",
            "x-signature": b64e(owner.key.sign(forged)),
        },
    )
    assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
    assert enrollment_store(coordinator.state).enrollment_counts() == (1, 0)
    assert asyncio.run(_register(enrolling, owner, "pe1-only")) == (201, "registered")


def test_two_agents_racing_for_one_token_get_one_registration(coordinator: Coordinator, enrolling: str) -> None:
    _issue(coordinator, "pe1-contested")
    racers = [Identity.generate() for _ in range(4)]

    async def race() -> list[tuple[int, str]]:
        return await asyncio.gather(*(_register(enrolling, r, "pe1-contested") for r in racers))

    outcomes = asyncio.run(race())
    assert sorted(outcomes) == [(201, "registered"), *[(403, "enrollment_used")] * 3]
    assert sum(coordinator.state.agent(r.agent_id) is not None for r in racers) == 1


def _recording() -> tuple[list[httpx.Response], dict[str, list[object]]]:
    seen: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        seen.append(response)

    return seen, {"response": [record]}


def test_an_agent_over_its_rate_gets_429_with_retry_after_and_others_are_not_affected(coordinator: Coordinator) -> None:
    limits = AccessPolicy(open_enrollment=True, agent_rate=0.01, agent_burst=3)

    async def go(url: str) -> tuple[list[httpx.Response], CoordinatorError, int]:
        seen, hooks = _recording()
        async with httpx.AsyncClient(base_url=url, timeout=30.0, event_hooks=hooks) as http:  # type: ignore[arg-type]
            greedy, other = (AgentClient(http, Identity.generate(), retry_seconds=0.0) for _ in range(2))
            await greedy.register()  # a new agent: charged to its address, not to its own bucket
            await other.register()
            for _ in range(3):
                await greedy.register()  # known: signed by it, charged to its bucket
            with pytest.raises(CoordinatorError) as limited:
                await greedy.register()
            await other.register()  # its own bucket is full
            return seen, limited.value, seen[-1].status_code

    with serve_in_thread(coordinator, access=limits) as url:
        seen, limited, other_status = asyncio.run(go(url))
    assert (limited.status, limited.reason) == (429, "rate_limited")
    refused = seen[-2]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert other_status == 201


def test_new_registrations_from_one_address_are_limited_but_known_agents_are_not(coordinator: Coordinator) -> None:
    limits = AccessPolicy(open_enrollment=True, register_rate=0.01, register_burst=2)
    first, second, third = (Identity.generate() for _ in range(3))
    with serve_in_thread(coordinator, access=limits) as url:
        assert asyncio.run(_register(url, first, None)) == (201, "registered")
        assert asyncio.run(_register(url, second, None)) == (201, "registered")
        assert asyncio.run(_register(url, third, None)) == (429, "rate_limited")
        assert asyncio.run(_register(url, first, None)) == (201, "registered")
    assert coordinator.state.agent(third.agent_id) is None


def test_the_client_waits_out_retry_after_and_gives_up_past_its_bound(coordinator: Coordinator) -> None:
    async def go(url: str) -> tuple[list[int], CoordinatorError]:
        seen, hooks = _recording()
        async with httpx.AsyncClient(base_url=url, timeout=30.0, event_hooks=hooks) as http:  # type: ignore[arg-type]
            patient = AgentClient(http, Identity.generate())  # retries for up to 60 s, each wait at most 30 s
            for _ in range(4):
                await patient.register()
            statuses = [r.status_code for r in seen]
            hasty = AgentClient(http, patient.identity, max_retry_after=30.0, retry_seconds=0.5)
            for _ in range(3):  # empty the bucket again, then ask with too little patience for the wait
                with contextlib.suppress(CoordinatorError):
                    await hasty.register()
            with pytest.raises(CoordinatorError) as gave_up:
                await hasty.register()
            return statuses, gave_up.value

    with serve_in_thread(coordinator, access=AccessPolicy(open_enrollment=True, agent_rate=1.0, agent_burst=2)) as url:
        statuses, gave_up = asyncio.run(go(url))
    assert 429 in statuses and statuses[-1] == 201 and statuses.count(201) == 4  # every call got through in the end
    assert (gave_up.status, gave_up.reason) == (429, "rate_limited")


@pytest.mark.parametrize(
    ("enroll", "expected"),
    [((), "agent sync --enroll TOKEN"), (("--enroll", "pe1-not-a-token"), "ask the operator for another")],
)
def test_agent_sync_says_what_to_do_when_the_coordinator_wants_a_token(
    coordinator: Coordinator, enrolling: str, enroll: tuple[str, ...], expected: str
) -> None:
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text("[sync]\nepsilon_budget = inf\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["sync", "--coordinator", enrolling, *enroll])
    assert result.exit_code == 1, result.output
    assert "refused to register this agent" in result.stderr and expected in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert coordinator.state.count_rows("agents") == 0
