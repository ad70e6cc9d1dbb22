"""``agent import``: a person's history (log, .inter, Letterboxd CSV) or a catalog into the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.console import emit_json, err, fail, out
from agent.cli.session import open_store, retrain
from agent.engine.importing import import_file
from models.errors import PersonaError


def import_command(
    file: Annotated[Path, typer.Argument(help="CSV, TSV, JSONL, RecBole .inter, or a Letterboxd export CSV.")],
    catalog: Annotated[
        str | None, typer.Option("--catalog", help="The catalog this file is (a catalog file) or refers to (history).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Whose rows to take from a multi-user log.")] = None,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter afterwards.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Import your history (log, .inter, Letterboxd CSV) or a catalog; lists bad rows by line and unmatched titles."""
    with open_store() as store:
        try:
            report = import_file(store, file, catalog=catalog, user=user)
        except PersonaError as error:
            problems = getattr(error, "problems", [])
            for problem in problems[:20]:
                err.print(f"  {escape(str(problem))}")
            fail(error)
            return
        for problem in report["problems"]:
            err.print(f"skipped line {problem['line']}: {escape(problem['message'])}")
        for title in report["unmatched"]:
            err.print(f"no match in {report['catalog']}: {escape(title)}")
        if train and report["kind"] != "catalog" and report["imported"]:
            try:
                retrain(store)
            except PersonaError as error:
                fail(error)
    if as_json:
        emit_json(report)
        return
    out.print(
        f"imported {report['imported']} {'items' if report['kind'] == 'catalog' else 'interactions'} "
        f"({report['kind']}) into {report['catalog']}; {len(report['problems'])} bad rows, "
        f"{len(report['unmatched'])} unmatched"
    )
