"""The Why modal: the reason for one suggestion, its score's parts, and the history items behind it."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Static

from agent.engine.profile import Suggestion
from agent.tui.screens.common import tag_text


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
            yield Static(self.suggestion.reason, id="why-reason", markup=False)
            yield Static(
                f"score {self.explanation['score']:.3f} = history {parts['history']:+.3f}"
                f" + private adapter {parts['private_adapter']:+.3f} + item bias {parts['item_bias']:+.3f}"
                + (f" + query {parts['query']:+.3f}" if "query" in parts else ""),
                id="why-parts",
            )
            if self.suggestion.first_stage_rank is not None and self.suggestion.fm_score is not None:
                yield Static(
                    f"first stage #{self.suggestion.first_stage_rank}, then reranked by the language model "
                    f"(its letter's logit {self.suggestion.fm_score:+.2f} in one list of the top candidates, "
                    "after your most recent liked items)",
                    id="why-rerank",
                )
            table: DataTable[str] = DataTable(id="why-history", cursor_type="row")
            yield table
            yield Button("Close", id="why-close")

    def on_mount(self) -> None:
        table = self.query_one("#why-history", DataTable)
        table.add_columns("history item", "tags", "pull")
        for row in self.explanation["history"]:
            table.add_row(escape(row["label"]), tag_text(row["tags"]), f"{row['pull']:+.3f}")

    @on(Button.Pressed, "#why-close")
    def _close(self) -> None:
        self.dismiss()
