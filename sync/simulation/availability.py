"""Agents that are online only part of the day: seeded on/off traces, a simulated clock, and rounds over a real
coordinator in compressed time (``scripts/simulate.py --availability default|always|FILE``).

**Traces.** An agent's trace is a list of blocks of simulated time, each online on AC or online on battery; outside
them the agent is offline. :func:`default_traces` draws, per agent (seeded by the run's seed and the agent's index),
a daily online fraction uniform in [20 %, 40 %] and a battery share uniform in [10 %, 50 %]; every simulated day its
online time is cut into random blocks (1–4 h on average) at random places, each block on battery with that share's
probability. A FILE gives the traces instead (:func:`load_traces`: JSON or CSV, hours from the start).

**The clock.** A simulated day has ``rounds_per_day`` round slots (every 6 h by default); the coordinator opens a
round at every slot (rounds open on a schedule, not when someone asks). Nothing waits for simulated time: the run
jumps from event to event.

**An agent, as a laptop runs it** (``agent sync --if-eligible`` under ``agent schedule``): its timer fires once per
slot period at its own seeded phase. When it fires while the agent is online and the device's rules allow it —
:func:`sync.protocol.rules.power_allows` (on AC, or on battery when ``require_ac`` is off),
:func:`sync.protocol.rules.spacing_allows` (``min_days_between`` since its last released participation) and the
yearly budget (:func:`sync.client.budget.budget_status` over its own ledger) — the same functions the device asks
— it fetches the newest published version and trains locally at low priority, which takes a seeded 0.25–4 h of
simulated time. From then on it holds an update *based on that version* and checks in at the first slot where it is
online and the same rules still hold. A round may have been published meanwhile: its update is then stale (trained
from an older base); up to ``max_stale`` (2) versions behind it may still contribute, beyond that it drops the
update and trains again at a later firing.

**A round.** The cohort is every agent checking in at the slot. Below :func:`sync.protocol.rules.fewest_to_start`
(``min_cohort``) the round is abandoned and the agents keep their updates; otherwise their deltas go through the
aggregator — :class:`sync.simulation.aggregator.SecureAggregator` over a real coordinator in ``scripts/simulate.py``
— and the server's FedAdam steps the newest version with the mean (which the coordinator also publishes). With
``staleness_exponent`` > 0 an update ``s`` versions behind weighs ``(1 + s)^-a`` (the agent's weight factor, inside
the masked vector); off by default: it divides the same noise by a smaller total weight (README). Each
agent whose input was unmasked records a released participation in its own ledger (time, noise multiplier), which
its spacing and budget rules read from then on.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data.split import Split
from models.evaluation.protocols import metrics_for
from models.federation import Aggregator, FedAdam
from models.firststage.fit import cold_private_model, scorer_model
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.firststage.training import local_train
from models.types import FloatArray
from sync.client.budget import budget_status, epsilon_this_year
from sync.client.ledger import LedgerEntry, MemoryLedger
from sync.errors import SyncError
from sync.protocol import rules
from sync.protocol.privacy import DEFAULT_DELTA, gaussian_epsilon
from sync.simulation.aggregator import SecureAggregator

HOUR_S = 3_600.0
DAY_S = rules.DAY_S
MODELS = ("default", "always")
"""Built-in availability models: ``default`` (20–40 % online a day in random blocks, partly on battery) and
``always`` (every agent online on AC all the time)."""


class AvailabilityError(SyncError):
    """A bad availability setting or trace file (the message says what and where)."""


@dataclass(frozen=True)
class Block:
    """One stretch of simulated time an agent is online: [start, end) in seconds from the run's start."""

    start: float
    end: float
    on_ac: bool


@dataclass(frozen=True)
class Trace:
    """One agent's online blocks, sorted and not overlapping; offline outside them."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        for earlier, later in itertools.pairwise(self.blocks):
            if later.start < earlier.end:
                raise AvailabilityError(
                    f"blocks overlap: [{earlier.start / HOUR_S:g} h, {earlier.end / HOUR_S:g} h) and "
                    f"[{later.start / HOUR_S:g} h, {later.end / HOUR_S:g} h)"
                )
        object.__setattr__(self, "_starts", [b.start for b in self.blocks])

    def block_at(self, t: float) -> Block | None:
        """The block the agent is in at ``t`` (seconds), or None when it is offline."""
        i = bisect.bisect_right(self._starts, t) - 1  # type: ignore[attr-defined]
        if i >= 0 and self.blocks[i].start <= t < self.blocks[i].end:
            return self.blocks[i]
        return None

    def online(self, t: float) -> bool:
        """True when the agent is online at ``t``."""
        return self.block_at(t) is not None

    def online_seconds(self, start: float, end: float) -> float:
        """How long the agent is online within [start, end)."""
        return sum(max(0.0, min(b.end, end) - max(b.start, start)) for b in self.blocks)


def default_traces(
    n_agents: int,
    days: float,
    *,
    seed: int = 0,
    online: tuple[float, float] = (0.2, 0.4),
    battery: tuple[float, float] = (0.1, 0.5),
    block_hours: tuple[float, float] = (1.0, 4.0),
) -> list[Trace]:
    """The ``default`` model: per agent a daily online fraction uniform in ``online`` and a battery share uniform in
    ``battery``; every day that much online time in random blocks (average length uniform in ``block_hours``) at
    random places in the day, each block on battery with the agent's battery share. Seeded per (seed, agent)."""
    if not 0.0 <= online[0] <= online[1] <= 1.0:
        raise AvailabilityError(f"online fractions must satisfy 0 ≤ low ≤ high ≤ 1, not {online}")
    traces = []
    for agent in range(n_agents):
        rng = np.random.default_rng([seed, agent, 7])
        fraction = float(rng.uniform(*online))
        battery_share = float(rng.uniform(*battery))
        blocks: list[Block] = []
        for day in range(math.ceil(days)):
            length = fraction * DAY_S
            if length <= 0:
                continue
            n_blocks = max(1, round(length / (float(rng.uniform(*block_hours)) * HOUR_S)))
            lengths = length * rng.dirichlet(np.ones(n_blocks))
            gaps = (DAY_S - length) * rng.dirichlet(np.ones(n_blocks + 1))
            t = day * DAY_S
            for gap, size in zip(gaps[:-1], lengths, strict=True):
                t += float(gap)
                blocks.append(Block(t, t + float(size), on_ac=bool(rng.random() >= battery_share)))
                t += float(size)
        traces.append(Trace(tuple(blocks)))
    return traces


def always_traces(n_agents: int, days: float) -> list[Trace]:
    """The ``always`` model: every agent online on AC for the whole run."""
    return [Trace((Block(0.0, days * DAY_S, on_ac=True),)) for _ in range(n_agents)]


def _block(where: str, start: Any, end: Any, power: Any) -> Block:
    try:
        begin, finish = float(start), float(end)
    except (TypeError, ValueError):
        raise AvailabilityError(f"{where}: start_h and end_h must be numbers, not {start!r} and {end!r}") from None
    if not (math.isfinite(begin) and math.isfinite(finish)) or begin < 0 or finish <= begin:
        raise AvailabilityError(f"{where}: need 0 ≤ start_h < end_h, got {begin:g} and {finish:g}")
    if power not in ("ac", "battery"):
        raise AvailabilityError(f'{where}: power must be "ac" or "battery", not {power!r}')
    return Block(begin * HOUR_S, finish * HOUR_S, on_ac=power == "ac")


def load_traces(path: Path) -> list[Trace]:
    """Traces from a file, hours from the start of the run:

    * JSON: ``{"agents": [[{"start_h": 0, "end_h": 3.5, "power": "ac"}, ...], ...]}`` (one list per agent, in order);
    * CSV: a header ``agent,start_h,end_h,power`` and one block a row (agents numbered 0, 1, ... without gaps).

    AvailabilityError names the file and the row or agent of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise AvailabilityError(f"cannot read availability file {path}: {error.strerror or error}") from None
    per_agent: dict[int, list[Block]] = {}
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"agent", "start_h", "end_h", "power"} - set(reader.fieldnames or ())
        if missing:
            raise AvailabilityError(f"{path}: the header needs agent,start_h,end_h,power (missing {sorted(missing)})")
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            try:
                agent = int(row["agent"])
            except (TypeError, ValueError):
                raise AvailabilityError(f"{where}: agent must be a whole number, not {row['agent']!r}") from None
            if agent < 0:
                raise AvailabilityError(f"{where}: agent must be ≥ 0")
            per_agent.setdefault(agent, []).append(_block(where, row["start_h"], row["end_h"], row["power"]))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise AvailabilityError(f"{path} is not JSON (line {error.lineno}): {error.msg}") from None
        agents = data.get("agents") if isinstance(data, dict) else None
        if not isinstance(agents, list):
            raise AvailabilityError(f'{path}: expected {{"agents": [[block, ...], ...]}}')
        for agent, blocks in enumerate(agents):
            if not isinstance(blocks, list):
                raise AvailabilityError(f"{path}, agent {agent}: expected a list of blocks")
            for k, b in enumerate(blocks):
                where = f"{path}, agent {agent}, block {k}"
                if not isinstance(b, dict):
                    raise AvailabilityError(f'{where}: expected {{"start_h": ..., "end_h": ..., "power": ...}}')
                per_agent.setdefault(agent, []).append(_block(where, b.get("start_h"), b.get("end_h"), b.get("power")))
            per_agent.setdefault(agent, [])
    if not per_agent:
        raise AvailabilityError(f"{path} holds no agent's trace")
    if sorted(per_agent) != list(range(len(per_agent))):
        raise AvailabilityError(f"{path}: agents must be numbered 0 to {len(per_agent) - 1} without gaps")
    traces = []
    for agent in range(len(per_agent)):
        try:
            traces.append(Trace(tuple(sorted(per_agent[agent], key=lambda b: b.start))))
        except AvailabilityError as error:
            raise AvailabilityError(f"{path}, agent {agent}: {error}") from None
    return traces


def traces_for(spec: str, n_agents: int, days: float, *, seed: int = 0) -> list[Trace]:
    """``default``, ``always`` or a trace file's path: ``n_agents`` traces (AvailabilityError if a file has fewer).

    A built-in model covers one day more than ``days``, so the last slot (at the end of day ``days``) is covered."""
    if spec == "default":
        return default_traces(n_agents, days + 1, seed=seed)
    if spec == "always":
        return always_traces(n_agents, days + 1)
    path = Path(spec)
    if not path.is_file():
        raise AvailabilityError(f"--availability is {', '.join(MODELS)} or a JSON/CSV trace file; {spec!r} is neither")
    traces = load_traces(path)
    if len(traces) < n_agents:
        raise AvailabilityError(f"{path} has traces for {len(traces)} agents, fewer than the {n_agents} simulated")
    return traces[:n_agents]


@dataclass(frozen=True)
class AvailabilityConfig:
    """The simulated clock and the device rules of an availability run."""

    days: float = 28.0
    """Simulated days (28 with the default spacing of 7: four participations at most, so the cap matters)."""
    rounds_per_day: int = 4
    """Round slots per simulated day (every 6 h)."""
    min_days_between: float = rules.SYNC_MIN_DAYS_BETWEEN
    require_ac: bool = True
    epsilon_budget: float = math.inf
    """ε per rolling 365 days an agent may spend (∞: no budget, as the accuracy figures; see README)."""
    noise_multiplier: float = 0.0
    """The noise multiplier each participation is costed at (the coordinator's σ/√2)."""
    train_hours: tuple[float, float] = (0.25, 4.0)
    """How long local training at low priority takes, uniform in this range of simulated hours."""
    max_stale: int = 2
    """How many versions behind the newest an update may be based and still contribute."""
    staleness_exponent: float = 0.0
    """An update ``s`` versions behind weighs ``(1 + s) ** -staleness_exponent`` of a fresh one (the polynomial
    staleness weight of FedAsync/FedBuff; 0: all equal). The agent applies it as its weight factor."""
    min_cohort: int = rules.MIN_COHORT
    seed: int = 0

    def staleness_weight(self, behind: int) -> float:
        """The weight factor in (0, 1] of an update trained ``behind`` versions before the round's base."""
        return float((1.0 + max(behind, 0)) ** -self.staleness_exponent)

    @property
    def slot_s(self) -> float:
        """Simulated seconds between round slots."""
        return DAY_S / self.rounds_per_day

    @property
    def slots(self) -> int:
        """Round slots in the run: at slot_s, 2·slot_s, ... up to ``days`` (the timers start at 0)."""
        return math.floor(self.days * self.rounds_per_day + 1e-9)

    def slot_time(self, slot: int) -> float:
        """When round slot ``slot`` (from 0) opens, in simulated seconds from the start."""
        return (slot + 1) * self.slot_s

    def cap(self) -> int:
        """The most participations ``min_days_between`` allows over the run's slots."""
        if self.min_days_between <= 0:
            return self.slots
        last = (self.slots - 1) * self.slot_s
        return math.floor(last / (self.min_days_between * DAY_S) + 1e-9) + 1

    def __post_init__(self) -> None:
        if self.days <= 0 or self.rounds_per_day < 1:
            raise AvailabilityError("need days > 0 and at least one round slot per day")
        if self.min_days_between < 0 or self.max_stale < 0 or self.min_cohort < 1 or self.staleness_exponent < 0:
            raise AvailabilityError("min_days_between, max_stale and staleness_exponent must be ≥ 0, min_cohort ≥ 1")
        low, high = self.train_hours
        if not 0 <= low <= high:
            raise AvailabilityError(f"train_hours must satisfy 0 ≤ low ≤ high, not {self.train_hours}")


@dataclass
class _Pending:
    """An update an agent trained and holds until a round takes it."""

    base_version: int
    ready_at: float
    delta: FloatArray
    weight: float


@dataclass
class RoundRecord:
    """One slot's round: who checked in, their bases, and what came of it."""

    slot: int
    time: float
    version_before: int
    cohort: list[int]
    bases: list[int]
    status: str  # "done" | "abandoned"
    reason: str = ""
    released: list[int] = field(default_factory=list)


@dataclass
class AvailabilityRun:
    """What an availability run did (:meth:`summary` is the JSON of ``scripts/simulate.py --availability``)."""

    config: AvailabilityConfig
    rounds: list[RoundRecord]
    participations: list[int]  # per agent: released participations
    stale_contributions: int
    discarded_updates: int
    epsilons: list[float]  # per agent: ε over its released participations of the 365 days to the run's end
    final_valid: dict[str, float]
    selected_valid: dict[str, float]
    selected_round: int
    trainings: int
    noise_multiplier: float
    local_private_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    local_private_final: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Rounds, participations against the cap, staleness, quality and ε per agent (JSON-ready)."""
        done = [r for r in self.rounds if r.status == "done"]
        contributions = sum(len(r.released) for r in done)
        per_agent = self.participations or [0]
        year = 365.0 / self.config.days
        projected = [gaussian_epsilon([self.noise_multiplier] * round(k * year)) for k in per_agent]
        yearly = _spread([k * year for k in per_agent])
        days = self.config.days
        return {
            "simulated_days": self.config.days,
            "round_every_h": self.config.slot_s / HOUR_S,
            "rounds_opened": len(self.rounds),
            "rounds_completed": len(done),
            "rounds_abandoned": len(self.rounds) - len(done),
            "abandoned_below_min_cohort": sum(1 for r in self.rounds if r.reason == "below_min_cohort"),
            "cohort_size": _spread([len(r.released) for r in done] or [0]),
            "participations_per_agent": _spread(per_agent),
            "agents_never_took_part": sum(1 for p in per_agent if p == 0),
            "cap": self.config.cap(),
            "min_days_between": self.config.min_days_between,
            "over_cap": sum(1 for p in per_agent if p > self.config.cap()),
            "stale_base_fraction": self.stale_contributions / contributions if contributions else 0.0,
            "discarded_too_stale": self.discarded_updates,
            "local_trainings": self.trainings,
            "quality_final": self.final_valid,
            "quality_selected": self.selected_valid | {"round": self.selected_round},
            "quality_selected_local_private": self.local_private_valid,
            "quality_final_local_private": self.local_private_final,
            "noise_multiplier": self.noise_multiplier,
            "epsilon_per_agent_year": _json_spread(self.epsilons) | {"delta": DEFAULT_DELTA, "window_days": days},
            "epsilon_per_agent_year_projected": _json_spread(projected) | {"participations_per_year": yearly},
            "epsilon_budget": None if math.isinf(self.config.epsilon_budget) else self.config.epsilon_budget,
        }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": float(statistics.median(values)), "max": max(values)}


def _json_spread(values: Sequence[float]) -> dict[str, float | None]:
    """min/median/max with an infinite value (no noise) as None: JSON has no infinity."""
    return {k: v if math.isfinite(v) else None for k, v in _spread(values or [0.0]).items()}


def _released(aggregator: Aggregator, before: dict[int, int], cohort: list[int]) -> list[int]:
    """The cohort members whose input was unmasked in the round that just finished."""
    if isinstance(aggregator, SecureAggregator):
        return [a for a in cohort if aggregator.released_rounds.get(a, 0) > before.get(a, 0)]
    return list(cohort)


def simulate_availability(
    split: Split,
    text_vectors: FloatArray,
    traces: Sequence[Trace],
    aggregator: Aggregator,
    *,
    config: AvailabilityConfig = AvailabilityConfig(),
    federated: FederatedConfig = FederatedConfig(),
    users: list[int] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    local_private: bool = True,
) -> AvailabilityRun:
    """Run the agents ``users`` (agent i has ``traces[i]``) through the slots of ``config`` (see the module
    docstring); the validation quality after every completed round, the per-agent participations and ε. With
    ``local_private``, also the quality of the selected and of the final version after every agent retrains its
    private vector on it (:func:`local_private_quality`; empty without)."""
    cohort_users = sorted(split.users) if users is None else list(users)
    if len(traces) < len(cohort_users):
        raise AvailabilityError(f"{len(traces)} traces for {len(cohort_users)} agents")
    n = len(cohort_users)
    eval_split = split.subset(cohort_users)
    text_t = torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32))
    train_config = federated.train_config()
    shared = SharedParams.init(split.n_items, seed=federated.seed)
    privates: dict[int, PrivateParams] = {}
    server = FedAdam(lr=federated.server_lr)
    version = 0
    rng = np.random.default_rng([config.seed, 11])
    phases = rng.uniform(0.0, config.slot_s, size=n)
    ledgers = [MemoryLedger() for _ in range(n)]
    last: list[float | None] = [None] * n
    pending: list[_Pending | None] = [None] * n
    participations = [0] * n
    stale = discarded = trainings = 0
    rounds: list[RoundRecord] = []
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, float], SharedParams] | None = None
    final: dict[str, float] = {}
    noise_multiplier = config.noise_multiplier

    def allowed(i: int, t: float) -> bool:
        """The device's rules for agent ``i`` at ``t``: online, power, spacing and the yearly budget."""
        block = traces[i].block_at(t)
        if block is None or not rules.power_allows(block.on_ac, require_ac=config.require_ac):
            return False
        if not rules.spacing_allows(last[i], t, min_days_between=config.min_days_between):
            return False
        if math.isinf(config.epsilon_budget):
            return True
        status = budget_status(
            ledgers[i].entries(),
            budget=config.epsilon_budget,
            next_noise_multiplier=config.noise_multiplier,
            now=t,
        )
        return status.allowed

    def prepare(i: int, t: float, base: FloatArray) -> None:
        """Agent ``i``'s timer fired at ``t`` while allowed: fetch the newest version and train from it."""
        nonlocal trainings
        user = cohort_users[i]
        private = privates.get(user) or PrivateParams.init(shared.dim)
        result = local_train(
            shared, private, split.users[user].train, text_t, train_config, seed=federated.seed * 7919 + trainings
        )
        trainings += 1
        privates[user] = result.private
        hours = float(rng.uniform(*config.train_hours))
        delta = result.shared.to_vector() - base
        pending[i] = _Pending(version, t + hours * HOUR_S, delta, float(result.n_examples))

    for slot in range(config.slots):
        now = config.slot_time(slot)
        base = shared.to_vector()
        # every timer fires once per slot period, at the agent's phase after the previous slot; no version is
        # published in between, so the order of the firings does not matter
        for i in range(n):
            t = now - config.slot_s + float(phases[i])
            if pending[i] is None and allowed(i, t):
                prepare(i, t, base)
        cohort: list[int] = []
        for i in range(n):
            held = pending[i]
            if held is None or held.ready_at > now:
                continue
            if version - held.base_version > config.max_stale:
                pending[i] = None
                discarded += 1
                continue
            if allowed(i, now):
                cohort.append(i)
        ids = [cohort_users[i] for i in cohort]
        bases = [held.base_version for held in (pending[i] for i in cohort) if held is not None]
        record = RoundRecord(slot, now, version, ids, bases, "abandoned")
        rounds.append(record)
        if len(cohort) < rules.fewest_to_start(config.min_cohort):
            record.reason = "below_min_cohort"
            continue
        chosen = aggregator.select(slot, ids)
        if chosen != ids:
            raise AvailabilityError("the aggregator must take every agent checking in (no cohort_size sampling)")
        before = dict(aggregator.released_rounds) if isinstance(aggregator, SecureAggregator) else {}
        aggregator.begin_round(slot, base.size)
        for i in cohort:
            held = pending[i]
            assert held is not None
            factor = config.staleness_weight(version - held.base_version)
            if isinstance(aggregator, SecureAggregator):  # the agent scales its weight inside the masked vector
                aggregator.submit(cohort_users[i], held.delta, held.weight, factor=factor)
            else:
                aggregator.submit(cohort_users[i], held.delta, held.weight * factor)
        mean = aggregator.finish()
        if mean is None:
            record.reason = "coordinator"
            continue
        shared = shared.with_vector(server.step(base, mean))
        version += 1
        record.status = "done"
        released = set(_released(aggregator, before, ids))
        if isinstance(aggregator, SecureAggregator) and aggregator.noise_multiplier > 0:
            noise_multiplier = aggregator.noise_multiplier  # what the coordinator's rounds actually carry
        for i in cohort:
            user = cohort_users[i]
            held = pending[i]
            if user not in released or held is None:
                continue
            record.released.append(user)
            participations[i] += 1
            stale += int(held.base_version < record.version_before)
            last[i] = now
            pending[i] = None
            ledgers[i].record(_participation(now, slot, noise_multiplier, len(cohort)))
        model = scorer_model(shared, privates, text_vectors)
        final = metrics_for(model, eval_split, "loo99", "valid")
        history.append({"slot": slot, "round": version, "agents": len(record.released)} | final)
        if best is None or final["NDCG@10"] > best[0]:
            best = (final["NDCG@10"], version, final, shared.copy())
        if progress is not None:
            progress(history[-1])
    end = config.slot_time(config.slots - 1)
    epsilons = [epsilon_this_year(ledger.entries(), end) for ledger in ledgers]
    if best is None:  # no round completed: the quality of the initial model
        final = metrics_for(scorer_model(shared, privates, text_vectors), eval_split, "loo99", "valid")
        best = (final["NDCG@10"], 0, final, shared.copy())
    return AvailabilityRun(
        config=config,
        rounds=rounds,
        participations=participations,
        stale_contributions=stale,
        discarded_updates=discarded,
        epsilons=epsilons,
        final_valid=final,
        selected_valid=best[2],
        selected_round=best[1],
        local_private_valid=local_private_quality(best[3], eval_split, text_vectors, federated)
        if local_private
        else {},
        trainings=trainings,
        noise_multiplier=noise_multiplier,
        history=history,
        local_private_final=local_private_quality(shared, eval_split, text_vectors, federated) if local_private else {},
    )


def local_private_quality(
    shared: SharedParams, split: Split, text_vectors: FloatArray, federated: FederatedConfig
) -> dict[str, float]:
    """Validation quality when every agent trains its private vector on its own items against ``shared`` (what a
    device does locally after a sync; nothing leaves it), so agents that rarely took part are not judged by the
    private vector they last trained in a round."""
    return metrics_for(cold_private_model(shared, split, text_vectors, federated), split, "loo99", "valid")


def _participation(now: float, round_id: int, noise_multiplier: float, cohort: int) -> LedgerEntry:
    """The ledger entry of one released participation (what the spacing and budget rules read)."""
    return LedgerEntry(
        time=now,
        round_id=round_id,
        status="done",
        bytes_sent=0,
        bytes_received=0,
        clip=0.0,
        sigma=noise_multiplier * math.sqrt(2.0),
        noise_multiplier=noise_multiplier,
        cohort_size=cohort,
        released=True,
        epsilon=0.0,
        delta=DEFAULT_DELTA,
    )
