"""The Persona TUI (Textual): Suggestions, Why, Profile, Sync and Onboarding screens.

The app owns the profile store and the loaded :class:`agent.engine.profile.Profile`. Everything slow runs in thread
workers (loading the catalog and vectors, embedding a query, training, sync); training itself runs in a separate
process (:mod:`agent.engine.worker`), so torch is never imported here. Errors show as notifications or a modal.

Every binding has an id; ``[keys]`` in ``config.toml`` remaps them (see :mod:`agent.settings`). The command
palette (Ctrl+P) mirrors the CLI verbs.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.widgets import ProgressBar

from agent.errors import WrongPassphraseError
from agent.engine.profile import Profile
from agent.settings import Settings
from agent.store.database import ProfileStore, reset_profile
from agent.tui.screens import (
    ConfirmScreen,
    ErrorScreen,
    LoadingScreen,
    OnboardingScreen,
    PassphraseScreen,
    ProfileScreen,
    SuggestionsScreen,
    SyncScreen,
)
from models.errors import PersonaError

SYNC_HOOK_MODULE = "agent.engine.sync"
SYNC_HOOK_NAME = "tui_sync"
"""The sync seam: ``agent.engine.sync.tui_sync(store, progress) -> dict`` runs one round (``progress(fraction, text)``)."""


class PersonaCommands(Provider):
    """Command palette entries, one per CLI verb."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        assert isinstance(app, PersonaApp)
        return [
            ("suggest", "Show suggestions", app.show_suggestions),
            ("rate like", "Like the selected suggestion", partial(app.rate_selected, "like")),
            ("rate dislike", "Dislike the selected suggestion", partial(app.rate_selected, "dislike")),
            ("search", "Search the catalog and like items", app.show_onboarding),
            ("history", "Your history (on the Profile screen)", app.show_profile),
            ("inspect", "Your personality profile", app.show_profile),
            ("forget", "Forget an item (select it in the history on the Profile screen)", app.show_profile),
            ("train", "Retrain the private adapter now", app.start_training),
            ("sync", "Federation status and sync now", app.show_sync),
            ("reset", "Delete the whole profile", app.ask_reset),
        ]

    async def search(self, query: str) -> Hits:
        """Commands matching what was typed."""
        matcher = self.matcher(query)
        for verb, help_text, callback in self._commands():
            score = matcher.match(f"{verb} {help_text}")
            if score > 0:
                yield Hit(score, matcher.highlight(verb), callback, help=help_text)


class PersonaApp(App[None]):
    """Persona's terminal UI."""

    TITLE = "Persona"
    SUB_TITLE = "your taste, on your machine"
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = {*App.COMMANDS, PersonaCommands}
    CSS = """
    #why, #confirm, #error, #passphrase { width: 90; height: auto; max-height: 90%; border: thick $accent;
        background: $surface; padding: 1 2; }
    WhyScreen, ConfirmScreen, ErrorScreen, PassphraseScreen { align: center middle; }
    #why-history { height: auto; max-height: 14; }
    #status, #picked { height: auto; color: $text-muted; padding: 0 1; }
    #welcome { padding: 1 1; }
    .title-bar { background: $primary; color: $text; height: 1; padding: 0 1; }
    #suggestions, #results { height: 1fr; }
    #affinities, #aversions, #history { height: auto; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "suggestions", "Suggestions", id="app.suggestions"),
        Binding("p", "profile", "Profile", id="app.profile"),
        Binding("y", "sync", "Sync", id="app.sync"),
        Binding("o", "onboarding", "Add favourites", id="app.onboarding", show=False),
        Binding("q", "quit", "Quit", id="app.quit"),
    ]

    def __init__(self, *, settings: Settings | None = None, passphrase: str | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.passphrase = passphrase
        self.store: ProfileStore | None = None
        self.profile: Profile | None = None
        self.first_paint: float | None = None
        self.painted = threading.Event()
        self.training = False

    # -- start-up --------------------------------------------------------------------------------------------
    def on_mount(self) -> None:
        if self.settings.keys:
            self.set_keymap(self.settings.keys)
        self.push_screen(LoadingScreen())
        if ProfileStore.is_encrypted_at() and self.passphrase is None:
            self.push_screen(PassphraseScreen(), self._got_passphrase)
        else:
            self._load()

    def _got_passphrase(self, passphrase: str | None) -> None:
        self.passphrase = passphrase or ""
        self._load()

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self) -> None:
        try:
            store = ProfileStore.open(passphrase=self.passphrase)
            profile = Profile.load(store)
        except WrongPassphraseError as error:
            self.passphrase = None
            self.call_from_thread(self.push_screen, PassphraseScreen(error.message), self._got_passphrase)
            return
        except Exception as error:
            self.call_from_thread(self.report, error)
            return
        self.call_from_thread(self._loaded, store, profile)

    def _loaded(self, store: ProfileStore, profile: Profile) -> None:
        profile.query_weight = self.settings.query_weight
        self.store, self.profile = store, profile
        liked, _ = profile.feedback()
        if len(liked):
            self.switch_screen(SuggestionsScreen())
        else:
            self.switch_screen(OnboardingScreen())

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- navigation ------------------------------------------------------------------------------------------
    def _profile_loaded(self) -> bool:
        if self.profile is None:
            self.notify("Still loading…", severity="warning")
            return False
        return True

    def show_suggestions(self) -> None:
        """Go to the Suggestions screen."""
        if self._profile_loaded():
            self.switch_screen(SuggestionsScreen())

    def show_profile(self) -> None:
        """Go to the Profile screen."""
        if self._profile_loaded():
            self.switch_screen(ProfileScreen())

    def show_sync(self) -> None:
        """Go to the Sync screen."""
        if self._profile_loaded():
            self.switch_screen(SyncScreen())

    def show_onboarding(self) -> None:
        """Go to the Onboarding (search and like) screen."""
        if self._profile_loaded():
            self.switch_screen(OnboardingScreen())

    def action_suggestions(self) -> None:
        """Binding: Suggestions screen."""
        self.show_suggestions()

    def action_profile(self) -> None:
        """Binding: Profile screen."""
        self.show_profile()

    def action_sync(self) -> None:
        """Binding: Sync screen."""
        self.show_sync()

    def action_onboarding(self) -> None:
        """Binding: Onboarding screen."""
        self.show_onboarding()

    # -- feedback and training -------------------------------------------------------------------------------
    def rate(self, item: int, kind: str, *, source: str = "tui", train: bool | None = None) -> None:
        """Record like/dislike on catalog item ``item``; retrain in the background when the settings say so."""
        assert self.profile is not None
        catalog = self.profile.catalog
        rating = 5.0 if kind == "like" else 1.0
        self.profile.store.add_interaction(
            catalog.name, catalog.item_ids[item], kind=kind, rating=rating, source=source
        )
        if self.settings.retrain_after_feedback if train is None else train:
            self.start_training()

    def rate_selected(self, kind: str) -> None:
        """Like or dislike the suggestion under the cursor (from the command palette)."""
        screen = self.screen
        if isinstance(screen, SuggestionsScreen):
            screen.action_like() if kind == "like" else screen.action_dislike()
        else:
            self.notify("Open the Suggestions screen and select an item first.", severity="warning")

    def forget(self, item_id: str) -> None:
        """Drop every interaction with ``item_id`` and retrain."""
        assert self.profile is not None
        removed = self.profile.store.forget(self.profile.catalog.name, item_id)
        self.notify(f"Forgot {removed} interaction(s); retraining the private adapter", timeout=3)
        self.start_training()

    def start_training(self) -> None:
        """Retrain the private adapter in a worker process (the UI stays responsive)."""
        self._train()

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def _train(self) -> None:
        from agent.engine.jobs import run_training

        self.training = True
        try:
            result = run_training(passphrase=self.passphrase if self.store and self.store.encrypted else None)
        except Exception as error:
            self.call_from_thread(self.report, error)
            return
        finally:
            self.training = False
        self.call_from_thread(self._trained, result)

    def _trained(self, result: dict[str, Any]) -> None:
        self.notify(
            f"Private adapter retrained ({result['n_examples']} examples, {result['seconds']:.1f} s)", timeout=3
        )
        screen = self.screen
        if isinstance(screen, SuggestionsScreen):
            screen.refresh_suggestions()
        elif isinstance(screen, ProfileScreen):
            screen.reload()

    def suggestions_painted(self) -> None:
        """Called by the Suggestions screen each time it fills its table (the benchmark waits for the first)."""
        if self.first_paint is None:
            self.first_paint = time.perf_counter()
        self.painted.set()

    # -- reset -----------------------------------------------------------------------------------------------
    def ask_reset(self) -> None:
        """Ask for confirmation, then delete the whole profile and start onboarding again."""
        if self.store is None:
            return
        files = self.store.files()
        question = (
            f"Delete your whole profile? These {len(files)} files in {self.store.folder} go, with no way back:\n"
            + "\n".join(f"  {p.relative_to(self.store.folder)}" for p in files[:12])
            + ("\n  …" if len(files) > 12 else "")
        )
        self.push_screen(ConfirmScreen(question), self._reset_confirmed)

    def _reset_confirmed(self, confirmed: bool | None) -> None:
        if not confirmed or self.store is None:
            self.notify("Nothing was deleted.", timeout=2)
            return
        self.store.close()
        deleted = reset_profile(self.store.folder)
        self.store = self.profile = None
        self.passphrase = None
        self.notify(f"Deleted {len(deleted)} files. Starting over.", timeout=3)
        self.switch_screen(LoadingScreen())
        self._load()

    # -- sync ------------------------------------------------------------------------------------------------
    def _sync_hook(self) -> Callable[..., dict[str, Any]] | None:
        try:
            module = importlib.import_module(SYNC_HOOK_MODULE)
        except ImportError:
            return None
        hook = getattr(module, SYNC_HOOK_NAME, None)
        return hook if callable(hook) else None

    def sync_client_state(self) -> str:
        """One line on whether "sync now" can run."""
        if self._sync_hook() is None:
            return "Coordinator not configured: this build has no sync client hooked into the app yet."
        url = self._coordinator_url()
        if url is None:
            return "Coordinator not configured: set coordinator_url in config.toml or PERSONA_COORDINATOR_URL."
        return f"Coordinator: {url} (press n to sync now)"

    def _coordinator_url(self) -> str | None:
        try:
            module = importlib.import_module(SYNC_HOOK_MODULE)
            found = getattr(module, "coordinator_url", lambda: "")()
        except (ImportError, PersonaError):
            return None
        return str(found) if found else None

    def sync_now(self, bar: ProgressBar) -> None:
        """Run one sync round in a worker, updating ``bar``; without a sync client, say so."""
        if self._sync_hook() is None:
            self.notify("Coordinator not configured: sync is not available in this build.", severity="warning")
            return
        if self._coordinator_url() is None:
            self.notify(
                "Coordinator not configured: set coordinator_url in config.toml or PERSONA_COORDINATOR_URL.",
                severity="warning",
            )
            return
        self._sync(bar)

    @work(thread=True, exclusive=True, group="sync", exit_on_error=False)
    def _sync(self, bar: ProgressBar) -> None:
        hook = self._sync_hook()
        assert hook is not None and self.store is not None

        def progress(fraction: float, _text: str) -> None:
            self.call_from_thread(bar.update, progress=100.0 * fraction)

        try:
            result = hook(self.store, progress, passphrase=self.passphrase if self.store.encrypted else None)
        except Exception as error:
            self.call_from_thread(self.report, error)
            return
        self.call_from_thread(self.notify, f"Sync done: {result}", timeout=4)
        screen = self.screen
        if isinstance(screen, SyncScreen):
            self.call_from_thread(screen.reload)

    # -- errors ----------------------------------------------------------------------------------------------
    def report(self, error: BaseException) -> None:
        """Show an error: a known one as a modal with its hint, anything else as a notification (no traceback)."""
        if isinstance(error, PersonaError):
            self.push_screen(ErrorScreen(error.title, error.message, error.hint))
        else:
            self.notify(f"{type(error).__name__}: {error}", title="Unexpected error", severity="error", timeout=8)
