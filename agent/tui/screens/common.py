"""Pieces the TUI's screens share: the title bar, tag lists, and recording a like or dislike."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.widgets import Static

from agent.engine.profile import Profile


def title_bar(name: str) -> Static:
    """A one-line title (Textual's Header races with quick screen switches, so a plain Static is used)."""
    return Static(Text.assemble(("Persona", "bold"), " · ", name), classes="title-bar")


def tag_text(tags: list[str], limit: int = 3) -> str:
    """The first ``limit`` tags, comma separated (escaped: a tag's brackets are shown, not read as markup)."""
    return escape(", ".join(tags[:limit]))


def record_feedback(profile: Profile, item: int, kind: str, *, source: str) -> None:
    """Record a like or dislike (``kind``) of catalog item ``item`` in the profile's store."""
    catalog = profile.catalog
    rating = 5.0 if kind == "like" else 1.0
    profile.store.add_interaction(catalog.name, catalog.item_ids[item], kind=kind, rating=rating, source=source)
