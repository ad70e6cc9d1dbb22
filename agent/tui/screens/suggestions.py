"""The Suggestions screen: the main one, with reasons; like, dislike, skip, why; a query box."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from agent.engine.profile import Profile, Suggestion
from agent.engine.rerank_weight import weight_in_force
from agent.settings import Settings
from agent.tui.messages import ErrorRaised, FeedbackRecorded
from agent.tui.screens.common import record_feedback, tag_text, title_bar
from agent.tui.screens.why import WhyScreen


class SuggestionsScreen(Screen[None]):
    """The main screen: suggestions with reasons; like, dislike, skip; a query box."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "like", "Like", id="suggestions.like", tooltip="Like the selected item"),
        Binding("d", "dislike", "Dislike", id="suggestions.dislike", tooltip="Dislike the selected item"),
        Binding("s", "skip", "Skip", id="suggestions.skip", tooltip="Hide the selected item for this session"),
        Binding("w", "why", "Why?", id="suggestions.why", tooltip="Why this suggestion"),
        Binding("slash", "focus_query", "Query", id="suggestions.query", show=False),
        Binding("escape", "clear_query", "Clear query", id="suggestions.clear_query", show=False),
    ]

    def __init__(self, profile: Profile, settings: Settings, *, report_painted: Callable[[], None]) -> None:
        """``report_painted()`` runs each time the table is filled (a call: a message would come a refresh later)."""
        super().__init__()
        self.profile = profile
        self.settings = settings
        self.report_painted = report_painted
        self.suggestions: list[Suggestion] = []
        self.skipped: set[int] = set()
        self.mood: str | None = None

    def compose(self) -> ComposeResult:
        yield title_bar("Suggestions")
        yield Input(placeholder="Blend a mood into your taste, e.g. light comedy (Enter)", id="query")
        yield DataTable(id="suggestions", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status", markup=False)
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
        """The first stage's list at once; then, when it applies, the language model's rerank of its top k.

        The rerank runs only with a blend weight above 0 (:mod:`agent.engine.rerank_weight`). With the measured
        default of 0 its module, which imports the language model's prompt, scoring and serving code and
        ``tokenizers``, is not imported at all: that import sat between the profile loading and the first paint.
        """
        profile, settings = self.profile, self.settings
        n = settings.suggestions
        in_force = weight_in_force(settings.rerank)
        try:
            if in_force.on:
                from agent.engine import rerank  # reason: the language model's code, only when the rerank can run

                skip = rerank.skip_reason(profile, settings.rerank)
            else:
                skip = in_force.why  # rerank.skip_reason's own answer when the weight is off
            first = profile.suggest(
                n if skip else max(n, settings.rerank.k),
                query=query,
                exclude=np.array(sorted(skipped), dtype=np.int64),
            )
        except Exception as error:  # shown, never a traceback
            self.app.call_from_thread(self.post_message, ErrorRaised(error))
            return
        note = "reranking with the language model…" if skip is None else "" if in_force.on else in_force.summary()
        self.app.call_from_thread(self._show, first[:n], note)
        if skip is None:
            self._rerank(first, query)

    def _rerank(self, first: list[Suggestion], query: str | None) -> None:
        """The language model's rerank of ``first`` (in the suggest worker), shown when it is done."""
        from agent.engine import rerank  # reason: the language model's code, only when the rerank runs

        settings = self.settings
        outcome = rerank.rerank(self.profile, first, settings.suggestions, settings.rerank, query=query)
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
            table.add_row(
                escape(s.title),
                str(s.year or ""),
                tag_text(s.tags),
                f"{s.score:.2f}",
                escape(s.reason),
                key=str(s.item),
            )
        if found:
            table.move_cursor(row=min(row, len(found) - 1))
        status = self.query_one("#status", Static)
        status.update(
            f"{len(found)} suggestions" + (f' for "{self.mood}"' if self.mood else "") + (f" · {note}" if note else "")
        )
        self.report_painted()

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
        record_feedback(self.profile, chosen.item, kind, source="tui")
        self.post_message(FeedbackRecorded())
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
        if chosen is not None:
            self.app.push_screen(WhyScreen(chosen, self.profile.explain(chosen.item, query=self.mood)))

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
