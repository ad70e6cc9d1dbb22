"""The TUI's pictures at a pinned size: the Profile screen's diverging bar chart, the Sync screen's bytes per round
and ε this year against the budget (with the schedule line), and onboarding's "liked so far"."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest
from textual.pilot import Pilot
from typer.testing import CliRunner

from agent.cli.main import app
from agent.engine import schedule
from agent.engine.schedule import parse_duration
from agent.settings import Settings
from agent.store.profile_store import ProfileStore
from agent.tui.app import PersonaApp
from agent.tui.screens.onboarding import OnboardingScreen
from agent.tui.screens.profile import ProfileScreen
from agent.tui.screens.suggestions import SuggestionsScreen
from agent.tui.screens.sync import SyncScreen

pytestmark = [pytest.mark.usefixtures("warm_embedding_cache")]
SIZE = (100, 40)


async def settle(pilot: Pilot[None], app: PersonaApp, screen: type, selector: str) -> None:
    """Let the app run until ``screen`` is shown with ``selector`` composed (bounded by steps, not by time)."""
    for _ in range(2400):
        if isinstance(app.screen, screen) and app.screen.query(selector):
            await pilot.pause()
            return
        await pilot.pause(0.025)
    raise AssertionError(f"{screen.__name__} never showed {selector}; on {app.screen!r}")


def svg_lines(svg: str) -> list[str]:
    """The text rows of an exported SVG screenshot (each row is one <text> run per style; joined per y)."""
    rows: dict[str, str] = {}
    for y, text in re.findall(r'<text [^>]*y="([\d.]+)"[^>]*>([^<]*)</text>', svg):
        rows[y] = rows.get(y, "") + html.unescape(text).replace("\xa0", " ")
    return [rows[y] for y in sorted(rows, key=float)]


def seed(likes: list[str], dislikes: list[str]) -> None:
    with ProfileStore.open() as store:
        rows = [("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(likes)]
        rows += [("ml-100k", item, "dislike", 1.0, 10 + t, "test") for t, item in enumerate(dislikes)]
        store.add_interactions(rows)


@pytest.mark.asyncio
async def test_profile_screen_draws_affinities_right_and_aversions_left_of_the_axis(tmp_path: Path) -> None:
    seed(["1", "95", "71"], ["288", "200"])  # Toy Story, Aladdin, The Lion King; Scream, The Shining
    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, SuggestionsScreen, "DataTable")
        await pilot.press("p")
        await settle(pilot, app, ProfileScreen, "#lift-chart")
        body = app.profile.inspect() if app.profile else {}
        lines = svg_lines(app.export_screenshot())
    top, bottom = body["affinities"][0], body["aversions"][0]
    assert any("tag lifts from the private adapter" in line for line in lines)
    liked = next(line for line in lines if f"{top['lift']:+.2f}σ" in line)
    disliked = next(line for line in lines if f"{bottom['lift']:+.2f}σ" in line)
    assert top["tag"] in liked and "█" in liked.split("│")[1] and "█" not in liked.split("│")[0]
    assert bottom["tag"] in disliked and "█" in disliked.split("│")[0]


@pytest.mark.asyncio
async def test_onboarding_lists_what_was_liked_before_it_opened() -> None:
    seed(["1", "95"], [])
    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, SuggestionsScreen, "DataTable")
        await pilot.press("o")
        await settle(pilot, app, OnboardingScreen, "#picked")
        text = " ".join(svg_lines(app.export_screenshot()))
    assert "✓ Liked 2: Toy Story (1995); Aladdin (1992)" in text


@pytest.mark.asyncio
async def test_sync_screen_draws_bytes_sent_per_round() -> None:
    seed(["1", "95", "71"], [])
    with ProfileStore.open() as store:
        for round_id, sent in ((7, 5120), (8, 10240)):
            store.append_egress(
                {"round": round_id, "bytes_sent": sent, "bytes_received": 70000, "epsilon": 1.5, "status": "done"}
            )
    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, SuggestionsScreen, "DataTable")
        await pilot.press("y")
        await settle(pilot, app, SyncScreen, "#egress-chart")
        lines = svg_lines(app.export_screenshot())
    seven = next(line for line in lines if "round 7" in line and "5,120 B · ε 1.5" in line)
    eight = next(line for line in lines if "round 8" in line and "10,240 B · ε 1.5" in line)
    assert 0 < seven.count("█") < eight.count("█")


def participations(*ages_and_epsilons: tuple[float, float]) -> None:
    """Ledger rows of released rounds ``age`` days ago with ε this year ``epsilon`` recorded after each."""
    with ProfileStore.open() as store:
        for age, eps in ages_and_epsilons:
            store.append_egress(
                {"ts": time.time() - age * 86_400, "bytes_sent": 4096, "epsilon": eps, "status": "done"}
            )


def test_inspect_plot_draws_epsilon_this_year_against_the_budget_under_the_lifts() -> None:
    seed(["1", "95", "71"], ["288"])
    participations((200, 1.5), (100, 2.5), (10, 3.5))
    result = CliRunner().invoke(app, ["inspect", "--plot"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "ε this year at each participation, against your yearly budget (┄)" in lines
    budget = next(line for line in lines if "┄┄┄" in line)
    assert budget.rstrip().endswith("budget 8") and budget.lstrip().startswith("8│")
    assert any("now 3.5" in line for line in lines) and lines[-1].rstrip().endswith("today")
    body = json.loads(CliRunner().invoke(app, ["inspect", "--json"]).stdout)
    assert [p["epsilon"] for p in body["epsilon_history"]] == [1.5, 2.5, 3.5]


@pytest.mark.asyncio
async def test_sync_screen_shows_the_schedule_the_last_skip_and_epsilon_against_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_SYSTEMD_USER_DIR", str(tmp_path / "systemd-user"))
    schedule.install(parse_duration("6h"), platform="linux")
    seed(["1", "95", "71"], [])
    participations((200, 1.5), (100, 2.5), (10, 3.5))
    with ProfileStore.open() as store:
        check = store.record_eligibility(
            ts=time.time(), eligible=False, checks=[{"name": "power", "ok": False, "reason": "on battery"}]
        )
        store.set_eligibility_outcome(check, "skipped")
    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, SuggestionsScreen, "DataTable")
        await pilot.press("y")
        await settle(pilot, app, SyncScreen, "#epsilon-chart")
        lines = svg_lines(app.export_screenshot())
    text = "\n".join(lines)
    assert "Schedule: every 6h (systemd) · next window" in text
    assert "Last scheduled run:" in text and "skipped: on battery" in text
    budget = next(line for line in lines if "┄┄┄" in line)  # the dashed budget line across the year
    assert budget.rstrip().endswith("budget 8") and budget.lstrip().startswith("8│"), text
    bars = [line for line in lines if "│" in line and ("█" in line or "▄" in line)]
    assert len(bars) >= 2 and any("now 3.5" in line for line in lines)
    assert "today" in text
