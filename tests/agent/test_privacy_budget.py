"""The yearly privacy budget on the device: `agent sync` with a spent budget does not contact the coordinator and
records why, participations older than 365 days no longer count, and `agent inspect` (+ `--json`) shows ε this year.

The "coordinator" is a free port on 127.0.0.1 with nothing listening: a sync that tried to contact it would fail
with "unreachable" instead (the second test shows it does once the participations have left the window).
"""

from __future__ import annotations

import json
import math
import time

import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from agent.store.egress import StoreLedger
from agent.store.profile_store import ProfileStore
from sync.client.ledger import LedgerEntry
from sync.coordinator.local import free_port
from sync.protocol.privacy import gaussian_epsilon

runner = CliRunner()
DAY = 86_400.0
Z = 6.0  # every participation's noise multiplier, and the next round's (PERSONA_SYNC_SIGMA = Z·√2)
BUDGET = (gaussian_epsilon([Z] * 3) + gaussian_epsilon([Z] * 4)) / 2  # three rounds fit, a fourth does not


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture(autouse=True)
def _noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_SYNC_SIGMA", repr(Z * math.sqrt(2.0)))
    monkeypatch.delenv("PERSONA_COORDINATOR_URL", raising=False)


def _budget(value: float) -> None:
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text(f"[sync]\nepsilon_budget = {value!r}\n", encoding="utf-8")


def _took_part(*days_ago: float) -> None:
    """Released participations at these ages, recorded as the sync client records them."""
    with ProfileStore.open() as store:
        ledger = StoreLedger(store)
        for age in days_ago:
            moment = time.time() - age * DAY
            ledger.record(LedgerEntry(moment, 1, "done", 100, 100, 0.5, Z * math.sqrt(2.0), Z, 943, True, 0.0, 1e-5))


def test_a_spent_budget_stops_the_sync_before_it_contacts_the_coordinator_and_records_why() -> None:
    _budget(BUDGET)
    _took_part(300, 100, 50)
    code, _, stderr = invoke("sync", "--coordinator", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "Privacy budget spent" in stderr and "unreachable" not in stderr
    assert f"ε this year is {gaussian_epsilon([Z] * 3):.3g} of your budget {BUDGET:g}" in stderr
    leaves = time.strftime("%Y-%m-%d", time.localtime(time.time() + 65 * DAY))
    assert f"The oldest participation leaves the window on {leaves}" in stderr
    with ProfileStore.open() as store:
        rows = store.egress_entries()
    assert len(rows) == 4
    skip = rows[-1]
    assert skip["status"] == "skipped" and not skip["released"] and skip["bytes_sent"] == 0
    assert f"of your budget {BUDGET:g}" in skip["note"]


def test_participations_older_than_a_year_do_not_count_against_the_budget() -> None:
    _budget(BUDGET)
    _took_part(500, 400, 366)
    code, _, stderr = invoke("sync", "--coordinator", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "unreachable" in stderr  # it went on to contact the coordinator
    with ProfileStore.open() as store:
        assert all(row["status"] != "skipped" for row in store.egress_entries())


@pytest.mark.usefixtures("warm_embedding_cache")
def test_inspect_shows_epsilon_this_year_against_the_budget() -> None:
    code, _, stderr = invoke("rate", "Toy Story", "like", "--no-train")
    assert code == 0, stderr
    _took_part(400, 20, 10)
    code, stdout, stderr = invoke("inspect", "--json")
    assert code == 0, stderr
    budget = json.loads(stdout)["privacy_budget"]
    assert budget["epsilon_this_year"] == pytest.approx(gaussian_epsilon([Z, Z]))
    assert budget["participations"] == 2 and budget["budget"] == 8.0 and budget["allowed"]
    assert budget["epsilon_after_next"] == pytest.approx(gaussian_epsilon([Z] * 3))
    code, stdout, stderr = invoke("inspect")
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert f"ε this year is {gaussian_epsilon([Z, Z]):.3g} of your budget 8 (δ = 1e-05, 2 rounds" in text


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("[sync]\nepsilon_budget = -1\n", "sync.epsilon_budget in"),
        ('[sync]\nepsilon_budget = "lots"\n', "must be a number > 0"),
        ("[sync]\nbudget = 8\n", "must be a table with only coordinator_ca_file, coordinator_fingerprint, epsilon"),
    ],
)
def test_a_bad_budget_setting_is_a_clear_error(table: str, says: str) -> None:
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text(table, encoding="utf-8")
    code, _, stderr = invoke("sync", "--coordinator", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and says in stderr and "unreachable" not in stderr
