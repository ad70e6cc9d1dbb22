"""The egress ledger: one entry per sync saying what left the device, with the privacy spent this year.

:class:`EgressLedger` is the seam: the agent's local store can implement it (``record`` and ``entries``); until
then :class:`JsonlLedger` appends one JSON object per line to a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LedgerEntry:
    """What one sync sent and received, under which bound and noise, and ε after it."""

    time: float
    round_id: int | None
    status: str  # "done" | "abandoned" | "failed" | "skipped" (the budget refused; nothing was sent)
    bytes_sent: int
    bytes_received: int
    clip: float
    sigma: float
    noise_multiplier: float
    cohort_size: int
    released: bool  # the agent's masked input was part of an unmasked sum (counts toward ε)
    epsilon: float  # over the released rounds of the 365 days up to ``time``, at ``delta`` (sync.client.budget)
    delta: float
    note: str = ""  # why, for a skipped sync


class EgressLedger(Protocol):
    """Where sync results are recorded (the agent's store implements this too)."""

    def record(self, entry: LedgerEntry) -> None:
        """Append one entry."""

    def entries(self) -> list[LedgerEntry]:
        """Every entry so far, oldest first."""


class JsonlLedger:
    """An append-only JSON Lines file, one :class:`LedgerEntry` per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, entry: LedgerEntry) -> None:
        """Append and fsync one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(entry)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[LedgerEntry]:
        """Every entry; a missing file is an empty ledger."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [LedgerEntry(**json.loads(line)) for line in lines if line.strip()]


class MemoryLedger:
    """A ledger in memory (simulations and tests)."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []

    def record(self, entry: LedgerEntry) -> None:
        """Keep the entry."""
        self._entries.append(entry)

    def entries(self) -> list[LedgerEntry]:
        """Every entry so far."""
        return list(self._entries)
