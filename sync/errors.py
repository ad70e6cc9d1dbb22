"""Errors raised by the sync layer.

PersonaError (models.errors)
└── SyncError                 base of everything below: a sync could not be completed
    ├── ProtocolError         a peer or the coordinator broke the protocol (bad signature, inconsistent sets, ...)
    ├── RoundAbandoned        the round fell below its threshold or missed a deadline; nothing was unmasked
    ├── CoordinatorError      the coordinator answered with an error (``status``, machine-readable ``reason``)
    ├── SyncTimeout           the agent waited longer than its timeout
    ├── ComeBackLater         the coordinator's check-in asked to come back in a window later than the agent waits
    ├── StaleBase             the check-in refused a delta based on a version too far behind the newest
    └── BudgetSpent           the next participation would exceed the yearly privacy budget; nothing was sent
"""

from __future__ import annotations

import time

from models.errors import PersonaError


class SyncError(PersonaError):
    """A sync with the coordinator could not be completed."""

    title = "Sync failed"


class ProtocolError(SyncError):
    """A peer or the coordinator broke the secure-aggregation protocol; the agent stops revealing anything."""

    title = "Protocol violation"


class RoundAbandoned(SyncError):
    """The round was abandoned (below threshold, or a deadline passed); no sum was unmasked."""

    title = "Round abandoned"


class CoordinatorError(SyncError):
    """The coordinator refused a request: ``status`` is the HTTP status, ``reason`` its machine-readable reason."""

    title = "Coordinator error"

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"coordinator answered {status} {reason}: {detail}".rstrip(": "))
        self.status = status
        self.reason = reason
        self.detail = detail


class SyncTimeout(SyncError):
    """The agent's timeout passed before the round finished."""

    title = "Sync timed out"


class BudgetSpent(SyncError):
    """One more participation would take ε this year over the agent's budget; the coordinator was not contacted."""

    title = "Privacy budget spent"


class ComeBackLater(SyncError):
    """The coordinator asked this agent to check in again between ``not_before`` and ``not_after`` (Unix seconds on
    the agent's clock), for round ``round_id``: later than the agent was willing to wait. Nothing was sent."""

    title = "Come back later"

    def __init__(self, not_before: float, not_after: float, round_id: int) -> None:
        super().__init__(
            f"the coordinator is pacing check-ins: come back between {_clock(not_before)} and {_clock(not_after)} "
            f"(round {round_id}); no update was sent",
            hint="Run `agent sync` again in that window, or let `agent sync --every 6h` (or `agent schedule install`) "
            "come back by itself.",
        )
        self.not_before = not_before
        self.not_after = not_after
        self.round_id = round_id


class StaleBase(SyncError):
    """The check-in refused a delta based on a version more versions behind the newest than may contribute: fetch the
    newest (``latest_version``), compute the delta again and check in again."""

    title = "Shared vector too old"

    def __init__(self, detail: str, latest_version: int) -> None:
        super().__init__(detail)
        self.latest_version = latest_version


def _clock(at: float) -> str:
    """A Unix time as the local wall clock (for messages)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
