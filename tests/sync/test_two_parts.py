"""Both shared parts on the wire: θ_g and the language model's shared adapter φ_g in one round over a real
coordinator on 127.0.0.1 — the layout in the round parameters, per-part clipping with noise for the joint bound,
the rotated, budget-sized quantization, one signed two-part version, and the agent's atomic apply of both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.store.profile_store import ProfileStore
from agent.store.records import SHARED_FIRST_STAGE, SHARED_LORA
from models.firststage.scorer import SharedParams
from sync.client.http_client import AgentClient, RoundResult
from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.service import Coordinator
from sync.errors import ProtocolError
from sync.protocol import rules
from sync.protocol.masking import pack, rotate, rotation_seed, unpack, unrotate
from sync.protocol.privacy import PHI, THETA, Part, PrivacyParams, joint_clip, prepare_contribution
from sync.protocol.wire import API
from tests.sync.helpers import cohort, cohort_in_background, finished, noise, take_part

THETA_SIZE = 384 * 32 + 1682 * 32 + 1682 + 50  # ML-100K's θ_g
COHORT = 12


def _config(tmp_path: Path, **overrides: Any) -> CoordinatorConfig:
    settings: dict[str, Any] = {
        "db": tmp_path / "coordinator.sqlite3",
        "vector_size": THETA_SIZE,
        "phi_size": rules.SYNC_PHI_SIZE,
        "min_cohort": 3,
        "target_cohort": COHORT,
        "over_selection": 0.0,
        "advertise_s": 120.0,
        "share_keys_s": 120.0,
        "masked_input_s": 120.0,
        "unmask_s": 120.0,
    }
    return CoordinatorConfig(**(settings | overrides))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Coordinator, str]]:
    coordinator = Coordinator(_config(tmp_path))
    with serve_in_thread(coordinator) as url:
        yield coordinator, url


def _deltas(n: int) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    """θ_g deltas of norm ~0.3 and φ_g deltas of norm ~1 (clipped to C_φ = 0.25 on the agent)."""
    rng = np.random.default_rng(3)
    return [
        np.concatenate(
            [
                rng.normal(0, 0.3 / math.sqrt(THETA_SIZE), THETA_SIZE),
                rng.normal(0, 1.0 / math.sqrt(rules.SYNC_PHI_SIZE), rules.SYNC_PHI_SIZE),
            ]
        )
        for _ in range(n)
    ]


async def _round(url: str, n: int) -> tuple[list[RoundResult], list[AgentClient], dict[str, Any]]:
    async with cohort(url, n, max_connections=16) as agents:
        info = (await agents[0].checkin())["admit"]  # opens round 0 (rounds open for agents checking in)
        results = finished(await take_part(agents, _deltas(n), 40.0, timeout=240.0))
        return results, agents, info


def test_a_two_part_round_sums_within_the_quantization_bound_and_fits_the_upload_budget(
    served: tuple[Coordinator, str],
) -> None:
    coordinator, url = served
    assert coordinator.vector_size == THETA_SIZE + rules.SYNC_PHI_SIZE
    results, agents, info = asyncio.run(_round(url, COHORT))
    # the layout travels in the round parameters and comes back as the same parts with their bounds
    layout = (Part(THETA, THETA_SIZE, rules.SYNC_CLIP), Part(PHI, rules.SYNC_PHI_SIZE, rules.SYNC_CLIP_PHI))
    assert PrivacyParams(**info["privacy"]).parts == layout
    assert all(r.privacy.parts == layout for r in results)
    assert results[0].privacy.clip == pytest.approx(math.hypot(rules.SYNC_CLIP, rules.SYNC_CLIP_PHI))
    q = results[0].quantization
    assert q is not None and q.rotation and q.bits < 16  # the budget forced a narrower, rotated width
    size = coordinator.vector_size + 1
    for r in results:  # each part clipped to its own bound (noise shares are small next to the bounds)
        assert r.contribution is not None and len(r.contribution.part_norms) == 2
    # the masks cancel: the unmasked integer sum is exactly the agents' quantized contributions ...
    vectors = [r.contribution.vector for r in results if r.contribution is not None]
    total = coordinator.unmasked_sum(results[0].round_id)
    assert np.array_equal(total, np.sum([q.integers(v) for v in vectors], axis=0))
    assert all(q.encode(v)[1] == 0 for v in vectors)  # nothing clamped
    # ... and decoded, it is the exact float sum within half a level per element and agent (rotation keeps norms)
    exact = np.sum(vectors, axis=0)
    error = float(np.linalg.norm(q.to_float(total) - exact))
    assert error <= COHORT * 0.5 * (q.bound / q.levels) * math.sqrt(size)
    assert error < 0.05 * float(np.linalg.norm(exact))
    # the coordinator applied both parts in one version: FedAvg (lr 1) on φ_g from its zero start
    published = np.frombuffer(coordinator.blob(coordinator.latest().version), dtype="<f4")
    mean_phi = q.to_float(total)[THETA_SIZE:-1] / (q.to_float(total)[-1] / results[0].privacy.clip)
    assert np.allclose(published[THETA_SIZE:], rules.SYNC_PHI_SERVER_LR * mean_phi, atol=1e-6)
    assert not np.allclose(published[:THETA_SIZE], 0.0)
    # every agent's whole upload for the round, both parts together, within 256 KiB
    assert q.packed_bytes(size) <= rules.SYNC_INPUT_BYTES
    assert max(a.traffic.sent for a in agents) <= rules.SYNC_UPLOAD_BYTES


def test_ml100k_sized_rounds_fit_the_budget_up_to_a_thousand_agents_and_refuse_larger_loudly(tmp_path: Path) -> None:
    size = THETA_SIZE + rules.SYNC_PHI_SIZE + 1
    clip = math.hypot(rules.SYNC_CLIP, rules.SYNC_CLIP_PHI)
    for n in (10, 100, 943, 1000):
        survivors = rules.min_survivors(n, min_cohort=10, max_dropout=rules.SYNC_MAX_DROPOUT)
        q = rules.round_quantization(
            n, clip=clip, sigma=rules.SYNC_SIGMA, survivors=survivors, vector_size=size, rotation=bytes(32)
        )
        assert q.packed_bytes(size) + rules.SYNC_PROTOCOL_ALLOWANCE <= rules.SYNC_UPLOAD_BYTES
        assert q.levels * n <= (1 << (q.bits - 1)) - 1  # the sum cannot wrap
    with pytest.raises(ValueError, match="cannot be summed without wrapping"):
        Coordinator(_config(tmp_path, target_cohort=5000))


def test_the_layout_and_per_part_clipping() -> None:
    parts = (Part(THETA, 6, 0.5), Part(PHI, 4, 0.25))
    params = PrivacyParams.for_parts(parts, sigma=0.0, weight_cap=10.0)
    assert params.clip == pytest.approx(joint_clip(parts)) == pytest.approx(math.sqrt(0.5**2 + 0.25**2))
    again = PrivacyParams(**json.loads(json.dumps(params.as_json())))  # as the round parameters carry it
    assert again == params and again.parts == parts
    delta = np.concatenate([np.full(6, 3.0), np.full(4, -2.0)])
    c = prepare_contribution(delta, 10.0, params, noise_divisor=1)
    assert np.linalg.norm(c.vector[:6]) == pytest.approx(0.5)
    assert np.linalg.norm(c.vector[6:10]) == pytest.approx(0.25)
    assert c.vector[-1] == pytest.approx(params.clip)
    small = np.concatenate([np.full(6, 0.01), np.full(4, -2.0)])  # only the part over its bound is scaled
    assert np.allclose(prepare_contribution(small, 10.0, params, noise_divisor=1).vector[:6], 0.01)
    with pytest.raises(ProtocolError, match="joint bound"):
        PrivacyParams(clip=0.5, sigma=0.4, weight_cap=10.0, parts=parts)
    with pytest.raises(ValueError, match="parts hold 10 values"):
        prepare_contribution(np.ones(9), 10.0, params, noise_divisor=1)


def test_rotation_and_bit_tight_packing_round_trip() -> None:
    rng = np.random.default_rng(0)
    seed = rotation_seed(b"round")
    for n in (1, 5, 64, 1000):
        x = rng.normal(size=n)
        assert np.linalg.norm(rotate(x, seed)) == pytest.approx(np.linalg.norm(x))
        assert np.allclose(unrotate(rotate(x, seed), seed), x)
    spike = np.zeros(THETA_SIZE + rules.SYNC_PHI_SIZE + 1)
    spike[7] = 1.0  # all the energy in one element is spread over ~m elements
    assert np.abs(rotate(spike, seed)).max() <= 1.01 / math.sqrt(65536)
    for bits in (13, 14, 24):
        values = rng.integers(0, 1 << bits, size=999).astype(np.uint32)
        data = pack(values, bits)
        assert len(data) == (999 * bits + 7) // 8
        assert np.array_equal(unpack(data, bits, 999), values)


class _Tamper(httpx.AsyncBaseTransport):
    """Flips one byte of the φ_g part of the published blob on its way to the agent; with ``rehash``, also rewrites
    the metadata's SHA-256 to match the tampered blob (so only the coordinator's signature can catch it)."""

    def __init__(self, rehash: bool) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rehash = rehash

    async def _tampered(self, request: httpx.Request, version: int) -> bytes:
        url = request.url.copy_with(path=f"{API}/shared/{version}")
        response = await self.inner.handle_async_request(httpx.Request("GET", url))
        blob = bytearray(await response.aread())
        blob[4 * THETA_SIZE + 100] ^= 0x01
        return bytes(blob)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if request.url.path == f"{API}/shared" and self.rehash:
            meta = json.loads(body)
            meta["sha256"] = hashlib.sha256(await self._tampered(request, int(meta["version"]))).hexdigest()
            body = json.dumps(meta).encode()
        elif request.url.path.startswith(f"{API}/shared/"):
            body = await self._tampered(request, int(request.url.path.rsplit("/", 1)[1]))
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)


def test_the_agent_verifies_the_signed_two_part_version_and_refuses_a_tampered_one(
    served: tuple[Coordinator, str],
) -> None:
    coordinator, url = served

    async def fetch(transport: httpx.AsyncBaseTransport | None) -> Any:
        async with httpx.AsyncClient(base_url=url, transport=transport) as http:
            return await AgentClient(http, Identity.generate(), coordinator_key=coordinator.public_key).fetch_shared()

    meta = httpx.get(f"{url}{API}/shared").json()  # the version's metadata names the layout of its one blob
    assert meta["layout"] == [{"name": THETA, "size": THETA_SIZE}, {"name": PHI, "size": rules.SYNC_PHI_SIZE}]
    shared = asyncio.run(fetch(None))
    assert shared.vector.shape == (THETA_SIZE + rules.SYNC_PHI_SIZE,)
    assert np.all(shared.vector[THETA_SIZE:] == 0.0)  # φ_g starts at B = 0
    with pytest.raises(ProtocolError, match="sha256"):
        asyncio.run(fetch(_Tamper(rehash=False)))
    with pytest.raises(ProtocolError, match="not signed by the coordinator"):
        asyncio.run(fetch(_Tamper(rehash=True)))


def test_a_crash_between_the_two_parts_keeps_the_previous_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ProfileStore.open(tmp_path / "profile")
    theta = SharedParams.init(50, seed=1)
    first_lora = store.shared_lora_with(np.full(rules.SYNC_PHI_SIZE, 0.5, dtype=np.float32))
    store.save_shared_pair(theta, first_lora, version="federation-v1")
    files = sorted(p.name for p in (tmp_path / "profile" / "adapters").iterdir())
    real_write = store._write

    @contextlib.contextmanager
    def second_write_fails() -> Iterator[Any]:
        with real_write() as conn:

            class Failing:
                calls = 0

                def execute(self, sql: str, params: Any = ()) -> Any:
                    Failing.calls += 1
                    if Failing.calls == 2:  # the φ_g row, after the θ_g row was written in the same transaction
                        raise OSError("disk full (injected)")
                    return conn.execute(sql, params)

            yield Failing()

    monkeypatch.setattr(store, "_write", second_write_fails)
    newer = SharedParams.init(50, seed=2)
    with pytest.raises(OSError, match="injected"):
        store.save_shared_pair(
            newer, store.shared_lora_with(np.full(rules.SYNC_PHI_SIZE, 0.9, dtype=np.float32)), version="federation-v2"
        )
    monkeypatch.undo()
    loaded = store.load_shared()
    lora = store.load_shared_lora()
    assert loaded is not None and lora is not None
    assert loaded[1]["version"] == lora[1]["version"] == "federation-v1"
    assert np.array_equal(loaded[0].to_vector(), theta.to_vector())
    assert np.all(lora[0].trainable_vector() == 0.5)
    assert sorted(p.name for p in (tmp_path / "profile" / "adapters").iterdir()) == files  # no stray new file
    # and a write that goes through switches both together
    store.save_shared_pair(newer, store.shared_lora_with(np.full(rules.SYNC_PHI_SIZE, 0.9)), version="federation-v2")
    records = [store.adapter_record(name) for name in (SHARED_FIRST_STAGE, SHARED_LORA)]
    assert [r.meta["version"] for r in records if r is not None] == ["federation-v2"] * 2
    assert np.all(store.load_shared_lora()[0].trainable_vector() == np.float32(0.9))  # type: ignore[index]
    store.close()


@pytest.mark.usefixtures("warm_embedding_cache")
def test_agent_sync_sends_both_parts_and_applies_the_new_pair_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from agent import paths
    from agent.cli.main import app
    from agent.engine.profile import Profile

    monkeypatch.delenv("PERSONA_COORDINATOR_URL", raising=False)
    paths.config_dir().mkdir(parents=True, exist_ok=True)  # ML-100K's σ is beyond the default yearly budget
    # lm_train_seconds 1: φ_g trains on the smallest budget (one batch of lists, one step; the default is 60 s)
    (paths.config_dir() / "config.toml").write_text(
        "[sync]\nepsilon_budget = inf\nlm_train_seconds = 1\n", encoding="utf-8"
    )
    runner = CliRunner()
    for item in ("Toy Story", "Aladdin", "The Lion King (1994)"):
        assert runner.invoke(app, ["rate", item, "like", "--no-train"]).exit_code == 0
    with ProfileStore.open() as store:
        initial = Profile.load(store).shared.to_vector()
    # the agent loads the language model before it checks in: a generous advertise stage for a busy machine
    config = _config(
        tmp_path, vector_size=initial.size, min_cohort=3, target_cohort=3, weight_cap=4.0, advertise_s=300.0
    )
    with serve_in_thread(Coordinator(config, initial=initial)) as url:
        with cohort_in_background(url, noise(2, initial.size + rules.SYNC_PHI_SIZE, 1e-3, 1), 20.0) as others:
            result = runner.invoke(app, ["sync", "--coordinator", url, "--timeout", "150", "--json"])
        assert result.exit_code == 0, result.output
        published = np.frombuffer(httpx.get(f"{url}{API}/shared/1").content, dtype="<f4")
    results = finished(others)
    summary = json.loads(result.stdout)
    assert summary["version"] == 1 and len(results) == 2
    # the agent trained φ_g on its 2 lists (3 liked items) and sent a nonzero φ part (the worker's own report)
    lm = summary["language_model"]
    assert lm["trained"] and lm["lists"] == 2 and lm["steps"] >= 1 and lm["delta_norm"] > 0, lm
    assert lm["loss_after"] < lm["loss_before"], lm
    assert results[0].privacy.parts[1] == Part(PHI, rules.SYNC_PHI_SIZE, rules.SYNC_CLIP_PHI)
    with ProfileStore.open() as store:
        shared, lora = store.load_shared(), store.load_shared_lora()
        assert shared is not None and lora is not None
        assert shared[1]["version"] == lora[1]["version"] == "federation-v1"
        np.testing.assert_array_equal(shared[0].to_vector(), published[: initial.size])
        np.testing.assert_array_equal(lora[0].trainable_vector(), published[initial.size :])
        assert np.any(published[initial.size :] != 0.0)  # φ_g moved (the other agents' deltas and the noise)
