"""The profile database: one SQLite connection, its transactions and its file, under :func:`agent.paths.data_dir`.

Layout of the data folder::

    profile.sqlite3 (+ -wal, -shm)  interactions, catalogs, adapter records, egress ledger, training runs
    profile.sqlite3.enc             instead of the above when the profile is encrypted (AES-GCM, see agent.store.crypto)
    keyfile.json                    KDF salt and key check, only when encrypted
    adapters/NAME.SHA12.bin         adapter files (agent.store.adapters)
    catalogs/NAME.jsonl             imported catalogs (agent.store.profile_store)

Every write is atomic. Database writes are single SQLite transactions (``BEGIN IMMEDIATE`` ... ``COMMIT``), and
writers in different processes (the training worker writes too) are serialised by a lock file.

When encrypted, the database lives in memory while open and is written back, encrypted, after every write
transaction (temp file + rename). The plaintext database uses WAL and ``PRAGMA secure_delete`` so that forgotten
rows are overwritten, not merely unlinked. The schema comes from :mod:`agent.store.migrations`.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from agent import paths
from agent.errors import ProfileError
from agent.store import crypto
from agent.store.migrations import MIGRATIONS, RECORD_TABLE, record_applied
from models.assets import atomic_write_bytes

DB_NAME = "profile.sqlite3"
ENCRYPTED_DB_NAME = "profile.sqlite3.enc"
KEYFILE_NAME = "keyfile.json"
LOCK_NAME = ".lock"


class Database:
    """The profile's SQLite database, plain (WAL) or encrypted; thread-safe; use as a context manager.

    Open with :meth:`open`. Subclasses add the tables' operations on top of :meth:`_write` and :meth:`_read`.
    """

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
    def open(cls, folder: Path | None = None, *, passphrase: str | None = None) -> Self:
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
        store._tidy_after_open()
        return store

    @classmethod
    def create_encrypted(cls, folder: Path | None, passphrase: str) -> Self:
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

    def _tidy_after_open(self) -> None:
        """Called once an existing profile is open and migrated: subclasses remove files a crash left behind."""

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

    def __enter__(self) -> Self:
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
            self._conn.execute(RECORD_TABLE)
            for name, migration in MIGRATIONS:
                migration(self._conn)
                record_applied(self._conn, name)
        self._loaded_stamp = self._disk_stamp()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._refresh()
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return list(cursor.fetchall())

    # -- schema ----------------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute(RECORD_TABLE)
            done = {row[0] for row in self._conn.execute("SELECT name FROM schema_migrations")}
            for name, migration in MIGRATIONS:
                if name in done:
                    continue
                with self._write() as conn:
                    migration(conn)
                    record_applied(conn, name)

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


def _empty_database() -> bytes:
    conn = sqlite3.connect(":memory:")
    data = conn.serialize()
    conn.close()
    return data
