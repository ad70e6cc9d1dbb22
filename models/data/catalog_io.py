"""Import any catalog or interaction log from CSV, TSV, JSONL or RecBole ``.inter`` files.

Formats, chosen by the file's extension:

* ``.csv``: comma-separated with a header row; values may be quoted (``"..."``) and may span lines;
* ``.tsv``: tab-separated with a header row;
* ``.inter``: RecBole atomic files, tab-separated with ``name:type`` headers
  (``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>...``). A ``name:type`` header is recognised
  in ``.csv`` and ``.tsv`` files too; the types are dropped and, as RecBole does, quotes are plain text;
* ``.jsonl`` / ``.ndjson``: one JSON object per line.

Files must be UTF-8; a leading byte-order mark is ignored. Blank lines (and delimited rows whose fields
are all empty) carry no data and are passed over; every other row either becomes part of the result or
is reported as a :class:`RowProblem` with its 1-based physical line number (the header is line 1). With
``on_error="skip"`` the bad rows are left out and listed in :attr:`ImportResult.problems`; with
``on_error="refuse"`` any bad row makes the import fail with a :class:`BadRowsError` that lists them.
A file in which no row is usable always fails, whatever ``on_error`` says.

Catalog columns (header names match case-insensitively, ignoring ``_``, ``-`` and spaces):

=========  =========================  ==============================================================
field      accepted names             values
=========  =========================  ==============================================================
item id    id, item_id, itemId, item  required; a string (or a JSON integer); unique within the file
title      title, name                required
text       text, description          optional free text
tags       tags, tag, genres, genre   optional; ``|``-, ``;``- or ``,``-separated (the first of these
                                      separators that occurs), or a JSON list of strings
year       year                       optional whole number; without it, a title ending in its year in
                                      brackets, ``Alien (1979)``, gives it (and is shown as ``Alien``)
=========  =========================  ==============================================================

Interaction columns:

=========  =========================  ==============================================================
field      accepted names             values
=========  =========================  ==============================================================
user       user, user_id, userId      required
item       item, item_id, itemId      required; must be an item id of the catalog passed in
rating     rating                     a number from 1 to 5 (fractions allowed), or instead of it:
feedback   feedback, like, liked      like / dislike. ``like``, ``liked``, ``true``, ``yes``, ``1``,
                                      ``+1`` become :data:`LIKE_RATING` (5.0); ``dislike``,
                                      ``disliked``, ``false``, ``no``, ``0``, ``-1`` become
                                      :data:`DISLIKE_RATING` (1.0)
timestamp  timestamp, time, date,     optional; unix seconds (int or float, floored), or an ISO-8601
           datetime                   date or datetime (``2024-05-01``, ``2024-05-01T12:30:00Z``; no
                                      zone means UTC). If the column is absent, rows are timed by
                                      their order in the file; if it is present, a row without a
                                      timestamp is a bad row.
=========  =========================  ==============================================================

In JSONL the fields are named by the keys, resolved over the whole file: a file that uses ``id`` in one
row and ``item_id`` in another is refused as ambiguous, like a CSV with both columns.

Other columns are ignored and named in :attr:`ImportResult.ignored_columns`. Users are numbered in order
of first appearance. Repeated (user, item) pairs are kept: a log may legitimately hold re-ratings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

import numpy as np

from models.assets import atomic_write_bytes
from models.data.catalog import Catalog, Interactions
from models.data.fields import (
    CATALOG_FIELDS,
    DISLIKE_RATING,
    INTERACTION_FIELDS,
    LIKE_RATING,
    RowError,
    get,
    ignored,
    list_columns,
    optional_text,
    parse_feedback,
    parse_rating,
    parse_tags,
    parse_timestamp,
    parse_year,
    required_id,
    resolve_columns,
    split_title_year,
)
from models.data.rows import Record, RowProblem, cut, read_table
from models.errors import ImportFormatError

__all__ = [
    "DISLIKE_RATING",
    "LIKE_RATING",
    "BadRowsError",
    "ImportResult",
    "OnError",
    "RowProblem",
    "read_catalog",
    "read_interactions",
    "write_catalog_jsonl",
]

OnError = Literal["skip", "refuse"]
T = TypeVar("T")

_LISTED_PROBLEMS = 10


@dataclass
class ImportResult(Generic[T]):
    """What an import produced, with every row that was left out and why."""

    value: T
    problems: list[RowProblem] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    """Columns of the file that no field uses (their values were not imported)."""


class BadRowsError(ImportFormatError):
    """An import had bad rows and they were refused, or it had no usable row at all."""

    def __init__(self, message: str, *, hint: str = "", problems: Sequence[RowProblem] = ()) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems)


def read_catalog(path: Path | str, *, name: str, on_error: OnError = "skip") -> ImportResult[Catalog]:
    """Read a catalog (items with title, optional text, tags and year) from a CSV, TSV or JSONL file.

    Rows that are bad (missing id or title, a year that is not a whole number, an id already used by an
    earlier row, malformed CSV or JSON) are skipped and reported, or, with ``on_error="refuse"``, make the
    import fail.

    Raises:
        ImportFormatError: the file is missing, has an unknown extension, is not UTF-8, is empty, or lacks a
            required column.
        BadRowsError: ``on_error="refuse"`` and some row is bad, or no row at all is usable.
    """
    path = Path(path)
    table = read_table(path)
    if not table.records:
        _check_outcome(path, "catalog", 0, table.problems, on_error)
    columns = resolve_columns(path, table.columns, CATALOG_FIELDS, required=("id", "title"), kind="catalog")
    problems = list(table.problems)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    tags: list[list[str]] = []
    years: list[int | None] = []
    first_line: dict[str, int] = {}
    for record in table.records:
        try:
            item_id = required_id(get(record, columns, "id"), "item id", "every item needs an id")
            title = required_id(get(record, columns, "title"), "title", "every item needs a title")
            text = optional_text(get(record, columns, "text"), "text")
            item_tags = parse_tags(get(record, columns, "tags"))
            title, year = split_title_year(title, parse_year(get(record, columns, "year")))
            if item_id in first_line:
                raise RowError(
                    f"item id '{cut(item_id)}' already appeared on line {first_line[item_id]}; "
                    "each item needs a unique id (this later row was not imported)"
                )
        except RowError as exc:
            problems.append(_problem(record, str(exc)))
            continue
        first_line[item_id] = record.line
        ids.append(item_id)
        titles.append(title)
        texts.append(text or "")
        tags.append(item_tags)
        years.append(year)
    problems.sort(key=lambda p: p.line)
    _check_outcome(path, "catalog", len(ids), problems, on_error)
    catalog = Catalog(name=name, item_ids=ids, titles=titles, texts=texts, tags=tags, years=years)
    return ImportResult(catalog, problems, ignored(table.columns, columns))


def read_interactions(path: Path | str, *, catalog: Catalog, on_error: OnError = "skip") -> ImportResult[Interactions]:
    """Read an interaction log (user, item, rating or like/dislike, optional time) over ``catalog``.

    Accepts CSV, TSV, JSONL and RecBole ``.inter`` files (so MovieLens' ``ml-100k.inter`` imports as it is).
    Rows that are bad (missing user or item, an item not in ``catalog``, a rating that is not a number from
    1 to 5, feedback that is not like/dislike, an unreadable timestamp, malformed CSV or JSON) are skipped and
    reported, or, with ``on_error="refuse"``, make the import fail.

    Raises:
        ImportFormatError: the file is missing, has an unknown extension, is not UTF-8, is empty, lacks a
            required column, or has both a rating and a feedback column.
        BadRowsError: ``on_error="refuse"`` and some row is bad, or no row at all is usable.
    """
    path = Path(path)
    table = read_table(path)
    if not table.records:
        _check_outcome(path, "interaction log", 0, table.problems, on_error)
    columns = resolve_columns(path, table.columns, INTERACTION_FIELDS, required=("user", "item"), kind="log")
    if "rating" in columns and "feedback" in columns:
        raise ImportFormatError(
            f"Interaction log {path} has both a rating column ('{columns['rating']}') "
            f"and a like/dislike column ('{columns['feedback']}').",
            hint="Keep only one of them, or rename the one that should be ignored.",
        )
    if "rating" not in columns and "feedback" not in columns:
        raise ImportFormatError(
            f"Interaction log {path} has no rating column and no like/dislike column; "
            f"columns found: {list_columns(table.columns)}.",
            hint="Add a 'rating' column with numbers from 1 to 5, or a 'feedback' column with like/dislike.",
        )
    timed = "timestamp" in columns
    problems = list(table.problems)
    user_index: dict[str, int] = {}
    user_ids: list[str] = []
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    timestamps: list[int] = []
    for record in table.records:
        try:
            user = required_id(get(record, columns, "user"), "user", "every row needs a user")
            item = required_id(get(record, columns, "item"), "item", "every row needs an item id")
            if item not in catalog.index:
                raise RowError(
                    f"item '{cut(item)}' is not in catalog '{catalog.name}'; add it to the catalog or remove this row"
                )
            if "rating" in columns:
                rating = parse_rating(get(record, columns, "rating"))
            else:
                rating = parse_feedback(get(record, columns, "feedback"))
            timestamp = parse_timestamp(get(record, columns, "timestamp")) if timed else len(users)
        except RowError as exc:
            problems.append(_problem(record, str(exc)))
            continue
        if user not in user_index:
            user_index[user] = len(user_ids)
            user_ids.append(user)
        users.append(user_index[user])
        items.append(catalog.index[item])
        ratings.append(rating)
        timestamps.append(timestamp)
    problems.sort(key=lambda p: p.line)
    _check_outcome(path, "interaction log", len(users), problems, on_error)
    interactions = Interactions(
        user_ids=user_ids,
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.array(ratings, dtype=np.float32),
        timestamps=np.array(timestamps, dtype=np.int64),
    )
    return ImportResult(interactions, problems, ignored(table.columns, columns))


def write_catalog_jsonl(catalog: Catalog, path: Path | str) -> None:
    """Write ``catalog`` as JSONL that :func:`read_catalog` reads back to the same items, atomically.

    Each line is ``{"id", "title", "text", "tags", "year"}`` in catalog order, UTF-8, with a final newline.
    """
    lines = [
        json.dumps(
            {
                "id": catalog.item_ids[i],
                "title": catalog.titles[i],
                "text": catalog.texts[i],
                "tags": catalog.tags[i],
                "year": catalog.years[i],
            },
            ensure_ascii=False,
        )
        + "\n"
        for i in range(len(catalog))
    ]
    atomic_write_bytes(Path(path), "".join(lines).encode("utf-8"))


def _problem(record: Record, message: str) -> RowProblem:
    return RowProblem(record.line, message, record.raw)


def _check_outcome(path: Path, kind: str, kept: int, problems: list[RowProblem], on_error: OnError) -> None:
    if on_error not in ("skip", "refuse"):
        raise ValueError(f"on_error must be 'skip' or 'refuse', not {on_error!r}")
    if kept == 0:
        if not problems:
            raise ImportFormatError(
                f"The {kind} {path} has a header but no rows.",
                hint="Export the data again and check the file.",
            )
        raise BadRowsError(
            f"The {kind} {path} has no usable row: all {_rows(len(problems))} are bad.\n{_listing(problems)}",
            hint="Check that this is the right file and that its columns hold what they are named for.",
            problems=problems,
        )
    if problems and on_error == "refuse":
        raise BadRowsError(
            f"The {kind} {path} has {_rows(len(problems))} that cannot be imported; nothing was imported.\n"
            f"{_listing(problems)}",
            hint="Fix those lines and import again, or choose to skip bad rows (on_error='skip').",
            problems=problems,
        )


def _listing(problems: list[RowProblem]) -> str:
    shown = [f"  {problem}" for problem in problems[:_LISTED_PROBLEMS]]
    if len(problems) > _LISTED_PROBLEMS:
        shown.append(f"  … and {len(problems) - _LISTED_PROBLEMS} more ({len(problems)} bad rows in all)")
    return "\n".join(shown)


def _rows(count: int) -> str:
    return f"{count} bad row" if count == 1 else f"{count} bad rows"
