"""The TUI's screens: Suggestions, Why, Profile, Sync, Onboarding, and the small modals (confirm, error, passphrase).

Screens read and write through the app (:class:`agent.tui.app.PersonaApp`), which owns the store and the profile;
anything slower than a few milliseconds (loading, training, sync) runs in thread workers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Static

from agent.engine.profile import Suggestion, egress_summary

if TYPE_CHECKING:
    from agent.tui.app import PersonaApp


def title_bar(name: str) -> Static:
    """A one-line title (Textual's Header races with quick screen switches, so a plain Static is used)."""
    return Static(Text.assemble(("Persona", "bold"), " · ", name), classes="title-bar")


def _tags(tags: list[str], limit: int = 3) -> str:
    return ", ".join(tags[:limit])


class PersonaScreen(Screen[None]):
    """Base: typed access to the app."""

    @property
    def persona(self) -> PersonaApp:
        """The running :class:`PersonaApp`."""
        from agent.tui.app import PersonaApp

        assert isinstance(self.app, PersonaApp)
        return self.app


class LoadingScreen(PersonaScreen):
    """Shown while the catalog and its text vectors load."""

    def compose(self) -> ComposeResult:
        yield title_bar("Loading")
        yield Static("Loading your profile and the catalog…", id="loading")
        yield Footer()


class SuggestionsScreen(PersonaScreen):
    """The main screen: suggestions with reasons; like, dislike, skip; a query box."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "like", "Like", id="suggestions.like", tooltip="Like the selected item"),
        Binding("d", "dislike", "Dislike", id="suggestions.dislike", tooltip="Dislike the selected item"),
        Binding("s", "skip", "Skip", id="suggestions.skip", tooltip="Hide the selected item for this session"),
        Binding("w", "why", "Why?", id="suggestions.why", tooltip="Why this suggestion"),
        Binding("slash", "focus_query", "Query", id="suggestions.query", show=False),
        Binding("escape", "clear_query", "Clear query", id="suggestions.clear_query", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.suggestions: list[Suggestion] = []
        self.skipped: set[int] = set()
        self.mood: str | None = None

    def compose(self) -> ComposeResult:
        yield title_bar("Suggestions")
        yield Input(placeholder="Blend a mood into your taste, e.g. light comedy (Enter)", id="query")
        yield DataTable(id="suggestions", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#suggestions", DataTable)
        table.add_columns("title", "year", "tags", "score", "reason")
        table.focus()
        self.refresh_suggestions()

    @property
    def table(self) -> DataTable[Any]:
        """The suggestions table."""
        return self.query_one("#suggestions", DataTable)

    def refresh_suggestions(self) -> None:
        """Recompute the suggestions in a worker."""
        self._compute(self.mood, frozenset(self.skipped))

    @work(thread=True, exclusive=True, group="suggest", exit_on_error=False)
    def _compute(self, query: str | None, skipped: frozenset[int]) -> None:
        """The first stage's list at once; then, when it applies, the language model's rerank of its top k."""
        import numpy as np
        from textual.worker import get_current_worker

        from agent.engine import rerank

        profile = self.persona.profile
        if profile is None:
            return
        settings = self.persona.settings
        n = settings.suggestions
        try:
            skip = rerank.skip_reason(profile, settings.rerank)
            first = profile.suggest(
                n if skip else max(n, settings.rerank.k),
                query=query,
                exclude=np.array(sorted(skipped), dtype=np.int64),
            )
        except Exception as error:  # shown, never a traceback
            self.app.call_from_thread(self.persona.report, error)
            return
        self.app.call_from_thread(self._show, first[:n], "reranking with the language model…" if skip is None else "")
        if skip is not None:
            return
        outcome = rerank.rerank(profile, first, n, settings.rerank)
        if get_current_worker().is_cancelled:
            return
        if outcome.error is not None:
            self.app.call_from_thread(
                self.notify,
                f"{outcome.error.message} Showing the first stage's suggestions.",
                title=outcome.error.title,
                severity="warning",
                timeout=8,
            )
        self.app.call_from_thread(self._show, outcome.suggestions, outcome.note if outcome.applied else "")

    def _show(self, found: list[Suggestion], note: str = "") -> None:
        self.suggestions = found
        table = self.table
        row = table.cursor_row
        table.clear()
        for s in found:
            table.add_row(s.title, str(s.year or ""), _tags(s.tags), f"{s.score:.2f}", s.reason, key=str(s.item))
        if found:
            table.move_cursor(row=min(row, len(found) - 1))
        status = self.query_one("#status", Static)
        status.update(
            f"{len(found)} suggestions" + (f' for "{self.mood}"' if self.mood else "") + (f" · {note}" if note else "")
        )
        self.persona.suggestions_painted()

    def selected(self) -> Suggestion | None:
        """The suggestion under the cursor."""
        row = self.table.cursor_row
        return self.suggestions[row] if 0 <= row < len(self.suggestions) else None

    def action_like(self) -> None:
        """Like the selected suggestion."""
        self._rate("like")

    def action_dislike(self) -> None:
        """Dislike the selected suggestion."""
        self._rate("dislike")

    def _rate(self, kind: str) -> None:
        chosen = self.selected()
        if chosen is None:
            return
        self.persona.rate(chosen.item, kind)
        self.notify(f"{'Liked' if kind == 'like' else 'Disliked'} {chosen.title}", timeout=2)
        self.refresh_suggestions()

    def action_skip(self) -> None:
        """Hide the selected suggestion for this session (nothing is recorded)."""
        chosen = self.selected()
        if chosen is not None:
            self.skipped.add(chosen.item)
            self.refresh_suggestions()

    def action_why(self) -> None:
        """Open the Why screen for the selected suggestion."""
        chosen = self.selected()
        if chosen is not None and self.persona.profile is not None:
            self.app.push_screen(WhyScreen(chosen, self.persona.profile.explain(chosen.item, query=self.mood)))

    def action_focus_query(self) -> None:
        """Put the cursor in the query box."""
        self.query_one("#query", Input).focus()

    def action_clear_query(self) -> None:
        """Clear the query and go back to the table."""
        box = self.query_one("#query", Input)
        box.value = ""
        self.mood = None
        self.table.focus()
        self.refresh_suggestions()

    @on(Input.Submitted, "#query")
    def _query_submitted(self, event: Input.Submitted) -> None:
        self.mood = event.value.strip() or None
        self.query_one("#status", Static).update("embedding the query…" if self.mood else "")
        self.table.focus()
        self.refresh_suggestions()

    @on(DataTable.RowSelected, "#suggestions")
    def _row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_why()


class WhyScreen(ModalScreen[None]):
    """The reason for one suggestion and the history items behind it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,w", "dismiss", "Close", id="why.close")]

    def __init__(self, suggestion: Suggestion, explanation: dict[str, Any]) -> None:
        super().__init__()
        self.suggestion = suggestion
        self.explanation = explanation

    def compose(self) -> ComposeResult:
        parts = self.explanation["parts"]
        with Vertical(id="why"):
            yield Label(Text(self.explanation["label"], style="bold"))
            yield Static(self.suggestion.reason, id="why-reason")
            yield Static(
                f"score {self.explanation['score']:.3f} = history {parts['history']:+.3f}"
                f" + private adapter {parts['private_adapter']:+.3f} + item bias {parts['item_bias']:+.3f}"
                + (f" + query {parts['query']:+.3f}" if "query" in parts else ""),
                id="why-parts",
            )
            if self.suggestion.first_stage_rank is not None and self.suggestion.fm_score is not None:
                yield Static(
                    f"first stage #{self.suggestion.first_stage_rank}, then reranked by the language model "
                    f"(its Yes − No logit {self.suggestion.fm_score:+.2f}, reading your most recent liked items)",
                    id="why-rerank",
                )
            table: DataTable[str] = DataTable(id="why-history", cursor_type="row")
            yield table
            yield Button("Close", id="why-close")

    def on_mount(self) -> None:
        table = self.query_one("#why-history", DataTable)
        table.add_columns("history item", "tags", "pull")
        for row in self.explanation["history"]:
            table.add_row(row["label"], _tags(row["tags"]), f"{row['pull']:+.3f}")

    @on(Button.Pressed, "#why-close")
    def _close(self) -> None:
        self.dismiss()


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; dismisses with True only on an explicit yes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,n", "dismiss(False)", "No", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="confirm-question")
            with Horizontal():
                yield Button("Delete everything", variant="error", id="confirm-yes")
                yield Button("Cancel", variant="primary", id="confirm-no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")


class ErrorScreen(ModalScreen[None]):
    """A problem, with what to do about it (never a traceback)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "dismiss", "Close", id="error.close")]

    def __init__(self, title: str, message: str, hint: str = "") -> None:
        super().__init__()
        self.title_text, self.message, self.hint = title, message, hint

    def compose(self) -> ComposeResult:
        with Vertical(id="error"):
            yield Label(Text(self.title_text, style="bold red"))
            yield Static(self.message, id="error-message")
            if self.hint:
                yield Static(self.hint, id="error-hint")
            yield Button("Close", id="error-close")

    @on(Button.Pressed, "#error-close")
    def _close(self) -> None:
        self.dismiss()


class PassphraseScreen(ModalScreen[str]):
    """Asks for the passphrase of an encrypted profile (after a wrong one, says so)."""

    def __init__(self, problem: str = "") -> None:
        super().__init__()
        self.problem = problem

    def compose(self) -> ComposeResult:
        with Vertical(id="passphrase"):
            if self.problem:
                yield Static(Text(self.problem, style="bold red"), id="passphrase-problem")
            yield Label("This profile is encrypted. Passphrase:")
            yield Input(password=True, id="passphrase-input")

    @on(Input.Submitted, "#passphrase-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class OnboardingScreen(PersonaScreen):
    """First run: search the catalog and like a few items you love."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "like", "Like", id="onboarding.like"),
        Binding("ctrl+s", "done", "Done", id="onboarding.done"),
        Binding("slash", "focus_search", "Search", id="onboarding.search", show=False),
    ]
    ENOUGH = 3

    def __init__(self) -> None:
        super().__init__()
        self.results: list[int] = []
        self.picked: list[str] = []

    def compose(self) -> ComposeResult:
        yield title_bar("Welcome")
        yield Static(
            "Welcome to Persona. Search for a few things you love and like them (Enter or l). "
            f"Pick at least {self.ENOUGH}, then press Ctrl+S. Everything stays on this machine.",
            id="welcome",
        )
        yield Input(placeholder="Search titles or genres…", id="search")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        yield Static("", id="picked")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#results", DataTable)
        table.add_columns("title", "year", "tags")
        self._fill("")
        self.query_one("#search", Input).focus()

    def _fill(self, text: str) -> None:
        profile = self.persona.profile
        if profile is None:
            return
        if text.strip():
            self.results = profile.search(text, limit=40)
        else:
            import numpy as np

            self.results = [int(i) for i in np.argsort(-profile.scorer.item_bias, kind="stable")[:40]]
        table = self.query_one("#results", DataTable)
        table.clear()
        cat = profile.catalog
        for i in self.results:
            mark = "✓ " if cat.item_ids[i] in self.picked else ""
            table.add_row(mark + cat.titles[i], str(cat.years[i] or ""), _tags(cat.tags[i]), key=str(i))

    @on(Input.Changed, "#search")
    def _search(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#search")
    def _to_table(self) -> None:
        self.query_one("#results", DataTable).focus()

    @on(DataTable.RowSelected, "#results")
    def _selected(self, _event: DataTable.RowSelected) -> None:
        self.action_like()

    def action_focus_search(self) -> None:
        """Put the cursor in the search box."""
        self.query_one("#search", Input).focus()

    def action_like(self) -> None:
        """Like the item under the cursor."""
        profile = self.persona.profile
        table = self.query_one("#results", DataTable)
        if profile is None or not (0 <= table.cursor_row < len(self.results)):
            return
        item = self.results[table.cursor_row]
        item_id = profile.catalog.item_ids[item]
        if item_id not in self.picked:
            self.persona.rate(item, "like", source="onboarding", train=False)
            self.picked.append(item_id)
        labels = [profile.catalog.label(profile.catalog.index[i]) for i in self.picked]
        self.query_one("#picked", Static).update(f"Liked {len(labels)}: " + "; ".join(labels))
        table.update_cell_at(Coordinate(table.cursor_row, 0), "✓ " + profile.catalog.titles[item])

    def action_done(self) -> None:
        """Go to the suggestions (and train the private adapter in the background)."""
        if not self.picked:
            self.notify("Like at least one item first.", severity="warning")
            return
        if self.persona.settings.retrain_after_feedback:
            self.persona.start_training()
        self.persona.show_suggestions()


class ProfileScreen(PersonaScreen):
    """What `agent inspect` shows, the history (with forget), and reset behind a confirmation."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "forget", "Forget item", id="profile.forget"),
        Binding("ctrl+r", "reset", "Reset profile", id="profile.reset"),
    ]

    def compose(self) -> ComposeResult:
        yield title_bar("Profile")
        with VerticalScroll():
            yield Static("", id="profile-summary")
            yield Label("Affinities (from the private adapter)")
            yield DataTable(id="affinities", cursor_type="row")
            yield Label("Aversions")
            yield DataTable(id="aversions", cursor_type="row")
            yield Label("History (f forgets the selected item)")
            yield DataTable(id="history", cursor_type="row")
            yield Static("", id="profile-paths")
        yield Footer()

    def on_mount(self) -> None:
        for table_id in ("#affinities", "#aversions"):
            self.query_one(table_id, DataTable).add_columns("tag", "lift (σ)", "liked", "disliked", "examples")
        self.query_one("#history", DataTable).add_columns("item", "feedback", "source")
        self.reload()

    def reload(self) -> None:
        """Recompute the profile (inspect) and fill the tables."""
        profile = self.persona.profile
        if profile is None:
            return
        body = profile.inspect()
        counts, adapter, egress = body["interactions"], body["private_adapter"], body["egress"]
        last = body["last_training"]
        shift = adapter["relative_shift"]
        self.query_one("#profile-summary", Static).update(
            f"{counts['total']} interactions · {counts['liked_items']} liked · {counts['disliked_items']} disliked\n"
            f"traits derived from: {body['derived_from']}\n"
            f"private adapter |θ_u| = {adapter['norm']:.3f}"
            + (f" ({shift:.2f}× the history state)" if shift is not None else "")
            + f", changes {adapter['top20_changed_by_private']} of the top 20\n"
            + "last local training: "
            + (time.strftime("%Y-%m-%d %H:%M", time.localtime(last["finished_at"])) if last else "never")
            + f"\nshared adapter: {body['shared_adapter']['version']}\n"
            f"shared so far: {egress['rounds']} rounds, {egress['bytes_sent']:,} bytes sent, "
            f"ε = {egress['epsilon']:.3g}" + ("\nencrypted at rest" if body["encrypted"] else "")
        )
        for key, table_id in (("affinities", "#affinities"), ("aversions", "#aversions")):
            table = self.query_one(table_id, DataTable)
            table.clear()
            for r in body[key]:
                table.add_row(
                    r["tag"], f"{r['lift']:+.2f}", str(r["liked"]), str(r["disliked"]), "; ".join(r["examples"])
                )
        history = self.query_one("#history", DataTable)
        history.clear()
        self._history_items: list[str] = []
        for item_id, interaction in profile.store.latest_feedback(profile.catalog.name).items():
            index = profile.catalog.index.get(item_id)
            label = profile.catalog.label(index) if index is not None else item_id
            what = interaction.kind if interaction.kind != "rating" else f"{interaction.rating:g}/5"
            history.add_row(label, what, interaction.source)
            self._history_items.append(item_id)
        self.query_one("#profile-paths", Static).update(
            "\n".join(f"{name}: {where}" for name, where in body["paths"].items() if name != "profile_files")
        )

    def action_forget(self) -> None:
        """Forget the history item under the cursor and retrain."""
        table = self.query_one("#history", DataTable)
        if not (0 <= table.cursor_row < len(self._history_items)):
            return
        self.persona.forget(self._history_items[table.cursor_row])
        self.reload()

    def action_reset(self) -> None:
        """Ask, then delete the whole profile."""
        self.persona.ask_reset()


class SyncScreen(PersonaScreen):
    """Federation status: shared adapter version, the egress ledger, and "sync now"."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("n", "sync_now", "Sync now", id="sync.now")]

    def compose(self) -> ComposeResult:
        yield title_bar("Sync")
        yield Static("", id="sync-status")
        yield ProgressBar(total=100, id="sync-progress", show_eta=False)
        yield Label("Egress ledger: what left this device")
        yield DataTable(id="ledger", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#ledger", DataTable).add_columns("when", "round", "sent", "received", "C", "σ", "cohort", "ε")
        self.reload()

    def reload(self) -> None:
        """Show the ledger and the sync client's state."""
        profile = self.persona.profile
        if profile is None:
            return
        ledger = profile.store.egress_entries()
        summary = egress_summary(ledger)
        client = self.persona.sync_client_state()
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary["last_round_at"])) if ledger else "never"
        self.query_one("#sync-status", Static).update(
            f"{client}\nshared adapter: {profile.shared_meta.get('version')}\n"
            f"last round: {last} · {summary['rounds']} rounds · {summary['bytes_sent']:,} bytes sent · "
            f"{summary['bytes_received']:,} received · ε so far {summary['epsilon']:.3g}"
        )
        table = self.query_one("#ledger", DataTable)
        table.clear()
        for e in ledger:
            table.add_row(
                time.strftime("%m-%d %H:%M", time.localtime(e["ts"])),
                str(e.get("round") or ""),
                f"{int(e.get('bytes_sent') or 0):,}",
                f"{int(e.get('bytes_received') or 0):,}",
                "" if e.get("clip") is None else f"{e['clip']:g}",
                "" if e.get("sigma") is None else f"{e['sigma']:g}",
                "" if e.get("cohort") is None else str(e["cohort"]),
                "" if e.get("epsilon") is None else f"{e['epsilon']:.3g}",
            )

    def action_sync_now(self) -> None:
        """Run one sync round in a worker, if a coordinator is configured."""
        self.persona.sync_now(self.query_one("#sync-progress", ProgressBar))
