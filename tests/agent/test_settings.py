"""Typed settings from config.toml, and the PERSONA_* variables agent.settings reads."""

from __future__ import annotations

import pytest

from agent.errors import ProfileError
from agent.settings import (
    MAX_RERANK_K,
    RerankSettings,
    Settings,
    SyncSettings,
    config_path,
    coordinator_url_from_env,
    load_settings,
    passphrase_from_env,
    progress_bars_off,
    sync_settings,
)
from sync.protocol import rules


def test_defaults_without_a_config_file() -> None:
    assert load_settings() == Settings()


def test_values_and_key_remapping_are_read() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text('suggestions = 15\nquery_weight = 2\n[keys]\n"suggestions.like" = "k,+"\n')
    settings = load_settings()
    assert settings.suggestions == 15 and settings.query_weight == 2.0
    assert settings.keys == {"suggestions.like": "k,+"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sugestions = 3\n", "Unknown setting(s)"),
        ('suggestions = "many"\n', "must be of type int"),
        ("retrain_after_feedback = 1\n", "must be of type bool"),
        ("suggestions = \n", "Cannot read the config file"),
    ],
)
def test_bad_config_is_a_clear_error(text: str, message: str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings()


def test_the_rerank_table_is_read_and_checked() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[rerank]\nenabled = false\nk = 12\n")
    assert load_settings().rerank == RerankSettings(enabled=False, k=12, weight=RerankSettings().weight)
    for k in (21, 500):  # the listwise prompt letters at most 20 candidates
        path.write_text(f"[rerank]\nk = {k}\n")
        with pytest.raises(ProfileError, match=r"rerank\.k in .* from 1 to 20") as error:
            load_settings()
        assert "A to T" in (error.value.hint or "")
    # one limit everywhere: the listwise prompt's letters, the setting, the federated evaluation's plan
    from models.fm.listwise import LIST_SIZE
    from sync.protocol.evaluation import MAX_RERANK_K as PLAN_MAX

    assert MAX_RERANK_K == LIST_SIZE == PLAN_MAX == RerankSettings().k
    path.write_text("[rerank]\nweigth = 1\n")
    with pytest.raises(ProfileError, match=r"Unknown setting\(s\) in \[rerank\]"):
        load_settings()


def test_sync_settings_are_the_protocol_defaults_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COHORT", "CLIP", "SIGMA", "WEIGHT_CAP", "MAX_DROPOUT"):
        monkeypatch.delenv(f"PERSONA_SYNC_{name}", raising=False)
    assert sync_settings() == SyncSettings(
        cohort=rules.SYNC_COHORT,
        clip=rules.SYNC_CLIP,
        sigma=rules.SYNC_SIGMA,
        weight_cap=rules.SYNC_WEIGHT_CAP,
        max_dropout=rules.SYNC_MAX_DROPOUT,
    )
    monkeypatch.setenv("PERSONA_SYNC_COHORT", "50")
    monkeypatch.setenv("PERSONA_SYNC_SIGMA", "0.8")
    changed = sync_settings()
    assert changed.cohort == 50 and isinstance(changed.cohort, int)
    assert changed.sigma == 0.8 and changed.clip == rules.SYNC_CLIP


def test_environment_readers_treat_empty_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_PASSPHRASE", "")
    monkeypatch.setenv("PERSONA_COORDINATOR_URL", "")
    monkeypatch.setenv("PERSONA_NO_PROGRESS", "")
    assert passphrase_from_env() is None and coordinator_url_from_env() is None and not progress_bars_off()
    monkeypatch.setenv("PERSONA_PASSPHRASE", "s3cret")
    monkeypatch.setenv("PERSONA_COORDINATOR_URL", "http://127.0.0.1:8750")
    monkeypatch.setenv("PERSONA_NO_PROGRESS", "1")
    assert passphrase_from_env() == "s3cret" and coordinator_url_from_env() == "http://127.0.0.1:8750"
    assert progress_bars_off()
