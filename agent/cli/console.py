"""The CLI's console: stdout carries data (tables or one JSON object), stderr carries progress and messages.

A known problem (:class:`~models.errors.PersonaError`) becomes its title, message and hint on stderr and exit code 1
(:func:`fail`); a usage error becomes a message and exit code 2 (:func:`usage_error`). ``NO_COLOR`` turns colour off.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.settings import progress_bars_off
from models.errors import PersonaError

out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
"""stdout: the data a command prints."""
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
"""stderr: progress, messages and errors."""


def fail(error: PersonaError) -> NoReturn:
    """Print a known problem (title, message, hint) on stderr and exit 1."""
    err.print(f"[bold red]{escape(error.title)}:[/] {escape(error.message)}")
    if error.hint:
        err.print(escape(error.hint))
    raise typer.Exit(1)


def usage_error(message: str) -> NoReturn:
    """Print a usage problem (a bad option value, a combination that does not apply) on stderr and exit 2."""
    err.print(escape(message))
    raise typer.Exit(2)


def emit_json(payload: Any) -> None:
    """Print ``payload`` as one JSON object on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")


class LoggedProgress(Progress):
    """A progress bar that, when stderr is not a terminal (a log file, CI), also prints one line per update.

    Each line is stamped with the seconds since the bar started, as ``scripts/audit.py`` prints its stages:
    ``[   41.3s] federated on ml-100k 3/40: round valid HR@10 0.612 NDCG@10 0.351`` — so a slow run can be told
    from a hung one where no bar is drawn."""

    def __init__(self, *columns: Any, log_lines: bool, **options: Any) -> None:
        super().__init__(*columns, **options)
        self.log_lines = log_lines
        self.started = time.perf_counter()

    def update(self, task_id: TaskID, **changes: Any) -> None:
        """Update the task (see :meth:`rich.progress.Progress.update`); log a line if its status or count moved."""
        super().update(task_id, **changes)
        if self.log_lines and ({"advance", "completed", "status"} & set(changes)):
            task = next(t for t in self.tasks if t.id == task_id)
            line = f"[{time.perf_counter() - self.started:7.1f}s] {task.description}"
            line += f" {task.completed:g}/{task.total:g}" if task.total else ""
            status = task.fields.get("status", "")
            print(line + (f": {status}" if status else ""), file=sys.stderr, flush=True)


def progress_bar() -> LoggedProgress:
    """A progress bar on stderr (a ``status`` field per task). When stderr is not a terminal it prints a line per
    update instead of redrawing (:class:`LoggedProgress`), and no bar at all with ``PERSONA_NO_PROGRESS``."""
    return LoggedProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and progress_bars_off(),
        log_lines=not err.is_terminal,
    )
