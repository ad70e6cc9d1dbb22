"""Whether a scheduled sync may take part now (``agent sync --if-eligible``), checked on the device and recorded.

Five checks, each with a one-line reason (all of them run, so a skipped run says every reason at once):

``power``
    On AC power, when ``[schedule] require_ac`` (default true). Linux reads ``/sys/class/power_supply/*``
    (``type`` Mains/USB with ``online`` 1, else a battery's ``status``); macOS asks ``pmset -g batt``. A machine
    whose power source cannot be read (a desktop without a power-supply entry, a container, another OS) counts as
    on AC, with the reason "power source unknown".
``idle``
    The 1-minute load average per core (``os.getloadavg`` / cores) below ``[schedule] max_load_per_core``
    (default 0.5). This is the only idleness signal that is portable and needs no permission; keyboard and mouse
    idle time is not read. Where there is no load average the machine counts as idle ("load unknown").
``network``
    Not metered: ``[schedule] metered`` is a setting the person sets. Nothing detects a metered network portably
    (NetworkManager and macOS know it, containers and most desktops do not), so it is not guessed.
``spacing``
    At most one participation per ``[schedule] min_days_between`` days (default 7), counted from the egress
    ledger's last released round.
``budget``
    One more round keeps ε this year within ``[sync] epsilon_budget`` (:mod:`agent.engine.budget`; importing it
    loads dp-accounting, so it is imported inside :func:`check_eligibility`).

Every check run is recorded in the store's ``eligibility_checks`` table (time, eligible, the checks as JSON),
which ``agent schedule status`` and the TUI's Sync screen show. The system probes are a small dataclass of
callables (:class:`Probes`) so a test can say "on battery" without faking the machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings import SchedulePreferences, load_settings
from agent.store.egress import last_participation
from agent.store.profile_store import ProfileStore
from sync.protocol.rules import power_allows, spacing_allows

POWER_SUPPLY_DIR = Path("/sys/class/power_supply")
DAY_S = 86_400.0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def linux_on_ac(folder: Path = POWER_SUPPLY_DIR) -> bool | None:
    """True on AC, False on battery, None when ``folder`` says neither (no supplies, unreadable)."""
    if not folder.is_dir():
        return None
    mains: list[bool] = []
    batteries: list[str] = []
    for supply in sorted(folder.iterdir()):
        kind = _read(supply / "type")
        if kind in ("Mains", "USB", "USB_C", "USB_PD"):
            mains.append(_read(supply / "online") == "1")
        elif kind == "Battery":
            batteries.append(_read(supply / "status"))
    if any(mains):
        return True
    if mains and batteries:
        return False  # an adapter is known and offline while a battery is present
    if batteries:
        if "Discharging" in batteries:
            return False
        if any(status in ("Charging", "Full", "Not charging") for status in batteries):
            return True
    return None


def macos_on_ac() -> bool | None:
    """``pmset -g batt``'s first line: "Now drawing from 'AC Power'" or "'Battery Power'"; None if it cannot run."""
    try:
        done = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if "AC Power" in done.stdout:
        return True
    if "Battery Power" in done.stdout:
        return False
    return None


def on_ac_power() -> bool | None:
    """This machine's power source: True on AC, False on battery, None when it cannot be told."""
    if sys.platform.startswith("linux"):
        return linux_on_ac()
    if sys.platform == "darwin":
        return macos_on_ac()
    return None


def load_per_core() -> float | None:
    """The 1-minute load average divided by the number of cores; None where there is no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return load / max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Probes:
    """What the checks ask the machine (replace one in a test: ``Probes(power=lambda: False)``)."""

    power: Callable[[], bool | None] = on_ac_power
    """True on AC power, False on battery, None unknown."""
    load_per_core: Callable[[], float | None] = load_per_core
    """The 1-minute load average per core, None unknown."""
    now: Callable[[], float] = time.time
    """The current time (unix seconds)."""


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed, and why (one line)."""

    name: str
    ok: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the store records)."""
        return {"name": self.name, "ok": self.ok, "reason": self.reason}


@dataclass(frozen=True)
class Eligibility:
    """The outcome of one eligibility check: when, every check, and the id of its row in the store."""

    time: float
    checks: tuple[Check, ...]
    record_id: int | None = None

    @property
    def eligible(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """Why the run is skipped: the reasons of the failed checks (empty when eligible)."""
        return [c.reason for c in self.checks if not c.ok]

    def line(self) -> str:
        """One line: ``eligible: ...`` or ``skipped: <reason>; <reason>``."""
        if self.eligible:
            return "eligible: " + "; ".join(c.reason for c in self.checks)
        return "skipped: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "time": self.time,
            "eligible": self.eligible,
            "reasons": self.reasons,
            "checks": [c.as_dict() for c in self.checks],
        }


def _power(prefs: SchedulePreferences, probes: Probes) -> Check:
    on_ac = probes.power()
    if on_ac is None:
        return Check("power", True, "power source unknown (treated as AC)")
    if on_ac:
        return Check("power", True, "on AC power")
    if not power_allows(on_ac, require_ac=prefs.require_ac):
        return Check("power", False, "on battery ([schedule] require_ac = true)")
    return Check("power", True, "on battery, allowed ([schedule] require_ac = false)")


def _idle(prefs: SchedulePreferences, probes: Probes) -> Check:
    limit = prefs.max_load_per_core
    if math.isinf(limit):
        return Check("idle", True, "idle check off ([schedule] max_load_per_core = inf)")
    load = probes.load_per_core()
    if load is None:
        return Check("idle", True, "load unknown (treated as idle)")
    if load < limit:
        return Check("idle", True, f"idle (load {load:.2f} per core < {limit:g})")
    return Check("idle", False, f"busy (load {load:.2f} per core ≥ {limit:g}, [schedule] max_load_per_core)")


def _network(prefs: SchedulePreferences) -> Check:
    if prefs.metered:
        return Check("network", False, "metered network ([schedule] metered = true)")
    return Check("network", True, "network not metered (per [schedule] metered)")


def _spacing(prefs: SchedulePreferences, store: ProfileStore, now: float) -> Check:
    last = last_participation(store.egress_entries())
    if last is None:
        return Check("spacing", True, "no participation yet")
    days = (now - last) / DAY_S
    if spacing_allows(last, now, min_days_between=prefs.min_days_between):
        return Check("spacing", True, f"last participation {days:.1f} days ago")
    due = time.strftime("%Y-%m-%d %H:%M", time.localtime(last + prefs.min_days_between * DAY_S))
    return Check(
        "spacing",
        False,
        f"took part {days:.1f} days ago; at most once per {prefs.min_days_between:g} days "
        f"([schedule] min_days_between), next from {due}",
    )


def _budget(store: ProfileStore, now: float) -> Check:
    from agent.engine.budget import privacy_budget  # reason: dp-accounting and scipy take seconds to import

    status = privacy_budget(store, now=now)
    if status.allowed:
        return Check(
            "budget",
            True,
            f"ε this year {status.epsilon_this_year:.3g}, {status.epsilon_after_next:.3g} after one more round "
            f"(budget {status.budget:g})",
        )
    return Check("budget", False, f"privacy budget spent: {status.explain()}")


def check_eligibility(
    store: ProfileStore,
    *,
    prefs: SchedulePreferences | None = None,
    probes: Probes | None = None,
    record: bool = True,
) -> Eligibility:
    """Run every check (see the module docstring) and, with ``record``, store the outcome; returns it.

    ``prefs`` default to the config file's ``[schedule]`` table, ``probes`` to this machine's."""
    prefs = prefs if prefs is not None else load_settings().schedule
    probes = probes or Probes()
    now = probes.now()
    checks = (
        _power(prefs, probes),
        _idle(prefs, probes),
        _network(prefs),
        _spacing(prefs, store, now),
        _budget(store, now),
    )
    outcome = Eligibility(time=now, checks=checks)
    if not record:
        return outcome
    record_id = store.record_eligibility(ts=now, eligible=outcome.eligible, checks=[c.as_dict() for c in checks])
    if not outcome.eligible:
        store.set_eligibility_outcome(record_id, "skipped")
    return Eligibility(time=now, checks=checks, record_id=record_id)


def last_check(store: ProfileStore) -> dict[str, Any] | None:
    """The newest recorded check (``ts``, ``eligible``, ``checks``, ``outcome``, and ``reasons`` of the failed
    checks), or None before the first."""
    rows = store.eligibility_checks(limit=1)
    if not rows:
        return None
    row = rows[0]
    return row | {"reasons": [c["reason"] for c in row["checks"] if not c["ok"]]}


def describe_check(row: Mapping[str, Any]) -> str:
    """One line for a recorded check: when, and what happened (the reasons when skipped)."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["ts"])))
    if not row["eligible"]:
        reasons = [c["reason"] for c in row["checks"] if not c["ok"]]
        return f"{when} skipped: " + "; ".join(reasons)
    return f"{when} " + (row.get("outcome") or "eligible, sync started")
