"""The agent's settings: the config file ``config_dir()/config.toml`` and the ``PERSONA_*`` environment variables.

This module is the one reader of the environment variables (besides ``PERSONA_HOME``, read by :mod:`agent.paths`
where the folders are computed, and ``PERSONA_ASSETS``, read by :func:`models.assets.assets_dir`)::

    PERSONA_HOME              relocates the person's files (agent.paths)
    PERSONA_ASSETS            where the prepared model and data files are (models.assets)
    PERSONA_PASSPHRASE        unlocks an encrypted profile without a prompt (also how the worker gets it)
    PERSONA_COORDINATOR_URL   the coordinator ``agent sync`` talks to (wins over ``coordinator_url``)
    PERSONA_NO_PROGRESS       no progress bars on stderr when it is not a terminal
    PERSONA_SYNC_COHORT, _CLIP, _SIGMA, _WEIGHT_CAP, _MAX_DROPOUT
                              the sync protocol settings (defaults: :mod:`sync.protocol.rules`)
    PERSONA_SYSTEMD_USER_DIR  where ``agent schedule`` writes its systemd user units (default ~/.config/systemd/user)
    PERSONA_LAUNCHD_DIR       where it writes its launchd agent on macOS (default ~/Library/LaunchAgents)

Example ``config.toml`` (every field is optional)::

    suggestions = 15          # rows on the Suggestions screen
    query_weight = 0.25       # pull of the query box on the user state (validation's pick, README)

    [keys]                    # binding id = "key[,key...]" (the ids are listed in the README)
    "suggestions.like" = "l,+"
    "suggestions.dislike" = "d,-"

    [rerank]                  # the second stage: the language model rescores the first stage's top k
    enabled = true
    k = 20                    # at most 20: one listwise prompt letters them A to T
    # weight = 0.1            # final = z(first stage) + weight · z(language model), over the top k;
                              # unset: the measured weight (models.fm.measured: 0, the rerank is off);
                              # 0.1 is the most validation picked (base or shared adapter, +0.2 % NDCG@10)

    [sync]                    # when this agent takes part in the federation
    epsilon_budget = 8.0      # ε it spends at most per rolling 365 days (δ 1e-5); inf: no limit
    # coordinator_fingerprint = "sha256:…"   # pin the https coordinator's certificate (what its serve prints)
    # coordinator_ca_file = "/path/ca.pem"   # or trust this CA instead of the system trust store
    # insecure_http = false   # true: allow plain http:// to a coordinator on another machine
    lm_train_seconds = 60.0   # a sync's budget for training the language model's shared adapter (0: send zeros)

    [schedule]                # when a scheduled sync (`agent sync --if-eligible`) may take part
    require_ac = true         # only on AC power (an unknown power source counts as AC)
    metered = false           # set true on a metered network: scheduled syncs then skip (nothing detects it)
    min_days_between = 7.0    # at most one participation per this many days
    max_load_per_core = 0.5   # "idle": the 1-minute load average per core below this (inf: no check)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent import paths
from agent.errors import ProfileError
from models.firststage.scorer import QUERY_WEIGHT
from sync.protocol import rules
from sync.protocol.certs import parse_fingerprint

CONFIG_NAME = "config.toml"
PASSPHRASE_ENV = "PERSONA_PASSPHRASE"
COORDINATOR_ENV = "PERSONA_COORDINATOR_URL"
NO_PROGRESS_ENV = "PERSONA_NO_PROGRESS"
SYNC_ENV_PREFIX = "PERSONA_SYNC_"
SYSTEMD_DIR_ENV = "PERSONA_SYSTEMD_USER_DIR"
LAUNCHD_DIR_ENV = "PERSONA_LAUNCHD_DIR"
ASSETS_ENV = "PERSONA_ASSETS"


def passphrase_from_env() -> str | None:
    """``PERSONA_PASSPHRASE``, or None when it is unset or empty."""
    return os.environ.get(PASSPHRASE_ENV) or None


def coordinator_url_from_env() -> str | None:
    """``PERSONA_COORDINATOR_URL``, or None when it is unset or empty."""
    return os.environ.get(COORDINATOR_ENV) or None


def scheduler_dir_from_env(kind: str) -> Path | None:
    """Where ``agent schedule`` writes its units when overridden: ``PERSONA_SYSTEMD_USER_DIR`` (``kind``
    "systemd") or ``PERSONA_LAUNCHD_DIR`` ("launchd"); None when unset or empty (the real folder is used)."""
    raw = os.environ.get(SYSTEMD_DIR_ENV if kind == "systemd" else LAUNCHD_DIR_ENV)
    return Path(raw).expanduser() if raw else None


def scheduled_run_environment() -> dict[str, str]:
    """The ``PERSONA_*`` variables a scheduled sync must see to work on the same profile as this shell:
    ``PERSONA_HOME``, ``PERSONA_ASSETS``, ``PERSONA_COORDINATOR_URL`` and ``PERSONA_SYNC_*`` when set. Never the
    passphrase: an encrypted profile cannot be synced unattended."""
    names = (paths.HOME_ENV, ASSETS_ENV, COORDINATOR_ENV)
    return {
        name: value
        for name, value in sorted(os.environ.items())
        if value and (name in names or name.startswith(SYNC_ENV_PREFIX))
    }


def progress_bars_off() -> bool:
    """True when ``PERSONA_NO_PROGRESS`` is set (to anything but the empty string)."""
    return bool(os.environ.get(NO_PROGRESS_ENV))


@dataclass(frozen=True)
class SyncSettings:
    """The protocol settings this agent syncs with: :mod:`sync.protocol.rules`' defaults, or ``PERSONA_SYNC_*``.

    The defaults were measured on ML-100K (README, "Privacy"): every agent in every round (a cohort of up to
    1,000), C 0.5, σ 0.4, weights capped at 32 examples, noise calibrated for at most 10 % dropouts.
    """

    cohort: int = rules.SYNC_COHORT
    """Agents per round (``PERSONA_SYNC_COHORT``)."""
    clip: float = rules.SYNC_CLIP
    """The clipping norm C of each agent's shared delta (``PERSONA_SYNC_CLIP``)."""
    sigma: float = rules.SYNC_SIGMA
    """The noise multiplier σ (``PERSONA_SYNC_SIGMA``)."""
    weight_cap: float = rules.SYNC_WEIGHT_CAP
    """The cap on an agent's weight, in examples (``PERSONA_SYNC_WEIGHT_CAP``)."""
    max_dropout: float = rules.SYNC_MAX_DROPOUT
    """The dropout fraction the noise is calibrated for (``PERSONA_SYNC_MAX_DROPOUT``)."""


def sync_settings() -> SyncSettings:
    """The sync settings: each field from ``PERSONA_SYNC_<FIELD>`` when set, else its default."""
    default = SyncSettings()
    values: dict[str, Any] = {}
    for setting in fields(SyncSettings):
        raw = os.environ.get(SYNC_ENV_PREFIX + setting.name.upper())
        kind = type(getattr(default, setting.name))
        values[setting.name] = kind(raw) if raw is not None else getattr(default, setting.name)
    return SyncSettings(**values)


MAX_RERANK_K = 20
"""The most candidates the language model's listwise prompt letters (A to T: :data:`models.fm.listwise.LIST_SIZE`)."""


@dataclass(frozen=True)
class RerankSettings:
    """The ``[rerank]`` table: the second stage of suggestions (the foundation model with the LoRA adapters)."""

    enabled: bool = True
    """Rescore the first stage's top ``k`` with the language model (needs a trained LoRA; see the README)."""
    k: int = MAX_RERANK_K
    """How many of the first stage's best items the language model rescores in one listwise prompt (1-20)."""
    weight: float | None = None
    """Pull of the language model in the blend ``z(first stage) + weight · z(language model)``; None: the measured
    weight (:func:`agent.engine.rerank_weight.weight_in_force`), 0 turns the rerank off."""


@dataclass(frozen=True)
class SyncPreferences:
    """The ``[sync]`` table: when this agent takes part (the protocol itself is :class:`SyncSettings`)."""

    epsilon_budget: float = rules.SYNC_EPSILON_BUDGET
    """ε this agent spends at most over any 365 days; a sync that would exceed it does not take part (README,
    "Privacy budget per year"). ``inf`` removes the limit."""
    coordinator_fingerprint: str = ""
    """The https coordinator's certificate, pinned: ``sha256:`` + 64 hex digits (stored canonical); "" trusts the
    system trust store (or ``coordinator_ca_file``)."""
    coordinator_ca_file: str = ""
    """A PEM file of CA certificates to verify the coordinator with instead of the system trust store."""
    insecure_http: bool = False
    """Allow plain ``http://`` to a coordinator that is not on this machine (``agent sync --insecure-http``)."""
    lm_train_seconds: float = 60.0
    """When a round carries the language model's shared adapter φ_g: about how long a sync trains it on this
    person's lists (model load included; at least one step runs). 0 sends a zero φ_g delta (README, "Both shared
    adapters on the wire")."""


@dataclass(frozen=True)
class SchedulePreferences:
    """The ``[schedule]`` table: when a scheduled sync (``agent sync --if-eligible``) may take part
    (:mod:`agent.engine.eligibility`)."""

    require_ac: bool = True
    """Take part only on AC power (a machine whose power source cannot be read counts as on AC)."""
    metered: bool = False
    """The person says the network is metered: scheduled syncs skip. Nothing detects a metered network portably."""
    min_days_between: float = 7.0
    """At most one participation per this many days, counted from the ledger's last one."""
    max_load_per_core: float = 0.5
    """The machine counts as idle when its 1-minute load average per core is below this; ``inf`` turns it off."""


@dataclass(frozen=True)
class Settings:
    """What a person can configure."""

    suggestions: int = 20
    """How many suggestions the Suggestions screen lists."""
    query_weight: float = QUERY_WEIGHT
    """How strongly the query box pulls the user state toward the query's text (relative to the state's norm)."""
    retrain_after_feedback: bool = True
    """Retrain the private adapter (in a worker process) after each like or dislike in the TUI."""
    coordinator_url: str = ""
    """The coordinator ``agent sync`` talks to, e.g. ``http://127.0.0.1:8750`` (PERSONA_COORDINATOR_URL wins)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Key remapping: binding id → comma-separated keys, e.g. ``"suggestions.like" = "l,+"``."""
    rerank: RerankSettings = field(default_factory=RerankSettings)
    """The ``[rerank]`` table (:class:`RerankSettings`)."""
    sync: SyncPreferences = field(default_factory=SyncPreferences)
    """The ``[sync]`` table (:class:`SyncPreferences`)."""
    schedule: SchedulePreferences = field(default_factory=SchedulePreferences)
    """The ``[schedule]`` table (:class:`SchedulePreferences`)."""


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
        if name == "sync":
            values[name] = _sync_preferences(value, path)
            continue
        if name == "schedule":
            values[name] = _schedule_preferences(value, path)
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
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RERANK_K:
        raise ProfileError(
            f"rerank.k in {path} must be a whole number from 1 to {MAX_RERANK_K}, not {k!r}.",
            hint=f"The language model's listwise prompt letters at most {MAX_RERANK_K} candidates (A to T).",
        )
    if weight is None:
        return RerankSettings(enabled=enabled, k=k)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ProfileError(
            f"rerank.weight in {path} must be a number ≥ 0, not {weight!r}.",
            hint="Leave it out to use the measured weight (see the README, [rerank]).",
        )
    return RerankSettings(enabled=enabled, k=k, weight=float(weight))


def _sync_preferences(raw: object, path: Path) -> SyncPreferences:
    """The ``[sync]`` table: ``epsilon_budget`` (a number > 0), ``coordinator_fingerprint`` (a SHA-256 certificate
    fingerprint), ``coordinator_ca_file`` (a path) and ``insecure_http`` (a boolean)."""
    known = {f.name for f in fields(SyncPreferences)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ProfileError(
            f"sync in {path} must be a table with only {', '.join(sorted(known))}, not {raw!r}.",
            hint="Write it as [sync] then epsilon_budget = 8.0 (or inf for no limit).",
        )
    budget = raw.get("epsilon_budget", SyncPreferences().epsilon_budget)
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ProfileError(
            f"sync.epsilon_budget in {path} must be a number > 0, not {budget!r}.",
            hint="ε per 365 days; the default is 8, inf removes the limit.",
        )
    pin = raw.get("coordinator_fingerprint", "")
    try:
        pin = parse_fingerprint(pin) if isinstance(pin, str) and pin.strip() else pin
    except ValueError as error:
        raise ProfileError(f"sync.coordinator_fingerprint in {path}: {error}.") from error
    ca_file = raw.get("coordinator_ca_file", "")
    insecure = raw.get("insecure_http", False)
    lm_seconds = raw.get("lm_train_seconds", SyncPreferences().lm_train_seconds)
    if isinstance(lm_seconds, bool) or not isinstance(lm_seconds, int | float) or not 0 <= lm_seconds < float("inf"):
        raise ProfileError(
            f"sync.lm_train_seconds in {path} must be a number of seconds ≥ 0, not {lm_seconds!r}.",
            hint="0 sends a zero delta for the language model's shared adapter; the default is 60.",
        )
    if not isinstance(pin, str) or not isinstance(ca_file, str) or not isinstance(insecure, bool):
        raise ProfileError(
            f"[sync] in {path}: coordinator_fingerprint and coordinator_ca_file are strings, insecure_http is true "
            "or false.",
            hint='e.g. coordinator_fingerprint = "sha256:…" as printed by `agent-coordinator serve`.',
        )
    return SyncPreferences(
        epsilon_budget=float(budget),
        coordinator_fingerprint=pin.strip(),
        coordinator_ca_file=str(Path(ca_file).expanduser()) if ca_file.strip() else "",
        insecure_http=insecure,
        lm_train_seconds=float(lm_seconds),
    )


def _schedule_preferences(raw: object, path: Path) -> SchedulePreferences:
    """The ``[schedule]`` table: two booleans and two numbers ≥ 0 (``max_load_per_core`` may be inf)."""
    known = {f.name for f in fields(SchedulePreferences)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ProfileError(
            f"schedule in {path} must be a table with only {', '.join(sorted(known))}, not {raw!r}.",
            hint="Write it as [schedule] then e.g. require_ac = true and min_days_between = 7.",
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in ("require_ac", "metered"):
            if not isinstance(value, bool):
                raise ProfileError(f"schedule.{name} in {path} must be true or false, not {value!r}.")
            values[name] = value
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ProfileError(f"schedule.{name} in {path} must be a number ≥ 0, not {value!r}.")
        else:
            values[name] = float(value)
    return SchedulePreferences(**values)


def coordinator_url() -> str | None:
    """The configured coordinator: PERSONA_COORDINATOR_URL, else ``coordinator_url`` in config.toml, else None."""
    url = coordinator_url_from_env() or load_settings().coordinator_url
    return url.strip().rstrip("/") or None
