"""Finding catalog items from what a person typed: an id, a title, "title (year)", part of a title or a tag."""

from __future__ import annotations

import difflib
import re
import unicodedata

from agent.errors import AmbiguousItemError, ItemNotFoundError
from models.data.catalog import Catalog

_TITLE_WITH_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def normalize_title(text: str) -> str:
    """Lower case, no accents or punctuation, a leading or trailing English article dropped."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").casefold()
    text = re.sub(r"[^a-z0-9]+", " ", text).strip()
    text = re.sub(r"^(the|a|an) ", "", text)
    text = re.sub(r" (the|a|an)$", "", text)
    return text


class ItemLookup:
    """Item lookup over one catalog (titles are normalised on first use: suggestions do not need them)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._normalized_titles: list[str] | None = None

    @property
    def _normalized(self) -> list[str]:
        """Every title normalised for matching."""
        if self._normalized_titles is None:
            self._normalized_titles = [normalize_title(t) for t in self.catalog.titles]
        return self._normalized_titles

    def resolve(self, text: str) -> int:
        """The catalog index of an item given by id, title or "title (year)"; raises with close matches."""
        text = text.strip()
        if text in self.catalog.index:
            return self.catalog.index[text]
        year: int | None = None
        match = _TITLE_WITH_YEAR.match(text)
        if match:
            text, year = match["title"], int(match["year"])
        wanted = normalize_title(text)
        hits = [
            i
            for i, title in enumerate(self._normalized)
            if title == wanted and (year is None or self.catalog.years[i] == year)
        ]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AmbiguousItemError(
                f"{len(hits)} items are called {text!r}.",
                hint="Give the year or the id: " + "; ".join(self._describe(i) for i in hits[:10]),
                candidates=[self._describe(i) for i in hits],
            )
        close = self.search(text, limit=5)
        raise ItemNotFoundError(
            f"No item in {self.catalog.name} is called {text!r}" + (f" ({year})." if year else "."),
            hint=("Did you mean: " + "; ".join(self._describe(i) for i in close)) if close else "Try `agent search`.",
            candidates=[self._describe(i) for i in close],
        )

    def _describe(self, i: int) -> str:
        return f"{self.catalog.label(i)} [id {self.catalog.item_ids[i]}]"

    def search(self, text: str, *, limit: int = 20) -> list[int]:
        """Items whose title starts with, then contains, then closely resembles ``text``; then tag matches."""
        wanted = normalize_title(text)
        if not wanted:
            return []
        starts = [i for i, t in enumerate(self._normalized) if t.startswith(wanted)]
        contains = [i for i, t in enumerate(self._normalized) if wanted in t and not t.startswith(wanted)]
        found = starts + contains
        if len(found) < limit:
            close = difflib.get_close_matches(wanted, self._normalized, n=limit, cutoff=0.6)
            seen = set(found)
            for title in close:
                for i, t in enumerate(self._normalized):
                    if t == title and i not in seen:
                        found.append(i)
                        seen.add(i)
        if len(found) < limit:
            seen = set(found)
            found += [
                i
                for i, tags in enumerate(self.catalog.tags)
                if i not in seen and any(normalize_title(t) == wanted for t in tags)
            ]
        return found[:limit]

    def match_title(self, title: str, year: int | None) -> int | None:
        """The item with this title (and year, ±1 for release-date differences), or None."""
        wanted = normalize_title(title)
        hits = [i for i, t in enumerate(self._normalized) if t == wanted]
        if year is not None and hits:
            exact = [i for i in hits if self.catalog.years[i] == year]
            near = [
                i
                for i in hits
                if self.catalog.years[i] is not None and abs(int(self.catalog.years[i] or 0) - year) <= 1
            ]
            hits = exact or near
        return hits[0] if len(hits) == 1 else None
