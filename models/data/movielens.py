"""MovieLens-100K, read from the files of the RecBole 1.2.1 wheel (never from RecBole itself).

The files are tab-separated with ``name:type`` headers. Quirks handled here:

* item 267 is a placeholder (title and year ``unkonwn``, genre ``unknown``): kept as an item with title
  ``"unknown"``, no year and no tags, so ids stay aligned with the ratings that mention it;
* item 1412's year column is ``V`` and its title carries ``(1995)``: the year is taken from the title;
* titles like ``"Butcher Boy, The"`` are shown as ``"The Butcher Boy"``;
* 22 titles repeat (different ids, e.g. two "Chasing Amy" entries): they stay separate items.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from models.assets import require_ml100k
from models.data.catalog import Catalog, Dataset, Interactions
from models.data.fields import YEAR_IN_TITLE
from models.errors import AssetError

_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)$")


def display_title(raw: str) -> str:
    """Move a trailing article to the front: ``"Usual Suspects, The"`` → ``"The Usual Suspects"``."""
    match = _TRAILING_ARTICLE.match(raw.strip())
    if not match:
        return raw.strip()
    article = match["article"]
    sep = "" if article.endswith("'") else " "
    return f"{article}{sep}{match['rest']}"


def parse_item_row(item_id: str, raw_title: str, raw_year: str, raw_class: str) -> tuple[str, int | None, list[str]]:
    """Clean one ``ml-100k.item`` row into (title, year, genre tags)."""
    title = raw_title.strip()
    year: int | None = int(raw_year) if raw_year.strip().isdigit() else None
    if title.lower() in {"unknown", "unkonwn"}:
        return "unknown", None, []
    embedded = YEAR_IN_TITLE.match(title)
    if embedded:
        title = embedded["title"]
        if year is None:
            year = int(embedded["year"])
    tags = [g.replace("-", " ") for g in raw_class.split() if g != "unknown"]
    return display_title(title), year, tags


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [col.split(":", 1)[0] for col in next(reader)]
        rows = [row for row in reader if row]
    return header, rows


def load_ml100k_catalog(folder: Path | None = None) -> Catalog:
    """Only the MovieLens-100K catalog (1,682 items in id order), without reading the ratings."""
    folder = folder or require_ml100k()
    header, rows = _read_tsv(folder / "ml-100k.item")
    if header[:4] != ["item_id", "movie_title", "release_year", "class"]:
        raise AssetError(f"Unexpected columns in {folder / 'ml-100k.item'}: {header}")
    rows.sort(key=lambda r: int(r[0]))
    ids, titles, years, tags = [], [], [], []
    for row in rows:
        title, year, genres = parse_item_row(row[0], row[1], row[2], row[3] if len(row) > 3 else "")
        ids.append(row[0])
        titles.append(title)
        years.append(year)
        tags.append(genres)
    return Catalog(name="ml-100k", item_ids=ids, titles=titles, years=years, tags=tags)


def load_ml100k(folder: Path | None = None) -> Dataset:
    """Load MovieLens-100K: 1,682 items in id order, 943 users, 100,000 ratings, and the user table."""
    folder = folder or require_ml100k()
    catalog = load_ml100k_catalog(folder)

    header, rows = _read_tsv(folder / "ml-100k.user")
    user_attributes = {row[0]: dict(zip(header[1:], row[1:], strict=False)) for row in rows}

    header, rows = _read_tsv(folder / "ml-100k.inter")
    raw = np.array(rows, dtype=np.int64)
    user_ids = sorted({int(u) for u in raw[:, 0]})
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = catalog.index
    interactions = Interactions(
        user_ids=[str(u) for u in user_ids],
        users=np.array([user_index[int(u)] for u in raw[:, 0]], dtype=np.int64),
        items=np.array([item_index[str(i)] for i in raw[:, 1]], dtype=np.int64),
        ratings=raw[:, 2].astype(np.float32),
        timestamps=raw[:, 3],
    )
    return Dataset(name="ml-100k", catalog=catalog, interactions=interactions, user_attributes=user_attributes)
