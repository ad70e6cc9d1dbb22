"""The Persona TUI app (Textual): it owns the store and the profile, and wires the screens to the engine.

The app loads the profile store and the :class:`agent.engine.profile.Profile`, hands the profile to each screen it
shows, and acts on the :mod:`agent.tui.messages` screens post (feedback recorded, reset, sync now, an error).
Everything slow runs in thread workers (loading the catalog and vectors, embedding a query, training, sync); training
itself runs in a separate process (:mod:`agent.engine.worker`), so torch is never imported here. Errors show as
notifications or a modal. "Sync now" goes through the ``sync`` seam of the constructor (the engine's by default).

Start-up: only what the first screen needs is imported with this module (the Suggestions, Loading and modal
screens); the Onboarding, Profile and Sync screens, with their charts, are imported when first shown, and the
Suggestions screen imports the language model's rerank only when the blend weight in force turns it on
(``scripts/bench_tui.py`` times the first paint; ``tests/agent/test_tui.py`` checks what it has imported).

Every binding has an id; ``[keys]`` in ``config.toml`` remaps them (see :mod:`agent.settings`). The command
palette (Ctrl+P) mirrors the CLI verbs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.widgets import ProgressBar

from agent.engine.jobs import run_training
from agent.engine.profile import Profile
from agent.errors import WrongPassphraseError
from agent.settings import Settings, coordinator_url
from agent.store.files import reset_profile
from agent.store.profile_store import ProfileStore
from agent.tui.messages import (
    ErrorRaised,
    FeedbackRecorded,
    OnboardingDone,
    ResetRequested,
    SyncRequested,
)
from agent.tui.screens.loading import LoadingScreen
from agent.tui.screens.modals import ConfirmScreen, ErrorScreen, PassphraseScreen
from agent.tui.screens.suggestions import SuggestionsScreen
from models.errors import PersonaError

if TYPE_CHECKING:
    from agent.engine.sync import ProgressFn


class SyncHook(Protocol):
    """The sync seam: runs one round for ``store``, reporting ``progress(fraction, text)``; returns its summary."""

    def __call__(
        self, store: ProfileStore, progress: ProgressFn, *, passphrase: str | None = None
    ) -> dict[str, Any]: ...


def engine_sync(store: ProfileStore, progress: ProgressFn, *, passphrase: str | None = None) -> dict[str, Any]:
    """The engine's "sync now" (:func:`agent.engine.sync.tui_sync`): one round with the configured coordinator."""
    from agent.engine.sync import tui_sync  # reason: the sync client loads dp_accounting and scipy (seconds)

    return tui_sync(store, progress, passphrase=passphrase)


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

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        passphrase: str | None = None,
        sync: SyncHook | None = engine_sync,
        coordinator: Callable[[], str | None] = coordinator_url,
    ) -> None:
        """``sync`` runs "sync now" (None: this build has no sync client); ``coordinator()`` is the configured URL."""
        super().__init__()
        self.settings = settings or Settings()
        self.passphrase = passphrase
        self.sync_hook = sync
        self.coordinator = coordinator
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
            self.switch_screen(SuggestionsScreen(profile, self.settings, report_painted=self.suggestions_painted))
        else:
            self.show_onboarding()

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- navigation ------------------------------------------------------------------------------------------
    def _loaded_profile(self) -> Profile | None:
        if self.profile is None:
            self.notify("Still loading…", severity="warning")
        return self.profile

    def show_suggestions(self) -> None:
        """Go to the Suggestions screen."""
        if profile := self._loaded_profile():
            self.switch_screen(SuggestionsScreen(profile, self.settings, report_painted=self.suggestions_painted))

    def show_profile(self) -> None:
        """Go to the Profile screen."""
        from agent.tui.screens.profile import ProfileScreen  # reason: off the start-up path (module docstring)

        if profile := self._loaded_profile():
            self.switch_screen(ProfileScreen(profile))

    def show_sync(self) -> None:
        """Go to the Sync screen."""
        from agent.tui.screens.sync import SyncScreen  # reason: off the start-up path (module docstring)

        if profile := self._loaded_profile():
            self.switch_screen(SyncScreen(profile, self.sync_client_state))

    def show_onboarding(self) -> None:
        """Go to the Onboarding (search and like) screen."""
        from agent.tui.screens.onboarding import OnboardingScreen  # reason: off the start-up path (module docstring)

        if profile := self._loaded_profile():
            self.switch_screen(OnboardingScreen(profile))

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

    @on(OnboardingDone)
    def _onboarding_done(self) -> None:
        if self.settings.retrain_after_feedback:
            self.start_training()
        self.show_suggestions()

    # -- feedback and training -------------------------------------------------------------------------------
    def rate_selected(self, kind: str) -> None:
        """Like or dislike the suggestion under the cursor (from the command palette)."""
        screen = self.screen
        if isinstance(screen, SuggestionsScreen):
            screen.action_like() if kind == "like" else screen.action_dislike()
        else:
            self.notify("Open the Suggestions screen and select an item first.", severity="warning")

    @on(FeedbackRecorded)
    def _feedback_recorded(self, message: FeedbackRecorded) -> None:
        if message.always_retrain or self.settings.retrain_after_feedback:
            self.start_training()

    def start_training(self) -> None:
        """Retrain the private adapter in a worker process (the UI stays responsive)."""
        self._train()

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def _train(self) -> None:
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
        from agent.tui.screens.profile import ProfileScreen  # reason: off the start-up path (module docstring)

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
    @on(ResetRequested)
    def _reset_requested(self) -> None:
        self.ask_reset()

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
    def sync_client_state(self) -> str:
        """One line on whether "sync now" can run."""
        if self.sync_hook is None:
            return "Coordinator not configured: this build has no sync client hooked into the app yet."
        url = self._coordinator_url()
        if url is None:
            return "Coordinator not configured: set coordinator_url in config.toml or PERSONA_COORDINATOR_URL."
        return f"Coordinator: {url} (press n to sync now)"

    def _coordinator_url(self) -> str | None:
        try:
            return self.coordinator()
        except PersonaError:
            return None

    @on(SyncRequested)
    def _sync_requested(self, message: SyncRequested) -> None:
        if self.sync_hook is None:
            self.notify("Coordinator not configured: sync is not available in this build.", severity="warning")
            return
        if self._coordinator_url() is None:
            self.notify(
                "Coordinator not configured: set coordinator_url in config.toml or PERSONA_COORDINATOR_URL.",
                severity="warning",
            )
            return
        self._sync(self.sync_hook, message.bar)

    @work(thread=True, exclusive=True, group="sync", exit_on_error=False)
    def _sync(self, hook: SyncHook, bar: ProgressBar) -> None:
        assert self.store is not None

        def progress(fraction: float, _text: str) -> None:
            self.call_from_thread(bar.update, progress=100.0 * fraction)

        try:
            result = hook(self.store, progress, passphrase=self.passphrase if self.store.encrypted else None)
        except Exception as error:
            self.call_from_thread(self.report, error)
            return
        self.call_from_thread(self.notify, f"Sync done: {result}", timeout=4)
        from agent.tui.screens.sync import SyncScreen  # reason: off the start-up path (module docstring)

        screen = self.screen
        if isinstance(screen, SyncScreen):
            self.call_from_thread(screen.reload)

    # -- errors ----------------------------------------------------------------------------------------------
    @on(ErrorRaised)
    def _error_raised(self, message: ErrorRaised) -> None:
        self.report(message.error)

    def report(self, error: BaseException) -> None:
        """Show an error: a known one as a modal with its hint, anything else as a notification (no traceback)."""
        if isinstance(error, PersonaError):
            self.push_screen(ErrorScreen(error.title, error.message, error.hint))
        else:
            self.notify(f"{type(error).__name__}: {error}", title="Unexpected error", severity="error", timeout=8)
