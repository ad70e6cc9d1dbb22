"""Architecture checks: the import-linter contracts in pyproject.toml hold, can really fail, and the run-time
learning modules never load torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    """Path of the ``lint-imports`` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("lint-imports")
    if beside.is_file():
        return str(beside)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports (import-linter) is not installed; run scripts/setup")
    return found


def _run_lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _importlinter_section(pyproject: str) -> str:
    """The ``[tool.importlinter]`` table and its ``[[tool.importlinter.contracts]]`` from a pyproject text."""
    kept: list[str] = []
    inside = False
    for line in pyproject.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped.strip("[]").startswith("tool.importlinter")
        if inside:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _contract_packages(section: str) -> set[str]:
    """Every package of ours that the contracts name (layers, sources, forbidden targets), with its parents."""
    config = tomllib.loads(section)["tool"]["importlinter"]
    roots = set(config["root_packages"])
    named: set[str] = set(roots)
    for contract in config["contracts"]:
        for field in ("layers", "source_modules", "forbidden_modules"):
            for entry in contract.get(field, []):
                named.update(part.strip() for part in entry.split("|"))
    ours = {name for name in named if name.split(".")[0] in roots}
    return {".".join(name.split(".")[: i + 1]) for name in ours for i in range(name.count(".") + 1)}


def test_import_contracts_hold() -> None:
    result = _run_lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contracts_catch_models_importing_agent(tmp_path: Path) -> None:
    """The repository's own contracts, run on a small tree where ``models`` imports ``agent``, must fail."""
    section = _importlinter_section((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "[tool.importlinter]" in section and "layers" in section
    (tmp_path / "pyproject.toml").write_text(section, encoding="utf-8")
    for package in sorted(_contract_packages(section)):
        folder = tmp_path.joinpath(*package.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(f'"""Fake {package}."""\n', encoding="utf-8")
    (tmp_path / "agent" / "cli" / "__init__.py").write_text("import models.core\n", encoding="utf-8")
    (tmp_path / "models" / "core.py").write_text(
        textwrap.dedent(
            """\
            from agent import cli  # the layering violation

            VALUE = 1
            """
        ),
        encoding="utf-8",
    )

    result = _run_lint_imports(tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "BROKEN" in output, output
    assert "models.core -> agent" in output, output


def test_runtime_learning_modules_do_not_load_torch() -> None:
    code = textwrap.dedent(
        """\
        import sys
        import models.text.encoder, models.data.split, models.evaluation.metrics, models.data.movielens
        heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
        print(",".join(heavy))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"loaded at import: {result.stdout.strip()}"
