"""Typed settings from config.toml."""

from __future__ import annotations

import pytest

from agent.errors import ProfileError
from agent.settings import RerankSettings, Settings, config_path, load_settings


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
    path.write_text("[rerank]\nenabled = false\nk = 30\n")
    assert load_settings().rerank == RerankSettings(enabled=False, k=30, weight=RerankSettings().weight)
    path.write_text("[rerank]\nk = 500\n")
    with pytest.raises(ProfileError, match=r"rerank\.k in"):
        load_settings()
    path.write_text("[rerank]\nweigth = 1\n")
    with pytest.raises(ProfileError, match=r"Unknown setting\(s\) in \[rerank\]"):
        load_settings()
