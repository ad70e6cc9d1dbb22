"""Periodic participation: ``agent sync --if-eligible`` (:func:`scheduled_sync`), ``agent sync --every``
(:func:`run_periodically`) and ``agent schedule install|status|remove`` (:func:`install`, :func:`status`,
:func:`remove`).

On Linux ``install`` writes a systemd **user** service and timer (``persona-sync.service`` / ``.timer``) into
``~/.config/systemd/user``; on macOS a launchd agent (``org.persona.sync.plist``) into ``~/Library/LaunchAgents``;
elsewhere it says it cannot (:class:`ScheduleError`). Either runs ``<this python> -m agent.cli.main sync
--if-eligible`` with the ``PERSONA_*`` variables of the shell that installed it (never the passphrase).

The systemd timer fires on the calendar when the period divides a day or is a day or a week (``OnCalendar``, e.g.
every 6 h at 00:00, 06:00, ... local time; ``Persistent=true`` catches up a tick missed while the machine was off),
otherwise every period after the last run (``OnBootSec`` + ``OnUnitActiveSec``). Each tick is delayed by up to a
tenth of the period (``RandomizedDelaySec``, at most an hour) so a population does not check in at once. launchd
runs it every period (``StartInterval``) at background priority.

The folders are overridable (``PERSONA_SYSTEMD_USER_DIR``, ``PERSONA_LAUNCHD_DIR``) and then nothing is activated:
``systemctl --user daemon-reload`` / ``enable --now`` (``launchctl bootstrap``) run only for the real folder and
when the tool exists; their failures are reported in :attr:`InstallReport.notes`, never raised.
"""

from __future__ import annotations

import os
import plistlib
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from agent import paths
from agent.engine.eligibility import Eligibility, Probes, check_eligibility, last_check
from agent.settings import scheduled_run_environment, scheduler_dir_from_env
from agent.store.profile_store import ProfileStore
from models.assets import atomic_write_bytes
from models.errors import PersonaError

UNIT_NAME = "persona-sync"
LAUNCHD_LABEL = "org.persona.sync"
MIN_PERIOD_S = 60
NICE_INCREMENT = 10
"""How much a scheduled sync lowers its own priority (``os.nice``) before it trains and checks in."""
JITTER = 0.1
"""``--every`` waits the period ± this fraction of it between runs."""
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_PERIOD_LINE = re.compile(r"^# Persona period: (\d+) s", re.MULTILINE)
_CALENDAR_LINE = re.compile(r"^OnCalendar=(.+)$", re.MULTILINE)


class ScheduleError(PersonaError):
    """A period that is not a duration, or a platform without a scheduler Persona knows."""

    title = "Cannot schedule"


def parse_duration(text: str) -> int:
    """``30m``, ``6h``, ``1d``, ``1h30m``, ``90s``, ``2w`` → seconds; a :class:`ScheduleError` for anything else
    or for less than a minute."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ScheduleError(
            f"{text!r} is not a duration.", hint="Give a number and a unit (s, m, h, d, w), e.g. 30m, 6h, 1d or 1h30m."
        )
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(compact))
    if seconds < MIN_PERIOD_S:
        raise ScheduleError(f"{text!r} is too short a period.", hint="Give at least one minute, e.g. 30m or 6h.")
    return round(seconds)


def format_duration(seconds: int) -> str:
    """``21600`` → ``6h``; ``5400`` → ``1h30m`` (the largest units first)."""
    parts = []
    left = int(seconds)
    for unit in ("w", "d", "h", "m", "s"):
        count, left = divmod(left, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def scheduler_kind(platform: str | None = None) -> str:
    """``systemd`` on Linux, ``launchd`` on macOS; a :class:`ScheduleError` elsewhere."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise ScheduleError(
        f"`agent schedule` knows systemd (Linux) and launchd (macOS), not {platform!r}.",
        hint="Run `agent sync --every 6h` in a terminal instead, or have your system's task scheduler run "
        "`agent sync --if-eligible` every few hours.",
    )


def unit_dir(kind: str) -> tuple[Path, bool]:
    """Where ``kind``'s units go, and whether that is the real folder (False when overridden by the environment)."""
    override = scheduler_dir_from_env(kind)
    if override is not None:
        return override, False
    if kind == "systemd":
        return Path(platformdirs.user_config_dir()) / "systemd" / "user", True
    return Path.home() / "Library" / "LaunchAgents", True


def unit_files(kind: str, folder: Path) -> list[Path]:
    """The files ``install`` writes for ``kind`` into ``folder``."""
    if kind == "systemd":
        return [folder / f"{UNIT_NAME}.service", folder / f"{UNIT_NAME}.timer"]
    return [folder / f"{LAUNCHD_LABEL}.plist"]


def command_line() -> list[str]:
    """What the scheduler runs: this interpreter (the venv's) on ``agent sync --if-eligible``."""
    return [sys.executable, "-m", "agent.cli.main", "sync", "--if-eligible"]


def calendar_for(seconds: int) -> str | None:
    """The ``OnCalendar`` expression of a period that divides a day, or is a day or a week; None otherwise."""
    if seconds == 86_400:
        return "daily"
    if seconds == 604_800:
        return "weekly"
    if seconds % 3_600 == 0 and 86_400 % seconds == 0:
        return f"*-*-* 00/{seconds // 3_600}:00:00"
    if seconds % 60 == 0 and 3_600 % seconds == 0:
        return f"*-*-* *:00/{seconds // 60}:00"
    return None


def randomized_delay(seconds: int) -> int:
    """How late a tick may fire at random: a tenth of the period, at most an hour."""
    return min(3_600, max(1, seconds // 10))


def _systemd_quote(value: str) -> str:
    """One ExecStart/Environment word: ``%`` and ``$`` escaped, quoted when it holds spaces, quotes or backslashes."""
    if "\n" in value:
        raise ScheduleError(f"Cannot write {value!r} into a systemd unit: it holds a line break.")
    value = value.replace("%", "%%").replace("$", "$$")
    if re.search(r'[\s"\\]', value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def systemd_units(seconds: int, *, command: list[str], env: dict[str, str]) -> dict[str, str]:
    """The service and timer files' text for a period of ``seconds``."""
    calendar = calendar_for(seconds)
    every = format_duration(seconds)
    environment = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in env.items())
    service = (
        "[Unit]\n"
        "Description=Persona: one federated sync, only when this machine is eligible\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={' '.join(_systemd_quote(word) for word in command)}\n"
        f"{environment}"
        "IOSchedulingClass=idle\n"
    )
    trigger = f"OnCalendar={calendar}\n" if calendar else f"OnBootSec=15min\nOnUnitActiveSec={seconds}s\n"
    timer = (
        f"# Persona period: {seconds} s (every {every})\n"
        "[Unit]\n"
        f"Description=Persona: try a federated sync every {every}\n\n"
        "[Timer]\n"
        f"{trigger}"
        "Persistent=true\n"
        f"RandomizedDelaySec={randomized_delay(seconds)}s\n"
        f"Unit={UNIT_NAME}.service\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{UNIT_NAME}.service": service, f"{UNIT_NAME}.timer": timer}


def launchd_plist(seconds: int, *, command: list[str], env: dict[str, str], log: Path) -> bytes:
    """The launchd agent for a period of ``seconds`` (background priority, output appended to ``log``)."""
    body: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": command,
        "StartInterval": seconds,
        "RunAtLoad": False,
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    if env:
        body["EnvironmentVariables"] = env
    return plistlib.dumps(body)


@dataclass
class InstallReport:
    """What ``install`` or ``remove`` did: the scheduler, the files, and how activating it went."""

    kind: str
    folder: Path
    files: list[Path]
    period: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "scheduler": self.kind,
            "folder": str(self.folder),
            "files": [str(f) for f in self.files],
            "period_s": self.period,
            "every": format_duration(self.period) if self.period else None,
            "notes": self.notes,
        }


Runner = Callable[[list[str]], tuple[int, str]]
"""Runs a command line; returns its exit code and its output (stderr first)."""


def run_tool(command: list[str]) -> tuple[int, str]:
    """Run ``command`` (20 s at most); its exit code and output, or 127 and the reason when it cannot start."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return 127, str(error)
    return done.returncode, (done.stderr or "") + (done.stdout or "")


def _attempt(command: list[str], notes: list[str], runner: Runner) -> None:
    code, output = runner(command)
    line = (output.strip().splitlines() or [""])[0]
    notes.append(f"`{' '.join(command)}` " + ("ok" if code == 0 else f"failed ({code}): {line}"))


def _activate(kind: str, folder: Path, real: bool, runner: Runner, *, on: bool) -> list[str]:
    """Tell the scheduler about the new or removed files (only for the real folder, when the tool exists)."""
    tool = "systemctl" if kind == "systemd" else "launchctl"
    if not real:
        return [f"not activated: {folder} is not the real {kind} folder (set by the environment)"]
    if shutil.which(tool) is None:
        return [f"not activated: {tool} is not on PATH"]
    notes: list[str] = []
    if kind == "systemd":
        if on:
            _attempt(["systemctl", "--user", "daemon-reload"], notes, runner)
            _attempt(["systemctl", "--user", "enable", "--now", f"{UNIT_NAME}.timer"], notes, runner)
        else:
            _attempt(["systemctl", "--user", "disable", "--now", f"{UNIT_NAME}.timer"], notes, runner)
            _attempt(["systemctl", "--user", "daemon-reload"], notes, runner)
        return notes
    domain = f"gui/{os.getuid()}"
    plist = str(folder / f"{LAUNCHD_LABEL}.plist")
    if on:
        runner(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"])  # an older copy; failing is normal
        _attempt(["launchctl", "bootstrap", domain, plist], notes, runner)
    else:
        _attempt(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"], notes, runner)
    return notes


def install(seconds: int, *, platform: str | None = None, runner: Runner = run_tool) -> InstallReport:
    """Write (atomically, replacing an older one) and activate the scheduler's files for a period of ``seconds``."""
    if seconds < MIN_PERIOD_S:
        raise ScheduleError(f"A period of {seconds} s is too short.", hint="Give at least one minute.")
    kind = scheduler_kind(platform)
    folder, real = unit_dir(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        command, env = command_line(), scheduled_run_environment()
        if kind == "systemd":
            contents = {name: text.encode() for name, text in systemd_units(seconds, command=command, env=env).items()}
        else:
            log = paths.ensure_dir(paths.log_dir()) / "schedule.log"
            contents = {f"{LAUNCHD_LABEL}.plist": launchd_plist(seconds, command=command, env=env, log=log)}
        for name, data in contents.items():
            atomic_write_bytes(folder / name, data)
    except OSError as error:
        raise ScheduleError(f"Cannot write the schedule into {folder}: {error}") from error
    files = unit_files(kind, folder)
    return InstallReport(kind, folder, files, seconds, _activate(kind, folder, real, runner, on=True))


def remove(*, platform: str | None = None, runner: Runner = run_tool) -> InstallReport:
    """Deactivate and delete the scheduler's files (``files``: those that existed); nothing to remove is fine."""
    kind = scheduler_kind(platform)
    folder, real = unit_dir(kind)
    present = [f for f in unit_files(kind, folder) if f.exists()]
    notes = _activate(kind, folder, real, runner, on=False) if present else ["nothing was installed"]
    for path in present:
        try:
            path.unlink()
        except OSError as error:
            notes.append(f"cannot delete {path}: {error}")
    return InstallReport(kind, folder, present, None, notes)


def installed_period(kind: str, folder: Path) -> tuple[int | None, str | None]:
    """The installed period in seconds and the systemd calendar expression (None, None when not installed)."""
    files = unit_files(kind, folder)
    if not all(f.is_file() for f in files):
        return None, None
    try:
        if kind == "systemd":
            text = files[1].read_text(encoding="utf-8")
            period = _PERIOD_LINE.search(text)
            calendar = _CALENDAR_LINE.search(text)
            return (int(period.group(1)) if period else None), (calendar.group(1).strip() if calendar else None)
        with files[0].open("rb") as handle:
            interval = plistlib.load(handle).get("StartInterval")
        return (int(interval) if isinstance(interval, int) else None), None
    except (OSError, ValueError, plistlib.InvalidFileException):
        return None, None


def next_calendar_tick(seconds: int, now: float) -> float:
    """The next tick after ``now`` of a calendar timer (:func:`calendar_for`): aligned to local midnight (Monday's
    for a week)."""
    moment = time.localtime(now)
    midnight = time.mktime((moment.tm_year, moment.tm_mon, moment.tm_mday, 0, 0, 0, 0, 0, -1))
    if seconds == 604_800:
        monday = midnight - moment.tm_wday * 86_400
        return monday + 604_800 if monday + 604_800 > now else monday + 2 * 604_800
    steps = int((now - midnight) // seconds) + 1
    return midnight + steps * seconds


@dataclass(frozen=True)
class ScheduleStatus:
    """Whether a schedule is installed, its period, the next window, and the last eligibility check."""

    kind: str
    folder: Path
    installed: bool
    period: int | None
    calendar: str | None
    next_window: float | None
    last: dict[str, Any] | None

    def next_text(self) -> str:
        """The next window in words: a local time (+ the random delay), or when an interval timer is due."""
        if not self.installed or self.period is None:
            return "not scheduled"
        late = format_duration(randomized_delay(self.period))
        if self.next_window is None:
            return f"at the timer's next tick (within {format_duration(self.period)}, up to {late} later)"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.next_window))
        return f"{when} (up to {late} later)"

    def line(self) -> str:
        """One line: installed or not, every …, next window."""
        if not self.installed or self.period is None:
            return "Schedule: not installed (`agent schedule install --every 6h`)"
        return f"Schedule: every {format_duration(self.period)} ({self.kind}) · next window {self.next_text()}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "scheduler": self.kind,
            "folder": str(self.folder),
            "installed": self.installed,
            "period_s": self.period,
            "every": format_duration(self.period) if self.period else None,
            "calendar": self.calendar,
            "next_window": self.next_window,
            "next": self.next_text(),
            "last_check": self.last,
        }


def status(store: ProfileStore | None, *, platform: str | None = None, now: float | None = None) -> ScheduleStatus:
    """The schedule as installed, its next window (from the period and the last check), and the last check."""
    kind = scheduler_kind(platform)
    folder, _ = unit_dir(kind)
    now = time.time() if now is None else now
    period, calendar = installed_period(kind, folder)
    last = last_check(store) if store is not None else None
    next_window = None
    if period is not None:
        if calendar:
            next_window = next_calendar_tick(period, now)
        elif last is not None and float(last["ts"]) + period > now:
            next_window = float(last["ts"]) + period
    return ScheduleStatus(kind, folder, period is not None, period, calendar, next_window, last)


def lower_priority(increment: int = NICE_INCREMENT) -> None:
    """Lower this process's CPU priority by ``increment`` (training runs in a child, which inherits it)."""
    if hasattr(os, "nice"):
        os.nice(increment)


@dataclass(frozen=True)
class ScheduledRun:
    """What ``agent sync --if-eligible`` did: the check, and the sync's summary when it took part."""

    eligibility: Eligibility
    summary: dict[str, Any] | None
    come_back: tuple[float, float] | None = None
    """When the coordinator's check-in asked to come back later: the window (Unix seconds, this machine's clock)."""


def come_back_text(window: tuple[float, float]) -> str:
    """The outcome of a run the coordinator paced: when to come back, in local time."""
    start, end = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) for t in window)
    return f"come back between {start} and {end} (the coordinator paces check-ins)"


def scheduled_sync(
    store: ProfileStore,
    url: str,
    *,
    timeout: float,
    progress: Callable[[float, str], None] | None = None,
    passphrase: str | None = None,
    probes: Probes | None = None,
    sync_options: Mapping[str, Any] | None = None,
) -> ScheduledRun:
    """Check eligibility (recorded); if eligible, lower the priority and sync (train locally, then check in),
    recording the outcome on the check's row. Errors of the sync are recorded, then raised; a check-in answered with
    "come back later" (:class:`sync.errors.ComeBackLater`) is recorded with its window and returned as ``come_back``.

    ``sync_options`` are passed on to :func:`agent.engine.sync.sync_profile` (e.g. ``insecure_http``)."""
    from agent.engine.sync import sync_profile  # reason: keeps httpx and the worker plumbing off the TUI's start-up
    from sync.errors import ComeBackLater

    checked = check_eligibility(store, probes=probes)
    if not checked.eligible:
        return ScheduledRun(checked, None)
    record_id = checked.record_id or 0
    lower_priority()
    try:
        summary = sync_profile(
            store, url, timeout=timeout, progress=progress, passphrase=passphrase, **dict(sync_options or {})
        )
    except ComeBackLater as later:
        window = (later.not_before, later.not_after)
        store.set_eligibility_outcome(record_id, come_back_text(window))
        return ScheduledRun(checked, None, window)
    except PersonaError as error:
        store.set_eligibility_outcome(record_id, f"failed: {error.message}")
        raise
    store.set_eligibility_outcome(
        record_id, f"synced: round {summary['round']}, ε this year {float(summary['epsilon']):.3g}"
    )
    return ScheduledRun(checked, summary)


def run_periodically(
    seconds: int,
    once: Callable[[], float | None],
    *,
    sleep: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> None:
    """Call ``once`` now and then every ``seconds`` ± :data:`JITTER` of it, until interrupted (KeyboardInterrupt
    propagates: the caller exits cleanly). ``sleep`` defaults to :func:`time.sleep` as it is when called. When
    ``once`` returns a time (the coordinator's "come back" window, Unix seconds), the next call is then instead."""
    sleep = sleep or time.sleep
    rng = rng or random.Random()
    while True:
        come_back = once()
        wait = seconds * (1.0 + rng.uniform(-JITTER, JITTER))
        if come_back is not None:
            wait = max(0.0, come_back - time.time())
        if on_wait is not None:
            on_wait(wait)
        sleep(wait)
