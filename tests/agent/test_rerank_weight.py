"""The rerank's blend weight in force and its source: measured by default (0: the rerank is off), else the person's.

The profile holds a private LoRA record, so the only thing that keeps the language model out of the default
suggestions is the measured weight of 0 (the record's bytes are not a model: loading them would fail loudly).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from textual.pilot import Pilot
from textual.widgets import Static
from typer.testing import CliRunner

from agent.cli.main import app
from agent.engine.rerank import SERVED
from agent.engine.rerank_weight import weight_in_force
from agent.settings import RerankSettings, Settings, config_path, load_settings
from agent.store.profile_store import ProfileStore
from agent.tui.app import PersonaApp
from agent.tui.screens.suggestions import SuggestionsScreen
from models.fm.measured import MEASURED_BLEND

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")
LIKED = ["1", "95", "71", "588", "99", "596", "418"]  # Toy Story, Aladdin, Lion King, Beauty and the Beast, ...
MEASURED_OFF = "rerank off (weight 0, measured: validation picked 0)"


@pytest.fixture(autouse=True)
def _profile_with_a_private_lora() -> Iterator[None]:
    with ProfileStore.open() as store:
        store.add_interactions([("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(LIKED)])
        meta = {"catalog": "ml-100k", "prompt": "listwise", "lists": 4, "loss": 0.7, "delta_norm": 0.1}
        store.save_private_lora(b"GGUF never loaded", meta=meta)
    SERVED.close()
    yield
    SERVED.close()


def write_config(text: str) -> None:
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text(text)


def invoke(*args: str) -> tuple[str, str]:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.stdout, result.stderr


def test_by_default_the_measured_weight_switches_the_rerank_off_and_says_why() -> None:
    in_force = weight_in_force(load_settings().rerank)
    assert (in_force.weight, in_force.source, in_force.on) == (0.0, "measured", False)
    for fact in ("validation picked blend weight 0", "--model persona", "8268aa5a", "listwise", "[rerank] weight"):
        assert fact in in_force.why, fact
    body = json.loads(invoke("suggest", "--json", "-n", "5")[0])
    assert body["rerank"] | {"seconds": 0} == {
        "applied": False,
        "k": 20,
        "weight": 0.0,
        "source": "measured",
        "why": in_force.why,
        "note": "first stage only: " + in_force.why,
        "error": None,
        "seconds": 0,
    }
    assert len(body["suggestions"]) == 5 and all(s["fm_score"] is None for s in body["suggestions"])
    assert SERVED._fm is None  # no foundation model was loaded
    stdout, stderr = invoke("suggest", "-n", "5")
    assert f"language-model rerank off, weight 0 (measured): {in_force.why}" in stderr.splitlines()
    assert "set [rerank] weight (a number above 0" in stderr  # brackets printed as they are, not read as markup
    # the table's caption says it in a few words (the why is printed once, above it)
    caption = f"first stage only: {MEASURED_OFF}; why: see above or agent inspect"
    assert caption in " ".join(stdout.split()) and "validation picked blend weight" not in stdout


def test_your_setting_wins_over_the_measured_and_the_federation_weight() -> None:
    write_config("[rerank]\nweight = 0.5\n")
    mine = weight_in_force(load_settings().rerank)
    assert (mine.weight, mine.source, mine.on) == (0.5, "your setting", True)
    assert mine.why == "[rerank] weight = 0.5 in config.toml"
    write_config("[rerank]\nenabled = false\nweight = 0.5\n")
    off = weight_in_force(load_settings().rerank)
    assert (off.weight, off.source, off.on) == (0.0, "your setting", False) and "enabled = false" in off.why
    published = replace(MEASURED_BLEND, weight=0.25, date="2027-01-01")
    federation = weight_in_force(RerankSettings(), published)
    assert (federation.weight, federation.source, federation.on) == (0.25, "federation", True)
    assert "2027-01-01" in federation.why and "rerank is off" not in federation.why
    assert weight_in_force(RerankSettings(weight=0.0), published).source == "your setting"


def test_inspect_shows_the_weight_in_force_and_its_source() -> None:
    body = json.loads(invoke("inspect", "--json")[0])
    assert body["rerank"] == weight_in_force(RerankSettings()).as_dict()
    assert "language-model rerank off, weight 0 (measured): validation picked" in invoke("inspect")[0]
    write_config("[rerank]\nweight = 2\n")
    body = json.loads(invoke("inspect", "--json")[0])
    assert (body["rerank"]["weight"], body["rerank"]["source"]) == (2.0, "your setting")


async def _status_text(pilot: Pilot[None]) -> str:
    for _ in range(2400):
        screen = pilot.app.screen
        if isinstance(screen, SuggestionsScreen) and screen.suggestions:
            return str(screen.query_one("#status", Static).render())
        await pilot.pause(0.025)
    raise AssertionError("the suggestions never appeared")


@pytest.mark.asyncio
async def test_the_tui_status_line_says_the_rerank_is_off_by_the_measured_weight() -> None:
    tui = PersonaApp(settings=Settings(retrain_after_feedback=False))
    async with tui.run_test(size=(120, 30)) as pilot:
        status = await _status_text(pilot)
    assert status == f"20 suggestions · {MEASURED_OFF}"
    assert SERVED._fm is None
