"""The Sync screen: federation status, the shared adapter's version, the background schedule (next window, the last
check and why it skipped), ε this year against the privacy budget (in words and as a chart over the year), bytes sent
per round, the egress ledger, and "sync now"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, ProgressBar, Static

from agent.engine.profile import Profile
from agent.settings import load_settings
from agent.store.egress import egress_summary, epsilon_points
from agent.tui.bars import epsilon_chart, horizontal_bars
from agent.tui.messages import SyncRequested
from agent.tui.screens.common import title_bar
from models.errors import PersonaError

CHART_ROUNDS = 12


def egress_note(entry: dict[str, Any]) -> str:
    """What a ledger row's bar is labelled with: the bytes sent and the round's ε."""
    eps = entry.get("epsilon")
    return f"{int(entry.get('bytes_sent') or 0):,} B" + ("" if eps is None else f" · ε {eps:.3g}")


def schedule_lines(profile: Profile) -> str:
    """Two lines: the schedule (installed? every …, next window) and the last check (what it did, or why it
    skipped)."""
    # reason: the schedule's modules are only needed once the Sync screen opens, not on the TUI's start-up path
    from agent.engine.eligibility import describe_check
    from agent.engine.schedule import status as schedule_status

    try:
        found = schedule_status(profile.store)
    except PersonaError as error:
        return f"Schedule: {error.message}"
    last = f"Last scheduled run: {describe_check(found.last)}" if found.last else "Last scheduled run: none yet"
    return f"{found.line()}\n{last}"


class SyncScreen(Screen[None]):
    """Federation status: shared adapter version, the egress ledger, and "sync now"."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("n", "sync_now", "Sync now", id="sync.now")]

    def __init__(self, profile: Profile, client_state: Callable[[], str]) -> None:
        """``client_state()`` is one line on whether "sync now" can run (read on each reload)."""
        super().__init__()
        self.profile = profile
        self.client_state = client_state

    def compose(self) -> ComposeResult:
        yield title_bar("Sync")
        yield Static("", id="sync-status", markup=False)
        yield Static("", id="schedule", markup=False)
        yield Static("ε this year: computing…", id="privacy-budget", markup=False)
        yield ProgressBar(total=100, id="sync-progress", show_eta=False)
        yield Label("ε this year at each participation, against your yearly budget (┄)")
        yield Static("", id="epsilon-chart")
        yield Label(f"Bytes sent per round, and ε (the last {CHART_ROUNDS} rounds)")
        yield Static("", id="egress-chart")
        yield Label("Egress ledger: what left this device")
        yield DataTable(id="ledger", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#ledger", DataTable).add_columns("when", "round", "sent", "received", "C", "σ", "cohort", "ε")
        self.reload()

    def reload(self) -> None:
        """Show the ledger and the sync client's state."""
        profile = self.profile
        ledger = profile.store.egress_entries()
        summary = egress_summary(ledger)
        client = self.client_state()
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary["last_round_at"])) if ledger else "never"
        self.query_one("#sync-status", Static).update(
            f"{client}\nshared adapter: {profile.shared_meta.get('version')}\n"
            f"last round: {last} · {summary['rounds']} rounds · {summary['bytes_sent']:,} bytes sent · "
            f"{summary['bytes_received']:,} received"
        )
        self.query_one("#schedule", Static).update(schedule_lines(profile))
        self.show_budget()
        try:
            budget = load_settings().sync.epsilon_budget
        except PersonaError as error:
            self.query_one("#epsilon-chart", Static).update(escape(f"No chart: {error.message}"))
        else:
            over_year = epsilon_chart(epsilon_points(ledger), budget, self.app.size.width - 2)
            self.query_one("#epsilon-chart", Static).update(over_year)
        rounds = [
            (f"round {e.get('round') or '?'}", float(e.get("bytes_sent") or 0), egress_note(e))
            for e in ledger[-CHART_ROUNDS:]
        ]
        chart = horizontal_bars(rounds, self.app.size.width - 2) if rounds else "No round yet."
        self.query_one("#egress-chart", Static).update(chart)
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

    @work(thread=True, exclusive=True, group="budget", exit_on_error=False)
    def show_budget(self) -> None:
        """Show ε this year against the budget (computed off the UI thread: the accountant's import takes seconds)."""
        from agent.engine.budget import privacy_budget  # reason: dp_accounting and scipy take seconds to import

        try:
            text = privacy_budget(self.profile.store).explain()
        except PersonaError as error:
            text = f"ε this year: unknown ({error.message})"
        self.app.call_from_thread(self.query_one("#privacy-budget", Static).update, text)

    def action_sync_now(self) -> None:
        """Ask the app for one sync round now (it says so when no coordinator is configured)."""
        self.post_message(SyncRequested(self.query_one("#sync-progress", ProgressBar)))
