"""The profile store: migrations, atomic writes under a simulated crash, checksums, encryption, the ledger."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AdapterChecksumError, WrongPassphraseError
from agent.store.files import reset_profile
from agent.store.migrations import MIGRATIONS
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_FIRST_STAGE, feedback_to_row
from models.firststage.scorer import PrivateParams

MARKER_ITEM = "item-marker-7f3a9c"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    with ProfileStore.open(tmp_path) as store:
        assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    with ProfileStore.open(tmp_path) as store:
        assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
        rows = store._read("SELECT count(*) AS n FROM schema_migrations")
        assert rows[0]["n"] == len(MIGRATIONS)


def test_interactions_round_trip_and_forget(tmp_path: Path) -> None:
    with ProfileStore.open(tmp_path) as store:
        store.add_interaction("ml-100k", "1", kind="like", rating=5.0, source="test", ts=10)
        store.add_interaction("ml-100k", "2", kind="rating", rating=2.0, source="test", ts=20)
        store.add_interaction("ml-100k", "2", kind="rating", rating=4.5, source="test", ts=30)
        latest = store.latest_feedback("ml-100k")
        assert list(latest) == ["1", "2"] and latest["2"].rating == 4.5 and latest["2"].liked
        assert store.forget("ml-100k", "2") == 2
        assert [i.item_id for i in store.interactions()] == ["1"]


@pytest.mark.parametrize(
    ("text", "row"), [("like", ("like", 5.0)), ("dislike", ("dislike", 1.0)), ("3.5", ("rating", 3.5))]
)
def test_feedback_parsing(text: str, row: tuple[str, float]) -> None:
    assert feedback_to_row(text) == row


@pytest.mark.parametrize("text", ["maybe", "0", "6"])
def test_feedback_parsing_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        feedback_to_row(text)


def test_crash_between_temp_write_and_rename_keeps_previous_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = PrivateParams(user_vector=np.arange(32, dtype=np.float32))
    with ProfileStore.open(tmp_path) as store:
        store.save_private(old)
        before = store.adapter_record(PRIVATE_FIRST_STAGE)

        def crash(*_args: object) -> None:
            raise OSError("simulated power cut before rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="power cut"):
            store.save_private(PrivateParams(user_vector=np.ones(32, dtype=np.float32)))
        monkeypatch.undo()
        assert before is not None and store.adapter_record(PRIVATE_FIRST_STAGE) == before
    with ProfileStore.open(tmp_path) as store:
        loaded = store.load_private()
        assert loaded is not None and np.array_equal(loaded.user_vector, old.user_vector)
        adapters = sorted(p.name for p in (tmp_path / "adapters").iterdir())
        assert adapters == [before.file.name]  # no temp file, no half-written new version


def test_crash_after_new_file_but_before_row_switch_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = PrivateParams(user_vector=np.full(32, 3.0, dtype=np.float32))
    with ProfileStore.open(tmp_path) as store:
        store.save_private(old)

        original_write = store._write

        def broken_write():  # type: ignore[no-untyped-def]
            raise RuntimeError("simulated crash before the row switch")

        monkeypatch.setattr(store, "_write", broken_write)
        with pytest.raises(RuntimeError, match="row switch"):
            store.save_private(PrivateParams(user_vector=np.zeros(32, dtype=np.float32)))
        monkeypatch.setattr(store, "_write", original_write)
        loaded = store.load_private()
        assert loaded is not None and np.array_equal(loaded.user_vector, old.user_vector)
        assert len(list((tmp_path / "adapters").iterdir())) == 1


def test_tampered_adapter_is_refused(tmp_path: Path) -> None:
    with ProfileStore.open(tmp_path) as store:
        record = store.save_private(PrivateParams(user_vector=np.ones(32, dtype=np.float32)))
        record.file.write_bytes(record.file.read_bytes()[:-4] + b"\0\0\0\0")
        with pytest.raises(AdapterChecksumError, match="checksum"):
            store.load_private()


def test_egress_ledger(tmp_path: Path) -> None:
    with ProfileStore.open(tmp_path) as store:
        store.append_egress(
            {
                "round": 1,
                "bytes_sent": 100,
                "bytes_received": 2000,
                "clip": 1.0,
                "sigma": 0.8,
                "cohort": 10,
                "epsilon": 0.5,
                "coordinator": "http://127.0.0.1:1",
            }
        )
        store.append_egress({"round": 2, "bytes_sent": 120, "epsilon": 0.7})
        entries = store.egress_entries()
    assert [e["round"] for e in entries] == [1, 2]
    assert entries[0]["coordinator"] == "http://127.0.0.1:1" and entries[0]["sigma"] == 0.8
    assert entries[1]["epsilon"] == 0.7 and entries[1]["bytes_received"] == 0


def test_encrypted_store_refuses_wrong_passphrase_and_changes_nothing(tmp_path: Path) -> None:
    with ProfileStore.create_encrypted(tmp_path, "correct horse") as store:
        store.add_interaction("ml-100k", MARKER_ITEM, kind="like", rating=5.0, source="test")
        store.save_private(PrivateParams(user_vector=np.full(32, 1.25, dtype=np.float32)))
    before = _tree_digest(tmp_path)
    assert not any(MARKER_ITEM.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(WrongPassphraseError, match="does not unlock"):
        ProfileStore.open(tmp_path, passphrase="wrong horse")
    assert _tree_digest(tmp_path) == before
    with ProfileStore.open(tmp_path, passphrase="correct horse") as store:
        assert [i.item_id for i in store.interactions()] == [MARKER_ITEM]
        private = store.load_private()
        assert private is not None and float(private.user_vector[0]) == 1.25


def test_encrypted_store_crash_mid_write_keeps_last_good_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ProfileStore.create_encrypted(tmp_path, "pw") as store:
        store.add_interaction("ml-100k", "1", kind="like", rating=5.0, source="test")

        def crash(*_args: object) -> None:
            raise OSError("simulated crash before rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError):
            store.add_interaction("ml-100k", "2", kind="like", rating=5.0, source="test")
        monkeypatch.undo()
        assert [i.item_id for i in store.interactions()] == ["1"]
    with ProfileStore.open(tmp_path, passphrase="pw") as store:
        assert [i.item_id for i in store.interactions()] == ["1"]


def test_reset_deletes_database_wal_shm_and_adapters(tmp_path: Path) -> None:
    store = ProfileStore.open(tmp_path)
    store.add_interaction("ml-100k", MARKER_ITEM, kind="like", rating=5.0, source="test")
    store.save_private(PrivateParams(user_vector=np.full(32, 0.5, dtype=np.float32)))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"profile.sqlite3", "profile.sqlite3-wal", "profile.sqlite3-shm"} <= names  # WAL mode, connection open
    store.close()
    deleted = reset_profile(tmp_path)
    assert any(p.name == "profile.sqlite3" for p in deleted)
    assert not tmp_path.exists()
