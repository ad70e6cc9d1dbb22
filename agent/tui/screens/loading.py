"""The loading screen, shown while the profile, the catalog and its text vectors load."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static

from agent.tui.screens.common import title_bar


class LoadingScreen(Screen[None]):
    """Shown while the catalog and its text vectors load."""

    def compose(self) -> ComposeResult:
        yield title_bar("Loading")
        yield Static("Loading your profile and the catalog…", id="loading")
        yield Footer()
