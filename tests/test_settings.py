"""Typed settings from config.toml."""

from __future__ import annotations

import pytest

from agent.errors import ProfileError
from agent.settings import Settings, config_path, load_settings


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
