"""Errors raised by the sync layer.

PersonaError (models.errors)
└── SyncError                 base of everything below: a sync could not be completed
    ├── ProtocolError         a peer or the coordinator broke the protocol (bad signature, inconsistent sets, ...)
    ├── RoundAbandoned        the round fell below its threshold or missed a deadline; nothing was unmasked
    ├── CoordinatorError      the coordinator answered with an error (``status``, machine-readable ``reason``)
    ├── SyncTimeout           the agent waited longer than its timeout
    └── BudgetSpent           the next participation would exceed the yearly privacy budget; nothing was sent
"""

from __future__ import annotations

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
