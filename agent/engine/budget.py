"""The profile's yearly privacy budget: ε this year against ``[sync] epsilon_budget`` (:mod:`sync.client.budget`).

:func:`privacy_budget` is what ``agent inspect`` and the Sync screen show; :func:`check_budget` runs before a sync
contacts the coordinator and, when one more round would exceed the budget, records a ``skipped`` ledger entry and
raises :class:`sync.errors.BudgetSpent`. The next round is costed at the least noise the agent accepts
(``PERSONA_SYNC_SIGMA``); :func:`agent.engine.sync.sync_profile` refuses rounds that offer less, so a round can only
cost less than checked.

Importing this module loads dp-accounting and scipy (seconds): the TUI imports it off its start-up path.
"""

from __future__ import annotations

from agent.settings import load_settings, sync_settings
from agent.store.egress import StoreLedger
from agent.store.profile_store import ProfileStore
from sync.client.budget import BudgetStatus, budget_status, skipped_entry
from sync.protocol.privacy import PrivacyParams


def accepted_privacy() -> PrivacyParams:
    """The weakest round this agent takes part in: its sync settings' C, σ and weight cap."""
    settings = sync_settings()
    return PrivacyParams(clip=settings.clip, sigma=settings.sigma, weight_cap=settings.weight_cap)


def privacy_budget(store: ProfileStore, *, now: float | None = None) -> BudgetStatus:
    """ε this year from the profile's egress ledger against its budget, and what the next round would cost."""
    return budget_status(
        StoreLedger(store).entries(),
        budget=load_settings().sync.epsilon_budget,
        next_noise_multiplier=accepted_privacy().noise_multiplier,
        now=now,
    )


def check_budget(store: ProfileStore, *, now: float | None = None) -> BudgetStatus:
    """The budget status when one more round fits; otherwise record the skip in the ledger and raise BudgetSpent."""
    status = privacy_budget(store, now=now)
    if not status.allowed:
        StoreLedger(store).record(skipped_entry(status, accepted_privacy(), now))
        raise status.error()
    return status
