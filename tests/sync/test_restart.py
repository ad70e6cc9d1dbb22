"""The coordinator is SIGKILLed mid-round and restarted on the same database (SQLite, then PostgreSQL): the round
resumes with every input the killed process had checkpointed (its partial sum, :mod:`sync.coordinator.shards`; inputs
it held only in memory would have become dropouts), the published vectors are intact, and the agents retry and finish
the next round too.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import time
from typing import Any

import httpx
import numpy as np

from sync.client.http_client import AgentClient, RoundResult, StageWatcher
from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import coordinator_command, free_port, wait_healthy
from sync.coordinator.service import Coordinator
from sync.coordinator.storage import open_store
from sync.protocol import secagg
from sync.protocol.privacy import PrivacyParams, prepare_contribution
from sync.protocol.wire import (
    API,
    advertise_body,
    b64d,
    b64d_map,
    b64e_map,
    peer_keys_from_json,
    setup_from_json,
    unmask_body,
)

SIZE = 300


def _start(db: str, port: int) -> subprocess.Popen[bytes]:
    args = [
        "--vector-size",
        str(SIZE),
        "--min-cohort",
        "3",
        "--target-cohort",
        "5",
        "--over-selection",
        "0",
        "--masked-input-s",
        "120",
        "--weight-cap",
        "30",  # every agent has full weight, so the noised total weight is far from zero and a vector is published
        "--checkpoint-s",
        "0.5",  # the process writes its partial sum of masked inputs twice a second while it holds new ones
    ]
    process = subprocess.Popen(
        coordinator_command(db, port, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_healthy(f"http://127.0.0.1:{port}", process=process)
    return process


def test_sigkill_mid_round_then_restart_resumes_the_round(db_url: str) -> None:
    db, port = db_url, free_port()  # once on SQLite, once on PostgreSQL (tests/sync/conftest.py)
    url = f"http://127.0.0.1:{port}"
    process = _start(db, port)
    v0 = httpx.get(f"{url}{API}/shared").json()

    async def scenario() -> tuple[list[Any], list[Any]]:
        nonlocal process
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
            honest = [AgentClient(http, Identity.generate(), retry_seconds=60) for _ in range(4)]
            late = AgentClient(http, Identity.generate(), retry_seconds=60)
            await asyncio.gather(*(a.register() for a in [*honest, late]))
            rng = np.random.default_rng(0)
            tasks = [asyncio.create_task(a.take_part(rng.normal(0, 0.05, SIZE), 30.0, timeout=120)) for a in honest]
            # the late agent joins and shares keys, then holds its input back until after the crash
            watcher = StageWatcher(http)
            deadline = time.monotonic() + 120
            while (await http.get("/status")).json()["round"] is None:  # rounds open on the schedule, at a tick
                await asyncio.sleep(0.1)
            assert (await late.request("GET", f"{API}/round", signed=False)).json()["round_id"] == 0
            session = secagg.AgentSession(late.identity.agent_id, late.identity.key, 0)
            c_pk, s_pk, sig = session.advertise()
            await late.request("POST", f"{API}/rounds/0/advertise", json_body=advertise_body(c_pk, s_pk, sig))
            await watcher.wait(0, "share_keys", deadline)
            doc = (await late.request("GET", f"{API}/rounds/0/setup")).json()
            setup = setup_from_json(doc, round_id=int(doc["round_id"]), seed=b64d(doc["seed"]))
            peers = [peer_keys_from_json(p) for p in doc["neighbours"]]
            shares = session.share_keys(setup, peers)
            await late.request("POST", f"{API}/rounds/0/shares", json_body={"shares": b64e_map(shares)})
            while (await http.get(f"{API}/rounds/0")).json()["masked_inputs"] < 4:
                await asyncio.sleep(0.2)
            store = open_store(db)
            try:  # the kill comes once the process has checkpointed the four inputs it summed in memory
                while sum(store.partial_counts(0).values()) < 4:
                    await asyncio.sleep(0.1)
            finally:
                store.close()
            process.send_signal(signal.SIGKILL)
            process.wait()
            await asyncio.sleep(1.0)  # the honest agents are waiting on a dead coordinator now
            process = await asyncio.to_thread(_start, db, port)
            doc = (await late.request("GET", f"{API}/rounds/0/inbox")).json()
            contribution = prepare_contribution(
                rng.normal(0, 0.05, SIZE), 30.0, PrivacyParams(), noise_divisor=setup.min_survivors
            )
            masked = session.masked_input(doc["u2"], b64d_map(doc["shares"]), contribution.vector)
            await late.request("POST", f"{API}/rounds/0/input", content=masked)
            await watcher.wait(0, "unmask", deadline)
            doc = (await late.request("GET", f"{API}/rounds/0/survivors")).json()
            b_shares, s_shares = session.unmask(doc["u2"], doc["u3"])
            await late.request("POST", f"{API}/rounds/0/unmask", json_body=unmask_body(b_shares, s_shares))
            first: list[Any] = list(await asyncio.gather(*tasks, return_exceptions=True))
            first.append(contribution)
            # everyone, the late agent included, finishes the next round after the restart
            second = await asyncio.gather(
                *(a.take_part(rng.normal(0, 0.05, SIZE), 30.0, timeout=120) for a in [*honest, late]),
                return_exceptions=True,
            )
            return first, list(second)

    try:
        first, second = asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    done = [r for r in first[:-1] if isinstance(r, RoundResult) and r.status == "done"]
    assert len(done) == 4, first
    q = done[0].quantization
    assert q is not None
    expected = sum(q.integers(r.contribution.vector) for r in done if r.contribution is not None)
    expected = expected + q.integers(first[-1].vector)
    coordinator = Coordinator(CoordinatorConfig(db=db))
    assert np.array_equal(coordinator.unmasked_sum(0), expected)  # nothing checkpointed before the kill was lost
    assert all(isinstance(r, RoundResult) and r.status == "done" for r in second), second
    blob0 = coordinator.blob(0)
    assert hashlib.sha256(blob0).hexdigest() == v0["sha256"]
    assert coordinator.latest().version == 2
