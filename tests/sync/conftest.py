"""Fixtures of the sync tests: a real PostgreSQL server for the whole session, a fresh database per test, and the
coordinator's store over each backend (SQLite in a temporary folder, PostgreSQL on that server).

The server is the machine's own PostgreSQL (``initdb`` into a temporary folder, listening on 127.0.0.1; as root it
runs as ``nobody``), started once when a test first asks for it and removed at the end. Without PostgreSQL binaries
the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.coordinator.postgres import ServerUnavailable, create_database, temporary_server
from sync.coordinator.storage import CoordinatorStore, open_store

BACKENDS = ("sqlite", "postgresql")

# A throwaway server: durability is not what these tests check.
TEST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server running for this test session."""
    try:
        with temporary_server(TEST_SERVER_SETTINGS) as url:
            yield url
    except ServerUnavailable as error:  # raised before the server is up, never by a test
        pytest.skip(f"PostgreSQL backend not tested: {error}")


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the session's server."""
    return create_database(postgres_server, f"test_{uuid.uuid4().hex[:16]}")


def db_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh ``--db`` value of ``backend``: a SQLite URL in ``tmp_path``, or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ``--db`` value, once per backend."""
    return db_for(str(request.param), tmp_path, request)


@pytest.fixture
def store(db_url: str) -> Iterator[CoordinatorStore]:
    """An empty coordinator store, once per backend; closed afterwards."""
    opened = open_store(db_url)
    try:
        yield opened
    finally:
        opened.close()
