"""Where the agent keeps the person's files: the one place that decides it.

By default the platform's user folders for the app ``persona`` (via :mod:`platformdirs`; on Linux
``~/.local/share/persona``, ``~/.config/persona``, ``~/.cache/persona``, ``~/.local/state/persona/log``).
When ``PERSONA_HOME`` is set, the person's files go under it instead::

    $PERSONA_HOME/data    profiles, ratings, adapters
    $PERSONA_HOME/config  settings
    $PERSONA_HOME/cache   embedding caches and other files that can be rebuilt
    $PERSONA_HOME/logs    logs

The prepared model and data files (the "assets", 1.4 GB) are shared by every profile on the machine and are not
moved by ``PERSONA_HOME``: they stay in ``assets`` under the user cache folder unless ``PERSONA_ASSETS`` names
another folder (:func:`models.assets.assets_dir`). The functions only compute paths; :func:`ensure_dir` creates a
folder when it is about to be written. Each call reads the environment again, so changing ``PERSONA_HOME`` (as the
tests do) takes effect at once. The other ``PERSONA_*`` variables are read by :mod:`agent.settings`.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from models.assets import assets_dir

APP_NAME = "persona"
HOME_ENV = "PERSONA_HOME"


def persona_home() -> Path | None:
    """``$PERSONA_HOME`` as a path, or ``None`` when it is unset or empty."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else None


def data_dir() -> Path:
    """The user's data: ``$PERSONA_HOME/data``, else the platform's user data folder for ``persona``."""
    home = persona_home()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Settings: ``$PERSONA_HOME/config``, else the platform's user config folder for ``persona``."""
    home = persona_home()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Files that can be rebuilt: ``$PERSONA_HOME/cache``, else the platform's user cache folder for ``persona``."""
    home = persona_home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    """Logs: ``$PERSONA_HOME/logs``, else the platform's user log folder for ``persona``."""
    home = persona_home()
    return home / "logs" if home else Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def all_paths() -> dict[str, str]:
    """Every folder by name (``data``, ``config``, ``cache``, ``logs``, ``assets``), as strings, for display."""
    return {
        "data": str(data_dir()),
        "config": str(config_dir()),
        "cache": str(cache_dir()),
        "logs": str(log_dir()),
        "assets": str(assets_dir()),
    }
