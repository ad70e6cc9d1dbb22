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
year       year                       optional whole number
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

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, Literal, TypeVar

import numpy as np

from models.assets import atomic_write_bytes
from models.data.catalog import Catalog, Interactions
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

LIKE_RATING = 5.0
"""The rating a "like" becomes."""
DISLIKE_RATING = 1.0
"""The rating a "dislike" becomes."""

OnError = Literal["skip", "refuse"]
T = TypeVar("T")

_RAW_LIMIT = 200
_LISTED_PROBLEMS = 10
_MAX_UNIX_SECONDS = 1e11  # about the year 5138: anything larger is almost surely milliseconds

_Format = Literal["csv", "tsv", "jsonl"]
_FORMATS: dict[str, tuple[_Format, bool]] = {  # extension -> (format, always RecBole)
    ".csv": ("csv", False),
    ".tsv": ("tsv", False),
    ".inter": ("tsv", True),
    ".jsonl": ("jsonl", False),
    ".ndjson": ("jsonl", False),
}
_RECBOLE_HEADER = re.compile(r"^[^:\s]+:(token|token_seq|float|float_seq)$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")

_CATALOG_FIELDS: dict[str, tuple[str, ...]] = {
    "id": ("id", "item_id", "itemId", "item"),
    "title": ("title", "name"),
    "text": ("text", "description"),
    "tags": ("tags", "tag", "genres", "genre"),
    "year": ("year",),
}
_INTERACTION_FIELDS: dict[str, tuple[str, ...]] = {
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


@dataclass(frozen=True)
class RowProblem:
    """One bad row: where it is, what is wrong with it (and what to do), and its text."""

    line: int
    """1-based physical line number in the file, counting the header; a row spanning lines gives its first."""
    message: str
    raw: str
    """The row as it appears in the file, cut to 200 characters."""

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


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


class _RowError(Exception):
    """A value in a row is bad; the message says what is wrong and what to do."""


@dataclass
class _Record:
    line: int
    raw: str
    values: dict[str, object]


@dataclass
class _Table:
    columns: list[str]
    records: list[_Record]
    problems: list[RowProblem]


# --------------------------------------------------------------------------------------------- public API


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
    table = _read_table(path)
    if not table.records:
        _check_outcome(path, "catalog", 0, table.problems, on_error)
    columns = _resolve_columns(path, table.columns, _CATALOG_FIELDS, required=("id", "title"), kind="catalog")
    problems = list(table.problems)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    tags: list[list[str]] = []
    years: list[int | None] = []
    first_line: dict[str, int] = {}
    for record in table.records:
        try:
            item_id = _required_id(_get(record, columns, "id"), "item id", "every item needs an id")
            title = _required_id(_get(record, columns, "title"), "title", "every item needs a title")
            text = _optional_text(_get(record, columns, "text"), "text")
            item_tags = _parse_tags(_get(record, columns, "tags"))
            year = _parse_year(_get(record, columns, "year"))
            if item_id in first_line:
                raise _RowError(
                    f"item id '{_cut(item_id)}' already appeared on line {first_line[item_id]}; "
                    "each item needs a unique id (this later row was not imported)"
                )
        except _RowError as exc:
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
    return ImportResult(catalog, problems, _ignored(table.columns, columns))


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
    table = _read_table(path)
    if not table.records:
        _check_outcome(path, "interaction log", 0, table.problems, on_error)
    columns = _resolve_columns(path, table.columns, _INTERACTION_FIELDS, required=("user", "item"), kind="log")
    if "rating" in columns and "feedback" in columns:
        raise ImportFormatError(
            f"Interaction log {path} has both a rating column ('{columns['rating']}') "
            f"and a like/dislike column ('{columns['feedback']}').",
            hint="Keep only one of them, or rename the one that should be ignored.",
        )
    if "rating" not in columns and "feedback" not in columns:
        raise ImportFormatError(
            f"Interaction log {path} has no rating column and no like/dislike column; "
            f"columns found: {_list_columns(table.columns)}.",
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
            user = _required_id(_get(record, columns, "user"), "user", "every row needs a user")
            item = _required_id(_get(record, columns, "item"), "item", "every row needs an item id")
            if item not in catalog.index:
                raise _RowError(
                    f"item '{_cut(item)}' is not in catalog '{catalog.name}'; add it to the catalog or remove this row"
                )
            if "rating" in columns:
                rating = _parse_rating(_get(record, columns, "rating"))
            else:
                rating = _parse_feedback(_get(record, columns, "feedback"))
            timestamp = _parse_timestamp(_get(record, columns, "timestamp")) if timed else len(users)
        except _RowError as exc:
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
    return ImportResult(interactions, problems, _ignored(table.columns, columns))


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


# --------------------------------------------------------------------------------------------- reading files


def _read_table(path: Path) -> _Table:
    fmt, recbole = _detect_format(path)
    text = _read_text(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text, "," if fmt == "csv" else "\t", recbole)


def _detect_format(path: Path) -> tuple[_Format, bool]:
    suffix = path.suffix.lower()
    if suffix in _FORMATS:
        return _FORMATS[suffix]
    hint = "Use a .csv, .tsv, .jsonl (or .ndjson) file, or a RecBole .inter file."
    if suffix == ".json":
        hint = "Write one JSON object per line and name the file .jsonl; a single JSON array is not read. " + hint
    shown = f"'{path.suffix}'" if path.suffix else "no extension"
    raise ImportFormatError(f"Cannot tell the format of {path}: {shown} is not a known import format.", hint=hint)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImportFormatError(f"Import file {path} does not exist.", hint="Check the path.") from None
    except IsADirectoryError:
        raise ImportFormatError(f"{path} is a folder, not a file.", hint="Give the path of the file.") from None
    except OSError as exc:
        raise ImportFormatError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    save_as_utf8 = "Save the file as UTF-8 (in Excel: 'CSV UTF-8'; in most editors: 'Save with encoding UTF-8')."
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ImportFormatError(f"{path} is UTF-16 or UTF-32 text, not UTF-8.", hint=save_as_utf8)
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise ImportFormatError(
            f"{path} is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) "
            "cannot be decoded.",
            hint=save_as_utf8,
        ) from None


def _read_delimited(path: Path, text: str, delimiter: str, recbole: bool) -> _Table:
    lines = list(io.StringIO(text, newline=""))
    header_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_at is None:
        raise _empty(path)
    header = next(csv.reader([lines[header_at]], delimiter=delimiter))
    header = [cell.strip() for cell in header]
    if header and all(_RECBOLE_HEADER.match(cell) for cell in header):
        recbole = True
    if recbole:
        header = [cell.split(":", 1)[0] for cell in header]
    what = "tab" if delimiter == "\t" else "comma"
    start = header_at + 1
    rest = iter(lines[start:])
    if recbole:
        reader = csv.reader(rest, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(rest, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=True)
    records: list[_Record] = []
    problems: list[RowProblem] = []
    consumed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            begin, end = start + consumed, start + reader.line_num
            consumed = reader.line_num
            raw = "".join(lines[begin:end])
            if "unexpected end of data" in str(exc):
                message = (
                    f"a quoted value opened here is never closed, so lines {begin + 1}-{end} were read "
                    "as one row and not imported; close the quote (and double any quote inside a value)"
                )
            else:
                message = (
                    f"the row's quoting is broken ({exc}); put quotes around the whole value and double any "
                    "quote inside it"
                )
            problems.append(RowProblem(begin + 1, message, _cut(raw.rstrip("\r\n"), _RAW_LIMIT)))
            continue
        begin, end = start + consumed, start + reader.line_num
        consumed = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        raw = _cut("".join(lines[begin:end]).rstrip("\r\n"), _RAW_LIMIT)
        extra = row[len(header) :]
        if any(cell.strip() for cell in extra):
            problems.append(
                RowProblem(
                    begin + 1,
                    f"row has {len(row)} fields but the header has {len(header)}; "
                    f"quote values that contain a {what}, or remove the extra fields",
                    raw,
                )
            )
            continue
        records.append(_Record(begin + 1, raw, dict(zip(header, row, strict=False))))
    return _Table(header, records, problems)


def _read_jsonl(path: Path, text: str) -> _Table:
    columns: dict[str, None] = {}
    records: list[_Record] = []
    problems: list[RowProblem] = []
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        content = line.rstrip("\r\n")
        if not content.strip():
            continue
        raw = _cut(content, _RAW_LIMIT)
        try:
            obj = json.loads(content)
        except json.JSONDecodeError as exc:
            problems.append(
                RowProblem(
                    number,
                    f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
                    raw,
                )
            )
            continue
        if not isinstance(obj, dict):
            problems.append(
                RowProblem(
                    number,
                    f"is a JSON {_json_type(obj)}, not an object; each line must be one JSON object",
                    raw,
                )
            )
            continue
        columns.update(dict.fromkeys(obj))
        records.append(_Record(number, raw, obj))
    if not records and not problems:
        raise _empty(path)
    return _Table(list(columns), records, problems)


def _empty(path: Path) -> ImportFormatError:
    return ImportFormatError(f"Import file {path} is empty.", hint="Export the data again and check the file.")


# --------------------------------------------------------------------------------------------- columns


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def _resolve_columns(
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
                f"columns found: {_list_columns(found)}.",
                hint=f"Add a '{fields[key][0]}' column, or rename the column that holds the {_LABELS[key]}.",
            )
    return resolved


def _list_columns(found: list[str]) -> str:
    named = [f"'{column}'" for column in found if column.strip()]
    return ", ".join(named) if named else "none"


def _ignored(found: list[str], resolved: dict[str, str]) -> list[str]:
    used = set(resolved.values())
    return [column for column in found if column.strip() and column not in used]


def _get(record: _Record, columns: dict[str, str], key: str) -> object:
    column = columns.get(key)
    return None if column is None else record.values.get(column)


# --------------------------------------------------------------------------------------------- values


def _required_id(value: object, label: str, why: str) -> str:
    text = _optional_text(value, label)
    if text is None:
        raise _RowError(f"{label} is missing; {why}")
    return text


def _optional_text(value: object, label: str) -> str | None:
    """A string value stripped of outer spaces, or None when absent or blank. JSON integers are accepted."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _RowError(f"{label} must be text, not {_show(value)}")


def _parse_tags(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        separator = next((sep for sep in "|;," if sep in value), None)
        parts = value.split(separator) if separator else [value]
    elif isinstance(value, list):
        parts = []
        for tag in value:
            if not isinstance(tag, str):
                raise _RowError(f"tags must be a list of strings, but it holds {_show(tag)}")
            parts.append(tag)
    else:
        raise _RowError(f"tags must be a list of strings or a '|'-separated string, not {_show(value)}")
    return list(dict.fromkeys(tag.strip() for tag in parts if tag.strip()))


def _parse_year(value: object) -> int | None:
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
    raise _RowError(f"year {_show(value)} is not a whole number; give a year like 1999 or leave it empty")


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


def _parse_rating(value: object) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowError("rating is missing; give a number from 1 to 5")
    number = _number(value)
    if number is None or not 1.0 <= number <= 5.0:
        raise _RowError(f"rating {_show(value)} is not a number from 1 to 5")
    return number


def _parse_feedback(value: object) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowError("feedback is missing; give like or dislike")
    if isinstance(value, bool):
        return LIKE_RATING if value else DISLIKE_RATING
    key = str(value).strip().lower() if isinstance(value, str | int | float) else ""
    if key in _LIKES:
        return LIKE_RATING
    if key in _DISLIKES:
        return DISLIKE_RATING
    raise _RowError(f"feedback {_show(value)} is not like or dislike; use like/dislike, 1/0, true/false or +1/-1")


def _parse_timestamp(value: object) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowError(
            "timestamp is missing; give unix seconds or an ISO-8601 date (or drop the column to use row order)"
        )
    number = _number(value)
    if number is not None:
        if abs(number) >= _MAX_UNIX_SECONDS:
            raise _RowError(f"timestamp {_show(value)} is too large for unix seconds (milliseconds?); give seconds")
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
    raise _RowError(
        f"timestamp {_show(value)} is neither unix seconds nor an ISO-8601 date like 2024-05-01 or 2024-05-01T12:30:00Z"
    )


# --------------------------------------------------------------------------------------------- reporting


def _problem(record: _Record, message: str) -> RowProblem:
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


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: object) -> str:
    if isinstance(value, str):
        return f"'{_cut(value.strip())}'"
    return _cut(json.dumps(value, ensure_ascii=False))


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
