"""Shared pytest setup: make the repository root importable (``models``, ``sync``, ``agent``).

The project is not installed into the venv, and pytest's default ``prepend`` import mode only puts ``tests/``
on ``sys.path``; this file puts the repository root there too.

It also isolates every test from the user's real folders: ``PERSONA_HOME`` points at a fresh temporary folder
for each test (and at one shared temporary folder for session-scoped fixtures), while ``PERSONA_ASSETS`` keeps
pointing at the real prepared assets (computed once, at import, from :func:`models.assets.assets_dir` before
anything is overridden, so an existing ``PERSONA_ASSETS`` is honoured), so tests never prepare the encoder again.
Nothing here goes online: ``HF_HUB_OFFLINE=1`` and ``ORT_DISABLE_TELEMETRY=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from models.assets import assets_dir  # noqa: E402  (needs the repository root on sys.path)

#: The real prepared assets folder, resolved before any test changes PERSONA_HOME or PERSONA_ASSETS.
REAL_ASSETS = str(assets_dir().resolve())

os.environ["PERSONA_ASSETS"] = REAL_ASSETS  # for module-level code and subprocesses too
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _persona_session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-scoped fixtures see a temporary PERSONA_HOME too, never the user's real one."""
    home = tmp_path_factory.mktemp("persona-session-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERSONA_HOME", str(home))
        patch.setenv("PERSONA_ASSETS", REAL_ASSETS)
        yield home


@pytest.fixture(autouse=True)
def isolated_persona_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty PERSONA_HOME (not created yet) and the real PERSONA_ASSETS."""
    home = tmp_path / "persona-home"
    monkeypatch.setenv("PERSONA_HOME", str(home))
    monkeypatch.setenv("PERSONA_ASSETS", REAL_ASSETS)
    return home


@pytest.fixture(scope="session")
def _catalog_embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embed the ML-100K catalog once per session with the real encoder; tests copy the cache file."""
    from models.data.movielens import load_ml100k
    from models.text.encoder import ItemEncoder, embed_catalog

    folder = tmp_path_factory.mktemp("embedding-cache")
    embed_catalog(load_ml100k().catalog, ItemEncoder(), folder)
    return folder


@pytest.fixture
def warm_embedding_cache(isolated_persona_home: Path, _catalog_embeddings: Path) -> Path:
    """This test's PERSONA_HOME starts with the ML-100K embedding cache already filled (as after a first run)."""
    import shutil

    target = isolated_persona_home / "cache" / "embeddings"
    shutil.copytree(_catalog_embeddings, target)
    return target
