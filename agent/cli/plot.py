"""Drawing results: ``--plot [FILE]`` on ``inspect`` and ``eval``, and ``agent plot FILE.json`` to redraw a saved one.

``--plot`` alone draws in the terminal instead of the table (colour when stdout is a terminal and ``NO_COLOR`` is
unset; a "too narrow" error below :data:`agent.tui.bars.MIN_WIDTH` columns); ``--plot FILE.png|svg`` writes a
figure with matplotlib besides the usual output (:mod:`agent.cli.figures`, imported only then). A bare ``--plot``
reaches the commands as :data:`TERMINAL` (see :func:`bare_plot_flag`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

# typer vendors its own click: the group's parse_args takes its Context
from typer import _click
from typer.core import TyperGroup

from agent.cli.charts import PlotError, check_figure_path
from agent.cli.console import err, fail, out
from agent.tui.bars import MIN_WIDTH, too_narrow
from models.errors import PersonaError

TERMINAL = "-"
"""The value of a bare ``--plot``: draw in the terminal."""
PLOT_HELP = "Draw it: in the terminal (bare --plot) or into FILE.png / FILE.svg (--plot FILE)."


def bare_plot_flag(args: list[str]) -> list[str]:
    """``args`` with a bare ``--plot`` (last, or followed by another option) given the value :data:`TERMINAL`.

    Typer options cannot take an optional value; this lets ``--plot`` be both a flag and ``--plot FILE``."""
    fixed: list[str] = []
    for i, arg in enumerate(args):
        bare = arg == "--plot" and (i + 1 == len(args) or args[i + 1].startswith("-"))
        fixed.append(f"--plot={TERMINAL}" if bare else arg)
    return fixed


class PlotFlagGroup(TyperGroup):
    """The ``agent`` group: applies :func:`bare_plot_flag` to the command line before parsing it."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        """Parse ``args`` with a bare ``--plot`` turned into ``--plot=-``."""
        return super().parse_args(ctx, bare_plot_flag(args))


def draw(body: Mapping[str, Any], plot: str) -> None:
    """Draw ``body`` in the terminal (``plot`` is :data:`TERMINAL`) or into the figure file ``plot``."""
    try:
        if plot == TERMINAL:
            width = out.width if out.is_terminal else shutil.get_terminal_size().columns
            if width < MIN_WIDTH:
                raise PlotError(too_narrow(width), hint="Or write a figure: --plot FILE.png.")
            # plotext sits behind this module: only a terminal chart pays for importing it (tenths of a second)
            from agent.cli.textplots import terminal_chart

            out.print(terminal_chart(body, width, color=out.is_terminal and not out.no_color), crop=False)
            return
        # matplotlib sits behind this module: only a figure file pays for importing it (seconds)
        from agent.cli.figures import write_figure

        err.print(f"figure written to {write_figure(body, Path(plot))}")
    except PersonaError as error:
        fail(error)


def drawn_instead(body: Mapping[str, Any], plot: str | None) -> bool:
    """Apply a command's ``--plot``: True when a terminal chart was drawn instead of its usual output; a figure file
    is written besides it (False)."""
    if plot is None:
        return False
    draw(body, plot)
    return plot == TERMINAL


def check_plot_option(plot: str | None) -> None:
    """Exit 1 with the reason now if ``--plot FILE`` cannot be written (before a long run, not after it)."""
    if plot not in (None, TERMINAL):
        try:
            check_figure_path(Path(plot))
        except PersonaError as error:
            fail(error)


def plot_command(
    result: Annotated[Path, typer.Argument(help="A JSON file saved from inspect, eval or scripts/audit.py --json.")],
    to: Annotated[str | None, typer.Option("--out", "-o", help="Write FILE.png or FILE.svg instead.")] = None,
) -> None:
    """Redraw a saved result: `agent inspect --json`, `agent eval --json` or `scripts/audit.py --json`."""
    try:
        body = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(PlotError(f"Cannot read {result}: {error}", hint="Give a file that a `--json` run saved."))
    if not isinstance(body, dict):
        fail(PlotError(f"{result} holds no JSON object.", hint="Give a file that a `--json` run saved."))
    draw(body, to or TERMINAL)
