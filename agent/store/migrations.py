"""The profile database's schema: small named migrations, each applied once, in order, and recorded in the
``schema_migrations`` table (a new schema change is a new function appended to :data:`MIGRATIONS`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

RECORD_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"


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


def _m003_eligibility_checks(conn: sqlite3.Connection) -> None:
    """One row per eligibility check of a scheduled sync (:mod:`agent.engine.eligibility`): when, whether it could
    take part, every check with its reason (JSON), and what the run then did (``outcome``)."""
    conn.execute(
        """
        CREATE TABLE eligibility_checks (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            eligible INTEGER NOT NULL,
            reasons TEXT NOT NULL,
            outcome TEXT NOT NULL DEFAULT ''
        )
        """
    )


MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("001_initial", _m001_initial),
    ("002_training_runs", _m002_training_runs),
    ("003_eligibility_checks", _m003_eligibility_checks),
)


def record_applied(conn: sqlite3.Connection, name: str) -> None:
    """Note in ``schema_migrations`` that migration ``name`` was applied (inside the caller's transaction)."""
    conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, int(time.time())))
