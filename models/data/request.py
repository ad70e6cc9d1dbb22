"""What a typed request asks of the catalog's metadata: tags and a decade read out of free text.

``agent suggest --query "a 1990s science fiction film"`` should put 1990s Sci Fi films first. The query protocol
(``agent eval --protocol query``) measured that the MiniLM pull of the user state barely follows such a request
(at most 30 % of the top 10 match) while a plain metadata filter satisfies 73 % and lifts the held-out item's
HR@10 from 0.63 to 0.93. So the product reads the request for what the catalog can check — its tags (with a few
common synonyms) and a decade — and ranks the items that satisfy it first, in the model's order
(:func:`filter_scores`). A request that names neither leaves the order alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog

SYNONYMS: dict[str, tuple[str, ...]] = {
    "sci fi": ("science fiction", "sci-fi", "scifi"),
    "animation": ("animated", "cartoon", "cartoons", "anime"),
    "children's": ("children", "childrens", "kids", "kid", "family"),
    "comedy": ("comedies", "funny", "comic"),
    "romance": ("romantic", "romances", "love story"),
    "horror": ("scary",),
    "film noir": ("noir",),
    "documentary": ("documentaries",),
    "musical": ("musicals",),
    "thriller": ("thrillers",),
    "western": ("westerns",),
    "mystery": ("mysteries",),
    "drama": ("dramas",),
}
"""Other ways people write a tag (keys are normalised tag names); a catalog's own tag names always match."""

_DECADE = re.compile(r"\b(1[89]\d|20\d)0s\b|(?:^|\s)'?(\d)0s\b")


def _normal(text: str) -> str:
    """Lower case, apostrophes kept, other punctuation as spaces, single spaces: "Sci-Fi!" → "sci fi"."""
    return " " + " ".join(re.sub(r"[^\w']+", " ", text.lower()).split()) + " "


@dataclass(frozen=True)
class Request:
    """What a request asks for: tags the item must all have and a decade (e.g. 1990) it must be from."""

    tags: tuple[str, ...] = ()
    decade: int | None = None

    def __bool__(self) -> bool:
        """Whether the request names anything the catalog can check."""
        return bool(self.tags) or self.decade is not None

    def satisfied_by(self, catalog: Catalog, item: int) -> bool:
        """Whether the item has every requested tag and was released in the decade (where the request names one)."""
        if any(tag not in catalog.tags[item] for tag in self.tags):
            return False
        year = catalog.years[item]
        return self.decade is None or (year is not None and year // 10 * 10 == self.decade)

    def mask(self, catalog: Catalog, items: NDArray[np.integer]) -> NDArray[np.bool_]:
        """:meth:`satisfied_by` of each item."""
        return np.array([self.satisfied_by(catalog, int(i)) for i in items], dtype=bool)

    def describe(self) -> str:
        """The checked part in words, e.g. ``"Comedy, 1990s"``."""
        return ", ".join([*self.tags, *([f"{self.decade}s"] if self.decade is not None else [])])


def _decade(text: str, catalog: Catalog) -> int | None:
    """A decade written as "1990s" or "90s" ("'20s" means the latest such decade the catalog's years reach)."""
    match = _DECADE.search(text)
    if match is None:
        return None
    if match.group(1):
        return int(match.group(1)) * 10
    tens = int(match.group(2)) * 10
    newest = max((y for y in catalog.years if y is not None), default=2000)
    candidates = [c + tens for c in (1900, 2000) if c + tens <= newest]
    return max(candidates) if candidates else 1900 + tens


def parse_request(text: str, catalog: Catalog) -> Request:
    """The catalog tags (or their :data:`SYNONYMS`) and the decade that ``text`` names, as whole words."""
    normal = _normal(text)
    found: list[str] = []
    for tag in sorted({t for tags in catalog.tags for t in tags}):
        key = _normal(tag).strip()
        phrases = (key, *SYNONYMS.get(key, ()))
        if any(f" {_normal(p).strip()} " in normal for p in phrases):
            found.append(tag)
    return Request(tuple(found), _decade(text, catalog))


def filter_scores(scores: NDArray[np.floating], satisfied: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Items that satisfy the request first, each group in the given order (ties stay ties; -inf stays -inf)."""
    out = np.asarray(scores, dtype=np.float64).copy()
    finite = np.isfinite(out)
    if not finite.any():
        return out
    low, span = float(out[finite].min()), float(np.ptp(out[finite]))
    out[finite] -= low
    out[finite & satisfied] += span + 1.0
    return out
