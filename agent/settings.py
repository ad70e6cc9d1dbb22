"""Typed settings of the agent, read from ``config_dir()/config.toml`` (every field is optional).

Example ``config.toml``::

    suggestions = 15          # rows on the Suggestions screen
    query_weight = 1.0        # pull of the query box on the user state

    [keys]                    # binding id = "key[,key...]" (the ids are listed in the README)
    "suggestions.like" = "l,+"
    "suggestions.dislike" = "d,-"

    [rerank]                  # the second stage: the language model rescores the first stage's top k
    enabled = true
    k = 20
    weight = 0.5              # final = z(first stage) + weight · z(language model), over the top k
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
class RerankSettings:
    """The ``[rerank]`` table: the second stage of suggestions (the foundation model with the LoRA adapters)."""

    enabled: bool = True
    """Rescore the first stage's top ``k`` with the language model (needs a trained LoRA; see the README)."""
    k: int = 20
    """How many of the first stage's best items the language model rescores (1-50; ~50 ms each)."""
    weight: float = 0.5
    """Pull of the language model in the blend ``z(first stage) + weight · z(language model)``."""


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
    rerank: RerankSettings = field(default_factory=RerankSettings)
    """The ``[rerank]`` table (:class:`RerankSettings`)."""


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
        if name == "rerank":
            values[name] = _rerank_settings(value, path)
            continue
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


def _rerank_settings(raw: object, path: Path) -> RerankSettings:
    """The ``[rerank]`` table, checked like the top level."""
    if not isinstance(raw, dict):
        raise ProfileError(f"rerank in {path} must be a table: [rerank] with enabled, k and weight.")
    known = {f.name for f in fields(RerankSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(
            f"Unknown setting(s) in [rerank] of {path}: {', '.join(unknown)}.",
            hint=f"Known: {', '.join(sorted(known))}.",
        )
    default = RerankSettings()
    enabled, k, weight = (
        raw.get("enabled", default.enabled),
        raw.get("k", default.k),
        raw.get("weight", default.weight),
    )
    if not isinstance(enabled, bool):
        raise ProfileError(f"rerank.enabled in {path} must be true or false, not {enabled!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50:
        raise ProfileError(f"rerank.k in {path} must be a whole number from 1 to 50, not {k!r}.")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ProfileError(f"rerank.weight in {path} must be a number ≥ 0, not {weight!r}.")
    return RerankSettings(enabled=enabled, k=k, weight=float(weight))
