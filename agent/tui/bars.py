"""Bar charts drawn with block characters: the diverging chart of tag lifts (affinities right of the axis, aversions
left) and plain bars from zero (bytes sent per sync round).

Plain :class:`rich.text.Text` (no plotting library), so the TUI's Profile screen and ``agent inspect --plot`` draw the
same chart and the TUI's start-up imports nothing new. Each row carries the tag, its bar, the lift in σ and how many
liked and disliked items have the tag.

:func:`epsilon_chart` draws ε this year over the last 365 days (columns of eighth blocks, a step at each
participation) against the yearly budget (a dashed line): the Sync screen and ``agent inspect --plot`` show it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

MIN_WIDTH = 48
"""Narrower than this, the bars would be too short to compare: callers show :func:`too_narrow` instead."""
LIKED, DISLIKED = "green", "red"
_BLOCKS = " ▏▎▍▌▋▊▉█"
_TAG_WIDTH = 16
_NOTE_WIDTH = 20


def too_narrow(width: int) -> str:
    """The message shown instead of a chart that would not fit in ``width`` columns."""
    return f"Too narrow for the chart: {width} columns, it needs {MIN_WIDTH}; widen the window."


def _bar(fraction: float, cells: int, *, leftwards: bool = False) -> str:
    """A bar of ``fraction`` (0–1) of ``cells`` cells: in eighths of a cell growing right, in halves growing left
    (the only right-aligned partial block is the half, ▐)."""
    fraction = max(0.0, min(1.0, fraction))
    if leftwards:
        full, half = divmod(round(fraction * cells * 2), 2)
        return "▐" * half + "█" * full
    full, part = divmod(round(fraction * cells * 8), 8)
    return "█" * full + (_BLOCKS[part] if part else "")


def lift_rows(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The affinities then the aversions of an ``inspect`` body, strongest first on each side."""
    return [*body.get("affinities", []), *reversed(body.get("aversions", []))]


def diverging_bars(rows: Sequence[Mapping[str, Any]], width: int, *, color: bool = True) -> Text:
    """The rows (``tag``, ``lift``, ``liked``, ``disliked``) as a diverging bar chart ``width`` columns wide.

    Positive lifts grow right of a central axis (green), negative ones left (red), scaled to the largest |lift|.
    Without ``color`` the text carries no styles (NO_COLOR, files). Too narrow a width gives :func:`too_narrow`.
    """
    if width < MIN_WIDTH:
        return Text(too_narrow(width))
    if not rows:
        return Text("No tags yet: like or dislike a few items and train (`agent train`).")
    half = (width - _TAG_WIDTH - _NOTE_WIDTH - 3) // 2
    scale = max(abs(float(r["lift"])) for r in rows) or 1.0
    chart = Text(no_wrap=True, overflow="crop")
    chart.append(f"{'':{_TAG_WIDTH}} {'Aversions':>{half}}│{'Affinities':<{half}}\n", style="dim" if color else "")
    for r in rows:
        lift = float(r["lift"])
        bar = _bar(abs(lift) / scale, half, leftwards=lift < 0)
        left, right = (f"{bar:>{half}}", " " * half) if lift < 0 else (" " * half, f"{bar:<{half}}")
        style = (DISLIKED if lift < 0 else LIKED) if color else ""
        chart.append(f"{str(r['tag'])[:_TAG_WIDTH]:>{_TAG_WIDTH}} ")
        chart.append(left, style=style if lift < 0 else "")
        chart.append("│")
        chart.append(right, style=style if lift >= 0 else "")
        chart.append(f" {lift:+.2f}σ {int(r.get('liked', 0))}✓ {int(r.get('disliked', 0))}✗\n")
    chart.rstrip()
    return chart


def horizontal_bars(rows: Sequence[tuple[str, float, str]], width: int, *, color: bool = True) -> Text:
    """``(label, value, note)`` rows as bars from zero, scaled to the largest value (e.g. bytes sent per round)."""
    if width < MIN_WIDTH:
        return Text(too_narrow(width))
    cells = width - _TAG_WIDTH - _NOTE_WIDTH - 2
    scale = max((value for _, value, _ in rows), default=0.0) or 1.0
    chart = Text(no_wrap=True, overflow="crop")
    for label, value, note in rows:
        chart.append(f"{label[:_TAG_WIDTH]:>{_TAG_WIDTH}} ")
        chart.append(f"{_bar(value / scale, cells):<{cells}}", style="cyan" if color else "")
        chart.append(f" {note}\n")
    chart.rstrip()
    return chart


YEAR_S = 365 * 86_400
_COLUMN_BLOCKS = " ▁▂▃▄▅▆▇█"
_AXIS_WIDTH = 7
_EPS_NOTE_WIDTH = 14
EPSILON_HEIGHT = 8
"""Rows of the ε chart's plot area (plus an axis row and a row of dates)."""


def _epsilon_at(points: Sequence[tuple[float, float]], moment: float) -> float:
    """ε this year at ``moment`` as recorded at the last participation before it (0 once that is a year old)."""
    value = 0.0
    for when, epsilon in points:
        if when > moment:
            break
        value = epsilon if moment - when < YEAR_S else 0.0
    return value


def epsilon_chart(
    points: Sequence[tuple[float, float]],
    budget: float,
    width: int,
    *,
    now: float | None = None,
    height: int = EPSILON_HEIGHT,
    color: bool = True,
) -> Text:
    """ε this year over the 365 days up to ``now``: ``points`` are ``(time, ε this year)`` at each participation
    (oldest first); each column is ε at the end of its stretch of days; the budget is a dashed line ``┄`` (none when
    it is infinite). ``width`` columns wide; too narrow a width gives :func:`too_narrow`."""
    if width < MIN_WIDTH:
        return Text(too_narrow(width))
    now = time.time() if now is None else now
    finite = math.isfinite(budget)
    if not points:
        cap = f"of your budget {budget:g}" if finite else "(no budget limit)"
        return Text(f"No participation yet: ε this year is 0 {cap}.")
    cells = width - _AXIS_WIDTH - 1 - _EPS_NOTE_WIDTH
    start = now - YEAR_S
    values = [_epsilon_at(points, start + (c + 1) * YEAR_S / cells) for c in range(cells)]
    top = max([*values, budget if finite else 0.0]) * 1.15 or 1.0
    unit = top / height
    budget_row = min(height - 1, int(budget / unit)) if finite else -1
    current = values[-1]
    chart = Text(no_wrap=True, overflow="crop")
    for row in range(height - 1, -1, -1):
        label = f"{budget:g}" if row == budget_row else ("" if row else "0")
        chart.append(f"{label:>{_AXIS_WIDTH}}│")
        for value in values:
            part = round(max(0.0, min(1.0, (value - row * unit) / unit)) * 8)
            if part:
                chart.append(_COLUMN_BLOCKS[part], style="cyan" if color else "")
            elif row == budget_row:
                chart.append("┄", style="red" if color else "")
            else:
                chart.append(" ")
        note = ""
        if row == budget_row:
            note = f" budget {budget:g}"
        elif row == min(height - 1, int(current / unit)) and row != budget_row:
            note = f" now {current:.3g}"
        chart.append(f"{note:<{_EPS_NOTE_WIDTH}}\n")
    chart.append(f"{'':>{_AXIS_WIDTH}}└{'─' * cells}\n")
    first = time.strftime("%Y-%m-%d", time.localtime(start))
    chart.append(f"{'':>{_AXIS_WIDTH}} {first}{'today':>{cells - len(first)}}")
    return chart
