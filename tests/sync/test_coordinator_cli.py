"""The operator's first run: ``agent-coordinator init`` writes the catalog's seeded bootstrap shared vector into a real
SQLite file, and ``agent-coordinator serve`` with no initial vector starts from it (both as real subprocesses).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from models.data.movielens import load_ml100k_catalog
from models.firststage.scorer import SharedParams
from sync.coordinator.cli import main
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import cli_command, coordinator_process
from sync.coordinator.service import Coordinator
from sync.protocol.wire import API

ROOT = Path(__file__).resolve().parents[2]
# The ml-100k bootstrap vector's SHA-256: every operator, on every machine, publishes these bytes as version 0.
ML100K_BOOTSTRAP_SHA256 = "131ab2fcfd0279c7024ea308d568b8351672386fa530cc5555331118cb621308"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess (its start-up, ~2 s of imports, dominates: kept to one)."""
    return subprocess.run(cli_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The same command in this process: (exit code, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_init_writes_the_seeded_bootstrap_vector_once_and_every_operator_gets_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "operator.sqlite3"
    first = _cli("init", "--db", str(db))
    assert first.returncode == 0, first.stderr
    assert "wrote version 0" in first.stderr and ML100K_BOOTSTRAP_SHA256 in first.stderr
    code, err = _main(capsys, "init", "--db", str(db), "--catalog", "ml-100k")
    assert code == 0 and "already publishes version 0; nothing written" in err

    other = tmp_path / "another-operator.sqlite3"
    assert _main(capsys, "init", "--db", str(other))[0] == 0
    coordinators = [Coordinator(CoordinatorConfig(db=path)) for path in (db, other)]
    assert [c.latest().version for c in coordinators] == [0, 0]  # the second init published nothing more
    assert {c.latest().sha256 for c in coordinators} == {ML100K_BOOTSTRAP_SHA256}
    expected = SharedParams.init(len(load_ml100k_catalog()), seed=0).to_vector()  # the demo's and the eval's start
    assert coordinators[0].blob(0) == expected.astype("<f4").tobytes()


def test_init_refuses_an_unknown_catalog_or_missing_data_with_a_reason_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "operator.sqlite3"
    code, err = _main(capsys, "init", "--db", str(db), "--catalog", "netflix")
    assert code == 1 and "unknown catalog 'netflix': choose one of ml-100k" in err
    monkeypatch.setenv("PERSONA_ASSETS", str(tmp_path / "no-assets"))
    code, err = _main(capsys, "init", "--db", str(db))
    assert code == 1 and "MovieLens-100K is not prepared" in err and "agent prepare" in err
    assert not db.exists()


def test_serve_without_an_initial_vector_starts_from_the_bootstrap_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh, log = tmp_path / "fresh.sqlite3", tmp_path / "serve.log"
    with coordinator_process(fresh, log=log) as (url, _process):
        meta = httpx.get(f"{url}{API}/shared").json()
    assert (meta["version"], meta["sha256"], meta["size"]) == (0, ML100K_BOOTSTRAP_SHA256, 67_844)
    assert "publishing the ml-100k bootstrap shared vector (67,844 values, seed 0) as version 0" in log.read_text()

    initialised, log = tmp_path / "initialised.sqlite3", tmp_path / "serve-after-init.log"
    assert _main(capsys, "init", "--db", str(initialised))[0] == 0
    with coordinator_process(initialised, log=log) as (url, _process):
        assert httpx.get(f"{url}{API}/shared").json()["sha256"] == ML100K_BOOTSTRAP_SHA256
    assert "nothing is published" not in log.read_text()  # it serves what init wrote
