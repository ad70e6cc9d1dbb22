"""Reading an import file into rows: the format from the extension, UTF-8 text, CSV / TSV / RecBole or JSONL.

Each usable row becomes a :class:`Record` (its values by column, its line and its text); each malformed one a
:class:`RowProblem`. What the rows mean is :mod:`models.data.fields`'s and :mod:`models.data.catalog_io`'s.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.errors import ImportFormatError

RAW_LIMIT = 200

_Format = Literal["csv", "tsv", "jsonl"]
_FORMATS: dict[str, tuple[_Format, bool]] = {  # extension -> (format, always RecBole)
    ".csv": ("csv", False),
    ".tsv": ("tsv", False),
    ".inter": ("tsv", True),
    ".jsonl": ("jsonl", False),
    ".ndjson": ("jsonl", False),
}
_RECBOLE_HEADER = re.compile(r"^[^:\s]+:(token|token_seq|float|float_seq)$")


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
class Record:
    """One row: its first physical line, its text (cut) and its values by column."""

    line: int
    raw: str
    values: dict[str, object]


@dataclass
class Table:
    """A file's columns, its usable rows and the rows that could not be read."""

    columns: list[str]
    records: list[Record]
    problems: list[RowProblem]


def read_table(path: Path) -> Table:
    """The rows of an import file, in the format its extension names."""
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


def _read_delimited(path: Path, text: str, delimiter: str, recbole: bool) -> Table:
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
    records: list[Record] = []
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
            problems.append(RowProblem(begin + 1, message, cut(raw.rstrip("\r\n"), RAW_LIMIT)))
            continue
        begin, end = start + consumed, start + reader.line_num
        consumed = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        raw = cut("".join(lines[begin:end]).rstrip("\r\n"), RAW_LIMIT)
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
        records.append(Record(begin + 1, raw, dict(zip(header, row, strict=False))))
    return Table(header, records, problems)


def _read_jsonl(path: Path, text: str) -> Table:
    columns: dict[str, None] = {}
    records: list[Record] = []
    problems: list[RowProblem] = []
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        content = line.rstrip("\r\n")
        if not content.strip():
            continue
        raw = cut(content, RAW_LIMIT)
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
        records.append(Record(number, raw, obj))
    if not records and not problems:
        raise _empty(path)
    return Table(list(columns), records, problems)


def _empty(path: Path) -> ImportFormatError:
    return ImportFormatError(f"Import file {path} is empty.", hint="Export the data again and check the file.")


def cut(text: str, limit: int = 40) -> str:
    """``text``, shortened to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
