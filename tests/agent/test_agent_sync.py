"""`agent sync` and the TUI's sync hook against a real coordinator on 127.0.0.1 (uvicorn in a thread, SQLite in a
temporary folder), with simulated agents (``sync.client.http_client``) filling the rest of the cohort, and the real
training worker process.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from agent.engine.profile import Profile
from agent.engine.sync import IDENTITY_FILE, tui_sync
from agent.store.profile_store import ProfileStore
from sync.client.http_client import RoundResult
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import free_port, serve_in_thread
from sync.coordinator.service import Coordinator
from sync.protocol.wire import API
from tests.sync.helpers import cohort_in_background, noise

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")
COHORT = 3


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _no_configured_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_COORDINATOR_URL", raising=False)


@pytest.fixture(autouse=True)
def _no_privacy_budget() -> None:
    """These rounds run at ML-100K's σ, which the default budget refuses (tests/agent/test_privacy_budget.py)."""
    paths.config_dir().mkdir(parents=True, exist_ok=True)
    (paths.config_dir() / "config.toml").write_text("[sync]\nepsilon_budget = inf\n", encoding="utf-8")


def _profile_with_likes() -> np.ndarray[Any, np.dtype[np.float32]]:
    """A profile with a few likes; returns its shared vector (what the coordinator starts from)."""
    for item in ("Toy Story", "Aladdin", "The Lion King (1994)", "Beauty and the Beast"):
        code, _, stderr = invoke("rate", item, "like", "--no-train")
        assert code == 0, stderr
    with ProfileStore.open() as store:
        return Profile.load(store).shared.to_vector()


@pytest.fixture
def coordinator_url(tmp_path: Path) -> Iterator[tuple[str, np.ndarray[Any, np.dtype[np.float32]]]]:
    initial = _profile_with_likes()
    config = CoordinatorConfig(
        db=tmp_path / "coordinator.sqlite3",
        vector_size=initial.size,
        min_cohort=COHORT,
        target_cohort=COHORT,
        over_selection=0.0,
        advertise_s=90.0,
        round_interval_s=0.0,  # back to back: a round 0 nobody joined in time is followed at once by round 1
        share_keys_s=60.0,
        masked_input_s=60.0,
        unmask_s=60.0,
        weight_cap=4.0,  # every agent gets weight 1: the noised total weight (3 ± 0.5) stays positive
    )
    with serve_in_thread(Coordinator(config, initial=initial)) as url:
        yield url, initial


def _simulated_agents(url: str, size: int) -> AbstractContextManager[list[RoundResult | BaseException]]:
    """The rest of the cohort (``COHORT`` − 1 simulated agents) taking part in the next round, in a background thread
    while the ``with`` block runs this profile's sync."""
    return cohort_in_background(url, noise(COHORT - 1, size, 1e-3, 1), 20.0, timeout=150.0)


def _published(url: str) -> tuple[int, np.ndarray[Any, np.dtype[np.float32]]]:
    meta = httpx.get(f"{url}{API}/shared").json()
    blob = httpx.get(f"{url}{API}/shared/{meta['version']}").content
    assert hashlib.sha256(blob).hexdigest() == meta["sha256"]
    return int(meta["version"]), np.frombuffer(blob, dtype="<f4")


def _check_applied(url: str, initial: np.ndarray[Any, np.dtype[np.float32]]) -> None:
    version, vector = _published(url)
    assert version == 1
    with ProfileStore.open() as store:
        stored = store.load_shared()
        assert stored is not None
        shared, meta = stored
        assert meta["version"] == "federation-v1" and meta["published_version"] == 1
        np.testing.assert_array_equal(shared.to_vector(), vector)  # exactly what the coordinator published
        assert not np.array_equal(shared.to_vector(), initial)
        private = store.load_private()
        assert private is not None and float(np.linalg.norm(private.user_vector)) > 0
        (row,) = store.egress_entries()
        assert row["round"] is not None and row["cohort"] == COHORT and row["bytes_sent"] > 0
        assert row["epsilon"] > 0 and row["released"]
        key = store.folder / IDENTITY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_agent_sync_takes_part_in_a_round_and_applies_the_new_shared_adapter(
    coordinator_url: tuple[str, np.ndarray[Any, np.dtype[np.float32]]],
) -> None:
    url, initial = coordinator_url
    with _simulated_agents(url, initial.size) as results:
        code, stdout, stderr = invoke("sync", "--coordinator", url, "--timeout", "150", "--json")
    assert code == 0, stderr
    body = json.loads(stdout)
    assert set(body) >= {"round", "version", "bytes_up", "bytes_down", "C", "sigma", "cohort", "epsilon"}
    assert body["version"] == 1 and body["cohort"] == COHORT and body["n_examples"] == 4
    assert body["bytes_up"] > 0 and body["bytes_down"] > 0 and body["epsilon"] > 0
    assert all(isinstance(r, RoundResult) and r.status == "done" for r in results), results
    _check_applied(url, initial)


def test_tui_sync_hook_runs_the_same_sync_with_progress(
    coordinator_url: tuple[str, np.ndarray[Any, np.dtype[np.float32]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, initial = coordinator_url
    monkeypatch.setenv("PERSONA_COORDINATOR_URL", url)
    seen: list[tuple[float, str]] = []
    with _simulated_agents(url, initial.size) as results, ProfileStore.open() as store:
        summary = tui_sync(store, lambda fraction, text: seen.append((fraction, text)))
    assert summary["version"] == 1 and summary["cohort"] == COHORT
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 6
    assert any("masked shared delta" in text for _, text in seen)
    assert all(isinstance(r, RoundResult) and r.status == "done" for r in results), results
    _check_applied(url, initial)


def test_agent_sync_with_an_unreachable_coordinator_fails_cleanly_and_applies_nothing() -> None:
    _profile_with_likes()
    with ProfileStore.open() as store:
        before = store.adapter_record("shared_first_stage")
    code, stdout, stderr = invoke("sync", "--coordinator", f"http://127.0.0.1:{free_port()}", "--timeout", "5")
    assert code == 1 and stdout == ""
    assert "unreachable" in stderr
    with ProfileStore.open() as store:
        assert store.adapter_record("shared_first_stage") == before
        assert store.egress_entries() == []
        assert store.load_private() is None


def test_agent_sync_without_a_configured_coordinator_says_how_to_configure_one() -> None:
    code, _, stderr = invoke("sync")
    assert code == 1
    assert "No coordinator is configured" in stderr and "PERSONA_COORDINATOR_URL" in stderr


def test_agent_sync_that_times_out_applies_nothing_and_says_so(
    coordinator_url: tuple[str, np.ndarray[Any, np.dtype[np.float32]]],
) -> None:
    url, _initial = coordinator_url  # nobody else joins: the round never fills
    with ProfileStore.open() as store:
        before = store.adapter_record("shared_first_stage")
    code, stdout, stderr = invoke("sync", "--coordinator", url, "--timeout", "2")
    assert code == 1 and stdout == ""
    assert "Sync timed out" in stderr or "did not reach" in stderr, stderr
    with ProfileStore.open() as store:
        assert store.adapter_record("shared_first_stage") == before
        assert store.load_private() is None
        (row,) = store.egress_entries()  # what did leave (registration, the advertisement) is on the ledger
        assert row["status"] == "failed" and not row["released"]


@pytest.mark.asyncio
async def test_tui_sync_now_runs_a_round_from_the_sync_screen(
    coordinator_url: tuple[str, np.ndarray[Any, np.dtype[np.float32]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import DataTable, ProgressBar

    from agent.settings import Settings
    from agent.tui.app import PersonaApp
    from agent.tui.screens.suggestions import SuggestionsScreen
    from agent.tui.screens.sync import SyncScreen

    url, initial = coordinator_url
    monkeypatch.setenv("PERSONA_COORDINATOR_URL", url)
    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with app.run_test(size=(100, 30)) as pilot:

        async def wait_for(condition: Any, steps: int = 6000) -> None:
            from agent.tui.screens.modals import ErrorScreen

            for _ in range(steps):
                if isinstance(app.screen, ErrorScreen):  # say what went wrong rather than what is not on screen
                    raise AssertionError(f"{app.screen.title_text}: {app.screen.message}")
                if condition():
                    return
                await pilot.pause(0.025)
            raise AssertionError(f"condition never became true; screen {app.screen!r}")

        await wait_for(lambda: isinstance(app.screen, SuggestionsScreen) and bool(app.screen.suggestions))
        await pilot.press("y")
        await wait_for(lambda: isinstance(app.screen, SyncScreen) and bool(app.screen.query("#ledger")))
        assert url in str(app.screen.query_one("#sync-status").render())
        with _simulated_agents(url, initial.size) as results:
            await pilot.press("n")
            await wait_for(lambda: app.screen.query_one("#ledger", DataTable).row_count == 1)
            await wait_for(lambda: app.screen.query_one("#sync-progress", ProgressBar).progress == 100.0)
    assert all(isinstance(r, RoundResult) and r.status == "done" for r in results), results
    _check_applied(url, initial)
