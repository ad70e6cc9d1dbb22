"""The coordinator's storage seam: :class:`CoordinatorStore`, the one interface the round logic, publishing and the
service use, and :func:`open_store`, which picks the backend from ``--db``.

Two implementations keep every statement of the coordinator: :class:`sync.coordinator.state.SqliteStore` (one file,
the embedded default) and :class:`sync.coordinator.postgres.PostgresStore` (a PostgreSQL server through a psycopg
connection pool). Both give the same answers to the same calls (``tests/sync/test_storage_contract.py``):

- a single call commits on its own; :meth:`CoordinatorStore.transaction` makes everything inside one transaction
  (re-entrant: an inner ``transaction()`` joins the outer one), and only one transaction writes at a time;
- :meth:`CoordinatorStore.update_round` can be a compare-and-set on the stage (``expect_stage``) and says whether it
  happened;
- a round that ends (stage ``done`` or ``abandoned``) drops its encrypted and revealed key shares in the same
  transaction, and may drop its cohort (PostgreSQL keeps both in UNLOGGED partitions per round and drops them; the
  round's outcome keeps the cohort's counts);
- a round's relay (its cohort, key shares and partial sums) may be lost while the rest of the state is not
  (PostgreSQL empties unlogged tables when it recovers from a crash): :meth:`CoordinatorStore.relay_intact` says
  whether a round's relay still holds everything written since the round opened, and the leader abandons a round
  whose relay was lost;
- masked inputs are summed in memory by shards (each coordinator process is one, :mod:`sync.coordinator.shards`):
  accepting an input stores only the member's "sent" mark and the shard holding it (:meth:`CoordinatorStore.add_input`);
  a shard's partial sum is written as a checkpoint row (:meth:`CoordinatorStore.put_partial`), and the round's key
  shares and partial sums go when it ends;
- a SQLite file is served by one process (:meth:`CoordinatorStore.claim_serving`); a PostgreSQL database by any
  number of replicas, of which the one holding an advisory lock leads (:meth:`CoordinatorStore.try_lead`) and all
  wake each other with LISTEN/NOTIFY (:meth:`CoordinatorStore.notify`, :meth:`CoordinatorStore.listen`).

``--db`` is ``sqlite:///relative/path``, ``sqlite:////absolute/path``, a ``postgresql://`` (or ``postgres://``) URL,
or a bare file path (SQLite); anything else is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

RoundRow = dict[str, Any]
"""A round's columns by name: round_id, stage, deadline, seed, base_version, setup, u2, u3, outcome, created."""

MEMBER_FLAGS = frozenset({"shared_keys", "sent_input", "unmasked"})
ROUND_COLUMNS = frozenset({"stage", "deadline", "setup", "u2", "u3", "outcome"})
ENDED_STAGES = frozenset({"done", "abandoned"})
"""Stages a round never leaves; reaching one drops the round's key shares."""
TABLES = frozenset(
    {"meta", "agents", "rounds", "members", "shares", "reveals", "sums", "partials", "published", "enrollment"}
)
"""The tables :meth:`CoordinatorStore.count_rows` can count."""


class Member(NamedTuple):
    """One cohort member of a round: its signed round keys and how far it got."""

    c_pk: bytes
    s_pk: bytes
    key_sig: bytes
    shared_keys: bool
    sent_input: bool
    unmasked: bool


class Published(NamedTuple):
    """One published shared vector's metadata."""

    version: int
    sha256: str
    signature: bytes
    round_id: int | None


def check_round_columns(columns: dict[str, Any]) -> None:
    """Raise ValueError if ``columns`` names anything but a settable round column."""
    unknown = set(columns) - ROUND_COLUMNS
    if unknown:
        raise ValueError(f"not a round column: {', '.join(sorted(unknown))}")


def check_member_flags(flags: dict[str, int]) -> None:
    """Raise ValueError if ``flags`` names anything but a member flag."""
    unknown = set(flags) - MEMBER_FLAGS
    if unknown:
        raise ValueError(f"not a member flag: {', '.join(sorted(unknown))}")


def check_table(table: str) -> None:
    """Raise ValueError if ``table`` is not one of the coordinator's tables."""
    if table not in TABLES:
        raise ValueError(f"not a coordinator table: {table!r}")


class CoordinatorStore(Protocol):
    """Everything the coordinator keeps: meta, agents, rounds, members, shares, reveals, sums, published."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Everything written inside commits together, or not at all; one writing transaction at a time."""
        ...

    def close(self) -> None:
        """Release the connection(s)."""
        ...

    def describe(self) -> str:
        """Where the state lives, for messages (a file path, or a URL without its password)."""
        ...

    def claim_serving(self) -> bool:
        """Make this process the one coordinator serving the state, until :meth:`close`; False if another process
        already is (PostgreSQL: a session advisory lock; SQLite: always True, one file is one process's)."""
        ...

    def count_rows(self, table: str, round_id: int | None = None) -> int:
        """How many rows ``table`` holds (of one round, if given): for audits and tests."""
        ...

    # -- meta ----------------------------------------------------------------------------------------------------

    def meta(self, key: str) -> bytes | None:
        """A stored value (the signing key, the server optimizer's moments)."""
        ...

    def put_meta(self, key: str, value: bytes) -> None:
        """Store (or replace) a value."""
        ...

    # -- agents --------------------------------------------------------------------------------------------------

    def agent(self, agent_id: str) -> tuple[bytes, int] | None:
        """A registered agent's (public key, last nonce)."""
        ...

    def add_agent(self, agent_id: str, public_key: bytes, nonce: int, registered_at: float) -> None:
        """Register an agent's key."""
        ...

    def set_nonce(self, agent_id: str, nonce: int) -> None:
        """Consume a nonce of the agent."""
        ...

    # -- published vectors ---------------------------------------------------------------------------------------

    def latest_published(self) -> Published | None:
        """The newest published version's metadata, None before the first."""
        ...

    def latest_vector(self) -> bytes | None:
        """The newest published vector's bytes, None before the first."""
        ...

    def published_vector(self, version: int) -> bytes | None:
        """The bytes of one published version."""
        ...

    def next_version(self) -> int:
        """The version number the next publication takes."""
        ...

    def add_published(self, entry: Published, vector: bytes, created: float) -> None:
        """Store a published vector (never rewritten)."""
        ...

    # -- rounds --------------------------------------------------------------------------------------------------

    def open_round(self) -> RoundRow | None:
        """The newest round that is neither done nor abandoned."""
        ...

    def round(self, round_id: int) -> RoundRow | None:
        """One round's row (columns by name)."""
        ...

    def last_round_id(self) -> int | None:
        """The newest round's id, None before the first."""
        ...

    def add_round(self, round_id: int, deadline: float, seed: bytes, base_version: int, created: float) -> None:
        """Open a round in the advertise stage."""
        ...

    def update_round(self, round_id: int, *, expect_stage: str | None = None, **columns: Any) -> bool:
        """Set columns of a round (stage, deadline, setup, u2, u3, outcome); whether the round was updated.

        With ``expect_stage`` it is a compare-and-set: nothing changes (False) unless the round is in that stage.
        Setting the stage to done or abandoned drops the round's key shares in the same transaction.
        """
        ...

    # -- members -------------------------------------------------------------------------------------------------

    def member(self, round_id: int, agent_id: str) -> Member | None:
        """One cohort member, None if the agent is not in the round's cohort."""
        ...

    def add_member(self, round_id: int, agent_id: str, c_pk: bytes, s_pk: bytes, key_sig: bytes) -> None:
        """Admit an agent to a round's cohort with its signed round keys."""
        ...

    def member_ids(self, round_id: int, **flags: int) -> list[str]:
        """The ids of a round's members with these flag values (``shared_keys=1``, ...), sorted."""
        ...

    def count_members(self, round_id: int, **flags: int) -> int:
        """How many of a round's members have these flag values."""
        ...

    def member_counts(self, round_id: int) -> tuple[int, int, int, int]:
        """(members, of which shared keys, sent inputs, answered the unmask stage)."""
        ...

    def member_keys(self, round_id: int, agent_ids: Sequence[str]) -> dict[str, tuple[bytes, bytes, bytes, bytes]]:
        """(identity key, c_pk, s_pk, signature) of these members."""
        ...

    def mask_keys(self, round_id: int) -> dict[str, bytes]:
        """Every member's public mask key (s_pk)."""
        ...

    # -- shares, inputs, reveals ---------------------------------------------------------------------------------

    def start_relay(self, round_id: int) -> None:
        """Make sure the round's relay is marked intact (called as the share-keys stage opens; PostgreSQL marks it
        when the round opens already)."""
        ...

    def relay_intact(self, round_id: int) -> bool:
        """Whether the round's relay holds everything written since the round opened (PostgreSQL: False once a
        server crash emptied the unlogged tables; SQLite: always True)."""
        ...

    def add_shares(self, round_id: int, sender: str, shares: dict[str, bytes]) -> None:
        """Store a member's encrypted shares and mark it as having shared keys (atomically)."""
        ...

    def all_shared_keys(self, round_id: int) -> bool:
        """Whether every member of the round has shared keys."""
        ...

    def inbox(self, round_id: int, recipient: str, senders: Sequence[str]) -> dict[str, bytes]:
        """The shares addressed to ``recipient`` by those of ``senders`` (its neighbours) that shared keys, by
        sender."""
        ...

    def running_sum(self, round_id: int) -> bytes | None:
        """The stored sum of a round's masked inputs (uint32 little-endian): written when the round is unmasked."""
        ...

    def put_sum(self, round_id: int, total: bytes) -> None:
        """Store (or replace) a round's sum."""
        ...

    def delete_sum(self, round_id: int) -> None:
        """Forget a round's sum."""
        ...

    def add_input(self, round_id: int, agent_id: str, shard: str) -> None:
        """Mark the member's input as received by ``shard`` (which holds it in its partial sum)."""
        ...

    def input_shards(self, round_id: int) -> dict[str, int]:
        """How many inputs of the round each shard received (by the members' marks)."""
        ...

    def put_partial(self, round_id: int, shard: str, total: bytes, agents: Sequence[str], written: float) -> None:
        """Store (or replace) a shard's checkpoint: its partial sum (uint32 little-endian) and the agents in it."""
        ...

    def partials(self, round_id: int) -> list[tuple[str, bytes, list[str]]]:
        """(shard, partial sum, agents in it) of every checkpoint of the round, by shard."""
        ...

    def partial_counts(self, round_id: int) -> dict[str, int]:
        """How many agents each shard's checkpoint of the round holds (without reading the sums)."""
        ...

    def add_reveals(self, round_id: int, holder: str, b_shares: dict[str, bytes], s_shares: dict[str, bytes]) -> None:
        """Store a survivor's revealed shares and mark it as having answered (atomically)."""
        ...

    def reveals(self, round_id: int) -> list[tuple[str, str, str, bytes]]:
        """(holder, owner, kind, share) of every revealed share of the round, by holder."""
        ...

    def forget_shares(self, round_id: int) -> None:
        """Delete a round's encrypted and revealed shares and its shards' partial sums (PostgreSQL: its cohort too)."""
        ...

    # -- replicas ------------------------------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Whether this process leads (SQLite: always; PostgreSQL: it holds, or just took, the leader's advisory
        lock on a connection of its own; False once that connection is lost)."""
        ...

    def notify(self, channel: str, payload: str = "") -> None:
        """Wake the processes listening on ``channel`` (delivered when the current transaction commits; SQLite: no
        other process to wake, nothing)."""
        ...

    def listen(self, channels: Sequence[str], callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, payload)`` from a background thread for every notification on ``channels``, until
        :meth:`close` (SQLite: never called)."""
        ...


class DbLocation(NamedTuple):
    """Where ``--db`` points: ``kind`` is "sqlite" (``target`` a file path) or "postgresql" (``target`` a URL)."""

    kind: str
    target: str


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def parse_db(db: str | Path) -> DbLocation:
    """Read a ``--db`` value: ``sqlite:///relative``, ``sqlite:////absolute``, ``postgresql://...`` or a bare path.

    Raises ValueError, naming the accepted forms, for any other ``scheme://`` or an empty value.
    """
    text = str(db).strip()
    if not text:
        raise ValueError("--db is empty: give a file path, sqlite:///PATH or a postgresql:// URL")
    lowered = text.lower()
    if lowered.startswith(POSTGRES_SCHEMES):
        return DbLocation("postgresql", text)
    if lowered.startswith("sqlite:"):
        if not lowered.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise ValueError(f"--db {text!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        return DbLocation("sqlite", text[len("sqlite:///") :])
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"--db {redacted(text)!r}: {scheme}:// is not a database the coordinator can use; give a file path, "
            "sqlite:///PATH or a postgresql://USER@HOST:PORT/DATABASE URL"
        )
    return DbLocation("sqlite", text)


def redacted(url: str) -> str:
    """A database URL fit for messages and logs: the password (in the user part or a ``password=`` parameter)
    replaced by ``***``."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def open_store(db: str | Path) -> CoordinatorStore:
    """Open (or create) the coordinator's state where ``db`` points (see :func:`parse_db`).

    Raises ValueError for a ``db`` of no known form and ConnectionError when a PostgreSQL server cannot be reached.
    """
    location = parse_db(db)
    if location.kind == "postgresql":
        from sync.coordinator.postgres import PostgresStore  # only a PostgreSQL coordinator loads psycopg

        return PostgresStore(location.target)
    from sync.coordinator.state import SqliteStore

    return SqliteStore(Path(location.target))


def ended(columns: dict[str, Any]) -> bool:
    """Whether an update with these columns ends the round (moves it to done or abandoned)."""
    return columns.get("stage") in ENDED_STAGES
