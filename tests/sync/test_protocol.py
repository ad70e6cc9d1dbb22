"""The real protocol over a real coordinator on 127.0.0.1 (uvicorn in a thread, SQLite in a temporary folder):
exact sums with dropouts, abandoned rounds, bad input, and what one agent's bytes on the wire contain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sync.client.http_client import AgentClient, RoundResult, StageWatcher
from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.service import Coordinator
from sync.errors import CoordinatorError, RoundAbandoned
from sync.protocol import secagg
from sync.protocol.privacy import PrivacyParams, prepare_contribution
from sync.protocol.wire import (
    API,
    advertise_body,
    b64d,
    b64d_map,
    b64e,
    b64e_map,
    peer_keys_from_json,
    request_message,
    setup_from_json,
    unmask_body,
)
from tests.sync.helpers import cohort_in_background, cohort_round, noise

SIZE = 400


def _coordinator(tmp_path: Path, **overrides: Any) -> Coordinator:
    settings: dict[str, Any] = {
        "db": tmp_path / "coordinator.sqlite3",
        "vector_size": SIZE,
        "min_cohort": 3,
        "over_selection": 0.0,
        "advertise_s": 60.0,
        "share_keys_s": 60.0,
        "masked_input_s": 60.0,
        "unmask_s": 60.0,
        "sigma": 0.5,
        "clip": 1.0,
    }
    settings.update(overrides)
    return Coordinator(CoordinatorConfig(**settings))


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Coordinator, str]]:
    coordinator = _coordinator(tmp_path, **getattr(request, "param", {}))
    with serve_in_thread(coordinator) as url:
        yield coordinator, url


async def _round(url: str, n: int, drop: int, *, timeout: float = 120.0) -> list[RoundResult | BaseException]:
    """``n`` agents (weights 10, 11, ...) take part in the next round; the first ``drop`` vanish after share keys."""
    weights = [float(10 + i) for i in range(n)]
    deltas = noise(n, SIZE, 0.05, n + drop)
    return await cohort_round(url, deltas, weights, timeout=timeout, drop=drop, max_connections=32)


@pytest.mark.parametrize(
    ("served", "drop"),
    [
        ({"target_cohort": 50}, 0),
        ({"target_cohort": 50, "masked_input_s": 6.0}, 5),
        ({"target_cohort": 50, "masked_input_s": 6.0}, 15),
    ],
    indirect=["served"],
)
def test_unmasked_sum_is_exactly_the_survivors_quantized_contributions(
    served: tuple[Coordinator, str], drop: int
) -> None:
    coordinator, url = served
    results = asyncio.run(_round(url, 50, drop))
    done = [r for r in results if isinstance(r, RoundResult) and r.status == "done"]
    assert len(done) == 50 - drop, [r for r in results if not isinstance(r, RoundResult)]
    q = done[0].quantization
    assert q is not None and q.bits == 24
    expected = sum(q.integers(r.contribution.vector) for r in done if r.contribution is not None)
    total = coordinator.unmasked_sum(done[0].round_id)
    assert total.shape == (SIZE + 1,)
    assert np.array_equal(total, expected)
    info = coordinator.round_info(done[0].round_id)
    assert info["outcome"]["survivors"] == 50 - drop and info["outcome"]["published_version"] == 1
    for table in ("shares", "reveals"):  # an unmasked round keeps none of its key shares
        assert coordinator.state.count_rows(table) == 0


@pytest.mark.parametrize("served", [{"min_cohort": 5, "target_cohort": 6, "masked_input_s": 4.0}], indirect=True)
def test_round_below_threshold_is_abandoned_and_never_unmasked(served: tuple[Coordinator, str]) -> None:
    coordinator, url = served
    results = asyncio.run(_round(url, 6, 2))
    assert all(isinstance(r, RoundAbandoned) for r in results[2:]), results
    info = coordinator.round_info(0)
    assert info["stage"] == "abandoned" and "masked inputs" in info["outcome"]["abandoned"]
    assert coordinator.state.count_rows("reveals") == 0
    assert coordinator.state.count_rows("sums") == 0
    assert coordinator.latest().version == 0
    assert httpx.get(f"{url}{API}/rounds/0/aggregate").json()["error"] == "not_unmasked"


def _signed(identity: Identity, method: str, path: str, body: bytes, nonce: int) -> dict[str, str]:
    return {
        "x-agent-id": identity.agent_id,
        "x-nonce": str(nonce),
        "x-signature": b64e(identity.key.sign(request_message(method, path, nonce, body))),
    }


@pytest.mark.parametrize("served", [{"target_cohort": 5, "masked_input_s": 8.0}], indirect=True)
def test_bad_input_is_refused_with_a_reason_and_the_round_goes_on(served: tuple[Coordinator, str]) -> None:
    coordinator, url = served
    http = httpx.Client(base_url=url, timeout=30.0)
    me = Identity.generate()
    reg = json.dumps({"public_key": b64e(me.public)}).encode()
    path = f"{API}/agents"

    def post(
        body: bytes, headers: dict[str, str], content_type: str = "application/json", target: str = path
    ) -> httpx.Response:
        return http.post(target, content=body, headers={"content-type": content_type, **headers})

    def reason(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]

    assert reason(post(b"{not json", _signed(me, "POST", path, b"{not json", 1))) == (400, "malformed_json")
    assert reason(post(reg, _signed(me, "POST", path, reg, 2), "text/plain")) == (415, "unsupported_content_type")
    huge = b"x" * (coordinator.config.body_limit(SIZE) + 1)
    assert reason(post(huge, _signed(me, "POST", path, huge, 3))) == (413, "body_too_large")
    assert reason(post(reg, {})) == (401, "missing_signature")
    assert reason(post(reg, _signed(Identity.generate(), "POST", path, reg, 4))) == (400, "agent_id_mismatch")
    headers = _signed(me, "POST", path, reg, 5)
    assert post(reg, headers).status_code == 201
    assert reason(post(reg, headers)) == (409, "replayed_nonce")

    stranger = Identity.generate()
    join = f"{API}/rounds/0/advertise"
    empty = json.dumps({"c_pk": b64e(b"a" * 32), "s_pk": b64e(b"b" * 32), "signature": b64e(b"c" * 64)}).encode()
    checkin, ready = f"{API}/checkin", json.dumps({"base_version": 0}).encode()  # rounds open for agents checking in
    assert post(ready, _signed(me, "POST", checkin, ready, 6), target=checkin).json()["admit"]["round_id"] == 0
    assert reason(post(empty, _signed(stranger, "POST", join, empty, 1), target=join)) == (401, "unknown_agent")
    forged = _signed(me, "POST", join, empty, 6) | {"x-signature": b64e(b"\0" * 64)}
    assert reason(post(empty, forged, target=join)) == (401, "bad_signature")
    assert reason(post(empty, _signed(me, "POST", join, empty, 7), target=join)) == (401, "bad_key_signature")
    wrong = f"{API}/rounds/7/advertise"
    assert reason(post(empty, _signed(me, "POST", wrong, empty, 8), target=wrong)) == (409, "wrong_round")

    async def scenario() -> tuple[list[RoundResult | BaseException], list[tuple[int, str]]]:
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as ahttp:
            honest = [AgentClient(ahttp, Identity.generate()) for _ in range(4)]
            await asyncio.gather(*(a.register() for a in honest))
            manual = AgentClient(ahttp, me)
            rng = np.random.default_rng(3)
            tasks = [
                asyncio.create_task(a.take_part(rng.normal(0, 0.05, SIZE), 20.0, timeout=60, drop_after_shares=i == 0))
                for i, a in enumerate(honest)
            ]
            refusals = await _manual_agent(manual, rng.normal(0, 0.05, SIZE))
            results = list(await asyncio.gather(*tasks, return_exceptions=True))
            try:  # the agent that vanished after sharing keys comes back too late
                await honest[0].request("POST", f"{API}/rounds/0/input", content=b"\0" * (3 * (SIZE + 1)))
            except CoordinatorError as error:
                refusals.append((error.status, error.reason))
            return results, refusals

    results, refusals = asyncio.run(scenario())
    assert refusals == [
        (400, "wrong_vector_length"),
        (415, "unsupported_content_type"),
        (409, "replayed_nonce"),
        (409, "already_submitted"),
        (409, "late_submission"),
    ]
    done = [r for r in results if isinstance(r, RoundResult) and r.status == "done"]
    assert len(done) == 3
    info = coordinator.round_info(0)
    assert info["outcome"]["survivors"] == 4  # the manual agent's accepted input was kept
    http.close()


async def _manual_agent(client: AgentClient, delta: np.ndarray[Any, Any]) -> list[tuple[int, str]]:
    """One agent driven step by step, sending bad requests at the masked-input stage between good ones."""
    refusals: list[tuple[int, str]] = []
    watcher = StageWatcher(client.http)
    deadline = time.monotonic() + 60
    session = secagg.AgentSession(client.identity.agent_id, client.identity.key, 0)
    c_pk, s_pk, sig = session.advertise()
    await client.request("POST", f"{API}/rounds/0/advertise", json_body=advertise_body(c_pk, s_pk, sig))
    await watcher.wait(0, "share_keys", deadline)
    doc = (await client.request("GET", f"{API}/rounds/0/setup")).json()
    setup = setup_from_json(doc, round_id=int(doc["round_id"]), seed=b64d(doc["seed"]))
    peers = [peer_keys_from_json(p) for p in doc["neighbours"]]
    shares = session.share_keys(setup, peers)
    await client.request("POST", f"{API}/rounds/0/shares", json_body={"shares": b64e_map(shares)})
    await watcher.wait(0, "masked_input", deadline)
    doc = (await client.request("GET", f"{API}/rounds/0/inbox")).json()
    contribution = prepare_contribution(
        delta, 20.0, PrivacyParams(clip=1.0, sigma=0.5), noise_divisor=setup.min_survivors
    )
    masked = session.masked_input(doc["u2"], b64d_map(doc["shares"]), contribution.vector)
    path = f"{API}/rounds/0/input"

    async def raw(body: bytes, nonce: int, content_type: str = "application/octet-stream") -> None:
        headers = {"content-type": content_type, **_signed(client.identity, "POST", path, body, nonce)}
        response = await client.http.post(path, content=body, headers=headers)
        if response.status_code >= 400:
            refusals.append((response.status_code, response.json()["error"]))

    base = client._next_nonce() + 10
    await raw(masked[:-3], base)
    await raw(masked, base + 1, "application/json")
    await raw(masked, base + 2)  # accepted
    await raw(masked, base + 2)  # the same message again
    await raw(masked, base + 3)
    await watcher.wait(0, "unmask", deadline)
    client._nonce = base + 10
    doc = (await client.request("GET", f"{API}/rounds/0/survivors")).json()
    b_shares, s_shares = session.unmask(doc["u2"], doc["u3"])
    await client.request("POST", f"{API}/rounds/0/unmask", json_body=unmask_body(b_shares, s_shares))
    await watcher.wait(0, "done", deadline)
    return refusals


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests through and keeps every byte the agent sends (request line, headers, body)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        head = f"{request.method} {request.url}\n" + "".join(f"{k}: {v}\n" for k, v in request.headers.items())
        self.sent.append(head.encode() + body)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.usefixtures("warm_embedding_cache")
def test_egress_of_a_full_sync_holds_no_history_rating_item_ids_or_private_parameters(tmp_path: Path) -> None:
    """One real ML-100K user trains locally and syncs; every byte it sends is searched for its private data."""
    import torch

    from agent.paths import cache_dir
    from models.data.movielens import load_ml100k
    from models.firststage.recipe import TrainConfig
    from models.firststage.scorer import PrivateParams, SharedParams
    from models.firststage.training import local_train
    from models.text.encoder import ItemEncoder, embed_catalog
    from sync.client.ledger import JsonlLedger
    from sync.client.run import run_sync

    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir() / "embeddings")
    history = dataset.interactions.sequences()[0]
    shared = SharedParams.init(len(vectors), dim=8)
    coordinator = Coordinator(
        CoordinatorConfig(
            db=tmp_path / "egress.sqlite3", min_cohort=3, target_cohort=3, over_selection=0.0, sigma=0.1, weight_cap=30
        ),
        initial=shared.to_vector(),
    )
    trained: dict[str, Any] = {}

    def compute_delta(current: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], float]:
        base = shared.with_vector(current)
        result = local_train(
            base, PrivateParams.init(8), history, torch.from_numpy(vectors), TrainConfig(epochs=1), seed=0
        )
        trained["private"] = result.private.user_vector
        trained["delta"] = result.shared.to_vector() - current
        return trained["delta"], float(result.n_examples)

    recorder = RecordingTransport()
    ledger = JsonlLedger(tmp_path / "egress.jsonl")
    with (
        serve_in_thread(coordinator) as url,
        cohort_in_background(url, noise(2, shared.size, 0.01, 0), 30.0, timeout=120.0),  # two peers fill the round
    ):
        outcome = run_sync(url, Identity.generate(), compute_delta, ledger, timeout=120, transport=recorder)
    assert outcome.round.status == "done" and outcome.shared.version == 1
    sent = b"".join(recorder.sent)
    assert outcome.entry.bytes_sent >= len(sent) * 0.9 and outcome.entry.epsilon > 0
    assert ledger.entries() == [outcome.entry]
    ids = [str(dataset.catalog.item_ids[i]) for i in history]
    forbidden = {
        "private vector (float32)": trained["private"].astype("<f4").tobytes(),
        "private vector (float64)": trained["private"].astype("<f8").tobytes(),
        "shared delta (float32, unmasked)": trained["delta"].astype("<f4").tobytes()[:64],
        "history as int64": np.asarray(history, dtype="<i8").tobytes()[:64],
        "history as int32": np.asarray(history, dtype="<i4").tobytes()[:64],
        "history item ids as JSON": json.dumps(ids[:8]).encode(),
        "history item ids comma-joined": ",".join(ids[:8]).encode(),
        "history item ids as JSON numbers": json.dumps([int(i) for i in history[:8]]).encode(),
        "history hash": hashlib.sha256(np.asarray(history, dtype="<i8").tobytes()).hexdigest().encode(),
    }
    for label, needle in forbidden.items():
        assert needle not in sent, f"{label} found in what the agent sent"
    for i in history[:20]:
        title = dataset.catalog.titles[int(i)].encode()
        assert title not in sent
    ratings_text = [f'"rating": {r}'.encode() for r in range(1, 6)]
    assert not any(r in sent for r in ratings_text)
