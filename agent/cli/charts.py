"""What the charts of ``--plot`` and ``agent plot FILE.json`` draw: the series in a command's JSON body.

Three bodies are understood, told apart by their keys: ``agent inspect --json`` (the diverging bar chart of tag
lifts, :mod:`agent.tui.bars`, the same chart as the TUI's Profile screen; then ε this year at each participation
against the yearly budget, the Sync screen's chart), ``agent eval --json`` (the validation
NDCG@10 per round with the kept round marked; per-k bars for ``--protocol coldstart``) and ``scripts/audit.py
--json`` (attacker AUC per setting and view with its 95 % interval, against chance at 0.5). The functions that pull
the series out of a body are shared by :mod:`agent.cli.textplots` (the terminal, plotext) and
:mod:`agent.cli.figures` (PNG or SVG, matplotlib); both are imported only when a chart is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import PersonaError

FIGURE_FORMATS = (".png", ".svg")


class PlotError(PersonaError):
    """A body that holds nothing to draw, or a file that cannot be drawn to."""

    title = "Cannot plot"


def check_figure_path(target: Path) -> None:
    """A :class:`PlotError` unless ``target`` names a .png or .svg file in an existing folder."""
    if target.suffix.lower() not in FIGURE_FORMATS:
        raise PlotError(f"Cannot write a figure to {target.name!r}.", hint="Give a file name ending in .png or .svg.")
    if not target.parent.is_dir():
        raise PlotError(f"The folder {target.parent} does not exist.", hint="Create it or choose another path.")


@dataclass(frozen=True)
class Curve:
    """Validation NDCG@10 and HR@10 per federated round (or epoch), and the round kept by model selection."""

    rounds: list[int]
    ndcg: list[float]
    hr: list[float]
    kept: int | None


@dataclass(frozen=True)
class Interval:
    """One labelled estimate with its 95 % interval (an audit row: AUC of an attacker)."""

    label: str
    value: float
    low: float
    high: float


def kind_of(body: Mapping[str, Any]) -> str:
    """``inspect``, ``eval`` or ``audit``: which command printed ``body`` (a :class:`PlotError` if none)."""
    if "affinities" in body and "aversions" in body:
        return "inspect"
    if "metrics" in body and "selected" in body:
        return "eval"
    if isinstance(body.get("rows"), list) and all("auc" in r for r in body["rows"]):
        return "audit"
    raise PlotError(
        "This JSON is not a result Persona can draw.",
        hint="Save one with `agent inspect --json`, `agent eval --json` or `scripts/audit.py --json` first.",
    )


def eval_curve(body: Mapping[str, Any]) -> Curve | None:
    """The per-round validation curve of an ``agent eval`` body (None when it has none, e.g. popularity)."""
    selected = body.get("selected") or {}
    history = [h for h in selected.get("history") or [] if "valid_NDCG@10" in h]
    if not history:
        return None
    step = "round" if "round" in history[0] else "epoch"
    return Curve(
        rounds=[int(h.get(step, i + 1)) for i, h in enumerate(history)],
        ndcg=[float(h["valid_NDCG@10"]) for h in history],
        hr=[float(h.get("valid_HR@10", float("nan"))) for h in history],
        kept=selected.get(step),
    )


def coldstart_bars(body: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Test HR@10 and NDCG@10 per ``k=…`` of a cold-start ``agent eval`` body (empty for other protocols)."""
    metrics = body.get("metrics") or {}
    return {k: v for k, v in metrics.items() if k.startswith("k=") and isinstance(v, dict)}


def eval_series(body: Mapping[str, Any]) -> tuple[Curve | None, dict[str, dict[str, float]]]:
    """The curve and the cold-start bars of an ``agent eval`` body; a :class:`PlotError` when it has neither."""
    curve, bars = eval_curve(body), coldstart_bars(body)
    if curve is None and not bars:
        raise PlotError(
            "This `agent eval` result has no per-round curve and no cold-start rows to draw.",
            hint="Curves come from --model federated or central; per-k bars from --protocol coldstart.",
        )
    return curve, bars


def audit_intervals(body: Mapping[str, Any]) -> list[Interval]:
    """One interval per audit row: the attacker's AUC for a setting, target and view."""
    return [
        Interval(f"{r['setting']} {r['target']} {r['view']}", float(r["auc"]), *map(float, r["auc_ci"]))
        for r in body["rows"]
    ]


def epsilon_series(body: Mapping[str, Any]) -> tuple[list[tuple[float, float]], float] | None:
    """``(time, ε this year)`` at each participation and the yearly budget (inf: none) of an ``agent inspect``
    body; None for a body saved before it carried ``epsilon_history``."""
    history = body.get("epsilon_history")
    if not isinstance(history, list):
        return None
    budget = (body.get("privacy_budget") or {}).get("budget")
    points = [(float(p["time"]), float(p["epsilon"])) for p in history]
    return points, math.inf if budget is None else float(budget)
