"""The yearly privacy budget: ε over the agent's own participations in a rolling 365 days, and whether one more fits.

Only rounds the agent took part in and whose sum was unmasked count (:attr:`LedgerEntry.released`); no sampling
amplification is claimed, since the coordinator knows who took part. ε is exact for the composition of Gaussian
mechanisms (:func:`sync.protocol.privacy.gaussian_epsilon`). Before it contacts a coordinator the agent asks
:func:`budget_status` whether one more participation, at the least noise it accepts, keeps ε this year within its
budget; if not it does not take part, raises :class:`sync.errors.BudgetSpent` and records a ``skipped`` entry
(:func:`skipped_entry`) saying why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sync.client.ledger import LedgerEntry
from sync.errors import BudgetSpent
from sync.protocol.privacy import DEFAULT_DELTA, PrivacyParams, gaussian_epsilon

YEAR_S = 365 * 86_400
"""The rolling window ε is composed over."""


def in_window(entries: Iterable[LedgerEntry], now: float) -> list[LedgerEntry]:
    """The released participations of the 365 days up to ``now``, oldest first."""
    return sorted((e for e in entries if e.released and now - YEAR_S < e.time <= now), key=lambda e: e.time)


def epsilon_this_year(entries: Iterable[LedgerEntry], now: float, delta: float = DEFAULT_DELTA) -> float:
    """ε at ``delta`` over the released participations of the 365 days up to ``now``."""
    return gaussian_epsilon((e.noise_multiplier for e in in_window(entries, now)), delta)


def _day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(moment))


@dataclass(frozen=True)
class BudgetStatus:
    """ε this year against the budget, and what one more participation would bring it to."""

    epsilon_this_year: float
    budget: float
    delta: float
    participations: int  # released rounds in the window
    next_noise_multiplier: float  # the least noise the agent accepts for its next round (σ / √2)
    epsilon_after_next: float  # ε this year if it took part now
    oldest_leaves_at: float | None  # when the oldest participation in the window drops out
    fits_again_at: float | None  # when enough have dropped out for the next to fit (None: it fits now, or never)

    @property
    def allowed(self) -> bool:
        """True when one more participation keeps ε this year within the budget."""
        return self.epsilon_after_next <= self.budget

    def explain(self) -> str:
        """One paragraph: ε this year, the budget, what the next round would cost, and when that changes."""
        spent = (
            f"ε this year is {self.epsilon_this_year:.3g} of your budget {self.budget:g} (δ = {self.delta:g}, "
            f"{self.participations} round{'s' * (self.participations != 1)} in the last 365 days)"
        )
        if self.allowed:
            return f"{spent}; one more round would bring it to {self.epsilon_after_next:.3g}."
        alone = gaussian_epsilon([self.next_noise_multiplier], self.delta)
        if alone > self.budget:
            return (
                f"{spent}. One round at noise multiplier {self.next_noise_multiplier:.3g} costs ε {alone:.3g} on "
                f"its own, more than the whole budget: rounds at this noise protect too little to take part in "
                f'(README, "Privacy budget per year").'
            )
        when = ""
        if self.oldest_leaves_at is not None:
            when = f" The oldest participation leaves the window on {_day(self.oldest_leaves_at)}"
            when += f"; the next round fits from {_day(self.fits_again_at)}." if self.fits_again_at else "."
        return f"{spent}; one more round would bring it to {self.epsilon_after_next:.3g}.{when}"

    def error(self) -> BudgetSpent:
        """The error that refuses the next participation (message: :meth:`explain`)."""
        return BudgetSpent(
            f"Not taking part: {self.explain()}",
            hint="Raise [sync] epsilon_budget in config.toml to spend more, or PERSONA_SYNC_SIGMA to accept only "
            "rounds with more noise.",
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields (an infinite ε or budget as None: JSON has no infinity), ``allowed`` and the explanation."""
        fields = {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in asdict(self).items()}
        return fields | {"allowed": self.allowed, "explanation": self.explain()}


def budget_status(
    entries: Sequence[LedgerEntry],
    *,
    budget: float,
    next_noise_multiplier: float,
    now: float | None = None,
    delta: float = DEFAULT_DELTA,
) -> BudgetStatus:
    """Where this agent stands at ``now`` (default: the current time) against ``budget``."""
    now = time.time() if now is None else now
    window = in_window(entries, now)
    multipliers = [e.noise_multiplier for e in window]
    fits_again_at = None
    after_next = gaussian_epsilon([*multipliers, next_noise_multiplier], delta)
    if after_next > budget:
        for dropped in range(1, len(window) + 1):
            if gaussian_epsilon([*multipliers[dropped:], next_noise_multiplier], delta) <= budget:
                fits_again_at = window[dropped - 1].time + YEAR_S
                break
    return BudgetStatus(
        epsilon_this_year=gaussian_epsilon(multipliers, delta),
        budget=budget,
        delta=delta,
        participations=len(window),
        next_noise_multiplier=next_noise_multiplier,
        epsilon_after_next=after_next,
        oldest_leaves_at=window[0].time + YEAR_S if window else None,
        fits_again_at=fits_again_at,
    )


def skipped_entry(status: BudgetStatus, params: PrivacyParams, now: float | None = None) -> LedgerEntry:
    """The ledger entry of a sync the budget refused: nothing sent, nothing received, the reason in ``note``."""
    return LedgerEntry(
        time=time.time() if now is None else now,
        round_id=None,
        status="skipped",
        bytes_sent=0,
        bytes_received=0,
        clip=params.clip,
        sigma=params.sigma,
        noise_multiplier=params.noise_multiplier,
        cohort_size=0,
        released=False,
        epsilon=status.epsilon_this_year,
        delta=status.delta,
        note=status.explain(),
    )
