"""``agent import``: bring a person's history or a catalog into the profile store.

What a file is, is read from its header:

* **history** — columns for user and item (CSV/TSV/JSONL, or a RecBole ``.inter`` such as ``ml-100k.inter``),
  read with :func:`models.data.catalog_io.read_interactions` over the active catalog (or ``--catalog``). A log with
  several users needs ``--user`` to say whose rows are this person's.
* **Letterboxd export** — a CSV with ``Name`` (and usually ``Date``, ``Year``, ``Rating`` of 0.5-5 stars) and no
  item id: each title (+ year, ±1) is matched to the catalog; rows that match nothing are listed as unmatched.
* **catalog** — columns for item id and title, read with :func:`models.data.catalog_io.read_catalog`; it is copied
  into the profile (``catalogs/NAME.jsonl``, written atomically, encrypted in an encrypted profile), embedded, and
  becomes the active catalog.

Bad rows are skipped and reported with their line numbers; a file with no usable row is refused.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.engine.catalogs import catalog_vectors
from agent.engine.profile import Profile
from agent.store.profile_store import ProfileStore
from models.data.catalog_io import RowProblem, read_catalog, read_interactions
from models.errors import ImportFormatError

_ITEM_COLUMNS = {"id", "itemid", "item"}
_USER_COLUMNS = {"user", "userid"}
_TITLE_COLUMNS = {"title", "name"}


def _norm(name: str) -> str:
    return "".join(c for c in name.split(":", 1)[0].casefold() if c not in "_- ")


def sniff_columns(path: Path) -> list[str]:
    """The normalised column names of a CSV/TSV/.inter/JSONL file (from its header or first JSON object)."""
    if not path.is_file():
        raise ImportFormatError(f"There is no file {path}.", hint="Check the path.")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                for line in handle:
                    if line.strip():
                        first = json.loads(line)
                        return [_norm(k) for k in first] if isinstance(first, dict) else []
                return []
            delimiter = "," if path.suffix.lower() == ".csv" else "\t"
            header = next(csv.reader(handle, delimiter=delimiter), [])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImportFormatError(f"{path} is not a UTF-8 CSV, TSV or JSONL file: {exc}") from exc
    return [_norm(c) for c in header]


def import_file(
    store: ProfileStore, path: Path, *, catalog: str | None = None, user: str | None = None
) -> dict[str, Any]:
    """Import ``path`` into ``store``; returns a JSON-ready report (kind, catalog, imported, problems, unmatched)."""
    columns = set(sniff_columns(path))
    if columns & _USER_COLUMNS and columns & _ITEM_COLUMNS:
        return _import_history(store, path, catalog=catalog, user=user)
    if "name" in columns and not columns & _ITEM_COLUMNS:
        return _import_letterboxd(store, path, catalog=catalog)
    if columns & _ITEM_COLUMNS and columns & _TITLE_COLUMNS:
        return _import_catalog(store, path, name=catalog or path.stem)
    raise ImportFormatError(
        f"{path} is neither a history (user, item, rating), a Letterboxd export (Date, Name, Year, Rating) nor a "
        f"catalog (id, title); its columns are: {', '.join(sorted(columns)) or 'none'}.",
        hint="See `agent import --help` and the README for the formats.",
    )


def _report(kind: str, catalog: str, imported: int, problems: list[Any], unmatched: list[str]) -> dict[str, Any]:
    return {
        "kind": kind,
        "catalog": catalog,
        "imported": imported,
        "problems": [{"line": p.line, "message": p.message} for p in problems],
        "unmatched": unmatched,
    }


def _import_history(store: ProfileStore, path: Path, *, catalog: str | None, user: str | None) -> dict[str, Any]:
    profile = Profile.load(store, catalog)
    result = read_interactions(path, catalog=profile.catalog)
    log = result.value
    if user is None:
        if log.n_users > 1:
            raise ImportFormatError(
                f"{path} holds {log.n_users} users' rows.",
                hint=f"Say whose rows are yours with --user (e.g. --user {log.user_ids[0]}).",
            )
        user = log.user_ids[0]
    if user not in log.user_ids:
        raise ImportFormatError(
            f"{path} has no rows of user {user!r}.", hint=f"Users in it: {', '.join(log.user_ids[:10])}"
        )
    mine = log.users == log.user_ids.index(user)
    name = profile.catalog.name
    rows = [
        (name, profile.catalog.item_ids[int(i)], "rating", float(r), int(t), f"import:{path.name}")
        for i, r, t in zip(log.items[mine], log.ratings[mine], log.timestamps[mine], strict=True)
    ]
    store.add_interactions(rows)
    return _report("history", name, len(rows), result.problems, [])


def _import_letterboxd(store: ProfileStore, path: Path, *, catalog: str | None) -> dict[str, Any]:
    profile = Profile.load(store, catalog)
    problems: list[RowProblem] = []
    unmatched: list[str] = []
    rows: list[tuple[str, str, str, float | None, int | None, str]] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = {_norm(f): f for f in reader.fieldnames or []}
        line = reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num

            def get(key: str, record: dict[str, str] = record) -> str:
                return (record.get(fields[key]) or "").strip() if key in fields else ""

            raw = ",".join(v or "" for v in record.values() if isinstance(v, str))[:200]
            title, year_text, rating_text, date_text = get("name"), get("year"), get("rating"), get("date")
            if not any((title, year_text, rating_text, date_text)):
                continue
            try:
                if not title:
                    raise ValueError("every row needs a Name")
                year = int(year_text) if year_text else None
                rating = float(rating_text) if rating_text else None
                if rating is not None and not 0.5 <= rating <= 5.0:
                    raise ValueError(f"Rating {rating_text} is outside 0.5-5 stars")
                ts = int(datetime.fromisoformat(date_text).replace(tzinfo=UTC).timestamp()) if date_text else None
            except ValueError as exc:
                message = str(exc) if "Name" in str(exc) or "stars" in str(exc) else f"unreadable value: {exc}"
                problems.append(RowProblem(line=start, message=message, raw=raw))
                continue
            index = profile.match_title(title, year)
            if index is None:
                unmatched.append(f"{title} ({year})" if year else title)
                continue
            kind = "rating" if rating is not None else "watched"
            rows.append(
                (profile.catalog.name, profile.catalog.item_ids[index], kind, rating, ts, f"import:{path.name}")
            )
    if not rows and not unmatched:
        raise ImportFormatError(
            f"No usable row in {path}: " + "; ".join(str(p) for p in problems[:5]),
            hint="A Letterboxd export has the columns Date, Name, Year, Rating.",
        )
    store.add_interactions(rows)
    return _report("letterboxd", profile.catalog.name, len(rows), problems, unmatched)


def _import_catalog(store: ProfileStore, path: Path, *, name: str) -> dict[str, Any]:
    if name == "ml-100k":
        raise ImportFormatError("The name ml-100k belongs to the built-in catalog.", hint="Choose another --catalog.")
    result = read_catalog(path, name=name)
    catalog = result.value
    lines = [
        json.dumps(
            {"id": item, "title": title, "text": text, "tags": tags, "year": year},
            ensure_ascii=False,
        )
        for item, title, text, tags, year in zip(
            catalog.item_ids, catalog.titles, catalog.texts, catalog.tags, catalog.years, strict=True
        )
    ]
    store.write_catalog(name, ("\n".join(lines) + "\n").encode("utf-8"), n_items=len(catalog))
    catalog_vectors(catalog)
    store.set_meta("active_catalog", name)
    return _report("catalog", name, len(result.value), result.problems, [])
