"""Typed settings of the agent, read from ``config_dir()/config.toml`` (every field is optional).

Example ``config.toml``::

    suggestions = 15          # rows on the Suggestions screen
    query_weight = 1.0        # pull of the query box on the user state

    [keys]                    # binding id = "key[,key...]" (the ids are listed in the README)
    "suggestions.like" = "l,+"
    "suggestions.dislike" = "d,-"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent import paths
from agent.errors import ProfileError

CONFIG_NAME = "config.toml"


@dataclass(frozen=True)
class Settings:
    """What a person can configure."""

    suggestions: int = 20
    """How many suggestions the Suggestions screen lists."""
    query_weight: float = 1.0
    """How strongly the query box pulls the user state toward the query's text (relative to the state's norm)."""
    retrain_after_feedback: bool = True
    """Retrain the private adapter (in a worker process) after each like or dislike in the TUI."""
    coordinator_url: str = ""
    """The coordinator ``agent sync`` talks to, e.g. ``http://127.0.0.1:8750`` (PERSONA_COORDINATOR_URL wins)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Key remapping: binding id → comma-separated keys, e.g. ``"suggestions.like" = "l,+"``."""


def config_path() -> Path:
    """Where the config file is read from."""
    return paths.config_dir() / CONFIG_NAME


def load_settings(path: Path | None = None) -> Settings:
    """Settings from the config file (defaults when it does not exist); a bad file raises :class:`ProfileError`."""
    path = path or config_path()
    if not path.is_file():
        return Settings()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"Cannot read the config file {path}: {exc}", hint="Fix or delete the file.") from exc
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ProfileError(
            f"Unknown setting(s) in {path}: {', '.join(unknown)}.", hint=f"Known settings: {', '.join(known)}."
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(Settings(), name)
        expected = type(default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if isinstance(default, bool) != isinstance(value, bool) or not ok:
            raise ProfileError(
                f"Setting {name!r} in {path} must be of type {expected.__name__}, not {value!r}.",
                hint="See `agent --help` or the README for the settings.",
            )
        if name == "keys" and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ProfileError(f"[keys] in {path} must map binding ids to strings of keys.")
        values[name] = float(value) if expected is float else value
    return Settings(**values)
