"""Pace steering: who is admitted to the round in its advertise stage, and when everyone else should come back.

An agent checks in (``POST /v1/checkin``) when it is ready to take part. While a round is in its advertise stage and
has seats left, the agent is admitted (a seat is held for it until the stage closes). Otherwise it is told to come
back in a window inside the advertise stage of an upcoming round: each upcoming round takes at most
``target_cohort`` of these bookings, so a burst of B check-ins is spread over ⌈B / target⌉ rounds and about
``target_cohort`` agents arrive per round, the rest of the seats staying for agents checking in for the first time.
A slot of the schedule with no agent booked for it opens no round.
The start of each window is jittered per agent (seeded by the agent id and the round, so asking again gives the same
window) over the first half of the advertise stage, so the agents of one round do not all arrive in the same second.

The bookings are soft state, in memory: a restarted coordinator starts counting again, which costs at most one
round's worth of over-booking. Memory holds one entry per agent waiting for a round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

JITTER_SHARE = 0.5
"""The window's start lies in the first this-much of the advertise stage (seeded per agent)."""
WINDOW_END_SHARE = 0.75
"""Every window ends this far into the advertise stage, leaving the rest for late clocks and slow networks."""


def jitter(agent_id: str, round_id: int) -> float:
    """A number in [0, 1) fixed by the agent and the round (the seed of the agent's place in the window)."""
    digest = hashlib.sha256(f"persona-pace|{agent_id}|{round_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Window:
    """Come back between ``not_before`` and ``not_after`` (coordinator clock, Unix seconds) for ``round_id``."""

    round_id: int
    not_before: float
    not_after: float


@dataclass
class Pacer:
    """Admissions to the round in advertise and bookings of upcoming rounds (see the module docstring)."""

    target: int
    """Bookings per upcoming round (the coordinator's target cohort)."""
    advertise_s: float
    """Length of an advertise stage: the windows lie inside it."""
    booked: dict[int, int] = field(default_factory=dict)
    """Upcoming round id -> agents told to come back for it."""
    waiting: dict[str, int] = field(default_factory=dict)
    """Agent id -> the upcoming round it was told to come back for."""
    admitted: dict[int, set[str]] = field(default_factory=dict)
    """Round id (the one in advertise) -> agents admitted to it."""
    _horizon: int = -1

    def admit(self, round_id: int, agent_id: str, members: int, capacity: int) -> bool:
        """Hold a seat of round ``round_id`` (in advertise, ``members`` joined so far) for ``agent_id``; False when
        the seats are taken by members and agents admitted before. Asking again keeps the seat."""
        seats = self.admitted.setdefault(round_id, set())
        for old in [r for r in self.admitted if r != round_id]:
            del self.admitted[old]
        if agent_id in seats:
            return True
        if max(members, len(seats)) >= capacity:
            return False
        seats.add(agent_id)
        self.waiting.pop(agent_id, None)
        return True

    def expects(self, round_id: int) -> bool:
        """Whether an agent was told to come back for ``round_id`` (a round with nobody waiting is not opened)."""
        return self.booked.get(round_id, 0) > 0

    def book(self, agent_id: str, first: int, opens_at: Callable[[int], float]) -> Window:
        """The window of the earliest round from ``first`` on with fewer than ``target`` bookings (the same round as
        before if the agent already holds a booking from ``first`` on); ``opens_at(round_id)`` is when that round's
        advertise stage starts."""
        self._forget_before(first)
        round_id = self.waiting.get(agent_id, -1)
        if round_id < first:
            round_id = first
            while self.booked.get(round_id, 0) >= self.target:
                round_id += 1
            self.booked[round_id] = self.booked.get(round_id, 0) + 1
            self.waiting[agent_id] = round_id
        start = opens_at(round_id)
        not_before = start + jitter(agent_id, round_id) * JITTER_SHARE * self.advertise_s
        return Window(round_id, not_before, max(not_before, start + WINDOW_END_SHARE * self.advertise_s))

    def _forget_before(self, first: int) -> None:
        """Drop the bookings of rounds before ``first`` (once per round: a sweep over the waiting agents)."""
        if first <= self._horizon:
            return
        self._horizon = first
        self.booked = {r: n for r, n in self.booked.items() if r >= first}
        self.waiting = {a: r for a, r in self.waiting.items() if r >= first}
