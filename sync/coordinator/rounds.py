"""The round state machine: advertise → share_keys → masked_input → unmask → done, or abandoned at any close.

Stages close at their deadline or when everyone answered; a round is abandoned below its minimum, else unmasked
and published. The numbers a round is set up with (degree, threshold, minimum survivors, quantization) come from
:mod:`sync.protocol.rules`; every round's quantization rotates with the seed derived from the round's public seed
and fits the agents' upload budget. The round's privacy parameters carry the layout of the federated vector (its
parts, each with its own clipping bound) and the joint bound the noise is calibrated to. Everything accepted is
written in the transaction that accepts it, except the masked inputs' sum: each process (a shard,
:mod:`sync.coordinator.shards`) sums the inputs it accepted in memory and checkpoints that partial sum; U3 is the
union of the checkpoints' agents and the unmasked total is the sum of the checkpoints minus the unmasking correction.

Only the leader (:attr:`Rounds.is_leader`: the one process of a SQLite file, the holder of the advisory lock among
PostgreSQL replicas) moves stages — deadlines, "everyone answered" closes, unmasking, the server step and the
signed publication; another replica that sees everyone answered wakes it (:attr:`Rounds.wake_leader`). Every stage
change is a compare-and-set on the stage (a deposed leader's late change rolls its whole transaction back,
:class:`StageMoved`), and the publication commits with the 'done' stage or not at all: a round is never applied twice.
Not thread-safe on its own: :class:`sync.coordinator.service.Coordinator` holds one lock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.pacing import Pacer
from sync.coordinator.publishing import Publisher
from sync.coordinator.rejection import Rejection
from sync.coordinator.shards import Shard, add_partials, closing_key
from sync.coordinator.storage import CoordinatorStore, Member, RoundRow
from sync.errors import ProtocolError
from sync.protocol import rules, secagg
from sync.protocol.evaluation import EVAL, decode
from sync.protocol.masking import Quantization, rotation_seed, unpack
from sync.protocol.privacy import PHI, THETA, Part, PrivacyParams, weighted_mean
from sync.protocol.wire import TERMINAL, setup_from_json, stage_index

UIntVector = np.ndarray[Any, np.dtype[np.uint32]]

STAGE_SECONDS = {
    "advertise": "advertise_s",
    "share_keys": "share_keys_s",
    "masked_input": "masked_input_s",
    "unmask": "unmask_s",
}
PREVIOUS_STAGE = {"share_keys": "advertise", "masked_input": "share_keys", "unmask": "masked_input", "done": "unmask"}
ROUND_CHANNEL = "persona_round"
"""NOTIFY channel: a round changed stage or started closing (every replica wakes its long polls, shards checkpoint)."""
WANTED_KEY = "wanted_round"
"""``meta`` key: the id of the next round an agent checked in for at a replica that does not lead (so the leader,
whose pace-steering bookings are its own, knows someone waits for it)."""
LEADER_CHANNEL = "persona_leader"
"""NOTIFY channel: a replica asks the leader to look at the open round now (everyone answered, or no round is open)."""
RELAY_STAGES = frozenset({"advertise", "share_keys", "masked_input", "unmask"})
"""Stages during which a round needs its relay (its cohort from the first advertisement on, then its key shares)."""
RELAY_LOST = (
    "its key shares were lost (the database restarted after a crash and emptied its unlogged relay); "
    "the round cannot be unmasked without them"
)


class StageMoved(Exception):
    """A compare-and-set on a round's stage found another stage: another leader moved the round. The transaction that
    tried is rolled back (nothing it did, a publication included, is kept)."""


@lru_cache(maxsize=8)
def _parse_setup(round_id: int, text: str, seed: bytes) -> secagg.RoundSetup:
    """A round's stored setup (parsed once per round: every setup and share request consults it)."""
    return setup_from_json(json.loads(text), round_id=round_id, seed=seed)


@lru_cache(maxsize=8)
def _cohort_position(cohort: tuple[str, ...]) -> dict[str, int]:
    return secagg.cohort_index(cohort)


@lru_cache(maxsize=8)
def _ids(text: str) -> tuple[str, ...]:
    """A round's stored id list (U2, U3: JSON), parsed once per process instead of on every request that checks it
    (at 10,000 agents one list is ≈ 190 KB of JSON; each agent's input and unmask answer consult it)."""
    return secagg.shared_ids(tuple(json.loads(text)))


def _id_set(text: str) -> frozenset[str]:
    """The ids of a stored id list as a set (built once per process, :func:`_ids`)."""
    return secagg.id_set(_ids(text))


def _neighbours_of(setup: secagg.RoundSetup, agent_id: str) -> list[str]:
    """``agent_id``'s neighbours in the round graph, in graph order (the graph is cached per round)."""
    me = _cohort_position(setup.cohort)[agent_id]
    return [setup.cohort[j] for j in secagg.neighbours(len(setup.cohort), setup.seed, setup.degree)[me]]


def _setup(row: RoundRow) -> secagg.RoundSetup:
    if row["setup"] is None:
        raise Rejection(409, "wrong_stage", "the round has no cohort yet")
    return _parse_setup(int(row["round_id"]), str(row["setup"]), bytes(row["seed"]))


def _require_stage(row: RoundRow, stage: str) -> None:
    current = str(row["stage"])
    if current == stage:
        return
    if current == "abandoned":
        raise Rejection(409, "round_abandoned", f"round {row['round_id']} was abandoned")
    if stage_index(current) > stage_index(stage):
        raise Rejection(409, "late_submission", f"the {stage} stage of round {row['round_id']} is closed")
    raise Rejection(409, "wrong_stage", f"round {row['round_id']} is in stage {current}, not {stage}")


class Rounds:
    """Rounds, cohorts, deadlines, relay and aggregation over one coordinator's state."""

    def __init__(
        self,
        config: CoordinatorConfig,
        state: CoordinatorStore,
        publisher: Publisher,
        vector_size: int,
        *,
        clock: Callable[[], float],
        notify: Callable[[], None],
        shard: Shard | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        wake_leader: Callable[[], None] = lambda: None,
    ) -> None:
        """The round logic; ``notify`` is called whenever a round changes stage. ``shard`` sums the masked inputs this
        process accepts (kept by the caller across Rounds objects); only while ``is_leader()`` do stages move, else
        ``wake_leader()`` is called where the leader should look."""
        self.config = config
        self.state = state
        self.publisher = publisher
        self.vector_size = vector_size
        self.clock = clock
        self.notify = notify
        self.pacer = Pacer(config.target_cohort, config.advertise_s)
        """Who is admitted to the round in advertise, and which upcoming round each waiting agent was sent to."""
        self.shard = shard or Shard()
        self.is_leader = is_leader
        self.wake_leader = wake_leader
        bounds = {THETA: config.clip, PHI: config.clip_phi}
        layout = publisher.layout(vector_size)
        self.layout: list[tuple[str, int]] = layout
        """The published vector's parts, ``[(name, size), ...]`` in order (fixed for the coordinator's life)."""
        self.eval_plan = config.eval_plan
        """What every round asks its agents to evaluate (federated evaluation), or None."""
        evaluated = [Part(EVAL, self.eval_plan.size, self.eval_plan.clip)] if self.eval_plan else []
        self.privacy: PrivacyParams = (
            PrivacyParams.for_parts(
                [Part(name, size, bounds[name]) for name, size in layout] + evaluated,
                sigma=config.sigma,
                weight_cap=config.weight_cap,
            )
            if len(layout) > 1 or evaluated
            else config.privacy
        )
        """What every round publishes: the layout with each part's bound, the joint bound C, σ and the weight cap."""
        self.input_size = vector_size + sum(p.size for p in evaluated) + 1
        """Values in one agent's masked input: the model parts, the eval part (if any) and the weight element."""
        # refuse at start, not at the first full round, a cohort too large for the upload budget's bit width
        self._quantization(config.max_cohort, bytes(32))

    def _quantization(self, n: int, round_seed: bytes) -> Quantization:
        survivors = rules.min_survivors(n, min_cohort=self.config.min_cohort, max_dropout=self.config.max_dropout)
        return rules.round_quantization(
            n,
            clip=self.privacy.clip,
            sigma=self.privacy.sigma,
            survivors=survivors,
            vector_size=self.input_size,
            rotation=rotation_seed(round_seed),
        )

    # -- reading -------------------------------------------------------------------------------------------------

    def _round(self, round_id: int) -> RoundRow:
        row = self.state.round(round_id)
        if row is None:
            raise Rejection(404, "unknown_round", f"no round {round_id}")
        return row

    def _open_round(self, round_id: int, stage: str) -> RoundRow:
        self.tick()
        active = self.state.open_round()
        if active is None or int(active["round_id"]) != round_id:
            known = self.state.round(round_id)
            if known is not None:
                _require_stage(known, stage)
            raise Rejection(409, "wrong_round", f"round {round_id} is not the open round")
        row = self._round(round_id)
        _require_stage(row, stage)
        return row

    def _member(self, round_id: int, agent_id: str) -> Member:
        """The agent's membership of the round; a 409 if the round ended (PostgreSQL forgets an ended round's cohort)
        or lost its relay, a 403 if the agent is not in its cohort."""
        member = self.state.member(round_id, agent_id)
        if member is not None:
            return member
        row = self._round(round_id)
        if str(row["stage"]) in TERMINAL:
            _require_stage(row, "unmask")
        if self._relay_lost(round_id):
            raise Rejection(409, "round_abandoned", f"round {round_id} is abandoned: {RELAY_LOST}")
        raise Rejection(403, "not_in_cohort", f"agent {agent_id} is not in the cohort of round {round_id}")

    def current_round(self) -> dict[str, Any]:
        """The open round, else the newest one with ``next_open_at`` (rounds open on the schedule, never here)."""
        self.tick()
        row = self.state.open_round()
        if row is not None:
            return self.round_info(int(row["round_id"]))
        last = self.state.last_round_id()
        if last is None:
            raise Rejection(404, "no_round", "no round has opened yet: the first opens for agents checking in")
        return {**self.round_info(last), "next_open_at": self.next_open_at()}

    def round_info(self, round_id: int) -> dict[str, Any]:
        """Public facts about a round (what /status and the long poll show)."""
        row = self._round(round_id)
        outcome = json.loads(row["outcome"]) if row["outcome"] else {}
        if "counts" in outcome:  # an ended round: its cohort may be forgotten, its counts are kept here
            members, shared_keys, inputs, unmasked = outcome["counts"]
        else:
            members, shared_keys, inputs, unmasked = self.state.member_counts(round_id)
        info: dict[str, Any] = {
            "round_id": round_id,
            "stage": row["stage"],
            "deadline": row["deadline"],
            "seconds_left": max(0.0, row["deadline"] - self.clock()) if row["stage"] not in TERMINAL else 0.0,
            "base_version": row["base_version"],
            "vector_size": self.vector_size,
            "cohort_size": members,
            "shared_keys": shared_keys,
            "masked_inputs": inputs,
            "unmask_responses": unmasked,
            "max_cohort": self.config.max_cohort,
            "min_cohort": self.config.min_cohort,
            "privacy": self.privacy.as_json(),
            **({"evaluation": self.eval_plan.as_json()} if self.eval_plan else {}),
            "stage_seconds": {s: getattr(self.config, a) for s, a in STAGE_SECONDS.items()},
        }
        if outcome:
            info["outcome"] = outcome
        return info

    # -- the schedule and check-in -------------------------------------------------------------------------------

    def _ends_by(self, row: RoundRow) -> float:
        """When an open round ends at the latest: its stage's deadline, then every later stage at full length."""
        stage = stage_index(str(row["stage"]))
        later = sum(float(getattr(self.config, a)) for s, a in STAGE_SECONDS.items() if stage_index(s) > stage)
        return float(row["deadline"]) + later

    def next_open_at(self) -> float:
        """The next slot of the schedule: ``round_interval_s`` after the newest round opened, and not before it ended
        (at its latest possible end while it is open); 0 (now) before the first round. A slot is taken within
        ``advertise_s`` of its time; one that passed with nobody waiting gives way to the next one, an interval
        later. 0 s: a slot as soon as the previous round has ended (back to back)."""
        last = self.state.last_round_id()
        if last is None:
            return 0.0
        row = self._round(last)
        interval = self.config.round_interval_s
        due = float(row["created"]) + interval
        if str(row["stage"]) not in TERMINAL:
            return max(due, self._ends_by(row))
        due = max(due, float(row["deadline"]))  # an ended round's deadline is when it ended
        now = self.clock()
        if interval <= 0 or now < due + self.config.advertise_s:
            return due
        slot = due + math.floor((now - due) / interval) * interval
        return slot if now < slot + self.config.advertise_s else slot + interval

    def opens_at(self, round_id: int) -> float:
        """When the advertise stage of ``round_id``, a round not open yet, should start: the next scheduled opening,
        then one period per round (the interval, or a whole round at full length if that is longer: an estimate
        from above when rounds run back to back)."""
        last = self.state.last_round_id()
        following = 0 if last is None else last + 1
        whole = sum(float(getattr(self.config, a)) for a in STAGE_SECONDS.values())
        period = max(self.config.round_interval_s, whole)
        return max(self.next_open_at(), self.clock()) + (round_id - following) * period

    def open_scheduled(self) -> bool:
        """Open the next round (advertise stage) if none is open, its slot on the schedule (:meth:`next_open_at`) has
        come and agents are waiting for it (told to come back for it, or checking in now); True if it opened one.
        The one place rounds open: every tick and every check-in call it, a slot with nobody waiting stays empty,
        and an agent asking between slots is told to come back at the next one."""
        if not self.is_leader() or self.state.open_round() is not None or self.clock() < self.next_open_at():
            return False
        last = self.state.last_round_id()
        following = (-1 if last is None else last) + 1
        if not (self.pacer.expects(following) or self.state.meta(WANTED_KEY) == str(following).encode()):
            return False
        self.state.add_round(
            (-1 if last is None else last) + 1,
            self.clock() + self.config.advertise_s,
            secagg.new_round_seed(),
            self.publisher.latest().version,
            self.clock(),
        )
        self.notify()
        return True

    def _admission(self, row: RoundRow) -> dict[str, Any]:
        """An admission to ``row`` (in advertise): the round's facts and each stage's latest deadline."""
        at = float(row["deadline"])
        deadlines = {"advertise": at}
        for stage, attribute in list(STAGE_SECONDS.items())[1:]:
            at += getattr(self.config, attribute)
            deadlines[stage] = at
        return {**self.round_info(int(row["round_id"])), "deadlines": deadlines}

    def checkin(self, agent_id: str, base_version: int) -> dict[str, Any]:
        """An agent ready to take part with a delta based on ``base_version``: ``{"admit": ROUND}`` (a seat in the
        round in advertise), ``{"retry_after": WINDOW}`` (come back then, :mod:`sync.coordinator.pacing`) or
        ``{"update": ...}`` (based on a version more than ``max_base_lag`` behind: fetch the newest first)."""
        self.tick()
        now, latest = self.clock(), self.publisher.latest().version
        if base_version > latest:
            raise Rejection(400, "unknown_version", f"version {base_version} is not published; the newest is {latest}")
        if latest - base_version > self.config.max_base_lag:
            detail = (
                f"version {base_version} is {latest - base_version} versions behind the newest ({latest}); at most "
                f"{self.config.max_base_lag} may contribute: fetch version {latest}, then check in again"
            )
            return {"now": now, "update": {"latest_version": latest, "detail": detail}}
        row = self.state.open_round()
        if row is None:  # this agent waits for the next round: that may be what its slot needed to open
            last = self.state.last_round_id()
            following = (-1 if last is None else last) + 1
            self.pacer.book(agent_id, following, self.opens_at)
            if not self.is_leader():  # the leader opens rounds: tell it an agent waits (its bookings are its own)
                self.state.put_meta(WANTED_KEY, str(following).encode())
                self.wake_leader()
            elif self.open_scheduled():
                row = self.state.open_round()
        if row is not None and row["stage"] == "advertise":
            round_id = int(row["round_id"])
            joined = self.state.member(round_id, agent_id) is not None
            members = self.state.count_members(round_id)
            if joined or self.pacer.admit(round_id, agent_id, members, self.config.max_cohort):
                return {"now": now, "admit": self._admission(row)}
        newest = int(row["round_id"]) if row is not None else self.state.last_round_id()
        window = self.pacer.book(agent_id, (-1 if newest is None else newest) + 1, self.opens_at)
        retry: dict[str, Any] = {
            "not_before": window.not_before,
            "not_after": window.not_after,
            "round_id": window.round_id,
        }
        if row is not None:
            retry["after_round"] = int(row["round_id"])  # running now: the next may open as soon as it ends
        return {"now": now, "retry_after": retry}

    # -- the agents' steps ---------------------------------------------------------------------------------------

    def identity_key(self, agent_id: str) -> bytes:
        """A registered agent's Ed25519 public key."""
        agent = self.state.agent(agent_id)
        if agent is None:
            raise Rejection(404, "unknown_agent", agent_id)
        return agent[0]

    def advertise(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, signature: bytes) -> None:
        """Join the round's cohort with signed ephemeral keys."""
        self._open_round(round_id, "advertise")
        if len(c_pk) != 32 or len(s_pk) != 32:
            raise Rejection(400, "invalid_public_key", "X25519 public keys are 32 bytes")
        peer = secagg.PeerKeys(agent_id, self.identity_key(agent_id), c_pk, s_pk, signature)
        try:
            peer.verify(round_id)
        except ProtocolError as error:
            raise Rejection(401, "bad_key_signature", str(error)) from error
        if self.state.member(round_id, peer.agent_id) is not None:
            raise Rejection(409, "already_submitted", "this agent already advertised keys for the round")
        count = self.state.count_members(round_id)
        if count >= self.config.max_cohort:
            raise Rejection(409, "cohort_full", "the round's cohort is full; try the next round")
        self.state.add_member(round_id, peer.agent_id, peer.c_pk, peer.s_pk, peer.signature)
        if count + 1 >= self.config.max_cohort:
            self._close_advertise(round_id)

    def setup(self, round_id: int, agent_id: str) -> tuple[secagg.RoundSetup, list[secagg.PeerKeys]]:
        """The round setup and this agent's neighbours' keys (from the share-keys stage on)."""
        self.tick()
        row = self._round(round_id)
        if row["setup"] is None:
            _require_stage(row, "share_keys")
        self._member(round_id, agent_id)
        setup = _setup(row)
        wanted = _neighbours_of(setup, agent_id)
        found = self.state.member_keys(round_id, wanted)
        missing = [a for a in wanted if a not in found]
        if missing:
            raise Rejection(404, "unknown_agent", missing[0])
        return setup, [secagg.PeerKeys(a, *found[a]) for a in wanted]

    def post_shares(self, round_id: int, agent_id: str, shares: dict[str, bytes]) -> None:
        """Store an agent's encrypted shares, exactly one per neighbour."""
        row = self._open_round(round_id, "share_keys")
        if self._member(round_id, agent_id).shared_keys:
            raise Rejection(409, "already_submitted", "shares already received from this agent")
        if set(shares) != set(_neighbours_of(_setup(row), agent_id)):
            raise Rejection(400, "wrong_recipients", "exactly one share per neighbour in the round graph")
        if any(len(c) > 1024 for c in shares.values()):
            raise Rejection(400, "share_too_large", "an encrypted share is at most 1 KiB")
        self.state.add_shares(round_id, agent_id, shares)
        if self.state.all_shared_keys(round_id):
            self._close_share_keys(round_id)

    def inbox(self, round_id: int, agent_id: str) -> tuple[list[str], dict[str, bytes]]:
        """U2 and the shares addressed to this agent by members of U2 (from the masked-input stage on)."""
        self.tick()
        row = self._round(round_id)
        if row["u2"] is None:
            _require_stage(row, "masked_input")
        if not self._member(round_id, agent_id).shared_keys:
            raise Rejection(403, "not_in_u2", "this agent did not share keys in time")
        if row["stage"] == "abandoned":
            _require_stage(row, "masked_input")
        if self._relay_lost(round_id):
            raise Rejection(409, "round_abandoned", f"round {round_id} is abandoned: {RELAY_LOST}")
        u2 = list(_ids(row["u2"]))
        survivors = _id_set(row["u2"])
        senders = [a for a in _neighbours_of(_setup(row), agent_id) if a in survivors]
        return u2, self.state.inbox(round_id, agent_id, senders)

    def _load_sum(self, round_id: int, setup: secagg.RoundSetup, u3: list[str]) -> UIntVector:
        """The round's masked total: the checkpoints' partial sums added mod 2^bits; they must hold exactly U3."""
        total, agents = add_partials(self.state.partials(round_id), setup.vector_size, setup.quantization.modulus_mask)
        if agents != sorted(u3):
            raise ValueError(f"the partial sums hold {len(agents)} inputs, not the {len(u3)} of U3")
        return total

    def post_input(self, round_id: int, agent_id: str, body: bytes) -> None:
        """Add a masked input to this shard's partial sum; the transaction stores only the 'sent' mark."""
        row = self._open_round(round_id, "masked_input")
        member = self._member(round_id, agent_id)
        if agent_id not in _id_set(row["u2"]):
            raise Rejection(403, "not_in_u2", "this agent did not share keys in time")
        if member.sent_input:
            raise Rejection(409, "already_submitted", "a masked input was already received from this agent")
        if self.state.meta(closing_key(round_id)) is not None:
            raise Rejection(409, "late_submission", f"the masked_input stage of round {round_id} is closing")
        setup = _setup(row)
        q = setup.quantization
        try:
            values = unpack(body, q.bits, setup.vector_size)
        except ValueError as error:
            raise Rejection(400, "wrong_vector_length", str(error)) from error
        self.state.add_input(round_id, agent_id, self.shard.shard_id)
        self.shard.add(round_id, agent_id, values.astype(np.uint32), q.modulus_mask, now=self.clock())
        if self.state.count_members(round_id, shared_keys=1, sent_input=0) == 0:
            self._lead(self._close_masked_input, round_id)

    # -- shards and the leader -----------------------------------------------------------------------------------

    def _lead(self, close: Callable[[int], None], round_id: int) -> None:
        """Run a stage close if this process leads; else ask the leader to look."""
        if self.is_leader():
            close(round_id)
        else:
            self.wake_leader()

    def checkpoint(self, round_id: int) -> None:
        """Write this shard's partial sum of ``round_id`` if it holds inputs no checkpoint holds yet (only while the
        round is in the masked-input stage: afterwards U3 is fixed and the checkpoints with it)."""
        if not self.shard.dirty(round_id):
            return
        row = self.state.round(round_id)
        if row is None or row["stage"] != "masked_input":
            return
        total, agents = self.shard.checkpoint_row()
        self.state.put_partial(round_id, self.shard.shard_id, total, agents, self.clock())
        self.shard.mark_checkpointed(self.clock())

    def follow(self) -> None:
        """What every process does at each tick: checkpoint its partial sum when the open round is closing its
        masked-input stage, or when ``checkpoint_s`` passed since its last checkpoint."""
        round_id = self.shard.round_id
        if round_id is None or not self.shard.dirty(round_id):
            return
        closing = self.state.meta(closing_key(round_id)) is not None
        every = self.config.checkpoint_s
        if closing or (every > 0 and self.clock() - self.shard.checkpointed_at >= every):
            self.checkpoint(round_id)

    def settle(self) -> None:
        """The leader, at each tick: close the open round's stage if everyone answered (another replica may have
        taken the last answer) or if its masked-input stage is closing."""
        if not self.is_leader():
            return
        row = self.state.open_round()
        if row is None:
            return
        round_id, stage = int(row["round_id"]), str(row["stage"])
        if stage in RELAY_STAGES and self._relay_lost(round_id):
            return
        if stage == "advertise" and self.state.count_members(round_id) >= self.config.max_cohort:
            self._close_advertise(round_id)
        elif stage == "share_keys" and self.state.all_shared_keys(round_id):
            self._close_share_keys(round_id)
        elif stage == "masked_input" and (
            self.state.meta(closing_key(round_id)) is not None
            or self.state.count_members(round_id, shared_keys=1, sent_input=0) == 0
        ):
            self._close_masked_input(round_id)
        elif stage == "unmask" and self.state.count_members(round_id, unmasked=1) >= len(_ids(row["u3"])):
            self._finish(round_id)

    def survivors(self, round_id: int, agent_id: str) -> tuple[list[str], list[str]]:
        """(U2, U3) for the unmask stage."""
        self.tick()
        row = self._round(round_id)
        if row["u3"] is None:
            _require_stage(row, "unmask")
        self._member(round_id, agent_id)
        return list(_ids(row["u2"])), list(_ids(row["u3"]))

    def post_unmask(self, round_id: int, agent_id: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares after checking it never reveals both secrets of one peer."""
        row = self._open_round(round_id, "unmask")
        member = self._member(round_id, agent_id)
        u2, u3 = _id_set(row["u2"]), _id_set(row["u3"])
        if agent_id not in u3:
            raise Rejection(403, "not_in_u3", "only agents whose masked input arrived take part in unmasking")
        if member.unmasked:
            raise Rejection(409, "already_submitted", "unmask shares already received from this agent")
        if set(b_shares) & set(s_shares):
            raise Rejection(400, "both_secrets_revealed", "never both shares of the same peer")
        if not set(b_shares) <= u3 or not all(v in u2 and v not in u3 for v in s_shares):
            raise Rejection(400, "wrong_owners", "self-mask shares of U3 only, key shares of U2 minus U3 only")
        self.state.add_reveals(round_id, agent_id, b_shares, s_shares)
        # only U3 may answer, and U3 may be fewer than those marked 'sent' (a shard that died held the others)
        if self.state.count_members(round_id, unmasked=1) >= len(u3):
            self._lead(self._finish, round_id)

    def unmasked_sum(self, round_id: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The exact integer sum of a finished round (for tests and audits of correctness)."""
        row = self._round(round_id)
        if row["stage"] != "done":
            raise Rejection(409, "not_unmasked", f"round {round_id} is {row['stage']}")
        total = self.state.running_sum(round_id)
        if total is None:  # PostgreSQL keeps it unlogged: a crash of the server since then emptied it
            raise Rejection(409, "sum_forgotten", f"the sum of round {round_id} is no longer kept")
        return _setup(row).quantization.decode_sum(np.frombuffer(total, dtype="<u4").astype(np.uint32))

    # -- stage transitions ---------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Close the open round's stage if its deadline passed (the leader only)."""
        if not self.is_leader():
            return
        row = self.state.open_round()
        if row is None:
            self.open_scheduled()
            return
        if self.clock() < float(row["deadline"]):
            return
        round_id, stage = int(row["round_id"]), str(row["stage"])
        if stage == "advertise":
            self._close_advertise(round_id)
        elif stage == "share_keys":
            self._close_share_keys(round_id)
        elif stage == "masked_input":
            self._close_masked_input(round_id)
        elif stage == "unmask":
            self._finish(round_id)

    def _set_stage(self, round_id: int, stage: str, **columns: Any) -> None:
        """Move the round to ``stage``: a compare-and-set on the stage it must be in (abandoned: the stage it is in,
        read in this same transaction), else :class:`StageMoved` rolls back the whole transaction."""
        seconds = getattr(self.config, STAGE_SECONDS[stage]) if stage in STAGE_SECONDS else 0.0
        expect = PREVIOUS_STAGE.get(stage) or str(self._round(round_id)["stage"])
        if stage in TERMINAL:  # the cohort's counts outlive it (PostgreSQL drops an ended round's cohort)
            outcome = json.loads(columns.get("outcome") or "{}")
            columns["outcome"] = json.dumps(outcome | {"counts": list(self.state.member_counts(round_id))})
        if expect in ("done", "abandoned") or not self.state.update_round(
            round_id, expect_stage=expect, stage=stage, deadline=self.clock() + seconds, **columns
        ):
            raise StageMoved(f"round {round_id} is no longer in stage {expect}: not moved to {stage}")
        self.state.notify(ROUND_CHANNEL, f"{round_id} {stage}")
        self.notify()

    def _abandon(self, round_id: int, reason: str) -> None:
        self._set_stage(round_id, "abandoned", outcome=json.dumps({"abandoned": reason}))
        self.state.delete_sum(round_id)

    def _relay_lost(self, round_id: int) -> bool:
        """Whether the round's key-share relay was lost (PostgreSQL empties its unlogged relay when it recovers from
        a crash): the leader then abandons the round — unmasking with shares missing could only fail, or succeed on
        what happened to survive — and any other replica wakes the leader."""
        row = self.state.round(round_id)
        if row is None or str(row["stage"]) not in RELAY_STAGES or self.state.relay_intact(round_id):
            return False
        if self.is_leader():
            self._abandon(round_id, RELAY_LOST)
        else:
            self.wake_leader()
        return True

    def _close_advertise(self, round_id: int) -> None:
        if self._relay_lost(round_id):
            return
        cohort = self.state.member_ids(round_id)
        n = len(cohort)
        if n < rules.fewest_to_start(self.config.min_cohort):
            self._abandon(round_id, f"only {n} agents advertised keys; min_cohort is {self.config.min_cohort}")
            return
        degree = secagg.graph_degree(n)
        min_survivors = rules.min_survivors(n, min_cohort=self.config.min_cohort, max_dropout=self.config.max_dropout)
        q = self._quantization(n, bytes(self._round(round_id)["seed"]))
        setup = {
            "cohort": cohort,
            "degree": degree,
            "threshold": secagg.share_threshold(degree),
            "min_survivors": min_survivors,
            "quantization": {"bits": q.bits, "levels": q.levels, "bound": q.bound},
            "vector_size": self.input_size,
        }
        self.state.start_relay(round_id)  # PostgreSQL armed it when the round opened; SQLite has nothing to arm
        self._set_stage(round_id, "share_keys", setup=json.dumps(setup))

    def _close_share_keys(self, round_id: int) -> None:
        if self._relay_lost(round_id):
            return
        self._close_with_survivors(round_id, "shared_keys", "agents shared keys", "masked_input", "u2")

    def _close_masked_input(self, round_id: int) -> None:
        """Close the masked-input stage across shards (the leader; called again at each tick until it closes): mark
        the round closing, checkpoint this shard, wait until every shard that received inputs checkpointed them all
        or the grace period passed, then U3 = the agents in the checkpoints (see :mod:`sync.coordinator.shards`)."""
        if self._relay_lost(round_id):
            return
        key, now = closing_key(round_id), self.clock()
        mark = self.state.meta(key)
        if mark is None:
            self.state.put_meta(key, repr(now).encode())
            self.state.notify(ROUND_CHANNEL, f"{round_id} closing")
            started = now
        else:
            started = float(mark.decode())
        self.checkpoint(round_id)
        written = self.state.partial_counts(round_id)
        waiting = [s for s, n in self.state.input_shards(round_id).items() if written.get(s, -1) < n]
        if waiting and now < started + self.config.checkpoint_grace_s:
            return
        setup = _setup(self._round(round_id))
        survivors = sorted(a for _, _, agents in self.state.partials(round_id) for a in agents)
        if len(survivors) < setup.min_survivors:
            self._abandon(round_id, f"only {len(survivors)} masked inputs arrived; need {setup.min_survivors}")
            return
        self._set_stage(round_id, "unmask", u3=json.dumps(survivors))

    def _close_with_survivors(self, round_id: int, flag: str, arrived: str, next_stage: str, column: str) -> None:
        """Move on with the members whose ``flag`` is set (stored as ``column``), or abandon below the minimum."""
        setup = _setup(self._round(round_id))
        survivors = self.state.member_ids(round_id, **{flag: 1})
        if len(survivors) < setup.min_survivors:
            self._abandon(round_id, f"only {len(survivors)} {arrived}; need {setup.min_survivors}")
            return
        self._set_stage(round_id, next_stage, **{column: json.dumps(survivors)})

    def _finish(self, round_id: int) -> None:
        if self._relay_lost(round_id):
            return
        row = self._round(round_id)
        setup = _setup(row)
        u2, u3 = json.loads(row["u2"]), json.loads(row["u3"])
        responders = self.state.count_members(round_id, unmasked=1)
        if responders < setup.min_survivors:
            self._abandon(round_id, f"only {responders} agents answered the unmask stage; need {setup.min_survivors}")
            return
        index = {a: i + 1 for i, a in enumerate(setup.cohort)}
        b_shares: dict[str, list[tuple[int, bytes]]] = {}
        s_shares: dict[str, list[tuple[int, bytes]]] = {}
        for holder, owner, kind, share in self.state.reveals(round_id):
            (b_shares if kind == "b" else s_shares).setdefault(owner, []).append((index[holder], share))
        try:
            correction = secagg.unmasking_vector(setup, u2, u3, self.state.mask_keys(round_id), b_shares, s_shares)
        except (ProtocolError, ValueError) as error:
            self._abandon(round_id, f"unmasking failed: {error}")
            return
        q = setup.quantization
        try:
            masked_total = self._load_sum(round_id, setup, u3)
        except ValueError as error:
            self._abandon(round_id, f"unmasking failed: {error}")
            return
        total = (masked_total - correction) & q.modulus_mask
        joint = q.to_float(q.decode_sum(total))
        evaluation = None
        if self.eval_plan is not None and joint.size == self.input_size:  # the eval part: plain sums, read here
            evaluation = decode(joint[self.vector_size : -1], self.eval_plan)
        joint = np.concatenate([joint[: self.vector_size], joint[-1:]])  # kept out of the model's mean
        mean = weighted_mean(joint, self.privacy.clip)
        outcome: dict[str, Any] = {
            "survivors": len(u3),
            "shared_keys": len(u2),
            "cohort": len(setup.cohort),
            "total_weight": float(joint[-1] / self.privacy.clip),
        }
        with self.state.transaction():
            published = None
            if mean is not None:
                new = self.publisher.server_step(mean, self.config.server_lr)
                published = self.publisher.publish(new, round_id)
                outcome["published_version"] = published.version
            if evaluation is not None and self.eval_plan is not None:
                outcome["evaluation"] = self.publisher.record_evaluation(
                    round_id, int(row["base_version"]), evaluation, self.eval_plan, published
                )
            self.state.put_sum(round_id, total.astype("<u4").tobytes())
            self._set_stage(round_id, "done", outcome=json.dumps(outcome))
            # the round is unmasked: its encrypted and revealed shares have served their purpose and go
            self.state.forget_shares(round_id)
