"""Periodic participation: `agent schedule install|status|remove` into a temporary systemd user folder and launchd
folder, the eligibility checks (power, idle, metered, spacing, budget) and their record, `agent sync --if-eligible`
and `--every`.

The "coordinator" is a free port on 127.0.0.1 with nothing listening: a run that went on to check in fails with
"unreachable", so a run that returns "skipped" provably made no network call (the control test shows the same run
on AC power does try, and fails).
"""

from __future__ import annotations

import math
import plistlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from agent.engine import schedule
from agent.engine.eligibility import Probes, check_eligibility, linux_on_ac, load_per_core, on_ac_power
from agent.engine.schedule import ScheduleError, parse_duration, run_periodically, scheduled_sync
from agent.settings import SchedulePreferences, load_settings
from agent.store.egress import StoreLedger
from agent.store.profile_store import ProfileStore
from sync.client.ledger import LedgerEntry
from sync.coordinator.local import free_port
from sync.errors import SyncError
from sync.protocol.privacy import gaussian_epsilon

runner = CliRunner()
DAY = 86_400.0
Z = 6.0  # every participation's noise multiplier, and the next round's (PERSONA_SYNC_SIGMA = Z·√2)
ON_AC_IDLE = Probes(power=lambda: True, load_per_core=lambda: 0.0)
ON_BATTERY = Probes(power=lambda: False, load_per_core=lambda: 0.0)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rounds noisy enough to fit the default budget; unit folders in the test's temporary folder."""
    monkeypatch.setenv("PERSONA_SYNC_SIGMA", repr(Z * math.sqrt(2.0)))
    monkeypatch.delenv("PERSONA_COORDINATOR_URL", raising=False)
    monkeypatch.setenv("PERSONA_SYSTEMD_USER_DIR", str(tmp_path / "systemd-user"))
    monkeypatch.setenv("PERSONA_LAUNCHD_DIR", str(tmp_path / "LaunchAgents"))


def config(text: str) -> None:
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text(text, encoding="utf-8")


def took_part(*days_ago: float) -> None:
    """Released participations at these ages, recorded as the sync client records them."""
    with ProfileStore.open() as store:
        ledger = StoreLedger(store)
        for age in days_ago:
            moment = time.time() - age * DAY
            ledger.record(LedgerEntry(moment, 1, "done", 100, 100, 0.5, Z * math.sqrt(2.0), Z, 943, True, 0.0, 1e-5))


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- install, status, remove --------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CLI installs systemd units on Linux only")
def test_schedule_install_status_remove_writes_a_systemd_user_timer_into_the_given_folder(tmp_path: Path) -> None:
    folder = tmp_path / "systemd-user"
    code, stdout, stderr = invoke("schedule", "install", "--every", "6h")
    assert code == 0, stderr
    service, timer = folder / "persona-sync.service", folder / "persona-sync.timer"
    assert str(service) in stdout and "not activated" in stderr  # a temporary folder is never activated
    unit = service.read_text(encoding="utf-8")
    assert f"ExecStart={sys.executable} -m agent.cli.main sync --if-eligible\n" in unit
    assert f"Environment=PERSONA_HOME={paths.persona_home()}\n" in unit and "PASSPHRASE" not in unit
    text = timer.read_text(encoding="utf-8")
    assert "OnCalendar=*-*-* 00/6:00:00\n" in text and "Persistent=true\n" in text
    assert "RandomizedDelaySec=2160s\n" in text and "WantedBy=timers.target" in text

    code, stdout, _ = invoke("schedule", "status")
    assert code == 0 and "Schedule: every 6h (systemd)" in stdout and "Last check: none yet" in stdout
    tick = schedule.next_calendar_tick(6 * 3600, time.time())
    assert f"next window {time.strftime('%Y-%m-%d %H:%M', time.localtime(tick))}" in stdout

    code, stdout, _ = invoke("schedule", "remove")
    assert code == 0 and str(timer) in stdout
    assert not service.exists() and not timer.exists()
    code, stdout, _ = invoke("schedule", "status")
    assert code == 0 and "Schedule: not installed" in stdout


def test_a_period_off_the_calendar_runs_every_period_after_the_last_run(tmp_path: Path) -> None:
    report = schedule.install(parse_duration("5h"), platform="linux")
    timer = (tmp_path / "systemd-user" / "persona-sync.timer").read_text(encoding="utf-8")
    assert "OnUnitActiveSec=18000s\n" in timer and "OnBootSec=15min\n" in timer and "OnCalendar" not in timer
    assert report.period == 18_000
    with ProfileStore.open() as store:
        before = schedule.status(store, platform="linux")
        assert before.installed and before.period == 18_000 and before.next_window is None  # never ran: next tick
        check_eligibility(store, prefs=SchedulePreferences(), probes=ON_BATTERY)
        last = store.eligibility_checks(1)[0]["ts"]
        after = schedule.status(store, platform="linux")
    assert after.next_window == pytest.approx(last + 18_000)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_itself_accepts_the_units_and_the_calendar(tmp_path: Path) -> None:
    schedule.install(parse_duration("6h"), platform="linux")
    folder = tmp_path / "systemd-user"
    files = [str(folder / "persona-sync.timer"), str(folder / "persona-sync.service")]
    verified = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    expressions = [schedule.calendar_for(parse_duration(p)) for p in ("30m", "6h", "1d", "1w")]
    calendar = subprocess.run(
        ["systemd-analyze", "calendar", *[e for e in expressions if e]], capture_output=True, text=True, check=False
    )
    assert calendar.returncode == 0 and calendar.stdout.count("Next elapse") == 4, calendar.stderr


def test_install_status_remove_writes_a_launchd_agent_into_the_given_folder(tmp_path: Path) -> None:
    report = schedule.install(parse_duration("1d"), platform="darwin")
    plist = tmp_path / "LaunchAgents" / "org.persona.sync.plist"
    assert report.files == [plist] and any("not activated" in note for note in report.notes)
    with plist.open("rb") as handle:
        body = plistlib.load(handle)
    assert body["ProgramArguments"] == [sys.executable, "-m", "agent.cli.main", "sync", "--if-eligible"]
    assert body["StartInterval"] == 86_400 and body["ProcessType"] == "Background" and body["LowPriorityIO"]
    found = schedule.status(None, platform="darwin")
    assert found.installed and found.period == 86_400 and "every 1d (launchd)" in found.line()
    removed = schedule.remove(platform="darwin")
    assert removed.files == [plist] and not plist.exists()
    assert not schedule.status(None, platform="darwin").installed


def test_an_unknown_platform_gets_a_clear_message() -> None:
    with pytest.raises(ScheduleError, match="knows systemd \\(Linux\\) and launchd \\(macOS\\), not 'win32'"):
        schedule.install(3600, platform="win32")


# -- durations and --every ----------------------------------------------------------------------------------------
def test_durations_parse_and_bad_ones_are_refused_with_the_reason() -> None:
    assert [parse_duration(t) for t in ("30m", "6h", "1d", "1h30m", "2w", " 90 s ")] == [
        1800,
        21_600,
        86_400,
        5400,
        1_209_600,
        90,
    ]
    for bad in ("6x", "", "h", "-1h", "six hours"):
        with pytest.raises(ScheduleError, match="is not a duration"):
            parse_duration(bad)
    with pytest.raises(ScheduleError, match="too short"):
        parse_duration("10s")
    code, _, stderr = invoke("sync", "--every", "6x", "--coordinator", nowhere())
    assert code == 2 and "'6x' is not a duration" in stderr and "e.g. 30m, 6h, 1d" in stderr
    code, _, stderr = invoke("schedule", "install", "--every", "soon")
    assert code == 2 and "'soon' is not a duration" in stderr


def test_every_runs_now_then_each_period_with_jitter_until_interrupted() -> None:
    calls: list[str] = []
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_periodically(3600, lambda: calls.append("run"), sleep=sleep)
    assert calls == ["run"] * 3
    assert all(3240 <= w <= 3960 for w in waits) and len(set(waits)) == 3


def test_every_sleeps_until_the_coordinators_come_back_window_when_it_gives_one() -> None:
    waits: list[float] = []
    come_back = [time.time() + 120.0, None]  # the first run is paced ("come back in 2 minutes"), the second is not

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt

    before = time.time()
    with pytest.raises(KeyboardInterrupt):
        run_periodically(3600, lambda: come_back.pop(0), sleep=sleep)
    after = time.time()
    assert 120.0 - (after - before) <= waits[0] <= 120.0  # until the window, not the period
    assert 3240 <= waits[1] <= 3960  # then the period again


def test_sync_every_skips_when_ineligible_and_ctrl_c_exits_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    config("[schedule]\nmetered = true\nmax_load_per_core = inf\n")

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    code, stdout, stderr = invoke("sync", "--every", "1h", "--coordinator", nowhere())
    assert code == 0, stderr
    assert "skipped: metered network ([schedule] metered = true)" in stdout
    assert "trying a sync every 1h" in stderr and "stopped" in stderr and "unreachable" not in stderr


# -- eligibility --------------------------------------------------------------------------------------------------
def test_an_ineligible_agent_on_battery_does_not_check_in_and_records_why(monkeypatch: pytest.MonkeyPatch) -> None:
    niced: list[int] = []

    def nice(increment: int) -> int:
        niced.append(increment)
        return increment

    monkeypatch.setattr("os.nice", nice)
    url = nowhere()
    with ProfileStore.open() as store:
        run = scheduled_sync(store, url, timeout=5, probes=ON_BATTERY)
        assert run.summary is None and not run.eligibility.eligible
        assert run.eligibility.line() == "skipped: on battery ([schedule] require_ac = true)"
        assert store.egress_entries() == [] and niced == []  # nothing sent, nothing recorded as sent, no training
        row = store.eligibility_checks(1)[0]
        assert not row["eligible"] and row["outcome"] == "skipped"
        assert {c["name"]: c["ok"] for c in row["checks"]} == {
            "power": False,
            "idle": True,
            "network": True,
            "spacing": True,
            "budget": True,
        }
        # the control: the same run on AC power goes on to contact the coordinator (and fails: nothing listens)
        with pytest.raises(SyncError, match="unreachable"):
            scheduled_sync(store, url, timeout=5, probes=ON_AC_IDLE)
        assert niced == [10]
        row = store.eligibility_checks(1)[0]
        assert (
            row["eligible"]
            and row["outcome"].startswith("failed: The coordinator at")
            and "unreachable" in row["outcome"]
        )
    code, stdout, _ = invoke("schedule", "status")
    assert code == 0 and "unreachable" in stdout and "✓ power: on AC power" in stdout


def test_sync_if_eligible_prints_skipped_and_exits_0_without_contacting_the_coordinator() -> None:
    config("[schedule]\nmetered = true\nmax_load_per_core = inf\n")
    code, stdout, _ = invoke("sync", "--if-eligible", "--coordinator", nowhere())
    assert code == 0 and stdout.strip() == "skipped: metered network ([schedule] metered = true)"
    with ProfileStore.open() as store:
        assert store.egress_entries() == []
        assert store.eligibility_checks(5)[0]["outcome"] == "skipped"


def test_min_days_between_blocks_a_second_participation() -> None:
    took_part(2.0)
    with ProfileStore.open() as store:
        blocked = check_eligibility(store, prefs=SchedulePreferences(), probes=ON_AC_IDLE)
        assert not blocked.eligible
        assert blocked.reasons[0].startswith("took part 2.0 days ago; at most once per 7 days")
        allowed = check_eligibility(store, prefs=SchedulePreferences(min_days_between=1.5), probes=ON_AC_IDLE)
        assert allowed.eligible and "last participation 2.0 days ago" in allowed.line()


def test_a_spent_budget_blocks_participation() -> None:
    budget = (gaussian_epsilon([Z] * 3) + gaussian_epsilon([Z] * 4)) / 2  # three rounds fit, a fourth does not
    config(f"[sync]\nepsilon_budget = {budget!r}\n")
    took_part(300, 100, 50)
    with ProfileStore.open() as store:
        result = check_eligibility(store, prefs=SchedulePreferences(), probes=ON_AC_IDLE)
        assert [c.name for c in result.checks if not c.ok] == ["budget"]
        assert result.reasons[0].startswith(f"privacy budget spent: ε this year is {gaussian_epsilon([Z] * 3):.3g}")


def test_the_idle_check_and_its_switch() -> None:
    busy = Probes(power=lambda: None, load_per_core=lambda: 0.9)
    with ProfileStore.open() as store:
        result = check_eligibility(store, prefs=SchedulePreferences(), probes=busy, record=False)
        assert result.reasons == ["busy (load 0.90 per core ≥ 0.5, [schedule] max_load_per_core)"]
        assert "power source unknown (treated as AC)" in [c.reason for c in result.checks]
        off = check_eligibility(store, prefs=SchedulePreferences(max_load_per_core=math.inf), probes=busy, record=False)
        assert off.eligible
        assert store.eligibility_checks() == []  # record=False records nothing


def test_the_real_probes_run_on_this_machine() -> None:
    assert on_ac_power() in (True, False, None)
    load = load_per_core()
    assert load is None or load >= 0.0
    with ProfileStore.open() as store:
        result = check_eligibility(store)  # this machine, the default settings
        assert len(result.checks) == 5 and result.record_id == store.eligibility_checks(1)[0]["id"]


def test_linux_power_supply_folders_are_read(tmp_path: Path) -> None:
    def supply(name: str, **files: str) -> None:
        (tmp_path / name).mkdir(parents=True)
        for key, value in files.items():
            (tmp_path / name / key).write_text(value + "\n", encoding="utf-8")

    assert linux_on_ac(tmp_path) is None  # a desktop or a container: nothing to read
    supply("BAT0", type="Battery", status="Discharging")
    assert linux_on_ac(tmp_path) is False
    supply("AC", type="Mains", online="0")
    assert linux_on_ac(tmp_path) is False
    (tmp_path / "AC" / "online").write_text("1\n", encoding="utf-8")
    assert linux_on_ac(tmp_path) is True


def test_the_schedule_table_of_the_config_file_is_read_and_checked() -> None:
    config("[schedule]\nrequire_ac = false\nmin_days_between = 3\nmax_load_per_core = inf\n")
    assert load_settings().schedule == SchedulePreferences(
        require_ac=False, min_days_between=3.0, max_load_per_core=math.inf
    )
    config("[schedule]\nrequire_ac = 'yes'\n")
    code, _, stderr = invoke("sync", "--if-eligible", "--coordinator", nowhere())
    assert code == 1 and "schedule.require_ac in" in stderr and "must be true or false, not 'yes'" in stderr
    config("[schedule]\nevery = '6h'\n")
    code, _, stderr = invoke("sync", "--if-eligible", "--coordinator", nowhere())
    assert code == 1 and "must be a table with only max_load_per_core, metered, min_days_between" in stderr
    with ProfileStore.open() as store:
        assert store.eligibility_checks() == []  # a bad config stops before anything is checked or recorded


def test_sync_if_eligible_on_an_eligible_machine_lowers_its_priority_and_checks_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config("[schedule]\nrequire_ac = false\nmax_load_per_core = inf\n")  # eligible whatever this machine is doing
    niced: list[int] = []

    def nice(increment: int) -> int:
        niced.append(increment)
        return increment

    monkeypatch.setattr("os.nice", nice)
    code, _, stderr = invoke("sync", "--if-eligible", "--coordinator", nowhere())
    assert code == 1 and "unreachable" in stderr and niced == [10]
    with ProfileStore.open() as store:
        row = store.eligibility_checks(1)[0]
    assert row["eligible"] and "unreachable" in row["outcome"]
