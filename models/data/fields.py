"""Columns and values of imported rows: which column holds each field, and each value parsed or refused.

A bad value raises :class:`RowError` with a message that says what is wrong and what to do; the importer
(:mod:`models.data.catalog_io`) turns it into a :class:`~models.data.rows.RowProblem` for that row.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from models.data.rows import Record, cut
from models.errors import ImportFormatError

LIKE_RATING = 5.0
"""The rating a "like" becomes."""
DISLIKE_RATING = 1.0
"""The rating a "dislike" becomes."""

_MAX_UNIX_SECONDS = 1e11  # about the year 5138: anything larger is almost surely milliseconds
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
YEAR_IN_TITLE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
"""A title that ends in its year in brackets, ``Alien (1979)``, as film catalogs often write it."""

CATALOG_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "item_id", "itemId", "item"),
    "title": ("title", "name"),
    "text": ("text", "description"),
    "tags": ("tags", "tag", "genres", "genre"),
    "year": ("year",),
}
INTERACTION_FIELDS: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId"),
    "item": ("item", "item_id", "itemId"),
    "rating": ("rating",),
    "feedback": ("feedback", "like", "liked"),
    "timestamp": ("timestamp", "time", "date", "datetime"),
}
_LABELS = {
    "id": "item id",
    "title": "title",
    "text": "text",
    "tags": "tags",
    "year": "year",
    "user": "user",
    "item": "item",
    "rating": "rating",
    "feedback": "like/dislike feedback",
    "timestamp": "timestamp",
}
_LIKES = {"like", "liked", "true", "yes", "1", "+1", "1.0", "+1.0"}
_DISLIKES = {"dislike", "disliked", "false", "no", "0", "-1", "0.0", "-1.0"}


class RowError(Exception):
    """A value in a row is bad; the message says what is wrong and what to do."""


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def resolve_columns(
    path: Path,
    found: list[str],
    fields: dict[str, tuple[str, ...]],
    *,
    required: tuple[str, ...],
    kind: Literal["catalog", "log"],
) -> dict[str, str]:
    """Map each field to the one column of the file that holds it."""
    resolved: dict[str, str] = {}
    noun = "Catalog" if kind == "catalog" else "Interaction log"
    for key, aliases in fields.items():
        wanted = {_norm(alias) for alias in aliases}
        matches = [column for column in found if column.strip() and _norm(column) in wanted]
        if len(matches) > 1:
            shown = ", ".join(f"'{column}'" for column in matches)
            raise ImportFormatError(
                f"{noun} {path} has several columns for the {_LABELS[key]}: {shown}.",
                hint="Keep only one of them, or rename the others.",
            )
        if matches:
            resolved[key] = matches[0]
    for key in required:
        if key not in resolved:
            accepted = ", ".join(fields[key])
            raise ImportFormatError(
                f"{noun} {path} has no {_LABELS[key]} column (accepted names: {accepted}); "
                f"columns found: {list_columns(found)}.",
                hint=f"Add a '{fields[key][0]}' column, or rename the column that holds the {_LABELS[key]}.",
            )
    return resolved


def list_columns(found: list[str]) -> str:
    """The named columns of a file, quoted, for a message."""
    named = [f"'{column}'" for column in found if column.strip()]
    return ", ".join(named) if named else "none"


def ignored(found: list[str], resolved: dict[str, str]) -> list[str]:
    """The named columns that no field uses."""
    used = set(resolved.values())
    return [column for column in found if column.strip() and column not in used]


def get(record: Record, columns: dict[str, str], key: str) -> object:
    """The record's value of a field, or None when the file has no column for it."""
    column = columns.get(key)
    return None if column is None else record.values.get(column)


def required_id(value: object, label: str, why: str) -> str:
    """A required text value (an id, a title); a missing one is a bad row, ``why`` says why it is needed."""
    text = optional_text(value, label)
    if text is None:
        raise RowError(f"{label} is missing; {why}")
    return text


def optional_text(value: object, label: str) -> str | None:
    """A string value stripped of outer spaces, or None when absent or blank. JSON integers are accepted."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{label} must be text, not {show(value)}")


def parse_tags(value: object) -> list[str]:
    """Tags from a separated string or a JSON list of strings, stripped and without repeats."""
    if value is None:
        return []
    if isinstance(value, str):
        separator = next((sep for sep in "|;," if sep in value), None)
        parts = value.split(separator) if separator else [value]
    elif isinstance(value, list):
        parts = []
        for tag in value:
            if not isinstance(tag, str):
                raise RowError(f"tags must be a list of strings, but it holds {show(tag)}")
            parts.append(tag)
    else:
        raise RowError(f"tags must be a list of strings or a '|'-separated string, not {show(value)}")
    return list(dict.fromkeys(tag.strip() for tag in parts if tag.strip()))


def split_title_year(title: str, year: int | None) -> tuple[str, int | None]:
    """``("Alien (1979)", None)`` → ``("Alien", 1979)``: a title ending in a year in brackets gives the item its year
    when no year column does, and drops the bracket when the column says the same year (so it is not shown twice).
    A bracket that disagrees with the year column, or that is the whole title, is left as it is."""
    match = YEAR_IN_TITLE.match(title)
    if not match or not match["title"].strip():
        return title, year
    found = int(match["year"])
    return (match["title"], found) if year in (None, found) else (title, year)


def parse_year(value: object) -> int | None:
    """A whole-number year, or None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.match(text):
            return int(text)
        if _NUMBER.match(text) and float(text).is_integer():
            return int(float(text))
    raise RowError(f"year {show(value)} is not a whole number; give a year like 1999 or leave it empty")


def _number(value: object) -> float | None:
    """The value as a finite float, or None if it is not a plain number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value.strip())
    else:
        return None
    return number if math.isfinite(number) else None


def parse_rating(value: object) -> float:
    """A rating from 1 to 5."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("rating is missing; give a number from 1 to 5")
    number = _number(value)
    if number is None or not 1.0 <= number <= 5.0:
        raise RowError(f"rating {show(value)} is not a number from 1 to 5")
    return number


def parse_feedback(value: object) -> float:
    """Like / dislike feedback as :data:`LIKE_RATING` or :data:`DISLIKE_RATING`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("feedback is missing; give like or dislike")
    if isinstance(value, bool):
        return LIKE_RATING if value else DISLIKE_RATING
    key = str(value).strip().lower() if isinstance(value, str | int | float) else ""
    if key in _LIKES:
        return LIKE_RATING
    if key in _DISLIKES:
        return DISLIKE_RATING
    raise RowError(f"feedback {show(value)} is not like or dislike; use like/dislike, 1/0, true/false or +1/-1")


def parse_timestamp(value: object) -> int:
    """Unix seconds (floored) from a number or an ISO-8601 date or datetime (no zone means UTC)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(
            "timestamp is missing; give unix seconds or an ISO-8601 date (or drop the column to use row order)"
        )
    number = _number(value)
    if number is not None:
        if abs(number) >= _MAX_UNIX_SECONDS:
            raise RowError(f"timestamp {show(value)} is too large for unix seconds (milliseconds?); give seconds")
        return math.floor(number)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return math.floor(moment.timestamp())
    raise RowError(
        f"timestamp {show(value)} is neither unix seconds nor an ISO-8601 date like 2024-05-01 or 2024-05-01T12:30:00Z"
    )


def show(value: object) -> str:
    """A value as a message quotes it: a string in quotes, anything else as JSON, both cut short."""
    if isinstance(value, str):
        return f"'{cut(value.strip())}'"
    return cut(json.dumps(value, ensure_ascii=False))
