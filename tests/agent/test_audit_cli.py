"""``agent audit``: one person's exposure, end to end on a real profile (an ML-100K user, as `agent demo` makes)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.cli.audit import exposure_words
from agent.cli.main import app
from agent.engine.demo import dataset_user_rows
from agent.store.profile_store import ProfileStore
from models.data.movielens import load_ml100k

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")


def become_ml100k_user(user: str) -> None:
    """What `agent demo` stores for a user (without the federation): their ratings, and who they are."""
    with ProfileStore.open() as store:
        store.add_interactions(dataset_user_rows(load_ml100k(), user))
        store.set_meta("demo_user", user)


def test_audit_json_reports_every_view_and_target_for_a_known_user() -> None:
    become_ml100k_user("2")  # a 53-year-old woman in the user table
    result = runner.invoke(app, ["audit", "--population", "40", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["known"] == {"gender": "F", "age": ">=45"}
    assert body["population"] == 40 and body["chance"] == 0.5
    assert body["settings"]["cohort"] > 0 and body["epsilon_spent"] == 0.0
    assert [(r["view"], r["target"]) for r in body["rows"]] == [
        (v, t) for v in ("a", "b", "c", "d") for t in ("gender", "age")
    ]
    for row in body["rows"]:
        assert sum(row["guess"].values()) == pytest.approx(1.0, abs=1e-3)
        assert set(row["guess"]) == ({"M", "F"} if row["target"] == "gender" else {"<25", "25-44", ">=45"})
        assert 0.0 <= row["auc_ci"][0] <= row["population_auc"] <= row["auc_ci"][1] <= 1.0
        assert isinstance(row["correct"], bool)


def test_audit_needs_likes() -> None:
    result = runner.invoke(app, ["audit", "--population", "40"])
    assert result.exit_code == 1
    assert "liked items" in result.stderr


def test_exposure_words() -> None:
    assert exposure_words(0.52, 0.47) == "no better than chance"
    assert exposure_words(0.60, 0.55) == "slightly exposed"
    assert exposure_words(0.75, 0.70) == "exposed"
