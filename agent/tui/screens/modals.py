"""The small modals: a yes/no confirmation, an error with its hint, and the passphrase prompt."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; dismisses with True only on an explicit yes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,n", "dismiss(False)", "No", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="confirm-question", markup=False)
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
            yield Static(self.message, id="error-message", markup=False)
            if self.hint:
                yield Static(self.hint, id="error-hint", markup=False)
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
