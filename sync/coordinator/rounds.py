"""The round state machine: advertise → share_keys → masked_input → unmask → done, or abandoned at any close.

Stages close at their deadline or when everyone answered; a round is abandoned below its minimum, else unmasked
and published. The numbers a round is set up with (degree, threshold, minimum survivors, quantization) come from
:mod:`sync.protocol.rules`; every round's quantization rotates with the seed derived from the round's public seed
and fits the agents' upload budget. The round's privacy parameters carry the layout of the federated vector (its
parts, each with its own clipping bound) and the joint bound the noise is calibrated to. Everything accepted is
written in the transaction that accepts it, including the running sum. Not thread-safe on its own:
:class:`sync.coordinator.service.Coordinator` holds one lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.publishing import Publisher
from sync.coordinator.rejection import Rejection
from sync.coordinator.storage import CoordinatorStore, Member, RoundRow
from sync.errors import ProtocolError
from sync.protocol import rules, secagg
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


@lru_cache(maxsize=8)
def _parse_setup(round_id: int, text: str, seed: bytes) -> secagg.RoundSetup:
    """A round's stored setup (parsed once per round: every setup and share request consults it)."""
    return setup_from_json(json.loads(text), round_id=round_id, seed=seed)


@lru_cache(maxsize=8)
def _cohort_position(cohort: tuple[str, ...]) -> dict[str, int]:
    return secagg.cohort_index(cohort)


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
    ) -> None:
        """The round logic; ``notify`` is called whenever a round changes stage."""
        self.config = config
        self.state = state
        self.publisher = publisher
        self.vector_size = vector_size
        self.clock = clock
        self.notify = notify
        self._sum: UIntVector | None = None
        self._sum_round: int | None = None
        bounds = {THETA: config.clip, PHI: config.clip_phi}
        layout = publisher.layout(vector_size)
        self.layout: list[tuple[str, int]] = layout
        """The published vector's parts, ``[(name, size), ...]`` in order (fixed for the coordinator's life)."""
        self.privacy: PrivacyParams = (
            PrivacyParams.for_parts(
                [Part(name, size, bounds[name]) for name, size in layout],
                sigma=config.sigma,
                weight_cap=config.weight_cap,
            )
            if len(layout) > 1
            else config.privacy
        )
        """What every round publishes: the layout with each part's bound, the joint bound C, σ and the weight cap."""
        # refuse at start, not at the first full round, a cohort too large for the upload budget's bit width
        self._quantization(config.max_cohort, bytes(32))

    def _quantization(self, n: int, round_seed: bytes) -> Quantization:
        survivors = rules.min_survivors(n, min_cohort=self.config.min_cohort, max_dropout=self.config.max_dropout)
        return rules.round_quantization(
            n,
            clip=self.privacy.clip,
            sigma=self.privacy.sigma,
            survivors=survivors,
            vector_size=self.vector_size + 1,
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
        member = self.state.member(round_id, agent_id)
        if member is None:
            raise Rejection(403, "not_in_cohort", f"agent {agent_id} is not in the cohort of round {round_id}")
        return member

    def current_round(self) -> dict[str, Any]:
        """The open round, opening a new one (advertise stage) when none is open."""
        self.tick()
        row = self.state.open_round()
        if row is None:
            last = self.state.last_round_id()
            self.state.add_round(
                (-1 if last is None else last) + 1,
                self.clock() + self.config.advertise_s,
                secagg.new_round_seed(),
                self.publisher.latest().version,
                self.clock(),
            )
            self.notify()
            row = self.state.open_round()
            assert row is not None
        return self.round_info(int(row["round_id"]))

    def round_info(self, round_id: int) -> dict[str, Any]:
        """Public facts about a round (what /status and the long poll show)."""
        row = self._round(round_id)
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
            "stage_seconds": {s: getattr(self.config, a) for s, a in STAGE_SECONDS.items()},
        }
        if row["outcome"]:
            info["outcome"] = json.loads(row["outcome"])
        return info

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
        u2: list[str] = json.loads(row["u2"])
        return u2, self.state.inbox(round_id, agent_id)

    def _load_sum(self, round_id: int, setup: secagg.RoundSetup) -> UIntVector:
        if self._sum_round != round_id or self._sum is None:
            stored = self.state.running_sum(round_id)
            self._sum = (
                np.frombuffer(stored, dtype="<u4").astype(np.uint32)
                if stored is not None
                else np.zeros(setup.vector_size, dtype=np.uint32)
            )
            self._sum_round = round_id
        return self._sum

    def post_input(self, round_id: int, agent_id: str, body: bytes) -> None:
        """Add a masked input to the running sum (one transaction with the 'sent' mark)."""
        row = self._open_round(round_id, "masked_input")
        member = self._member(round_id, agent_id)
        if agent_id not in json.loads(row["u2"]):
            raise Rejection(403, "not_in_u2", "this agent did not share keys in time")
        if member.sent_input:
            raise Rejection(409, "already_submitted", "a masked input was already received from this agent")
        setup = _setup(row)
        q = setup.quantization
        try:
            values = unpack(body, q.bits, setup.vector_size)
        except ValueError as error:
            raise Rejection(400, "wrong_vector_length", str(error)) from error
        new_sum = (self._load_sum(round_id, setup) + values) & q.modulus_mask
        try:
            self.state.add_input(round_id, agent_id, new_sum.astype("<u4").tobytes())
        except BaseException:
            self._sum = None
            raise
        self._sum = new_sum
        if self.state.count_members(round_id, shared_keys=1, sent_input=0) == 0:
            self._close_masked_input(round_id)

    def survivors(self, round_id: int, agent_id: str) -> tuple[list[str], list[str]]:
        """(U2, U3) for the unmask stage."""
        self.tick()
        row = self._round(round_id)
        if row["u3"] is None:
            _require_stage(row, "unmask")
        self._member(round_id, agent_id)
        return json.loads(row["u2"]), json.loads(row["u3"])

    def post_unmask(self, round_id: int, agent_id: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares after checking it never reveals both secrets of one peer."""
        row = self._open_round(round_id, "unmask")
        member = self._member(round_id, agent_id)
        u2, u3 = set(json.loads(row["u2"])), set(json.loads(row["u3"]))
        if agent_id not in u3:
            raise Rejection(403, "not_in_u3", "only agents whose masked input arrived take part in unmasking")
        if member.unmasked:
            raise Rejection(409, "already_submitted", "unmask shares already received from this agent")
        if set(b_shares) & set(s_shares):
            raise Rejection(400, "both_secrets_revealed", "never both shares of the same peer")
        if not set(b_shares) <= u3 or not set(s_shares) <= u2 - u3:
            raise Rejection(400, "wrong_owners", "self-mask shares of U3 only, key shares of U2 minus U3 only")
        self.state.add_reveals(round_id, agent_id, b_shares, s_shares)
        if self.state.count_members(round_id, sent_input=1, unmasked=0) == 0:
            self._finish(round_id)

    def unmasked_sum(self, round_id: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The exact integer sum of a finished round (for tests and audits of correctness)."""
        row = self._round(round_id)
        if row["stage"] != "done":
            raise Rejection(409, "not_unmasked", f"round {round_id} is {row['stage']}")
        total = self.state.running_sum(round_id)
        assert total is not None
        return _setup(row).quantization.decode_sum(np.frombuffer(total, dtype="<u4").astype(np.uint32))

    # -- stage transitions ---------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Close the open round's stage if its deadline passed."""
        row = self.state.open_round()
        if row is None or self.clock() < float(row["deadline"]):
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
        seconds = getattr(self.config, STAGE_SECONDS[stage]) if stage in STAGE_SECONDS else 0.0
        self.state.update_round(round_id, stage=stage, deadline=self.clock() + seconds, **columns)
        self.notify()

    def _abandon(self, round_id: int, reason: str) -> None:
        self._set_stage(round_id, "abandoned", outcome=json.dumps({"abandoned": reason}))
        self.state.delete_sum(round_id)
        self._sum, self._sum_round = None, None

    def _close_advertise(self, round_id: int) -> None:
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
            "vector_size": self.vector_size + 1,
        }
        self._set_stage(round_id, "share_keys", setup=json.dumps(setup))

    def _close_share_keys(self, round_id: int) -> None:
        self._close_with_survivors(round_id, "shared_keys", "agents shared keys", "masked_input", "u2")

    def _close_masked_input(self, round_id: int) -> None:
        self._close_with_survivors(round_id, "sent_input", "masked inputs arrived", "unmask", "u3")

    def _close_with_survivors(self, round_id: int, flag: str, arrived: str, next_stage: str, column: str) -> None:
        """Move on with the members whose ``flag`` is set (stored as ``column``), or abandon below the minimum."""
        setup = _setup(self._round(round_id))
        survivors = self.state.member_ids(round_id, **{flag: 1})
        if len(survivors) < setup.min_survivors:
            self._abandon(round_id, f"only {len(survivors)} {arrived}; need {setup.min_survivors}")
            return
        self._set_stage(round_id, next_stage, **{column: json.dumps(survivors)})

    def _finish(self, round_id: int) -> None:
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
        total = (self._load_sum(round_id, setup) - correction) & q.modulus_mask
        joint = q.to_float(q.decode_sum(total))
        mean = weighted_mean(joint, self.privacy.clip)
        outcome: dict[str, Any] = {
            "survivors": len(u3),
            "shared_keys": len(u2),
            "cohort": len(setup.cohort),
            "total_weight": float(joint[-1] / self.privacy.clip),
        }
        with self.state.transaction():
            if mean is not None:
                new = self.publisher.server_step(mean, self.config.server_lr)
                outcome["published_version"] = self.publisher.publish(new, round_id).version
            self.state.put_sum(round_id, total.astype("<u4").tobytes())
            self._set_stage(round_id, "done", outcome=json.dumps(outcome))
            # the round is unmasked: its encrypted and revealed shares have served their purpose and go
            self.state.forget_shares(round_id)
        self._sum, self._sum_round = None, None
