"""The TUI, driven headless with Textual's Pilot against a real store, the real catalog and its real vectors."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, ProgressBar

from agent.settings import Settings
from agent.store.files import profile_files
from agent.store.profile_store import ProfileStore
from agent.tui.app import PersonaApp
from agent.tui.screens.modals import ConfirmScreen, ErrorScreen, PassphraseScreen
from agent.tui.screens.onboarding import OnboardingScreen
from agent.tui.screens.profile import ProfileScreen
from agent.tui.screens.suggestions import SuggestionsScreen
from agent.tui.screens.sync import SyncScreen
from agent.tui.screens.why import WhyScreen

pytestmark = [pytest.mark.usefixtures("warm_embedding_cache")]
SIZE = (100, 30)
ANIMATED = ["1", "95", "71"]  # Toy Story, Aladdin, The Lion King


async def wait_for(pilot: Pilot[None], condition: Callable[[], bool], steps: int = 2400) -> None:
    """Let the app run until ``condition`` holds (bounded by steps, not by a time limit)."""
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.025)
    raise AssertionError(f"condition never became true; screen {pilot.app.screen!r}, focus {pilot.app.focused!r}")


def has(app: PersonaApp, selector: str) -> bool:
    """True once the current screen has composed a widget matching ``selector``."""
    return bool(app.screen.query(selector))


def svg_text(svg: str) -> str:
    """The characters an exported SVG screenshot shows, in document order (spaces restored)."""
    text = "".join(part for part in re.findall(r">([^<]*)<", svg) if part.strip(" \n"))
    return html.unescape(text).replace("\xa0", " ")


def seed(*likes: str) -> None:
    with ProfileStore.open() as store:
        store.add_interactions([("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(likes)])


def no_training() -> Settings:
    return Settings(retrain_after_feedback=False)


def suggested(app: PersonaApp) -> list[str]:
    screen = app.screen
    assert isinstance(screen, SuggestionsScreen)
    return [s.item_id for s in screen.suggestions]


def showing_suggestions(app: PersonaApp) -> Callable[[], bool]:
    """A condition for :func:`wait_for`: the suggestions screen shows at least one suggestion."""
    return lambda: isinstance(app.screen, SuggestionsScreen) and bool(suggested(app))


@pytest.mark.asyncio
async def test_first_run_onboarding_then_three_likes_give_suggestions_that_follow_them() -> None:
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, OnboardingScreen) and has(app, "#search"))
        for title in ("toy story", "aladdin", "lion king"):
            search = app.screen.query_one("#search")
            search.value = ""  # type: ignore[attr-defined]
            search.focus()
            await pilot.press(*title)
            await pilot.press("enter")  # to the results table
            await pilot.press("l")
        with ProfileStore.open() as store:
            assert sorted(i.item_id for i in store.interactions()) == sorted(ANIMATED)
            assert {i.source for i in store.interactions()} == {"onboarding"}
        await pilot.press("ctrl+s")
        await wait_for(pilot, showing_suggestions(app))
        screen = app.screen
        assert isinstance(screen, SuggestionsScreen)
        top = screen.suggestions[:10]
        assert not {s.item_id for s in top} & set(ANIMATED)
        family = [s for s in top if {"Children's", "Animation"} & set(s.tags)]
        assert len(family) >= 5, [s.title for s in top]  # base rate in the catalog is about 8 %
        assert all(s.reason for s in top)


@pytest.mark.asyncio
async def test_like_and_dislike_update_the_store_and_the_next_suggestions() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        first = suggested(app)
        await pilot.press("d")
        await wait_for(pilot, lambda: suggested(app) != first)
        assert first[0] not in suggested(app)
        second = suggested(app)
        await pilot.press("l")
        await wait_for(pilot, lambda: suggested(app) != second)
        assert second[0] not in suggested(app)
    with ProfileStore.open() as store:
        latest = store.latest_feedback("ml-100k")
    assert latest[first[0]].kind == "dislike" and latest[second[0]].kind == "like"


@pytest.mark.asyncio
async def test_why_screen_lists_the_history_behind_a_suggestion() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyScreen) and has(app, "#why-history"))
        table = app.screen.query_one("#why-history", DataTable)
        labels = {str(table.get_row_at(r)[0]) for r in range(table.row_count)}
        assert labels == {"Toy Story (1995)", "Aladdin (1992)", "The Lion King (1994)"}
        await pilot.press("escape")
        assert isinstance(app.screen, SuggestionsScreen)


@pytest.mark.asyncio
async def test_bracketed_text_from_a_catalog_or_a_problem_is_shown_as_written() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        screen = app.screen
        assert isinstance(screen, SuggestionsScreen)
        # an imported catalog's title and a reason may hold brackets: console markup must not eat them
        screen._show([dataclasses.replace(screen.suggestions[0], title="[REC]", reason="[b]x[/b]")], note="[rerank]")
        await pilot.pause()
        shown = svg_text(app.export_screenshot())
        assert "[REC]" in shown and "[b]x[/b]" in shown and "· [rerank]" in shown
        app.push_screen(ErrorScreen("Bad settings", "rerank must be a table: [rerank] with enabled", "see [rerank]"))
        await wait_for(pilot, lambda: has(app, "#error-hint"))
        assert "a table: [rerank] with" in str(app.screen.query_one("#error-message").render())
        assert str(app.screen.query_one("#error-hint").render()) == "see [rerank]"


@pytest.mark.asyncio
async def test_remapped_like_key_from_the_config() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=Settings(retrain_after_feedback=False, keys={"suggestions.like": "k"}))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        chosen = suggested(app)[0]
        await pilot.press("k")
        await wait_for(pilot, lambda: chosen not in suggested(app))
    with ProfileStore.open() as store:
        assert store.latest_feedback("ml-100k")[chosen].kind == "like"


@pytest.mark.asyncio
async def test_like_retrains_the_private_adapter_in_a_worker_process() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=Settings(retrain_after_feedback=True))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("l")
        await wait_for(pilot, lambda: app.profile is not None and app.profile.store.last_training() is not None, 2000)
        assert app.profile is not None and app.profile.store.load_private() is not None


@pytest.mark.asyncio
async def test_profile_screen_reset_needs_confirmation_and_then_deletes_everything() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileScreen) and has(app, "#profile-summary"))
        text = str(app.screen.query_one("#profile-summary").render())
        assert "3 interactions" in text and "3 liked" in text
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and has(app, "#confirm-yes"))
        await pilot.click("#confirm-no")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileScreen))
        assert profile_files()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and has(app, "#confirm-yes"))
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: isinstance(app.screen, OnboardingScreen))
    with ProfileStore.open() as store:
        assert store.interactions() == []


@pytest.mark.asyncio
async def test_sync_screen_without_a_sync_client_shows_the_ledger_and_says_so() -> None:
    seed(*ANIMATED)
    with ProfileStore.open() as store:
        store.append_egress(
            {
                "round": 7,
                "bytes_sent": 5120,
                "bytes_received": 70000,
                "clip": 1.0,
                "sigma": 0.9,
                "cohort": 25,
                "epsilon": 1.5,
                "status": "done",
                "released": True,
                "noise_multiplier": 6.0,  # ε 0.594 at δ 1e-5
                "delta": 1e-5,
            }
        )
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, SyncScreen) and has(app, "#ledger"))
        status = str(app.screen.query_one("#sync-status").render())
        assert "Coordinator not configured" in status and "1 rounds" in status
        budget = app.screen.query_one("#privacy-budget")
        await wait_for(pilot, lambda: "ε this year is 0.594 of your budget 8 " in str(budget.render()))
        ledger = app.screen.query_one("#ledger", DataTable)
        assert ledger.row_count == 1 and str(ledger.get_row_at(0)[1]) == "7"
        await pilot.press("n")  # sync now: a warning, not a crash
        await pilot.pause()
        assert isinstance(app.screen, SyncScreen)


@pytest.mark.asyncio
async def test_sync_now_runs_the_sync_seam_in_a_worker_and_fills_the_progress_bar() -> None:
    seed(*ANIMATED)
    calls: list[str | None] = []

    def fake_sync(
        store: ProfileStore, progress: Callable[[float, str], None], *, passphrase: str | None = None
    ) -> dict[str, Any]:
        calls.append(passphrase)
        progress(0.5, "half way")
        progress(1.0, "done")
        return {"version": 2}

    app = PersonaApp(settings=no_training(), sync=fake_sync, coordinator=lambda: "http://coordinator.test")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, SyncScreen) and has(app, "#sync-progress"))
        status = str(app.screen.query_one("#sync-status").render())
        assert "Coordinator: http://coordinator.test (press n to sync now)" in status
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen.query_one("#sync-progress", ProgressBar).progress == 100.0)
    assert calls == [None]


@pytest.mark.asyncio
async def test_snapshot_of_the_suggestions_screen_at_a_pinned_size() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.pause()
        svg = app.export_screenshot()
        screen = app.screen
        assert isinstance(screen, SuggestionsScreen)
    assert 'viewBox="0 0' in svg
    for text in ("Persona", "title", "reason", "Like", "Dislike", "Why?", "Profile", "Sync"):
        assert text.replace("'", "&#x27;") in svg, text
    assert screen.suggestions[0].title.split()[0] in svg


NOT_AT_FIRST_PAINT = (
    # the language model's rerank: its module, prompts, serving and tokenizers load only when its weight is above 0
    "agent.engine.rerank",
    "models.fm.prompts",
    "models.fm.serving",
    "tokenizers",
    # np.unique imports numpy.ma (~60-80 ms of CPU); the first list's reasons must not need it
    "numpy.ma",
    # the screens a returning user has not opened yet, with their charts
    "agent.tui.screens.onboarding",
    "agent.tui.screens.profile",
    "agent.tui.screens.sync",
    "agent.tui.bars",
)


def test_first_paint_imports_only_what_it_shows_and_the_tui_never_imports_torch(isolated_persona_home: Path) -> None:
    """Issue 15's start-up regression came from work before the first paint that the first screen does not need
    (the rerank's language-model modules with the rerank off); this states it without timing
    (``scripts/bench_tui.py`` times it). The Profile screen still opens (its module loads when shown)."""
    seed(*ANIMATED)
    code = textwrap.dedent(
        f"""\
        import asyncio, json, sys
        from agent.engine.rerank_weight import weight_in_force
        from agent.settings import Settings
        from agent.tui.app import PersonaApp

        async def main() -> None:
            settings = Settings(retrain_after_feedback=False)
            app = PersonaApp(settings=settings)
            async with app.run_test(size=(100, 30)) as pilot:
                for _ in range(6000):
                    if app.painted.is_set():
                        break
                    await pilot.pause(0.01)
                at_paint = sorted(name for name in {NOT_AT_FIRST_PAINT!r} if name in sys.modules)
                await pilot.press("l")
                await pilot.press("p")
                for _ in range(6000):
                    if type(app.screen).__name__ == "ProfileScreen" and app.screen.query("#lift-chart"):
                        break
                    await pilot.pause(0.01)
                profile_shown = type(app.screen).__name__ == "ProfileScreen"
            print(json.dumps({{"rerank_on": weight_in_force(settings.rerank).on, "painted": app.painted.is_set(),
                "at_paint": at_paint, "profile_shown": profile_shown, "torch": "torch" in sys.modules}}))

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["rerank_on"] is False, "the default blend weight is above 0 now: the rerank belongs on the path"
    assert found["painted"] and found["at_paint"] == [], f"imported before the first paint: {found['at_paint']}"
    assert found["profile_shown"] and found["torch"] is False, found


@pytest.mark.asyncio
async def test_command_palette_mirrors_the_cli_verbs() -> None:
    seed(*ANIMATED)
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, showing_suggestions(app))
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: has(app, "CommandInput"))
        await pilot.press(*"inspect")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileScreen) and has(app, "#profile-summary"))


@pytest.mark.asyncio
async def test_encrypted_profile_asks_for_the_passphrase_and_survives_a_wrong_one() -> None:
    with ProfileStore.create_encrypted(None, "open sesame") as store:
        store.add_interactions([("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(ANIMATED)])
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PassphraseScreen) and has(app, "#passphrase-input"))
        await pilot.press(*"wrong", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PassphraseScreen) and has(app, "#passphrase-problem"))
        assert "does not unlock" in str(app.screen.query_one("#passphrase-problem").render())
        await pilot.press(*"open sesame", "enter")
        await wait_for(pilot, showing_suggestions(app))


@pytest.mark.asyncio
async def test_snapshot_of_onboarding_and_profile_screens_at_a_pinned_size() -> None:
    app = PersonaApp(settings=no_training())
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, OnboardingScreen) and has(app, "#results"))
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "search")
        await pilot.press("enter", "l")  # from the search box to the results; like the first listed item
        await pilot.pause()
        welcome = svg_text(app.export_screenshot())
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileScreen) and has(app, "#affinities"))
        await pilot.pause()
        profile = svg_text(app.export_screenshot())
    for text in ("Welcome", "Search titles or genres", "Liked 1:", "Done"):
        assert text in welcome, text
    for text in ("Affinities", "Aversions", "1 interactions", "History", "Forget item", "Reset profile"):
        assert text in profile, text
