"""Tests for agent.paths: the user's folders, under PERSONA_HOME when it is set; the assets stay shared."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from agent import paths
from models.assets import assets_dir


def test_the_persons_files_live_under_persona_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PERSONA_ASSETS", raising=False)
    assert paths.data_dir() == tmp_path / "home" / "data"
    assert paths.config_dir() == tmp_path / "home" / "config"
    assert paths.cache_dir() == tmp_path / "home" / "cache"
    assert paths.log_dir() == tmp_path / "home" / "logs"
    assert paths.all_paths() == {
        "data": str(tmp_path / "home" / "data"),
        "config": str(tmp_path / "home" / "config"),
        "cache": str(tmp_path / "home" / "cache"),
        "logs": str(tmp_path / "home" / "logs"),
        "assets": str(assets_dir()),
    }
    assert not (tmp_path / "home").exists(), "computing paths must not create folders"
    assert paths.ensure_dir(paths.data_dir()).is_dir()


def test_persona_home_does_not_move_the_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second profile (another PERSONA_HOME) shares the prepared assets in the user cache folder."""
    monkeypatch.delenv("PERSONA_ASSETS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("PERSONA_HOME", raising=False)
    shared = assets_dir()
    assert shared == Path(platformdirs.user_cache_dir("persona")) / "assets"
    for home in ("first", "second"):
        monkeypatch.setenv("PERSONA_HOME", str(tmp_path / home))
        assert assets_dir() == shared
        assert paths.all_paths()["assets"] == str(shared)
        assert not assets_dir().is_relative_to(tmp_path / home)


def test_persona_assets_wins_for_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONA_ASSETS", str(tmp_path / "elsewhere"))
    assert paths.all_paths()["assets"] == str(tmp_path / "elsewhere")


def test_platform_folders_without_persona_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PERSONA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    found = [paths.data_dir(), paths.config_dir(), paths.cache_dir(), paths.log_dir()]
    assert len(set(found)) == 4
    for folder in found:
        assert "persona" in folder.parts
        assert folder.is_relative_to(tmp_path) or not Path.home().is_relative_to(tmp_path)


def test_the_conftest_isolates_each_test(isolated_persona_home: Path) -> None:
    assert paths.data_dir() == isolated_persona_home / "data"
    assert not isolated_persona_home.exists()
