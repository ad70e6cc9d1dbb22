"""The Profile screen: what ``agent inspect`` shows (the tag lifts as a diverging bar chart, then as tables), the
history (with forget), and reset behind a confirmation."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.markup import escape
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from agent.engine.profile import Profile
from agent.tui.bars import diverging_bars, lift_rows
from agent.tui.messages import FeedbackRecorded, ResetRequested
from agent.tui.screens.common import title_bar


class ProfileScreen(Screen[None]):
    """What `agent inspect` shows, the history (with forget), and reset behind a confirmation."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "forget", "Forget item", id="profile.forget"),
        Binding("ctrl+r", "reset", "Reset profile", id="profile.reset"),
    ]

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile
        self._history_items: list[str] = []
        self._lifts: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield title_bar("Profile")
        with VerticalScroll():
            yield Static("", id="profile-summary", markup=False)
            yield Label("What your agent thinks you like: tag lifts from the private adapter (σ; ✓ liked, ✗ disliked)")
            yield Static("", id="lift-chart")
            yield Label("History (f forgets the selected item)")
            yield DataTable(id="history", cursor_type="row")
            yield Label("Affinities (from the private adapter), with example items")
            yield DataTable(id="affinities", cursor_type="row")
            yield Label("Aversions, with example items")
            yield DataTable(id="aversions", cursor_type="row")
            yield Static("", id="profile-paths", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        for table_id in ("#affinities", "#aversions"):
            self.query_one(table_id, DataTable).add_columns("tag", "lift (σ)", "liked", "disliked", "examples")
        self.query_one("#history", DataTable).add_columns("item", "feedback", "source")
        self.reload()

    def reload(self) -> None:
        """Recompute the profile (inspect) and fill the tables."""
        profile = self.profile
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
        self._lifts = lift_rows(body)
        self._draw_chart()
        for key, table_id in (("affinities", "#affinities"), ("aversions", "#aversions")):
            table = self.query_one(table_id, DataTable)
            table.clear()
            for r in body[key]:
                table.add_row(
                    escape(r["tag"]),
                    f"{r['lift']:+.2f}",
                    str(r["liked"]),
                    str(r["disliked"]),
                    escape("; ".join(r["examples"])),
                )
        history = self.query_one("#history", DataTable)
        history.clear()
        self._history_items = []
        for item_id, interaction in profile.store.latest_feedback(profile.catalog.name).items():
            index = profile.catalog.index.get(item_id)
            label = profile.catalog.label(index) if index is not None else item_id
            what = interaction.kind if interaction.kind != "rating" else f"{interaction.rating:g}/5"
            history.add_row(escape(label), what, escape(interaction.source))
            self._history_items.append(item_id)
        self.query_one("#profile-paths", Static).update(
            "\n".join(f"{name}: {where}" for name, where in body["paths"].items() if name != "profile_files")
        )

    def _draw_chart(self) -> None:
        """Draw the tag lifts as wide as the screen (less the scroll bar)."""
        width = (self.size.width or self.app.size.width) - 3
        self.query_one("#lift-chart", Static).update(diverging_bars(self._lifts, width))

    def on_resize(self, _event: events.Resize) -> None:
        """Redraw the chart for the new width (once the screen is composed)."""
        if self.query("#lift-chart"):
            self._draw_chart()

    def action_forget(self) -> None:
        """Forget the history item under the cursor (every interaction with it) and retrain."""
        table = self.query_one("#history", DataTable)
        if not (0 <= table.cursor_row < len(self._history_items)):
            return
        removed = self.profile.store.forget(self.profile.catalog.name, self._history_items[table.cursor_row])
        self.notify(f"Forgot {removed} interaction(s); retraining the private adapter", timeout=3)
        self.post_message(FeedbackRecorded(always_retrain=True))
        self.reload()

    def action_reset(self) -> None:
        """Ask, then delete the whole profile."""
        self.post_message(ResetRequested())
