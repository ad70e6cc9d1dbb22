"""The profile store as the sync client's egress ledger (:class:`sync.client.ledger.EgressLedger`), and its totals.

``agent sync`` hands a :class:`StoreLedger` to :func:`sync.client.http_client.run_sync`, so every round it takes part
in is recorded in the profile's SQLite ``egress`` table (what ``agent inspect`` and the Sync screen show) in one atomic
transaction, and is deleted by ``agent reset`` with the rest of the profile.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from typing import Any

from agent.store.profile_store import ProfileStore
from sync.client.ledger import LedgerEntry

_RENAMED = {"round_id": "round", "cohort_size": "cohort", "time": "ts"}


class StoreLedger:
    """Records :class:`LedgerEntry` objects in the store's egress ledger and reads them back."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store

    def record(self, entry: LedgerEntry) -> None:
        """Append one entry (one transaction)."""
        row = {_RENAMED.get(k, k): v for k, v in asdict(entry).items()}
        row["ts"] = int(entry.time)
        row["time_exact"] = entry.time
        self.store.append_egress(row)

    def entries(self) -> list[LedgerEntry]:
        """Every entry recorded through this adapter, oldest first (rows written otherwise are skipped)."""
        defaults = {f.name: f.default for f in fields(LedgerEntry) if f.default is not MISSING}
        names = {f.name for f in fields(LedgerEntry)} - set(_RENAMED)
        found = []
        for row in self.store.egress_entries():
            values: dict[str, Any] = {k: row.get(v) for k, v in _RENAMED.items()}
            values |= {k: row.get(k, defaults.get(k)) for k in names}
            if any(value is None for key, value in values.items() if key != "round_id"):
                continue
            values["time"] = float(row["time_exact"]) if row.get("time_exact") is not None else float(row["ts"])
            found.append(LedgerEntry(**values))
        return found


def egress_summary(ledger: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the egress ledger: rounds, bytes each way, the latest recorded ε (this year's, when it was recorded)
    and when the last round was. Syncs the privacy budget refused (``status`` "skipped") are not rounds."""
    epsilons = [e["epsilon"] for e in ledger if e.get("epsilon") is not None]
    rounds = [e for e in ledger if e.get("status") != "skipped"]
    return {
        "rounds": len(rounds),
        "bytes_sent": sum(int(e.get("bytes_sent") or 0) for e in ledger),
        "bytes_received": sum(int(e.get("bytes_received") or 0) for e in ledger),
        "epsilon": float(epsilons[-1]) if epsilons else 0.0,
        "last_round_at": rounds[-1]["ts"] if rounds else None,
    }


def is_participation(row: dict[str, Any]) -> bool:
    """True for a ledger row of a round this agent took part in and whose sum was released (it counts toward ε and
    toward ``[schedule] min_days_between``); rows without ``released`` count when their status is ``done``."""
    if row.get("status") == "skipped":
        return False
    if row.get("released") is not None:
        return bool(row["released"])
    return row.get("status") == "done" or (row.get("status") is None and int(row.get("bytes_sent") or 0) > 0)


def row_time(row: dict[str, Any]) -> float:
    """When a ledger row was recorded, in unix seconds (to the second for rows written without ``time_exact``)."""
    exact = row.get("time_exact")
    return float(exact) if exact is not None else float(row["ts"])


def epsilon_points(ledger: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(time, ε this year)`` at each participation of the ledger, oldest first: ε as recorded after that round."""
    return sorted(
        (row_time(r), float(r["epsilon"])) for r in ledger if is_participation(r) and r.get("epsilon") is not None
    )


def last_participation(ledger: list[dict[str, Any]]) -> float | None:
    """When this agent last took part in a released round, or None if it never did."""
    times = [row_time(r) for r in ledger if is_participation(r)]
    return max(times) if times else None
