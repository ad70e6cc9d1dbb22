"""Catalogs and interaction logs: the in-memory form every other part of ``models`` works on.

External ids (what a data file calls an item or a user) are kept as strings; everything inside works on dense
indices ``0..n-1`` into the catalog and the user list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass
class Catalog:
    """Items with their text: ``item_ids[i]`` is the external id of dense item ``i``."""

    name: str
    item_ids: list[str]
    titles: list[str]
    texts: list[str] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    years: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not self.texts:
            self.texts = [""] * n
        if not self.tags:
            self.tags = [[] for _ in range(n)]
        if not self.years:
            self.years = [None] * n
        if not (len(self.titles) == len(self.texts) == len(self.tags) == len(self.years) == n):
            raise ValueError("catalog columns have different lengths")
        self.index: dict[str, int] = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self.index) != n:
            raise ValueError("catalog item ids are not unique")

    def __len__(self) -> int:
        return len(self.item_ids)

    def item_text(self, i: int) -> str:
        """The text the encoder embeds for item ``i``: title, year, tags and free text."""
        parts = [self.titles[i]]
        if self.years[i] is not None:
            parts[0] += f" ({self.years[i]})"
        if self.tags[i]:
            parts.append(", ".join(self.tags[i]))
        if self.texts[i]:
            parts.append(self.texts[i])
        return ". ".join(parts)

    def content_hash(self, i: int) -> str:
        """SHA-256 of the item's embedding text, the key of the embedding cache."""
        return hashlib.sha256(self.item_text(i).encode("utf-8")).hexdigest()

    def label(self, i: int) -> str:
        """Title with year, for display."""
        year = self.years[i]
        return f"{self.titles[i]} ({year})" if year is not None else self.titles[i]


@dataclass
class Interactions:
    """An interaction log over one catalog, as parallel arrays of dense indices."""

    user_ids: list[str]
    users: NDArray[np.int64]
    items: NDArray[np.int64]
    ratings: NDArray[np.float32]
    timestamps: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def n_users(self) -> int:
        """Number of distinct users in the log."""
        return len(self.user_ids)

    def sequences(self) -> list[NDArray[np.int64]]:
        """Each user's items in time order (ties broken by external item order = dense id)."""
        order = np.lexsort((self.items, self.timestamps, self.users))
        users = self.users[order]
        items = self.items[order]
        bounds = np.searchsorted(users, np.arange(self.n_users + 1))
        return [items[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]


@dataclass
class Dataset:
    """A catalog, its interaction log and (optionally) per-user attributes such as age and gender."""

    name: str
    catalog: Catalog
    interactions: Interactions
    user_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
