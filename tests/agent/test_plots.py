"""Charts: ``inspect --plot``, ``eval --plot`` and ``agent plot`` on saved results, in the terminal and as files.

The saved results are real runs committed under ``docs/plots`` (the README's figures are drawn from them); the
profile is a real store with the real catalog and vectors.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent.cli import plot
from agent.cli.console import progress_bar
from agent.cli.figures import SIZE
from agent.cli.main import app
from agent.cli.plot import bare_plot_flag
from agent.store.profile_store import ProfileStore

runner = CliRunner()
SAVED = Path(__file__).resolve().parents[2] / "docs" / "plots"
ANIMATED, SLASHERS = ["1", "95", "71"], ["288", "200"]  # Toy Story, Aladdin, The Lion King; Scream, The Shining


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.fixture
def seeded(warm_embedding_cache: Path) -> None:
    with ProfileStore.open() as store:
        rows = [("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(ANIMATED)]
        rows += [("ml-100k", item, "dislike", 1.0, 10 + t, "test") for t, item in enumerate(SLASHERS)]
        store.add_interactions(rows)


def test_bare_plot_becomes_the_terminal_value_and_a_file_stays() -> None:
    assert bare_plot_flag(["inspect", "--plot"]) == ["inspect", "--plot=-"]
    assert bare_plot_flag(["eval", "--plot", "--json"]) == ["eval", "--plot=-", "--json"]
    assert bare_plot_flag(["inspect", "--plot", "me.png"]) == ["inspect", "--plot", "me.png"]


@pytest.mark.usefixtures("seeded")
def test_inspect_plot_draws_the_lifts_in_the_terminal_and_into_png_and_svg(tmp_path: Path) -> None:
    code, stdout, _ = invoke("inspect", "--json")
    body = json.loads(stdout)
    top, bottom = body["affinities"][0], body["aversions"][0]
    code, chart, stderr = invoke("inspect", "--plot", env={"COLUMNS": "100"})
    assert code == 0, stderr
    assert "\x1b[" not in chart  # not a terminal: no colour
    lines = chart.splitlines()
    liked_line = next(line for line in lines if line.strip().startswith(top["tag"]))
    disliked_line = next(line for line in lines if line.strip().startswith(bottom["tag"]))
    # affinities grow right of the axis, aversions left of it
    assert liked_line.split("│")[1].strip().startswith("█") and "█" not in liked_line.split("│")[0]
    assert (
        "█" in disliked_line.split("│")[0]
        and "█" not in disliked_line.split("│")[1]
        and f"{bottom['lift']:+.2f}σ" in disliked_line
    )
    code, _, stderr = invoke("inspect", "--plot", str(tmp_path / "me.png"))
    assert code == 0 and "figure written" in stderr
    assert png_size(tmp_path / "me.png") == SIZE
    code, _, _ = invoke("inspect", "--plot", str(tmp_path / "me.svg"))
    svg = (tmp_path / "me.svg").read_text()
    assert code == 0 and "<svg" in svg and top["tag"] in svg
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.mark.parametrize("saved", ["eval_federated.json", "eval_coldstart.json", "audit.json"])
def test_agent_plot_redraws_a_saved_result_as_png_and_in_the_terminal(saved: str, tmp_path: Path) -> None:
    code, _, stderr = invoke("plot", str(SAVED / saved), "--out", str(tmp_path / "figure.png"))
    assert code == 0, stderr
    assert png_size(tmp_path / "figure.png") == SIZE
    code, chart, stderr = invoke("plot", str(SAVED / saved), env={"COLUMNS": "90"})
    assert code == 0, stderr
    body = json.loads((SAVED / saved).read_text())
    if saved == "eval_federated.json":
        assert f"kept: round {body['selected']['round']}" in chart
    elif saved == "eval_coldstart.json":
        assert "k=0" in chart and "k=5" in chart
    else:
        first = body["rows"][0]
        assert f"{first['setting']} {first['target']}" in chart and "chance 0.5" in chart and "●" in chart


def test_plot_errors_say_what_was_wrong(tmp_path: Path) -> None:
    not_a_result = tmp_path / "other.json"
    not_a_result.write_text('{"hello": 1}')
    code, _, stderr = invoke("plot", str(not_a_result))
    assert code == 1 and "not a result Persona can draw" in stderr
    code, _, stderr = invoke("plot", str(SAVED / "audit.json"), "--out", str(tmp_path / "figure.jpg"))
    assert code == 1 and ".png or .svg" in stderr
    code, _, stderr = invoke("plot", str(SAVED / "audit.json"), env={"COLUMNS": "30"})
    assert code == 1 and "Too narrow for the chart: 30 columns" in stderr
    # checked before training starts, not after a long run
    code, _, stderr = invoke("eval", "--plot", str(tmp_path / "missing" / "curve.png"))
    assert code == 1 and "does not exist" in stderr


@pytest.mark.parametrize("no_color", [False, True])
def test_colour_in_a_terminal_and_none_with_no_color(no_color: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, no_color=no_color, width=90)  # what NO_COLOR sets
    monkeypatch.setattr(plot, "out", terminal)
    for saved in ("eval_federated.json", "inspect.json"):
        code, _, stderr = invoke("plot", str(SAVED / saved))
        assert code == 0, stderr
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert ("\x1b[" in drawn) is not no_color
    assert "validation NDCG@10 per round" in drawn and "Affinities" in drawn


def test_progress_prints_a_line_per_update_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar() as bar:
        task = bar.add_task("federated on ml-100k", total=2, status="")
        bar.update(task, advance=1, status="round valid NDCG@10 0.200")
        bar.update(task, advance=1, status="round valid NDCG@10 0.250")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert [line.split("] ", 1)[1] for line in lines] == [
        "federated on ml-100k 1/2: round valid NDCG@10 0.200",
        "federated on ml-100k 2/2: round valid NDCG@10 0.250",
    ]
