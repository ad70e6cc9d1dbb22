"""The charts of :mod:`agent.cli.charts` written to a PNG or SVG file with matplotlib (``--plot FILE``).

matplotlib is imported only here, and this module only when a figure file is asked for, so no other command pays
for it. Every figure is :data:`SIZE` pixels (``WIDTH_IN`` × ``HEIGHT_IN`` inches at :data:`DPI`); the file is
written to a temporary name next to the target and renamed over it (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.cli.charts import (
    PlotError,
    audit_intervals,
    check_figure_path,
    coldstart_bars,
    eval_curve,
    eval_series,
    kind_of,
)
from agent.tui.bars import lift_rows

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 5.0, 100
SIZE = (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
"""(width, height) in pixels of every PNG."""
LIKED, DISLIKED, NEUTRAL = "#2e7d32", "#c62828", "#1f5f99"


def _inspect(ax: Any, body: Mapping[str, Any]) -> None:
    rows = lift_rows(body)
    if not rows:
        raise PlotError("The profile has no tag lifts yet.", hint="Like a few items and run `agent train` first.")
    labels = [f"{r['tag']} ({r['liked']}✓ {r['disliked']}✗)" for r in rows]
    lifts = [float(r["lift"]) for r in rows]
    ys = range(len(rows), 0, -1)
    ax.barh(list(ys), lifts, color=[LIKED if v >= 0 else DISLIKED for v in lifts])
    ax.set_yticks(list(ys), labels)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("lift from the private adapter (σ): ← aversions · affinities →")
    ax.set_title(f"What your agent thinks you like ({body.get('catalog', '')})")


def _curve(ax: Any, body: Mapping[str, Any]) -> None:
    curve = eval_curve(body)
    assert curve is not None
    ax.plot(curve.rounds, curve.ndcg, marker="o", markersize=3, color=NEUTRAL, label="validation NDCG@10")
    if curve.kept in curve.rounds:
        y = curve.ndcg[curve.rounds.index(curve.kept)]
        ax.axvline(curve.kept, color="grey", linestyle=":", linewidth=1)
        ax.plot([curve.kept], [y], marker="*", markersize=12, color=LIKED, linestyle="", label=f"kept: {curve.kept}")
    ax.set_xticks(curve.rounds[:: max(1, len(curve.rounds) // 8)])
    ax.set_xlabel("round")
    ax.set_ylabel("NDCG@10 (validation)")
    ax.set_title(f"{body.get('model')} · {body.get('protocol')}: validation curve")
    ax.legend(loc="lower right")


def _coldstart(ax: Any, body: Mapping[str, Any]) -> None:
    bars = coldstart_bars(body)
    xs = list(range(len(bars)))
    for offset, metric, color in ((-0.2, "HR@10", NEUTRAL), (0.2, "NDCG@10", LIKED)):
        ax.bar([x + offset for x in xs], [v[metric] for v in bars.values()], width=0.4, color=color, label=metric)
    ax.set_xticks(xs, list(bars))
    ax.set_xlabel("items the newcomer has rated")
    ax.set_title(f"{body.get('model')}: cold start (test)")
    ax.legend(loc="best")


def _audit(ax: Any, body: Mapping[str, Any]) -> None:
    rows = audit_intervals(body)
    ys = list(range(len(rows), 0, -1))
    errors = [[r.value - r.low for r in rows], [r.high - r.value for r in rows]]
    ax.errorbar([r.value for r in rows], ys, xerr=errors, fmt="o", color=NEUTRAL, capsize=3, label="AUC, 95 % CI")
    ax.axvline(0.5, color=DISLIKED, linestyle="--", linewidth=1, label="chance")
    ax.set_yticks(ys, [r.label for r in rows], fontsize=7)
    ax.set_xlabel("attacker AUC")
    ax.set_title("What an attacker learns from each view")
    ax.legend(loc="upper left")


def write_figure(body: Mapping[str, Any], target: Path) -> Path:
    """Draw ``body`` (an inspect, eval or audit JSON body) into ``target`` (.png or .svg); returns the path."""
    check_figure_path(target)
    kind = kind_of(body)
    panels: list[Any] = {"inspect": [_inspect], "audit": [_audit]}.get(kind, [])
    if kind == "eval":
        curve, bars = eval_series(body)
        panels = [p for p, ok in ((_curve, curve), (_coldstart, bars)) if ok]
    try:  # matplotlib: imported only when a figure file is written (seconds of start-up no other command should pay)
        import matplotlib
    except ImportError as error:
        raise PlotError("Writing a figure needs matplotlib.", hint="Install it: pip install matplotlib.") from error

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(panels), figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, squeeze=False)
    try:
        for draw, ax in zip(panels, axes[0], strict=True):
            draw(ax, body)
        figure.tight_layout()
        temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            figure.savefig(temporary, dpi=DPI, format=target.suffix.lower()[1:])
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    finally:
        pyplot.close(figure)
    return target
