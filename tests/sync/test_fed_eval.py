"""Federated evaluation inside secure aggregation (issue 13, item 2), over a real coordinator on 127.0.0.1.

Real ML-100K users hold out their latest liked item and score it with a real first stage (MiniLM text vectors) and,
for some of them, the real GGUF language model; their per-setting HR@10 / NDCG@10 ride as the bounded, unweighted
eval part of the masked vector. With σ = 0 the coordinator's published population means equal what the agents
computed, it picks and signs the blend weight, keeps it when too few agents scored the blend, and /status shows
the per-version history. The eval part carries only ranks' metrics: never the held-out item.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams
from models.fm.assets import gguf_path, torch_dir
from models.fm.listwise import ListwisePromptBuilder, score_list
from models.fm.serving import FoundationModel
from models.text.encoder import ItemEncoder, embed_catalog
from models.types import FloatArray, IntArray
from sync.client.evaluate import ScoreFn, evaluate_held_out
from sync.client.http_client import AgentClient, RoundResult, StageWatcher
from sync.client.identity import Identity
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.service import Coordinator
from sync.errors import ProtocolError
from sync.protocol.evaluation import EVAL, EvalPlan, LocalEvaluation, decode, encode
from sync.protocol.privacy import THETA, Part, PrivacyParams, prepare_contribution
from sync.protocol.wire import API
from tests.sync.helpers import cohort_in_background, finished, noise
from tests.sync.test_protocol import RecordingTransport

WEIGHTS = (0.0, 0.5, 1.0)
DIM = 8
AGENTS = 4
LM_AGENTS = 2  # agents 0 and 1 score with the language model; 2 and 3 only have the first stage
RERANK_K = 4  # the language model rescores the first stage's top 4 in one listwise prompt (the product: 20)


@pytest.fixture(scope="module")
def ml() -> Dataset:
    return load_ml100k()


@pytest.fixture(scope="module")
def llm() -> Iterator[FoundationModel]:
    model = FoundationModel(gguf_path(), n_threads=2)
    yield model
    model.close()


@pytest.fixture
def text_vectors(ml: Dataset, warm_embedding_cache: Path) -> FloatArray:
    return embed_catalog(ml.catalog, ItemEncoder(), warm_embedding_cache)


def _plan(**overrides: Any) -> EvalPlan:
    return EvalPlan(WEIGHTS, clip=0.1, **overrides)


# -- the eval part on its own ------------------------------------------------------------------------------------


def test_the_eval_part_is_bounded_unweighted_and_inside_the_joint_sensitivity() -> None:
    plan = _plan()
    params = PrivacyParams.for_parts(
        [Part(THETA, 50, 0.5), Part(EVAL, plan.size, plan.clip)], sigma=0.0, weight_cap=32.0
    )
    assert params.clip == pytest.approx(math.hypot(0.5, 0.1))
    best = LocalEvaluation((1.0, 1.0), ((1.0, 1.0),) * len(WEIGHTS))  # every value at its largest
    part = encode(best, plan)
    assert np.linalg.norm(part) == pytest.approx(plan.clip)
    big = np.full(50, 10.0)  # clipped to 0.5
    light = prepare_contribution(big, 4.0, params, noise_divisor=1, factor=0.5, evaluation=part)
    heavy = prepare_contribution(big, 32.0, params, noise_divisor=1, evaluation=part)
    # the model part and the weight element scale with w = factor·n/cap; the eval part never does
    assert light.weight == pytest.approx(4.0 / 32.0 * 0.5) and heavy.weight == 1.0
    assert np.array_equal(light.vector[50:-1], part) and np.array_equal(heavy.vector[50:-1], part)
    assert light.vector[-1] == pytest.approx(light.weight * params.clip)
    assert np.linalg.norm(heavy.vector) <= math.sqrt(2.0) * params.clip + 1e-9
    # an agent that evaluated nothing adds zeros (count 0); a wrong size or a round without the part is refused
    assert not prepare_contribution(big, 32.0, params, noise_divisor=1).vector[50:-1].any()
    with pytest.raises(ValueError, match="eval part holds"):
        prepare_contribution(big, 32.0, params, noise_divisor=1, evaluation=part[:-1])
    with pytest.raises(ValueError, match="no eval part"):
        prepare_contribution(big, 32.0, PrivacyParams(clip=0.5, sigma=0.0), noise_divisor=1, evaluation=part)
    with pytest.raises(ProtocolError, match="last part"):
        PrivacyParams.for_parts([Part(EVAL, 10, 0.1), Part(THETA, 50, 0.5)], sigma=0.0, weight_cap=32.0)
    # the coordinator's decoding gives back the population means
    nothing = LocalEvaluation(None, None)
    first_only = LocalEvaluation((1.0, 0.5), None)
    summed = encode(best, plan) + encode(first_only, plan) + encode(nothing, plan)
    population = decode(summed, plan)
    assert population.agents == pytest.approx(2.0) and population.blend_agents == pytest.approx(1.0)
    assert population.hit == 1.0 and population.ndcg == pytest.approx(0.75)
    assert [s.ndcg for s in population.settings] == [1.0, 1.0, 1.0]
    assert population.best(plan.min_agents) is None  # 1 agent < min_agents: no pick
    assert population.best(1) is not None and population.best(1).weight == 0.0  # type: ignore[union-attr]
    # an agent's listwise prompt letters at most 20 candidates: a plan asking for more is refused
    assert _plan(rerank_k=20).rerank_k == 20
    with pytest.raises(ProtocolError, match="rerank_k"):
        _plan(rerank_k=21)


def test_the_eval_part_carries_ranks_metrics_only_never_the_held_out_item(
    ml: Dataset, text_vectors: FloatArray
) -> None:
    """Two people whose held-out items differ but land at the same ranks send bit-identical eval parts: nothing in
    the part depends on which item was held out or which candidates were drawn."""
    plan = _plan()
    shared = SharedParams.init(len(text_vectors), dim=DIM, seed=3)
    scorer = FirstStageScorer(shared, text_vectors)

    def first(history: IntArray, items: IntArray) -> FloatArray:
        return scorer.score_items(history, PrivateParams.init(DIM), items)

    sequences = ml.interactions.sequences()
    by_rank: dict[tuple[float, float] | None, list[bytes]] = {}
    seen_items: set[int] = set()
    for user in range(60):
        liked = np.asarray(sequences[user], dtype=np.int64)
        measured = evaluate_held_out(liked, np.zeros(0, dtype=np.int64), len(text_vectors), plan, first, seed=1)
        by_rank.setdefault(measured.first_stage, []).append(encode(measured, plan).tobytes())
        seen_items.add(int(liked[-1]))
    assert len(seen_items) > 10  # many different held-out items...
    for parts in by_rank.values():
        assert len(set(parts)) == 1  # ...but one part per outcome
    assert evaluate_held_out(np.array([5]), np.zeros(0, dtype=np.int64), 1682, plan, first).first_stage is None


# -- a real round --------------------------------------------------------------------------------------------------


def _coordinator(tmp_path: Path, initial: FloatArray, **overrides: Any) -> Coordinator:
    settings: dict[str, Any] = {
        "db": tmp_path / "coordinator.sqlite3",
        "min_cohort": 3,
        "target_cohort": AGENTS,
        "over_selection": 0.0,
        "sigma": 0.0,  # no noise: the published totals must equal the agents' own numbers
        "advertise_s": 120.0,
        "share_keys_s": 120.0,
        "masked_input_s": 120.0,
        "unmask_s": 120.0,
        "round_interval_s": 0.0,
        "eval_weights": ",".join(str(w) for w in WEIGHTS),
        "eval_min_agents": LM_AGENTS,
        "eval_rerank_k": RERANK_K,
    }
    return Coordinator(CoordinatorConfig(**(settings | overrides)), initial=initial)


class _TamperBlend(httpx.AsyncBaseTransport):
    """Changes the published blend weight on its way to the agent (its signature left as it was)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if request.url.path == f"{API}/shared":
            meta = json.loads(body)
            meta["blend"]["weight"] = 2.0
            body = json.dumps(meta).encode()
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)


def _sums(results: list[RoundResult]) -> dict[str, Any]:
    """What the agents computed, summed: the first stage over all who held out an item, the blend over LM agents."""
    local = [r.local_evaluation for r in results if r.local_evaluation is not None]
    first = [e.first_stage for e in local if e.first_stage is not None]
    paired = [e.blend for e in local if e.blend is not None]
    return {
        "agents": len(first),
        "hit": sum(h for h, _ in first) / len(first),
        "ndcg": sum(n for _, n in first) / len(first),
        "blend_agents": len(paired),
        "settings": [
            (float(np.mean([b[i][0] for b in paired])), float(np.mean([b[i][1] for b in paired])))
            for i in range(len(WEIGHTS))
        ]
        if paired
        else [],
    }


@pytest.mark.usefixtures("warm_embedding_cache")
def test_a_round_publishes_the_population_totals_picks_and_signs_the_weight_and_keeps_it(
    tmp_path: Path, ml: Dataset, text_vectors: FloatArray, llm: FoundationModel
) -> None:
    n_items = len(text_vectors)
    initial = SharedParams.init(n_items, dim=DIM, seed=1).to_vector()
    coordinator = _coordinator(tmp_path, initial)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", ml.catalog)  # the prompt the product serves
    sequences = ml.interactions.sequences()
    histories = [np.asarray(sequences[u][-12:], dtype=np.int64) for u in range(AGENTS)]
    recorder = RecordingTransport()
    llm_lock = threading.Lock()

    def evaluator(agent: int, current: FloatArray, with_lm: bool) -> Any:
        scorer = FirstStageScorer(SharedParams.init(n_items, dim=DIM).with_vector(current), text_vectors)

        def first(history: IntArray, items: IntArray) -> FloatArray:
            return scorer.score_items(history, PrivateParams.init(DIM), items)

        def language_model(history: IntArray, items: IntArray) -> FloatArray:
            with llm_lock:  # the agents evaluate in worker threads; one native model serves them in turn
                return score_list(llm, builder, history.tolist(), items.tolist()).astype(np.float32)

        lm: ScoreFn | None = language_model if with_lm and agent < LM_AGENTS else None
        return lambda plan, base: evaluate_held_out(
            histories[agent], np.zeros(0, dtype=np.int64), n_items, plan, first, lm, seed=base
        )

    async def one_round(url: str, with_lm: bool) -> tuple[list[RoundResult], AgentClient]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=60.0) as http,
            httpx.AsyncClient(base_url=url, timeout=60.0, transport=recorder) as recorded,
        ):
            watcher = StageWatcher(http)
            agents = [
                AgentClient(recorded if i == 0 else http, Identity.generate(), watcher=watcher) for i in range(AGENTS)
            ]
            await asyncio.gather(*(a.register() for a in agents))
            current = (await agents[0].fetch_shared()).vector
            rng = np.random.default_rng(7)
            results = await asyncio.gather(
                *(
                    a.take_part(
                        rng.normal(0, 1e-3, current.size), 10.0, timeout=120.0, evaluate=evaluator(i, current, with_lm)
                    )
                    for i, a in enumerate(agents)
                )
            )
            return list(results), agents[0]

    with serve_in_thread(coordinator) as url:
        results, agent = asyncio.run(one_round(url, with_lm=True))
        assert [r.status for r in results] == ["done"] * AGENTS
        expected = _sums(results)
        assert expected["agents"] == AGENTS and expected["blend_agents"] == LM_AGENTS
        entry = results[0].evaluation
        assert entry is not None and entry["round_id"] == 0 and entry["base_version"] == 0
        assert entry["published_version"] == 1 and entry["k"] == 10
        assert entry["agents"] == AGENTS and entry["blend_agents"] == LM_AGENTS
        assert entry["hit_at_k"] == pytest.approx(expected["hit"], abs=2e-3)
        assert entry["ndcg_at_k"] == pytest.approx(expected["ndcg"], abs=2e-3)
        for got, (hit, ndcg), weight in zip(entry["settings"], expected["settings"], WEIGHTS, strict=True):
            assert got["weight"] == weight
            assert got["hit_at_k"] == pytest.approx(hit, abs=2e-3)
            assert got["ndcg_at_k"] == pytest.approx(ndcg, abs=2e-3)
        top = max(ndcg for _, ndcg in expected["settings"])
        best = WEIGHTS.index(entry["chosen_weight"])  # the best NDCG@10 (an exact tie may go either way)
        assert entry["chosen"] == "this round" and expected["settings"][best][1] == pytest.approx(top, abs=2e-3)

        async def fetch(transport: httpx.AsyncBaseTransport | None) -> Any:
            async with httpx.AsyncClient(base_url=url, transport=transport) as http:
                client = AgentClient(http, Identity.generate(), coordinator_key=coordinator.public_key)
                return await client.fetch_shared()

        shared = asyncio.run(fetch(None))  # verified against the pinned coordinator key
        assert shared.version == 1 and shared.blend is not None
        assert (shared.blend.weight, shared.blend.measured_version, shared.blend.agents) == (WEIGHTS[best], 0, 2)
        with pytest.raises(ProtocolError, match="blend weight of version 1 is not signed"):
            asyncio.run(fetch(_TamperBlend()))

        # a round where nobody scores the language model: too few for a pick, the previous weight is kept and
        # signed again with the new version
        second, _ = asyncio.run(one_round(url, with_lm=False))
        again = second[0].evaluation
        assert again is not None and again["base_version"] == 1 and again["blend_agents"] == 0
        assert again["chosen"] == "kept" and again["chosen_weight"] == WEIGHTS[best]
        shared = asyncio.run(fetch(None))
        assert shared.version == 2 and shared.blend is not None
        assert (shared.blend.weight, shared.blend.measured_version) == (WEIGHTS[best], 0)

        status = httpx.get(f"{url}/status").json()
        history = status["evaluation"]["history"]
        assert [(h["round_id"], h["base_version"], h["published_version"]) for h in history] == [(0, 0, 1), (1, 1, 2)]
        assert history == [entry, again]
        assert status["evaluation"]["blend"]["weight"] == WEIGHTS[best]
        assert status["round"]["evaluation"]["weights"] == list(WEIGHTS)

    # what agent 0 sent holds no trace of its held-out item, its candidates or its unmasked eval part
    assert agent is not None
    sent = b"".join(recorder.sent)
    held_out = int(histories[0][-1])
    first_result = results[0]
    assert first_result.local_evaluation is not None
    clear_part = encode(first_result.local_evaluation, _plan())
    forbidden = {
        "held-out index int64": np.asarray([held_out], dtype="<i8").tobytes(),
        "held-out catalog id": f'"{ml.catalog.item_ids[held_out]}"'.encode(),
        "held-out title": ml.catalog.titles[held_out].encode(),
        "eval part in clear (float64)": clear_part.tobytes(),
        "eval part in clear (float32)": clear_part.astype("<f4").tobytes(),
    }
    for label, needle in forbidden.items():
        assert needle not in sent, f"{label} found in what the agent sent"


# -- the agent ---------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("warm_embedding_cache")
def test_agent_sync_evaluates_prints_and_records_the_federation_weight_and_your_setting_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agent sync --json`` with a coordinator that evaluates: the profile's held-out item counts in the totals
    (first stage only: it has no language-model adapter), the signed weight is printed and recorded, ``agent inspect``
    says the weight in force comes from the federation, and a ``[rerank] weight`` set by the person wins."""
    from typer.testing import CliRunner

    from agent import paths
    from agent.cli.main import app
    from agent.engine.profile import Profile
    from agent.store.profile_store import ProfileStore

    monkeypatch.delenv("PERSONA_COORDINATOR_URL", raising=False)
    monkeypatch.setenv("PERSONA_SYNC_SIGMA", "0")  # the agent accepts the noiseless round that makes totals exact
    config_file = paths.ensure_dir(paths.config_dir()) / "config.toml"
    config_file.write_text("[sync]\nepsilon_budget = inf\n", encoding="utf-8")  # ML-100K's σ is beyond the default
    runner = CliRunner()
    for item in ("Toy Story", "Aladdin", "The Lion King (1994)"):
        assert runner.invoke(app, ["rate", item, "like", "--no-train"]).exit_code == 0
    with ProfileStore.open() as store:
        initial = Profile.load(store).shared.to_vector()
    coordinator = _coordinator(tmp_path, initial, min_cohort=3, target_cohort=3, weight_cap=4.0)
    # two other agents that scored the blend (their numbers: the first stage missed, weight 0.5 found it at rank 0)
    peer = LocalEvaluation((0.0, 0.0), ((0.0, 0.0), (1.0, 1.0), (1.0, 0.5)))
    with serve_in_thread(coordinator) as url:
        with cohort_in_background(url, noise(2, initial.size, 1e-3, 1), 20.0, evaluate=lambda _p, _v: peer) as others:
            synced = runner.invoke(app, ["sync", "--coordinator", url, "--timeout", "150", "--json"])
        assert synced.exit_code == 0, synced.output + synced.stderr
    results = finished(others)
    summary = json.loads(synced.stdout)
    assert summary["version"] == 1 and len(results) == 2
    evaluation = summary["evaluation"]
    assert evaluation["agents"] == 3 and evaluation["blend_agents"] == 2  # the profile counted, first stage only
    assert [s["ndcg_at_k"] for s in evaluation["settings"]] == pytest.approx([0.0, 1.0, 0.5], abs=2e-3)
    assert evaluation["chosen_weight"] == 0.5 and evaluation["chosen"] == "this round"
    blend = summary["blend"]
    assert (blend["weight"], blend["version"], blend["measured_version"], blend["agents"]) == (0.5, 1, 0, 2)
    assert blend["in_force"]["source"] == "federation" and blend["in_force"]["weight"] == 0.5
    inspected = json.loads(runner.invoke(app, ["inspect", "--json"]).stdout)["rerank"]
    assert (inspected["weight"], inspected["source"]) == (0.5, "federation")
    assert "federation, version 1, from 2 agents" in inspected["why"]
    config_file.write_text("[sync]\nepsilon_budget = inf\n[rerank]\nweight = 0\n", encoding="utf-8")
    inspected = json.loads(runner.invoke(app, ["inspect", "--json"]).stdout)["rerank"]
    assert (inspected["weight"], inspected["source"]) == (0.0, "your setting")
