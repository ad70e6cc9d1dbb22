"""The profile store serves as the sync client's egress ledger."""

from __future__ import annotations

from pathlib import Path

from agent.store.egress import StoreLedger, egress_summary
from agent.store.profile_store import ProfileStore
from sync.client.ledger import LedgerEntry


def _entry(round_id: int | None, epsilon: float, status: str = "done") -> LedgerEntry:
    return LedgerEntry(
        time=1_700_000_000.25 + (round_id or 0),
        round_id=round_id,
        status=status,
        bytes_sent=4096,
        bytes_received=65536,
        clip=0.5,
        sigma=0.5,
        noise_multiplier=1.0,
        cohort_size=20,
        released=status == "done",
        epsilon=epsilon,
        delta=1e-5,
    )


def test_ledger_entries_round_trip_through_the_store(tmp_path: Path) -> None:
    written = [_entry(3, 0.8), _entry(None, 0.8, status="abandoned"), _entry(4, 1.1)]
    with ProfileStore.open(tmp_path) as store:
        ledger = StoreLedger(store)
        for entry in written:
            ledger.record(entry)
    with ProfileStore.open(tmp_path) as store:
        assert StoreLedger(store).entries() == written
        summary = egress_summary(store.egress_entries())
    assert summary["rounds"] == 3 and summary["bytes_sent"] == 3 * 4096 and summary["epsilon"] == 1.1
