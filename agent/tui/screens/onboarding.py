"""The Onboarding screen: on the first run, search the catalog and like a few items you love.

What has been liked so far (in this visit, or before it: the screen also opens with ``o``) is listed under the
results and marked ✓ in them."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from agent.engine.profile import Profile
from agent.tui.messages import OnboardingDone
from agent.tui.screens.common import record_feedback, tag_text, title_bar


class OnboardingScreen(Screen[None]):
    """First run: search the catalog and like a few items you love."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "like", "Like", id="onboarding.like"),
        Binding("ctrl+s", "done", "Done", id="onboarding.done"),
        Binding("slash", "focus_search", "Search", id="onboarding.search", show=False),
    ]
    ENOUGH = 3

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile
        self.results: list[int] = []
        latest = profile.store.latest_feedback(profile.catalog.name)
        self.picked: list[str] = [i for i, x in latest.items() if x.kind == "like" and i in profile.catalog.index]

    def compose(self) -> ComposeResult:
        yield title_bar("Welcome")
        yield Static(
            "Welcome to Persona. Search for a few things you love and like them (Enter or l). "
            f"Pick at least {self.ENOUGH}, then press Ctrl+S. Everything stays on this machine.",
            id="welcome",
        )
        yield Input(placeholder="Search titles or genres…", id="search")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        yield Static("", id="picked", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#results", DataTable)
        table.add_columns("title", "year", "tags")
        self._fill("")
        self._show_picked()
        self.query_one("#search", Input).focus()

    def _fill(self, text: str) -> None:
        profile = self.profile
        if text.strip():
            self.results = profile.search(text, limit=40)
        else:
            self.results = [int(i) for i in np.argsort(-profile.scorer.item_bias, kind="stable")[:40]]
        table = self.query_one("#results", DataTable)
        table.clear()
        cat = profile.catalog
        for i in self.results:
            mark = "✓ " if cat.item_ids[i] in self.picked else ""
            table.add_row(escape(mark + cat.titles[i]), str(cat.years[i] or ""), tag_text(cat.tags[i]), key=str(i))

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
        """Like the item under the cursor (no retraining until Done)."""
        profile = self.profile
        table = self.query_one("#results", DataTable)
        if not (0 <= table.cursor_row < len(self.results)):
            return
        item = self.results[table.cursor_row]
        item_id = profile.catalog.item_ids[item]
        if item_id not in self.picked:
            record_feedback(profile, item, "like", source="onboarding")
            self.picked.append(item_id)
        self._show_picked()
        table.update_cell_at(Coordinate(table.cursor_row, 0), escape("✓ " + profile.catalog.titles[item]))

    def _show_picked(self) -> None:
        """List what has been liked so far (most recent last), or say that nothing has been yet."""
        catalog = self.profile.catalog
        labels = [catalog.label(catalog.index[i]) for i in self.picked]
        text = f"✓ Liked {len(labels)}: " + "; ".join(labels) if labels else "Nothing liked yet."
        self.query_one("#picked", Static).update(text)

    def action_done(self) -> None:
        """Go to the suggestions (and train the private adapter in the background)."""
        if not self.picked:
            self.notify("Like at least one item first.", severity="warning")
            return
        self.post_message(OnboardingDone())
