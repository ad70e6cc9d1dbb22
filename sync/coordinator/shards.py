"""Sharded aggregation of one round's masked inputs: each coordinator process is one :class:`Shard`.

A shard keeps, in memory, the partial sum (mod 2^bits) of the masked inputs *it* accepted and the list of their
agents. Accepting an input commits only the member's small "sent" mark and the shard's id
(:meth:`sync.coordinator.storage.CoordinatorStore.add_input`) — never a sum, so what the database writes per input
does not grow with the vector. A shard writes its partial sum and agents as one checkpoint row
(:meth:`~sync.coordinator.storage.CoordinatorStore.put_partial`):

- when the masked-input stage closes: the leader marks the round as closing (:func:`closing_key` in ``meta``, and a
  NOTIFY); every live shard sees the mark at its next tick (every 0.2 s) and checkpoints; the leader waits until every
  shard that received inputs (by the members' marks) has a checkpoint holding all of them, or until
  ``checkpoint_grace_s`` has passed since the mark;
- every ``checkpoint_s`` seconds while it holds inputs not yet checkpointed (0: never), so that a process that dies
  loses at most that many seconds of inputs (each costs one vector-sized row, so this trades database bytes against
  how many agents a crash turns into dropouts: with the default 30 s and a one-minute stage a shard writes at most
  two, plus the closing one; measured, 10 s made the periodic rows half of a 1,000-agent round's WAL).

U3 — the agents whose input is in the round's sum — is the union of the agents of the checkpoints that exist when
the stage closes. A member marked "sent" whose shard never checkpointed it (its process died) is simply a dropout: the
survivors reveal its key share (s) and the unmasking removes its pairwise masks, exactly as for an agent that never
sent. That is correct because U3 is defined by what the sum holds; its input, seen only masked by its self-mask b
(never revealed, it is not in U3), stays hidden. Inputs arriving once the round is marked closing are refused
(``late_submission``), and a checkpoint is only written while the round is in the masked-input stage, in the same
serialised transaction as the check, so the partial sums the leader adds at the unmask stage are exactly the ones
whose agents make U3. Only the round's total is ever unmasked: the leader adds the partial sums mod 2^bits and then
subtracts the unmasking correction; a sub-sum is never unmasked (that would tell the operator each shard's sum).
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import numpy as np

UIntVector = np.ndarray[Any, np.dtype[np.uint32]]


def closing_key(round_id: int) -> str:
    """The ``meta`` key the leader sets (to the time, as text) when the round's masked-input stage starts closing."""
    return f"closing_r{int(round_id)}"


class ShardState(NamedTuple):
    """What :meth:`Shard.snapshot` saves and :meth:`Shard.restore` puts back."""

    round_id: int | None
    total: UIntVector | None
    agents: list[str]
    size: int
    checkpointed: int
    checkpointed_at: float


class Shard:
    """One process's partial sum of the masked inputs it accepted, for one round at a time (not thread-safe:
    :class:`sync.coordinator.service.Coordinator` holds its lock around every call)."""

    def __init__(self, shard_id: str | None = None) -> None:
        """A new shard, empty; its id is new for every process (a restarted process is a new shard)."""
        self.shard_id = shard_id or uuid.uuid4().hex[:16]
        self.round_id: int | None = None
        self.total: UIntVector | None = None
        self.agents: list[str] = []
        self.checkpointed = -1
        """How many of :attr:`agents` the last checkpoint written for this round holds (-1: none written)."""
        self.checkpointed_at = 0.0

    def add(
        self, round_id: int, agent_id: str, values: UIntVector, modulus_mask: int | np.uint32, now: float = 0.0
    ) -> None:
        """Add one accepted masked input (a new array: a :meth:`snapshot` keeps the old one); the first of a round
        starts the periodic checkpoints' clock at ``now``."""
        if self.round_id != round_id or self.total is None:
            self.round_id, self.total, self.agents, self.checkpointed = round_id, None, [], -1
            self.checkpointed_at = now
        base = self.total if self.total is not None else np.zeros(values.shape, dtype=np.uint32)
        self.total = ((base + values) & np.uint32(modulus_mask)).astype(np.uint32)
        self.agents.append(agent_id)

    def holds(self, round_id: int) -> bool:
        """Whether the shard holds inputs of ``round_id``."""
        return self.round_id == round_id and self.total is not None and bool(self.agents)

    def dirty(self, round_id: int) -> bool:
        """Whether the shard holds inputs of ``round_id`` that no checkpoint holds yet."""
        return self.holds(round_id) and self.checkpointed != len(self.agents)

    def checkpoint_row(self) -> tuple[bytes, list[str]]:
        """The partial sum (uint32 little-endian) and the agents in it, as a checkpoint stores them."""
        assert self.total is not None
        return self.total.astype("<u4").tobytes(), list(self.agents)

    def mark_checkpointed(self, now: float) -> None:
        """Note that a checkpoint holding every input so far was written."""
        self.checkpointed, self.checkpointed_at = len(self.agents), now

    def snapshot(self) -> ShardState:
        """The shard as it is now (cheap: sums are never changed in place)."""
        return ShardState(
            self.round_id, self.total, self.agents, len(self.agents), self.checkpointed, self.checkpointed_at
        )

    def restore(self, saved: ShardState) -> None:
        """Put back a :meth:`snapshot`: what a rolled-back request added or checkpointed is forgotten."""
        self.round_id, self.total, self.agents = saved.round_id, saved.total, saved.agents
        del self.agents[saved.size :]  # a new round's inputs went to a new list: the saved one only grew
        self.checkpointed, self.checkpointed_at = saved.checkpointed, saved.checkpointed_at


def add_partials(
    partials: list[tuple[str, bytes, list[str]]], size: int, modulus_mask: int | np.uint32
) -> tuple[UIntVector, list[str]]:
    """The sum (mod 2^bits) of the checkpoints' partial sums and the sorted agents in it; ValueError if an agent
    is in two checkpoints or a sum has the wrong length."""
    total = np.zeros(size, dtype=np.uint32)
    agents: list[str] = []
    for shard, blob, members in partials:
        part = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
        if part.size != size:
            raise ValueError(f"the checkpoint of shard {shard} holds {part.size} values, not {size}")
        total = ((total + part) & np.uint32(modulus_mask)).astype(np.uint32)
        agents.extend(members)
    if len(set(agents)) != len(agents):
        raise ValueError("an agent's input is in two checkpoints")
    return total, sorted(agents)
