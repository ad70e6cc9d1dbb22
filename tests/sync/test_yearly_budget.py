"""The yearly privacy budget (sync.client.budget): ε over a rolling 365 days from explicit timestamps, the check
that refuses the next participation, and the ledger entry's ε."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
from dp_accounting import GaussianDpEvent
from dp_accounting.pld import PLDAccountant

from sync.client.budget import budget_status, epsilon_this_year, skipped_entry
from sync.client.http_client import RoundResult, Traffic
from sync.client.ledger import LedgerEntry, MemoryLedger
from sync.client.run import ledger_entry
from sync.protocol.privacy import PrivacyParams, epsilon, gaussian_epsilon

NOW = 1_800_000_000.0
DAY = 86_400.0
Z = 6.0  # the noise multiplier of every participation below


def participation(days_ago: float, *, released: bool = True, z: float = Z) -> LedgerEntry:
    return LedgerEntry(
        time=NOW - days_ago * DAY,
        round_id=1,
        status="done" if released else "abandoned",
        bytes_sent=1,
        bytes_received=1,
        clip=0.5,
        sigma=z * math.sqrt(2.0),
        noise_multiplier=z,
        cohort_size=3,
        released=released,
        epsilon=0.0,
        delta=1e-5,
    )


def test_gaussian_epsilon_matches_the_pld_accountant_and_is_below_the_rdp_bound() -> None:
    noise = [2.0, 3.0, 4.0]
    accountant = PLDAccountant()
    for z in noise:
        accountant.compose(GaussianDpEvent(z))
    exact = gaussian_epsilon(noise, 1e-5)
    assert exact == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-2)
    assert exact < epsilon(noise, 1e-5)
    assert gaussian_epsilon([], 1e-5) == 0.0 and gaussian_epsilon([0.0], 1e-5) == math.inf


def test_only_released_participations_of_the_last_365_days_count() -> None:
    entries = [
        participation(400),  # left the window
        participation(365),  # exactly a year ago: left too
        participation(200),
        participation(30, released=False),  # abandoned round: nothing was unmasked
        participation(10),
        participation(-1),  # in the future of NOW: not yet
    ]
    assert epsilon_this_year(entries, NOW) == pytest.approx(gaussian_epsilon([Z, Z]))
    # 160 days later the future one has joined and the 200-days-old one is still in; 200 days later it has left
    assert epsilon_this_year(entries, NOW + 160 * DAY) == pytest.approx(gaussian_epsilon([Z, Z, Z]))
    assert epsilon_this_year(entries, NOW + 200 * DAY) == pytest.approx(gaussian_epsilon([Z, Z]))
    assert epsilon_this_year(entries, NOW + 400 * DAY) == 0.0


def test_the_budget_refuses_the_round_that_would_exceed_it_and_says_when_one_fits_again() -> None:
    entries = [participation(300), participation(100), participation(50)]
    budget = (gaussian_epsilon([Z] * 3) + gaussian_epsilon([Z] * 4)) / 2  # three fit, a fourth does not
    status = budget_status(entries, budget=budget, next_noise_multiplier=Z, now=NOW)
    assert not status.allowed and status.participations == 3
    assert status.epsilon_this_year == pytest.approx(gaussian_epsilon([Z] * 3))
    assert status.epsilon_after_next == pytest.approx(gaussian_epsilon([Z] * 4))
    assert status.oldest_leaves_at == status.fits_again_at == NOW + 65 * DAY
    text = status.explain()
    assert f"of your budget {budget:g}" in text and "leaves the window on" in text and "fits from" in text
    # once the oldest has left, the same round fits
    later = budget_status(entries, budget=budget, next_noise_multiplier=Z, now=NOW + 66 * DAY)
    assert later.allowed and later.participations == 2
    # a quieter round (more noise) fits now
    assert budget_status(entries, budget=budget, next_noise_multiplier=3 * Z, now=NOW).allowed


def test_a_round_that_alone_exceeds_the_budget_never_fits() -> None:
    status = budget_status([], budget=8.0, next_noise_multiplier=0.4 / math.sqrt(2.0), now=NOW)
    assert not status.allowed and status.fits_again_at is None and status.epsilon_this_year == 0.0
    assert "on its own" in status.explain()
    skip = skipped_entry(status, PrivacyParams(), NOW)
    assert skip.status == "skipped" and not skip.released and skip.bytes_sent == 0 and "on its own" in skip.note
    assert status.as_dict()["allowed"] is False


def test_the_ledger_entry_carries_epsilon_over_the_window_only() -> None:
    today = time.time()
    ledger = MemoryLedger()
    ledger.record(replace(participation(0), time=today - 400 * DAY))  # left the window
    ledger.record(replace(participation(0), time=today - 10 * DAY))
    ledger.record(replace(participation(0, released=False), time=today - DAY))
    privacy = PrivacyParams(sigma=2 * Z * math.sqrt(2.0))
    result = RoundResult(2, "done", 3, privacy, None, None, 1, 0.0, Traffic(), True)
    entry = ledger_entry(result, ledger)
    assert entry.released and entry.noise_multiplier == pytest.approx(2 * Z)
    assert entry.epsilon == pytest.approx(gaussian_epsilon([Z, 2 * Z]))
