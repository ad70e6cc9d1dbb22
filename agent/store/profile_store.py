"""The person's profile on this device (:class:`ProfileStore`): interactions, catalogs, adapters, the egress
ledger, the local training runs and the eligibility checks of scheduled syncs, over the profile database
(:mod:`agent.store.database`) and its adapter files (:mod:`agent.store.adapters`). Imported catalogs are kept as
``catalogs/NAME.jsonl`` in the data folder, written atomically and encrypted like the rest in an encrypted profile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import ProfileError
from agent.store.adapters import AdapterStore
from agent.store.files import profile_files, sha256_hex
from agent.store.records import Interaction
from models.assets import atomic_write_bytes

CATALOGS_DIR = "catalogs"
BUILT_IN_CATALOG = "ml-100k"
KEEP_ELIGIBILITY_CHECKS = 500
"""How many eligibility checks of scheduled syncs the profile keeps (the oldest are deleted)."""


class ProfileStore(AdapterStore):
    """The person's profile on this device. Open with :meth:`open`; thread-safe; use as a context manager."""

    @property
    def active_catalog(self) -> str:
        """The catalog suggestions come from (``ml-100k`` unless the person chose an imported one)."""
        return self.get_meta("active_catalog") or BUILT_IN_CATALOG

    # -- interactions ----------------------------------------------------------------------------------------
    def add_interaction(
        self, catalog: str, item_id: str, *, kind: str, rating: float | None, source: str, ts: int | None = None
    ) -> int:
        """Record one piece of feedback; returns its row id."""
        return self.add_interactions([(catalog, item_id, kind, rating, ts, source)])[0]

    def add_interactions(self, rows: Sequence[tuple[str, str, str, float | None, int | None, str]]) -> list[int]:
        """Record many (catalog, item, kind, rating, ts or None, source) rows in one transaction."""
        now = int(time.time())
        ids: list[int] = []
        with self._write() as conn:
            for catalog, item_id, kind, rating, ts, source in rows:
                cursor = conn.execute(
                    "INSERT INTO interactions (catalog, item_id, kind, rating, ts, source) VALUES (?, ?, ?, ?, ?, ?)",
                    (catalog, item_id, kind, rating, now if ts is None else ts, source),
                )
                ids.append(int(cursor.lastrowid or 0))
        return ids

    def interactions(self, catalog: str | None = None) -> list[Interaction]:
        """Feedback in time order (ties by insertion order), optionally for one catalog only."""
        sql = "SELECT * FROM interactions"
        params: tuple[str, ...] = ()
        if catalog is not None:
            sql += " WHERE catalog = ?"
            params = (catalog,)
        rows = self._read(sql + " ORDER BY ts, id", params)
        return [
            Interaction(
                id=int(r["id"]),
                catalog=str(r["catalog"]),
                item_id=str(r["item_id"]),
                kind=str(r["kind"]),
                rating=None if r["rating"] is None else float(r["rating"]),
                ts=int(r["ts"]),
                source=str(r["source"]),
            )
            for r in rows
        ]

    def latest_feedback(self, catalog: str) -> dict[str, Interaction]:
        """The most recent interaction per item of ``catalog`` (a re-rating replaces the earlier one)."""
        latest: dict[str, Interaction] = {}
        for interaction in self.interactions(catalog):
            latest.pop(interaction.item_id, None)
            latest[interaction.item_id] = interaction
        return latest

    def forget(self, catalog: str, item_id: str) -> int:
        """Delete every interaction with one item; returns how many rows went."""
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM interactions WHERE catalog = ? AND item_id = ?", (catalog, item_id))
            return int(cursor.rowcount)

    def delete_interactions_from(self, source: str) -> int:
        """Delete every interaction recorded by ``source`` (e.g. ``demo``); returns how many rows went."""
        with self._write() as conn:
            return int(conn.execute("DELETE FROM interactions WHERE source = ?", (source,)).rowcount)

    # -- catalogs --------------------------------------------------------------------------------------------
    def catalog_file(self, name: str) -> Path:
        """Where an imported catalog named ``name`` is kept (encrypted like the rest in an encrypted profile)."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "catalog"
        return self.folder / CATALOGS_DIR / (f"{safe}.jsonl.enc" if self._cipher else f"{safe}.jsonl")

    def write_catalog(self, name: str, jsonl: bytes, *, n_items: int) -> None:
        """Store an imported catalog's JSONL (atomically; encrypted when the profile is) and record its checksum."""
        stored = self._cipher.encrypt(jsonl, f"catalog:{name}") if self._cipher else jsonl
        file = self.catalog_file(name)
        atomic_write_bytes(file, stored)
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO catalogs VALUES (?, 'imported', ?, ?, ?, ?)",
                (name, str(file.relative_to(self.folder)), sha256_hex(stored), n_items, int(time.time())),
            )

    def read_catalog(self, name: str) -> bytes:
        """The JSONL of an imported catalog, after checking its checksum (and decrypting)."""
        rows = self._read("SELECT file, sha256 FROM catalogs WHERE name = ?", (name,))
        if not rows:
            raise ProfileError(f"There is no imported catalog named {name!r}.")
        path = self.folder / str(rows[0]["file"])
        try:
            stored = path.read_bytes()
        except FileNotFoundError:
            raise ProfileError(f"The catalog file {path} is missing.", hint=f"Import {name} again.") from None
        if sha256_hex(stored) != rows[0]["sha256"]:
            raise ProfileError(f"The catalog file {path} does not match its checksum.", hint=f"Import {name} again.")
        return self._cipher.decrypt(stored, f"catalog:{name}") if self._cipher else stored

    def catalogs(self) -> list[dict[str, Any]]:
        """The built-in catalog and every imported one."""
        built_in = {"name": BUILT_IN_CATALOG, "kind": "built-in", "file": None, "sha256": None, "n_items": 1682}
        rows = self._read("SELECT name, kind, file, sha256, n_items FROM catalogs ORDER BY name")
        return [built_in, *[dict(r) for r in rows]]

    # -- egress ledger ---------------------------------------------------------------------------------------
    def append_egress(self, entry: dict[str, Any]) -> int:
        """Append one sync round to the egress ledger.

        Known keys: ``round``, ``bytes_sent``, ``bytes_received``, ``clip`` (C), ``sigma`` (σ), ``cohort``,
        ``epsilon`` (ε spent so far), ``ts`` (unix seconds; default now). Other keys are kept as ``extra``.
        """
        known = ("round", "bytes_sent", "bytes_received", "clip", "sigma", "cohort", "epsilon")
        extra = {k: v for k, v in entry.items() if k not in (*known, "ts")}
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO egress (ts, round, bytes_sent, bytes_received, clip, sigma, cohort, epsilon, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    int(entry.get("ts") or time.time()),
                    entry.get("round"),
                    int(entry.get("bytes_sent") or 0),
                    int(entry.get("bytes_received") or 0),
                    entry.get("clip"),
                    entry.get("sigma"),
                    entry.get("cohort"),
                    entry.get("epsilon"),
                    json.dumps(extra, sort_keys=True),
                ),
            )
            return int(cursor.lastrowid or 0)

    def egress_entries(self) -> list[dict[str, Any]]:
        """Every ledger entry, oldest first, as dicts with the keys :meth:`append_egress` documents."""
        rows = self._read("SELECT * FROM egress ORDER BY id")
        entries = []
        for r in rows:
            entry = {k: r[k] for k in r.keys() if k not in ("extra", "id")}  # noqa: SIM118 (sqlite3.Row)
            entry.update(json.loads(r["extra"]))
            entries.append(entry)
        return entries

    # -- training runs ---------------------------------------------------------------------------------------
    def record_training(self, *, adapter: str, n_examples: int, mean_loss: float, seconds: float) -> None:
        """Note that a local training run finished."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO training_runs (finished_at, adapter, n_examples, mean_loss, seconds) "
                "VALUES (?, ?, ?, ?, ?)",
                (int(time.time()), adapter, n_examples, mean_loss, seconds),
            )

    def last_training(self) -> dict[str, Any] | None:
        """The most recent local training run, or None."""
        rows = self._read("SELECT * FROM training_runs ORDER BY id DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    # -- eligibility checks of scheduled syncs -----------------------------------------------------------------
    def record_eligibility(self, *, ts: float, eligible: bool, checks: Sequence[Mapping[str, Any]]) -> int:
        """Record one eligibility check (each check a ``name``/``ok``/``reason`` mapping); returns its id.

        Only the newest :data:`KEEP_ELIGIBILITY_CHECKS` rows are kept (a timer every 6 h adds ~1,500 a year)."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO eligibility_checks (ts, eligible, reasons) VALUES (?, ?, ?)",
                (float(ts), int(eligible), json.dumps([dict(c) for c in checks], ensure_ascii=False)),
            )
            new_id = int(cursor.lastrowid or 0)
            conn.execute("DELETE FROM eligibility_checks WHERE id <= ?", (new_id - KEEP_ELIGIBILITY_CHECKS,))
            return new_id

    def set_eligibility_outcome(self, check_id: int, outcome: str) -> None:
        """Note what the run after check ``check_id`` did (e.g. "skipped", "synced round 7", "failed: ...")."""
        with self._write() as conn:
            conn.execute("UPDATE eligibility_checks SET outcome = ? WHERE id = ?", (outcome, check_id))

    def eligibility_checks(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` eligibility checks, newest first: ``id``, ``ts``, ``eligible``, ``checks``,
        ``outcome``."""
        rows = self._read("SELECT * FROM eligibility_checks ORDER BY id DESC LIMIT ?", (limit,))
        return [
            {
                "id": r["id"],
                "ts": r["ts"],
                "eligible": bool(r["eligible"]),
                "checks": json.loads(r["reasons"]),
                "outcome": r["outcome"],
            }
            for r in rows
        ]

    # -- the whole profile -----------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every file of this profile that exists now (what :func:`agent.store.files.reset_profile` deletes)."""
        return profile_files(self.folder)
