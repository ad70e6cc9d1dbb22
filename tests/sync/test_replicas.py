"""Replicas with one leader on a real PostgreSQL (issue 14, item 2): three ``agent-coordinator serve`` processes
share one database; the leader is SIGKILLed in the middle of a round and another replica carries the round to its end.

Real agents (each an :class:`AgentSession` signing its requests with :class:`AgentClient`) talk to different
replicas; the masked input one agent sent to the leader dies with the leader's in-memory partial sum, so that agent
becomes a dropout and the round is unmasked without it — published once, signed, versions contiguous.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import numpy as np
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sync.client.http_client import AgentClient, StageWatcher
from sync.client.identity import Identity
from sync.coordinator.local import coordinator_command, free_port, stop_process, wait_healthy
from sync.coordinator.postgres import PostgresStore
from sync.protocol import secagg
from sync.protocol.privacy import Contribution, PrivacyParams, prepare_contribution
from sync.protocol.wire import (
    API,
    advertise_body,
    b64d,
    b64d_map,
    b64e_map,
    peer_keys_from_json,
    setup_from_json,
    shared_message,
    unmask_body,
)

SIZE = 300
N = 9
ARGS = [
    "--vector-size",
    str(SIZE),
    "--min-cohort",
    "3",
    "--target-cohort",
    str(N),
    "--over-selection",
    "0",
    "--masked-input-s",
    "120",
    "--checkpoint-s",
    "0",  # partial sums are written only when the stage closes: the leader's inputs die with it
    "--checkpoint-grace-s",
    "2",
    "--weight-cap",
    "30",  # every agent has full weight: the noised total weight is far from zero and a vector is published
]


def test_one_store_leads_at_a_time_and_notifications_reach_other_processes(postgres_url: str) -> None:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    heard: list[tuple[str, str]] = []
    woke = threading.Event()

    def on_note(channel: str, payload: str) -> None:
        if payload:
            heard.append((channel, payload))
            woke.set()

    try:
        assert first.try_lead() and first.try_lead()  # it holds the lock, and keeps it
        assert not second.try_lead()
        second.listen(["persona_round"], on_note)
        give_up = time.monotonic() + 10
        while not woke.is_set() and time.monotonic() < give_up:  # LISTEN starts in the background: say it again
            first.notify("persona_round", "0 unmask")
            woke.wait(0.2)
        assert ("persona_round", "0 unmask") in heard
        first.close()  # the leader goes: its connection, and the lock with it (once the server has seen it go)
        _wait_for(second.try_lead, "the other store to lead", timeout=10)
    finally:
        first.close()
        second.close()


def _spawn(db: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen(
        coordinator_command(db, port, ARGS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return f"http://127.0.0.1:{port}", process


def _leads(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/status", timeout=5).json()["replica"]["leader"])
    except (httpx.HTTPError, KeyError, ValueError):
        return False


def _wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)


class Agent:
    """One agent taking part by hand through one replica (so the test decides when each step happens)."""

    def __init__(self, http: httpx.AsyncClient, rng: np.random.Generator) -> None:
        self.client = AgentClient(http, Identity.generate(), retry_seconds=20)
        self.watcher = StageWatcher(http)
        self.delta = rng.normal(0, 0.05, SIZE)
        self.contribution: Contribution | None = None
        self.session: secagg.AgentSession | None = None
        self.setup: secagg.RoundSetup | None = None

    async def until_input(self, round_id: int, release: asyncio.Event | None = None) -> None:
        """Advertise, share keys, then (once ``release`` is set) send the masked input."""
        give_up = time.monotonic() + 60
        session = secagg.AgentSession(self.client.identity.agent_id, self.client.identity.key, round_id)
        self.session = session
        c_pk, s_pk, sig = session.advertise()
        await self.client.request(
            "POST", f"{API}/rounds/{round_id}/advertise", json_body=advertise_body(c_pk, s_pk, sig)
        )
        await self.watcher.wait(round_id, "share_keys", give_up)
        doc = (await self.client.request("GET", f"{API}/rounds/{round_id}/setup")).json()
        setup = self.setup = setup_from_json(doc, round_id=round_id, seed=b64d(doc["seed"]))
        shares = session.share_keys(setup, [peer_keys_from_json(p) for p in doc["neighbours"]])
        await self.client.request("POST", f"{API}/rounds/{round_id}/shares", json_body={"shares": b64e_map(shares)})
        await self.watcher.wait(round_id, "masked_input", give_up)
        doc = (await self.client.request("GET", f"{API}/rounds/{round_id}/inbox")).json()
        self.contribution = prepare_contribution(self.delta, 30.0, PrivacyParams(), noise_divisor=setup.min_survivors)
        masked = session.masked_input(doc["u2"], b64d_map(doc["shares"]), self.contribution.vector)
        if release is not None:
            await release.wait()
        await self.client.request("POST", f"{API}/rounds/{round_id}/input", content=masked)

    async def unmask(self, round_id: int) -> list[str]:
        """Wait for the unmask stage; reveal the shares if in U3. U3."""
        assert self.session is not None
        await self.watcher.wait(round_id, "unmask", time.monotonic() + 60)
        doc = (await self.client.request("GET", f"{API}/rounds/{round_id}/survivors")).json()
        if self.client.identity.agent_id in doc["u3"]:
            b_shares, s_shares = self.session.unmask(doc["u2"], doc["u3"])
            body = unmask_body(b_shares, s_shares)
            await self.client.request("POST", f"{API}/rounds/{round_id}/unmask", json_body=body)
        return list(doc["u3"])


def test_the_leader_replica_is_killed_mid_round_and_another_finishes_the_round(postgres_url: str) -> None:
    db = postgres_url
    processes: list[subprocess.Popen[bytes]] = []
    try:
        replicas = [_spawn(db) for _ in range(3)]  # started together: whichever takes the lock first leads
        processes += [p for _, p in replicas]
        for url, process in replicas:
            wait_healthy(url, timeout=120, process=process)  # three interpreters starting at once on a busy machine
        _wait_for(lambda: any(_leads(u) for u, _ in replicas), "a replica to lead")
        leading = [(u, p) for u, p in replicas if _leads(u)]
        assert len(leading) == 1, "exactly one replica leads"
        (leader_url, leader), urls = leading[0], [u for u, p in replicas if p is not leading[0][1]]

        async def scenario() -> tuple[list[Agent], Agent, Agent, list[str], dict[str, Any]]:
            rng = np.random.default_rng(0)
            async with (
                httpx.AsyncClient(base_url=leader_url, timeout=30.0) as to_leader,
                httpx.AsyncClient(base_url=urls[0], timeout=30.0) as to_first,
                httpx.AsyncClient(base_url=urls[1], timeout=30.0) as to_second,
            ):
                honest = [Agent(to_first if i % 2 else to_second, rng) for i in range(N - 2)]
                on_leader = Agent(to_leader, rng)  # its input goes to the leader, which dies holding it
                late = Agent(to_second, rng)  # holds its input back until another replica leads
                everyone = [*honest, on_leader, late]
                await asyncio.gather(*(a.client.register() for a in everyone))
                # an agent checking in (at a follower) makes the leader open a round on the schedule
                await honest[0].client.request("POST", f"{API}/checkin", json_body={"base_version": 0})
                while (await to_first.get("/status")).json()["round"] is None:
                    await asyncio.sleep(0.1)
                round_id = int((await to_first.get(f"{API}/round")).json()["round_id"])
                release = asyncio.Event()
                sending = [asyncio.create_task(a.until_input(round_id)) for a in [*honest, on_leader]]
                held = asyncio.create_task(late.until_input(round_id, release))
                await asyncio.gather(*sending)
                assert (await to_first.get(f"{API}/rounds/{round_id}")).json()["masked_inputs"] == N - 1
                leader.send_signal(signal.SIGKILL)
                leader.wait()
                await asyncio.to_thread(_wait_for, lambda: any(_leads(u) for u in urls), "another replica to lead")
                release.set()
                await held
                survivors = await asyncio.gather(*(a.unmask(round_id) for a in [*honest, late]))
                assert all(u3 == survivors[0] for u3 in survivors)
                final = await StageWatcher(to_first).wait(round_id, "done", time.monotonic() + 60)
                return honest, on_leader, late, survivors[0], final

        honest, on_leader, late, u3, final = asyncio.run(scenario())
        assert final["stage"] == "done", final
        assert on_leader.client.identity.agent_id not in u3  # its input died with the leader: a dropout
        assert sorted(u3) == sorted(a.client.identity.agent_id for a in [*honest, late])
        assert final["outcome"]["survivors"] == N - 1 and final["outcome"]["published_version"] == 1
        # the unmasked total is exactly the survivors' quantized contributions: nothing lost, nothing counted twice
        with httpx.Client(base_url=urls[1], timeout=30.0) as http:
            raw = http.get(f"{API}/rounds/{final['round_id']}/aggregate").content
            meta = http.get(f"{API}/shared").json()
            blob = http.get(f"{API}/shared/{meta['version']}").content
        assert late.setup is not None
        q = late.setup.quantization
        expected = sum(q.integers(a.contribution.vector) for a in [*honest, late] if a.contribution is not None)
        assert np.array_equal(np.frombuffer(raw, dtype="<i8"), expected)
        # published once, signed by the coordinators' one key, versions 0..1 contiguous
        assert meta["version"] == 1 and meta["round_id"] == final["round_id"]
        digest = hashlib.sha256(blob).hexdigest()
        assert digest == meta["sha256"]
        Ed25519PublicKey.from_public_bytes(b64d(meta["public_key"])).verify(
            b64d(meta["signature"]), shared_message(1, digest)
        )
        with psycopg.connect(db) as conn:
            versions = conn.execute("SELECT version, round_id FROM published ORDER BY version").fetchall()
        assert versions == [(0, None), (1, final["round_id"])]
    finally:
        for process in processes:
            stop_process(process)
