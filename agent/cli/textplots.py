"""Charts in the terminal (``--plot`` without a file; ``agent plot FILE.json``): plotext for the curves and intervals,
:mod:`agent.tui.bars` for the tag lifts (the same chart as the TUI's Profile screen).

Imported only when a chart is drawn: plotext takes a few tenths of a second to import, which no other command pays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotext as plt
from rich.text import Text

from agent.cli.charts import audit_intervals, epsilon_series, eval_series, kind_of
from agent.tui.bars import MIN_WIDTH, diverging_bars, epsilon_chart, lift_rows, too_narrow

HEIGHT = 18
"""Rows of a terminal chart."""


def _reset(width: int, title: str, height: int = HEIGHT) -> None:
    plt.clf()
    plt.plotsize(width, height)
    plt.title(title)


def _eval_text(body: Mapping[str, Any], width: int) -> str:
    curve, bars = eval_series(body)
    parts = []
    if curve is not None:
        _reset(width, f"{body.get('model')}: validation NDCG@10 per round (kept: round {curve.kept})")
        plt.plot(curve.rounds, curve.ndcg, marker="braille", label="valid NDCG@10")
        if curve.kept in curve.rounds:
            plt.scatter([curve.kept], [curve.ndcg[curve.rounds.index(curve.kept)]], marker="◆", label="kept")
            plt.vline(curve.kept)
        plt.xticks(curve.rounds[:: max(1, len(curve.rounds) // 8)])
        plt.xlabel("round")
        parts.append(plt.build())
    if bars:
        _reset(width, f"{body.get('model')}: cold start, test HR@10 by items known (k)")
        plt.bar(list(bars), [v["HR@10"] for v in bars.values()], width=0.5)
        parts.append(plt.build())
    return "\n".join(parts)


def _audit_text(body: Mapping[str, Any], width: int) -> str:
    rows = audit_intervals(body)
    _reset(width, "Attacker AUC per setting and view (● AUC, ─ 95 % CI; │ chance 0.5)", height=2 * len(rows) + 5)
    ys = list(range(len(rows), 0, -1))
    for row, y in zip(rows, ys, strict=True):
        plt.plot([row.low, row.high], [y, y], marker="─", color="blue")
    plt.scatter([r.value for r in rows], ys, marker="●", color="blue")
    plt.vline(0.5)
    plt.yticks(ys, [r.label for r in rows])
    plt.xlim(0.4, max(0.75, max(r.high for r in rows) + 0.02))
    return str(plt.build())


def terminal_chart(body: Mapping[str, Any], width: int, *, color: bool) -> Text:
    """The chart of ``body`` for a terminal ``width`` columns wide (:func:`too_narrow`'s message if it is too small).

    ``color`` False gives plain characters (NO_COLOR, a pipe)."""
    kind = kind_of(body)
    if kind == "inspect":
        chart = diverging_bars(lift_rows(body), width, color=color)
        series = epsilon_series(body)
        if series is not None and width >= MIN_WIDTH:
            chart.append("\n\nε this year at each participation, against your yearly budget (┄)\n")
            chart.append_text(epsilon_chart(*series, width, color=color))
        return chart
    if width < MIN_WIDTH:
        return Text(too_narrow(width))
    plt.theme("default" if color else "clear")
    text = _eval_text(body, width) if kind == "eval" else _audit_text(body, width)
    return Text.from_ansi(text) if color else Text(plt.uncolorize(text).rstrip())
