"""The local profile store: one SQLite database plus adapter files, all under :func:`agent.paths.data_dir`.

Layout of the data folder::

    profile.sqlite3 (+ -wal, -shm)  interactions, catalogs, adapter records, egress ledger, training runs
    profile.sqlite3.enc             instead of the above when the profile is encrypted (AES-GCM, see agent.store.crypto)
    keyfile.json                    KDF salt and key check, only when encrypted
    adapters/NAME.SHA12.bin         adapter files (private first-stage vector, shared first-stage params, the
                                    private LoRA as GGUF, the shared LoRA's numbers, ...)
    catalogs/NAME.jsonl             imported catalogs

Every write is atomic. Database writes are single SQLite transactions (``BEGIN IMMEDIATE`` ... ``COMMIT``).
An adapter is written to a *new* file named after its checksum (temp file, fsync, rename), then the database row
that points at it is switched in one transaction, then the old file is removed. A crash at any point leaves the
previous row pointing at the previous, intact file; a stray new file is removed the next time the store opens.

When encrypted, the database lives in memory while open and is written back, encrypted, after every write
transaction (temp file + rename); adapter files are encrypted with the same key. The plaintext database uses WAL
and ``PRAGMA secure_delete`` so that forgotten rows are overwritten, not merely unlinked.

Schema changes are small named functions in :data:`MIGRATIONS`, each applied once, in order, and recorded in the
``schema_migrations`` table.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.store import crypto

from agent import paths
from agent.errors import AdapterChecksumError, ProfileError
from models.assets import atomic_write_bytes
from models.fm.lora import LoraWeights, load_weights, save_weights
from models.firststage.scorer import PrivateParams, SharedParams

DB_NAME = "profile.sqlite3"
ENCRYPTED_DB_NAME = "profile.sqlite3.enc"
KEYFILE_NAME = "keyfile.json"
LOCK_NAME = ".lock"
ADAPTERS_DIR = "adapters"
CATALOGS_DIR = "catalogs"

PRIVATE_FIRST_STAGE = "private_first_stage"
SHARED_FIRST_STAGE = "shared_first_stage"
PRIVATE_LORA = "private_lora"
"""The private LoRA φ_u of the foundation model, stored as the GGUF llama.cpp loads (trained by the worker)."""
SHARED_LORA = "shared_lora"
"""The shared LoRA φ_g's numbers (what the federation averages); absent until a sync provides one."""

POSITIVE_KINDS = ("like", "watched")
"""Interaction kinds that always count as liked; a ``rating`` counts as liked when it is at least 3."""
LIKED_FROM_RATING = 3.0


# --------------------------------------------------------------------------------------------- migrations


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the current transaction (``executescript`` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _m001_initial(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE interactions (
            id INTEGER PRIMARY KEY,
            catalog TEXT NOT NULL,
            item_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('like', 'dislike', 'rating', 'watched')),
            rating REAL,
            ts INTEGER NOT NULL,
            source TEXT NOT NULL
        );
        CREATE INDEX interactions_by_item ON interactions (catalog, item_id);
        CREATE TABLE catalogs (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            file TEXT,
            sha256 TEXT,
            n_items INTEGER NOT NULL,
            imported_at INTEGER NOT NULL
        );
        CREATE TABLE adapters (
            name TEXT PRIMARY KEY,
            file TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            meta TEXT NOT NULL
        );
        CREATE TABLE egress (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            round INTEGER,
            bytes_sent INTEGER NOT NULL DEFAULT 0,
            bytes_received INTEGER NOT NULL DEFAULT 0,
            clip REAL,
            sigma REAL,
            cohort INTEGER,
            epsilon REAL,
            extra TEXT NOT NULL
        );
        """,
    )


def _m002_training_runs(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE training_runs (
            id INTEGER PRIMARY KEY,
            finished_at INTEGER NOT NULL,
            adapter TEXT NOT NULL,
            n_examples INTEGER NOT NULL,
            mean_loss REAL NOT NULL,
            seconds REAL NOT NULL
        )
        """
    )


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("001_initial", _m001_initial),
    ("002_training_runs", _m002_training_runs),
)


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Interaction:
    """One piece of feedback on one catalog item."""

    id: int
    catalog: str
    item_id: str
    kind: str
    """``like``, ``dislike``, ``rating`` (with ``rating`` 0.5-5) or ``watched`` (no rating)."""
    rating: float | None
    ts: int
    source: str

    @property
    def liked(self) -> bool:
        """True when this interaction says the person liked the item."""
        if self.kind in POSITIVE_KINDS:
            return True
        return self.kind == "rating" and self.rating is not None and self.rating >= LIKED_FROM_RATING

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "catalog": self.catalog,
            "item": self.item_id,
            "kind": self.kind,
            "rating": self.rating,
            "ts": self.ts,
            "source": self.source,
            "liked": self.liked,
        }


@dataclass(frozen=True)
class AdapterRecord:
    """Where an adapter's current file is and the checksum it must have."""

    name: str
    file: Path
    sha256: str
    version: int
    updated_at: int
    meta: dict[str, Any]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def feedback_to_row(feedback: str) -> tuple[str, float | None]:
    """``like``/``dislike``/a number from 0.5 to 5 → (kind, rating); raises ValueError on anything else."""
    text = feedback.strip().lower()
    if text in ("like", "dislike"):
        return text, 5.0 if text == "like" else 1.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{feedback!r} is not like, dislike or a rating from 1 to 5") from None
    if not 0.5 <= value <= 5.0:
        raise ValueError(f"rating {value:g} is outside 0.5-5")
    return "rating", value


# --------------------------------------------------------------------------------------------- the store


class ProfileStore:
    """The person's profile on this device. Open with :meth:`open`; thread-safe; use as a context manager."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, cipher: crypto.Cipher | None) -> None:
        self.folder = folder
        self._conn = conn
        self._cipher = cipher
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._closed = False
        self._loaded_stamp: tuple[int, int] | None = self._disk_stamp()

    # -- opening ---------------------------------------------------------------------------------------------
    @staticmethod
    def exists(folder: Path | None = None) -> bool:
        """True when a profile (plain or encrypted) exists in ``folder`` (default: the data folder)."""
        folder = folder or paths.data_dir()
        return (folder / DB_NAME).is_file() or (folder / ENCRYPTED_DB_NAME).is_file()

    @staticmethod
    def is_encrypted_at(folder: Path | None = None) -> bool:
        """True when the profile in ``folder`` is encrypted."""
        folder = folder or paths.data_dir()
        return (folder / KEYFILE_NAME).is_file()

    @classmethod
    def open(cls, folder: Path | None = None, *, passphrase: str | None = None) -> ProfileStore:
        """Open the profile in ``folder`` (default: the data folder), creating a plain one when there is none.

        An encrypted profile needs ``passphrase`` (a wrong one raises :class:`WrongPassphraseError` and changes
        nothing).
        """
        folder = folder or paths.data_dir()
        if cls.is_encrypted_at(folder):
            if passphrase is None:
                raise ProfileError(
                    "This profile is encrypted and no passphrase was given.",
                    hint="Set PERSONA_PASSPHRASE, or run the command in a terminal to be asked for it.",
                )
            cipher = crypto.unlock(folder / KEYFILE_NAME, passphrase)
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            blob_path = folder / ENCRYPTED_DB_NAME
            if blob_path.is_file():
                conn.deserialize(cipher.decrypt(blob_path.read_bytes(), ENCRYPTED_DB_NAME))
            store = cls(folder, conn, cipher)
        else:
            paths.ensure_dir(folder)
            conn = sqlite3.connect(folder / DB_NAME, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=FULL")
            store = cls(folder, conn, None)
        store._migrate()
        store._remove_stray_adapter_files()
        return store

    @classmethod
    def create_encrypted(cls, folder: Path | None, passphrase: str) -> ProfileStore:
        """Create a new, empty, encrypted profile in ``folder``; refuses when a profile already exists there."""
        folder = folder or paths.data_dir()
        if cls.exists(folder) or cls.is_encrypted_at(folder):
            raise ProfileError(
                f"A profile already exists in {folder}.",
                hint="Encryption is chosen when a profile is created: `agent reset` first to start an encrypted one.",
            )
        paths.ensure_dir(folder)
        cipher = crypto.create_keyfile(folder / KEYFILE_NAME, passphrase)
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        store = cls(folder, conn, cipher)
        store._migrate()
        return store

    @property
    def encrypted(self) -> bool:
        """True when this profile is encrypted at rest."""
        return self._cipher is not None

    def close(self) -> None:
        """Close the database connection (a WAL checkpoint folds the WAL into the main file)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.encrypted:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------------------
    def _disk_stamp(self) -> tuple[int, int] | None:
        if self._cipher is None:
            return None
        try:
            st = (self.folder / ENCRYPTED_DB_NAME).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Encrypted profiles: reload the in-memory database when another process rewrote the file."""
        if self._cipher is None:
            return
        stamp = self._disk_stamp()
        if stamp is not None and stamp != self._loaded_stamp:
            blob = (self.folder / ENCRYPTED_DB_NAME).read_bytes()
            self._conn.deserialize(self._cipher.decrypt(blob, ENCRYPTED_DB_NAME))
            self._loaded_stamp = stamp

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialise writers across processes (the training worker writes too); re-entrant within this store."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        paths.ensure_dir(self.folder)
        with (self.folder / LOCK_NAME).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (and, when encrypted, the atomic rewrite of the encrypted file)."""
        with self._lock, self._file_lock():
            self._refresh()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            if self._cipher is None:
                self._conn.execute("COMMIT")
                return
            # Encrypted: persist first; only a successful atomic write makes the change part of the profile.
            self._conn.execute("COMMIT")
            try:
                atomic_write_bytes(
                    self.folder / ENCRYPTED_DB_NAME,
                    self._cipher.encrypt(self._conn.serialize(), ENCRYPTED_DB_NAME),
                )
            except BaseException:
                self._loaded_stamp = None  # force a reload of the last good file
                self._reload_from_disk()
                raise
            self._loaded_stamp = self._disk_stamp()

    def _reload_from_disk(self) -> None:
        assert self._cipher is not None
        blob_path = self.folder / ENCRYPTED_DB_NAME
        if blob_path.is_file():
            self._conn.deserialize(self._cipher.decrypt(blob_path.read_bytes(), ENCRYPTED_DB_NAME))
        else:
            self._conn.deserialize(_empty_database())
            self._conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
            for name, migration in MIGRATIONS:
                migration(self._conn)
                self._conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, int(time.time())))
        self._loaded_stamp = self._disk_stamp()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._refresh()
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return list(cursor.fetchall())

    def _migrate(self) -> None:
        with self._lock:
            self._migrate_unlocked()

    def _migrate_unlocked(self) -> None:
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        done = {row[0] for row in self._conn.execute("SELECT name FROM schema_migrations")}
        for name, migration in MIGRATIONS:
            if name in done:
                continue
            with self._write() as conn:
                migration(conn)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, int(time.time())))

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded as applied, in order."""
        return [row["name"] for row in self._read("SELECT name FROM schema_migrations ORDER BY name")]

    # -- meta ------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table, or None."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def active_catalog(self) -> str:
        """The catalog suggestions come from (``ml-100k`` unless the person chose an imported one)."""
        return self.get_meta("active_catalog") or "ml-100k"

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
                (name, str(file.relative_to(self.folder)), _sha256(stored), n_items, int(time.time())),
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
        if _sha256(stored) != rows[0]["sha256"]:
            raise ProfileError(f"The catalog file {path} does not match its checksum.", hint=f"Import {name} again.")
        return self._cipher.decrypt(stored, f"catalog:{name}") if self._cipher else stored

    def catalogs(self) -> list[dict[str, Any]]:
        """The built-in catalog and every imported one."""
        built_in = {"name": "ml-100k", "kind": "built-in", "file": None, "sha256": None, "n_items": 1682}
        rows = self._read("SELECT name, kind, file, sha256, n_items FROM catalogs ORDER BY name")
        return [built_in, *[dict(r) for r in rows]]

    # -- adapters --------------------------------------------------------------------------------------------
    def adapter_record(self, name: str) -> AdapterRecord | None:
        """The current record of adapter ``name``, or None when there is none."""
        rows = self._read("SELECT * FROM adapters WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return AdapterRecord(
            name=str(r["name"]),
            file=self.folder / str(r["file"]),
            sha256=str(r["sha256"]),
            version=int(r["version"]),
            updated_at=int(r["updated_at"]),
            meta=json.loads(r["meta"]),
        )

    def write_adapter(self, name: str, data: bytes, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store a new version of adapter ``name``: new file (atomic), then the row, then the old file goes."""
        stored = self._cipher.encrypt(data, name) if self._cipher else data
        digest = _sha256(stored)
        relative = Path(ADAPTERS_DIR) / f"{name}.{digest[:12]}.bin"
        with self._lock:
            previous = self.adapter_record(name)
            atomic_write_bytes(self.folder / relative, stored)
            try:
                with self._write() as conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            name,
                            str(relative),
                            digest,
                            (previous.version + 1) if previous else 1,
                            int(time.time()),
                            json.dumps(meta or {}),
                        ),
                    )
            except BaseException:
                if previous is None or previous.file != self.folder / relative:
                    (self.folder / relative).unlink(missing_ok=True)
                raise
            if previous is not None and previous.file != self.folder / relative:
                _shred(previous.file)
        record = self.adapter_record(name)
        assert record is not None
        return record

    def read_adapter(self, name: str) -> bytes | None:
        """The bytes of adapter ``name`` after checking its checksum (None when there is no such adapter)."""
        record = self.adapter_record(name)
        if record is None:
            return None
        try:
            stored = record.file.read_bytes()
        except FileNotFoundError:
            raise AdapterChecksumError(
                f"The {name} adapter file {record.file} is missing.",
                hint="Run `agent train` to rebuild the private adapter, or `agent reset` to start over.",
            ) from None
        if _sha256(stored) != record.sha256:
            raise AdapterChecksumError(
                f"The {name} adapter file {record.file} does not match its recorded checksum.",
                hint="Run `agent train` to rebuild the private adapter, or `agent reset` to start over.",
            )
        return self._cipher.decrypt(stored, name) if self._cipher else stored

    def _remove_stray_adapter_files(self) -> None:
        """Remove adapter files no row points at (left by a crash between file write and row switch)."""
        folder = self.folder / ADAPTERS_DIR
        if not folder.is_dir():
            return
        with self._lock, self._file_lock():
            self._refresh()
            current = {str(r[0]) for r in self._conn.execute("SELECT file FROM adapters")}
            for path in folder.iterdir():
                if str(path.relative_to(self.folder)) not in current and not path.name.startswith("."):
                    _shred(path)

    def save_private(self, private: PrivateParams, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store the private first-stage vector (θ_u)."""
        buffer = io.BytesIO()
        np.save(buffer, private.user_vector.astype(np.float32))
        return self.write_adapter(PRIVATE_FIRST_STAGE, buffer.getvalue(), meta=meta)

    def load_private(self) -> PrivateParams | None:
        """The private first-stage vector, or None before the first local training."""
        data = self.read_adapter(PRIVATE_FIRST_STAGE)
        if data is None:
            return None
        return PrivateParams(user_vector=np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))

    def save_shared(self, shared: SharedParams, *, version: str, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store the shared first-stage parameters (θ_g) with the federation's version label."""
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(shared, name) for name in SharedParams.FIELDS})
        return self.write_adapter(SHARED_FIRST_STAGE, buffer.getvalue(), meta={"version": version, **(meta or {})})

    def load_shared(self) -> tuple[SharedParams, dict[str, Any]] | None:
        """The shared first-stage parameters and their meta (with ``version``), or None when none is stored."""
        data = self.read_adapter(SHARED_FIRST_STAGE)
        if data is None:
            return None
        record = self.adapter_record(SHARED_FIRST_STAGE)
        assert record is not None
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            shared = SharedParams(**{name: arrays[name].astype(np.float32) for name in SharedParams.FIELDS})
        return shared, record.meta

    def delete_adapter(self, name: str) -> bool:
        """Remove adapter ``name``: its row, then its file (zeroed first); False when there was none."""
        with self._lock:
            previous = self.adapter_record(name)
            if previous is None:
                return False
            with self._write() as conn:
                conn.execute("DELETE FROM adapters WHERE name = ?", (name,))
            _shred(previous.file)
        return True

    @contextmanager
    def adapter_as_file(self, name: str) -> Iterator[Path | None]:
        """Adapter ``name`` as a plain file for a native loader (llama.cpp), with its SHA-256 written beside it as
        ``PATH.sha256``; None when there is no such adapter.

        The bytes are checked against the store's checksum (and decrypted) first; the copy lives in a private
        temporary folder inside the data folder and is zeroed and removed when the block ends.
        """
        data = self.read_adapter(name)
        if data is None:
            yield None
            return
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".serve-") as tmp:
            path = Path(tmp) / f"{name}.gguf"
            sums = path.with_suffix(path.suffix + ".sha256")
            path.write_bytes(data)
            sums.write_text(f"{_sha256(data)}  {path.name}\n")
            try:
                yield path
            finally:
                _shred(path)
                _shred(sums)

    def save_private_lora(self, gguf: bytes, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store a new private LoRA (the GGUF bytes :func:`models.fm.lora.export_gguf` wrote)."""
        return self.write_adapter(PRIVATE_LORA, gguf, meta=meta)

    def save_shared_lora(
        self, weights: LoraWeights, *, version: str, meta: dict[str, Any] | None = None
    ) -> AdapterRecord:
        """Store the shared LoRA's numbers (φ_g, e.g. as a sync applies it) with the federation's version label."""
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".lora-") as tmp:
            save_weights(weights, Path(tmp) / "shared.npz")
            data = (Path(tmp) / "shared.npz").read_bytes()
        return self.write_adapter(SHARED_LORA, data, meta={"version": version, **(meta or {})})

    def load_shared_lora(self) -> tuple[LoraWeights, dict[str, Any]] | None:
        """The shared LoRA and its meta (with ``version``), or None while no sync has provided one."""
        data = self.read_adapter(SHARED_LORA)
        if data is None:
            return None
        record = self.adapter_record(SHARED_LORA)
        assert record is not None
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".lora-") as tmp:
            (Path(tmp) / "shared.npz").write_bytes(data)
            weights = load_weights(Path(tmp) / "shared.npz")
        return weights, record.meta

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

    # -- the whole profile -----------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Every file of this profile that exists now (what :func:`reset_profile` deletes)."""
        return profile_files(self.folder)


def _empty_database() -> bytes:
    conn = sqlite3.connect(":memory:")
    data = conn.serialize()
    conn.close()
    return data


def _shred(path: Path) -> None:
    """Overwrite a file with zeros, fsync, then unlink it (best effort: SSDs and copy-on-write file systems
    may keep old blocks; the point is that nothing readable stays behind in the file system's view)."""
    try:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return
    except OSError:
        pass
    path.unlink(missing_ok=True)


def profile_files(folder: Path | None = None) -> list[Path]:
    """Every file of the profile in ``folder`` (default: the data folder), including SQLite's -wal/-shm files."""
    folder = folder or paths.data_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def reset_profile(folder: Path | None = None) -> list[Path]:
    """Delete the whole profile: database (+ WAL/SHM), adapters, imported catalogs, ledger, key file.

    Each file is overwritten with zeros before it is unlinked; then the emptied folders are removed. Returns the
    files that were deleted. The caller must have closed any open :class:`ProfileStore` on the folder.
    """
    folder = folder or paths.data_dir()
    deleted = profile_files(folder)
    for path in deleted:
        _shred(path)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    if folder.is_dir():
        folder.rmdir()
    return deleted
