"""The availability simulation (sync.simulation.availability): seeded on/off traces, and rounds over a real
coordinator whose cohorts obey the device's rules — only agents online (on AC) at the slot, never more often than the
spacing allows, within the yearly budget."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.federation import WeightedMeanAggregator
from models.firststage.scorer import SharedParams
from models.text.encoder import ItemEncoder, embed_catalog
from sync.protocol import rules
from sync.protocol.privacy import PrivacyParams, gaussian_epsilon
from sync.simulation.aggregator import SecureAggregator
from sync.simulation.availability import (
    DAY_S,
    AvailabilityConfig,
    AvailabilityError,
    AvailabilityRun,
    Block,
    Trace,
    default_traces,
    load_traces,
    simulate_availability,
    traces_for,
)

AGENTS = 20


@pytest.fixture(scope="module")
def ml100k(_catalog_embeddings: Path) -> Any:
    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    split = make_loo_split(dataset, seed=0)
    return split, vectors, sorted(split.users)[:AGENTS]


def test_default_traces_are_seeded_and_within_the_online_fraction() -> None:
    first, again, other = (default_traces(20, 6, seed=s) for s in (3, 3, 4))
    assert first == again
    assert first != other
    battery = ac = 0.0
    for trace in first:
        for day in range(6):
            fraction = trace.online_seconds(day * DAY_S, (day + 1) * DAY_S) / DAY_S
            assert 0.2 - 1e-9 <= fraction <= 0.4 + 1e-9
        assert all(0 <= b.start < b.end <= 6 * DAY_S for b in trace.blocks)
        battery += sum(b.end - b.start for b in trace.blocks if not b.on_ac)
        ac += sum(b.end - b.start for b in trace.blocks if b.on_ac)
    assert 0.05 < battery / (battery + ac) < 0.6  # battery 10–50 % of each agent's online time, on average
    assert not first[0].online(-1.0) and not first[0].online(7 * DAY_S)


def test_trace_files_load_and_bad_ones_say_where(tmp_path: Path) -> None:
    blocks = [[{"start_h": 0, "end_h": 2.5, "power": "ac"}, {"start_h": 3, "end_h": 4, "power": "battery"}], []]
    path = tmp_path / "traces.json"
    path.write_text(json.dumps({"agents": blocks}), encoding="utf-8")
    traces = load_traces(path)
    assert len(traces) == 2 and traces[1].blocks == ()
    assert traces[0].online(3600.0) and not traces[0].online(2.75 * 3600)
    assert traces[0].block_at(3.5 * 3600) is not None and not traces[0].block_at(3.5 * 3600).on_ac  # type: ignore[union-attr]
    table = tmp_path / "traces.csv"
    table.write_text("agent,start_h,end_h,power\n0,0,2.5,ac\n0,3,4,battery\n1,1,2,ac\n", encoding="utf-8")
    assert load_traces(table)[0] == traces[0]
    with pytest.raises(AvailabilityError, match="fewer than the 3 simulated"):
        traces_for(str(table), 3, 1.0)
    table.write_text("agent,start_h,end_h,power\n0,0,2.5,ac\n0,2,4,mains\n", encoding="utf-8")
    with pytest.raises(AvailabilityError, match=r"line 3: power must be"):
        load_traces(table)
    table.write_text("agent,start_h,end_h,power\n0,0,2.5,ac\n0,2,4,ac\n", encoding="utf-8")
    with pytest.raises(AvailabilityError, match="agent 0: blocks overlap"):
        load_traces(table)
    with pytest.raises(AvailabilityError, match="neither"):
        traces_for(str(tmp_path / "missing.json"), 3, 1.0)


def _check_rules(run: AvailabilityRun, traces: list[Trace], users: list[int], config: AvailabilityConfig) -> None:
    """Every cohort member was online on AC at its slot, within the stale bound; participations respect the cap
    and the spacing."""
    index = {u: i for i, u in enumerate(users)}
    taken: dict[int, list[float]] = {}
    for record in run.rounds:
        for user, base in zip(record.cohort, record.bases, strict=True):
            block = traces[index[user]].block_at(record.time)
            assert block is not None, f"agent {user} offline at slot {record.slot} but in its cohort"
            assert block.on_ac
            assert record.version_before - base <= config.max_stale
        assert set(record.released) <= set(record.cohort)
        for user in record.released:
            taken.setdefault(user, []).append(record.time)
    assert run.participations == [len(taken.get(u, [])) for u in users]
    assert max(run.participations) <= config.cap()
    for times in taken.values():
        assert all(b - a >= config.min_days_between * DAY_S for a, b in itertools.pairwise(times))


def test_cohorts_over_a_real_coordinator_follow_the_device_rules(ml100k: Any) -> None:
    split, vectors, users = ml100k
    config = AvailabilityConfig(days=3, rounds_per_day=4, min_days_between=1.0, min_cohort=2, seed=1)
    traces = default_traces(AGENTS, config.days + 1, seed=1)
    initial = SharedParams.init(split.n_items, seed=0).to_vector()
    coordinator = ("--min-cohort", "2", "--advertise-s", "1.5", "--sigma", "0.5", "--clip", "0.5")
    with SecureAggregator.local(initial, AGENTS, coordinator_args=coordinator) as aggregator:
        run = simulate_availability(split, vectors, traces, aggregator, config=config, users=users)
    summary = run.summary()
    assert summary["rounds_opened"] == config.slots == 12 and summary["cap"] == 3
    assert summary["rounds_completed"] >= 2 and summary["over_cap"] == 0
    assert summary["rounds_completed"] + summary["rounds_abandoned"] == summary["rounds_opened"]
    # non-vacuous: someone was offline at a slot while others took part, and someone took part twice
    assert any(not t.online(r.time) for r in run.rounds for t in traces)
    assert max(run.participations) >= 2
    _check_rules(run, traces, users, config)
    # ε per agent comes from each agent's own ledger: the coordinator's σ 0.5 per released participation
    z = PrivacyParams(clip=0.5, sigma=0.5).noise_multiplier
    assert run.noise_multiplier == pytest.approx(z)
    most = max(run.participations)
    assert summary["epsilon_per_agent_year"]["max"] == pytest.approx(
        run.epsilons[run.participations.index(most)], rel=1e-9
    )
    assert summary["quality_final"]["NDCG@10"] > 0
    # after the run every agent retrains its private vector on its device: measured on the final version too
    assert summary["quality_final_local_private"]["NDCG@10"] > 0
    assert summary["quality_final_local_private"] != summary["quality_final"]


def test_the_budget_and_battery_rules_stop_participation(ml100k: Any) -> None:
    split, vectors, users = ml100k
    z = PrivacyParams(clip=0.5, sigma=0.5).noise_multiplier
    one, two = (gaussian_epsilon([z] * k) for k in (1, 2))
    config = AvailabilityConfig(
        days=2, rounds_per_day=4, min_days_between=0.0, min_cohort=2, epsilon_budget=(one + two) / 2, noise_multiplier=z
    )
    traces = default_traces(AGENTS, config.days + 1, seed=2)
    run = simulate_availability(
        split, vectors, traces, WeightedMeanAggregator(), config=config, users=users, local_private=False
    )
    assert max(run.participations) == 1  # a second round would exceed the budget
    assert all(e <= config.epsilon_budget for e in run.epsilons)
    _check_rules(run, traces, users, config)
    # on battery allowed: agents online only on battery may take part too
    battery = [Trace(tuple(Block(b.start, b.end, on_ac=False) for b in t.blocks)) for t in traces]
    strict = AvailabilityConfig(days=2, rounds_per_day=2, min_days_between=0.0, min_cohort=2)
    refused = simulate_availability(
        split, vectors, battery, WeightedMeanAggregator(), config=strict, users=users, local_private=False
    )
    assert sum(refused.participations) == 0 and refused.trainings == 0
    loose = AvailabilityConfig(days=2, rounds_per_day=2, min_days_between=0.0, min_cohort=2, require_ac=False)
    allowed = simulate_availability(
        split, vectors, battery, WeightedMeanAggregator(), config=loose, users=users, local_private=False
    )
    assert sum(allowed.participations) > 0


def test_the_device_rules_are_one_function() -> None:
    assert rules.spacing_allows(None, 0.0, min_days_between=7)
    assert rules.spacing_allows(0.0, 7 * DAY_S, min_days_between=7)
    assert not rules.spacing_allows(0.0, 7 * DAY_S - 1, min_days_between=7)
    assert rules.power_allows(None, require_ac=True) and rules.power_allows(True, require_ac=True)
    assert not rules.power_allows(False, require_ac=True) and rules.power_allows(False, require_ac=False)
    assert AvailabilityConfig(days=28, rounds_per_day=4).cap() == 4
    assert (
        AvailabilityConfig(days=27, rounds_per_day=4).cap() == 4
    )  # slots at 6 h … 27 d: days 0.25, 7.25, 14.25, 21.25
    assert AvailabilityConfig(days=21, rounds_per_day=4).cap() == 3
    assert math.isinf(AvailabilityConfig().epsilon_budget)
    assert np.isclose(AvailabilityConfig(rounds_per_day=4).slot_s, 6 * 3600)


class _Recording(WeightedMeanAggregator):
    """In-process aggregation that remembers every submitted weight, by round and agent."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[tuple[int, int], float] = {}

    def submit(self, agent_id: int, delta: Any, weight: float) -> None:
        self.weights[(self.round_id, agent_id)] = weight
        super().submit(agent_id, delta, weight)


def test_a_stale_update_weighs_less(ml100k: Any) -> None:
    assert AvailabilityConfig().staleness_weight(3) == 1.0  # off by default: every update weighs the same
    weighted = AvailabilityConfig(staleness_exponent=1.0)
    assert [weighted.staleness_weight(s) for s in (0, 1, 2)] == pytest.approx([1.0, 0.5, 1 / 3])
    with pytest.raises(AvailabilityError, match="staleness_exponent"):
        AvailabilityConfig(staleness_exponent=-1.0)
    secure = SecureAggregator("http://127.0.0.1:1")  # the agent's factor rides in its masked weight: within [0, 1]
    secure.begin_round(0, 3)
    with pytest.raises(ValueError, match="weight factor"):
        secure.submit(1, np.zeros(3, dtype=np.float32), 10.0, factor=1.5)
    split, vectors, users = ml100k
    runs = []
    for exponent in (0.0, 1.0):
        config = AvailabilityConfig(days=2, min_days_between=0.0, min_cohort=2, staleness_exponent=exponent, seed=3)
        aggregator = _Recording()
        traces = default_traces(AGENTS, config.days + 1, seed=3)
        run = simulate_availability(split, vectors, traces, aggregator, config=config, users=users, local_private=False)
        runs.append((run, aggregator.weights))
    (plain, plain_weights), (run, weights) = runs
    # both runs are identical up to the first round with a stale member; there, only the stale weights shrink
    first = next(r for r in plain.rounds if r.status == "done" and any(b < r.version_before for b in r.bases))
    same = next(r for r in run.rounds if r.slot == first.slot)
    assert (same.cohort, same.bases) == (first.cohort, first.bases)
    for user, base in zip(first.cohort, first.bases, strict=True):
        behind = first.version_before - base
        expected = plain_weights[(first.slot, user)] / (1 + behind)
        assert weights[(first.slot, user)] == pytest.approx(expected)
    assert any(weights[(first.slot, u)] < plain_weights[(first.slot, u)] for u in first.cohort)
    assert any(weights[(first.slot, u)] == plain_weights[(first.slot, u)] for u in first.cohort)
