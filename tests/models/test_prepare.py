"""Tests for ``python -m models.prepare``: progress over the steps, and clean failures without a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import models.prepare as prepare
from models.errors import AssetError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_step_progress_counts_steps_and_prints_messages() -> None:
    out = io.StringIO()
    progress = prepare.StepProgress(("a", "b"), file=out)
    progress("a: first")
    progress("a: more of a")
    assert progress.done == 0
    progress("b: second")
    assert progress.done == 1
    progress("c: a step nobody announced")
    assert progress.done == 2 and progress.steps == ["a", "b", "c"]
    progress.close(ok=True)
    assert progress.done == 3
    assert out.getvalue().splitlines() == [
        "    a: first",
        "    a: more of a",
        "    b: second",
        "    c: a step nobody announced",
    ]


def test_main_reports_persona_error_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(progress: prepare.StepProgress) -> None:
        progress("ml-100k: starting")
        raise AssetError("The recbole wheel has the wrong checksum.", hint="Run scripts/setup again.")

    monkeypatch.setattr(prepare, "prepare_all", broken)
    assert prepare.main() == 1
    err = capsys.readouterr().err
    assert "error: The recbole wheel has the wrong checksum." in err
    assert "Run scripts/setup again." in err
    assert "Traceback" not in err


def test_main_reports_os_error_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unwritable(progress: prepare.StepProgress) -> None:
        raise PermissionError(13, "Permission denied", "/assets")

    monkeypatch.setattr(prepare, "prepare_all", unwritable)
    assert prepare.main() == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "Traceback" not in err


def test_second_run_is_a_no_op_on_prepared_assets() -> None:
    """On the prepared assets (conftest's PERSONA_ASSETS) every step says it is already done."""
    from models.assets import ml100k_ready
    from models.text.encoder import encoder_ready

    if not (ml100k_ready() and encoder_ready()):
        pytest.skip("assets are not prepared (run scripts/setup)")
    result = subprocess.run(
        [sys.executable, "-m", "models.prepare"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ml-100k: already prepared" in result.stderr
    assert "minilm: already prepared" in result.stderr
    assert result.stdout == ""
