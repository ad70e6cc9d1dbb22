"""Periodic participation on the command line: ``agent sync --if-eligible``, ``agent sync --every 6h`` and
``agent schedule install|status|remove`` (the services are :mod:`agent.engine.schedule` and
:mod:`agent.engine.eligibility`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.markup import escape

from agent.cli.console import emit_json, err, fail, out, progress_bar
from agent.cli.session import open_store
from agent.engine.eligibility import describe_check
from agent.engine.schedule import (
    ScheduleError,
    come_back_text,
    format_duration,
    install,
    parse_duration,
    remove,
    run_periodically,
    scheduled_sync,
    status,
)
from agent.settings import passphrase_from_env
from models.errors import PersonaError

EVERY_HELP = "Stay in the foreground and try a sync (--if-eligible) every period, e.g. 30m, 6h, 1d; Ctrl-C stops."
IF_ELIGIBLE_HELP = (
    "Take part only when this machine is eligible (AC power, idle, not metered, spacing, budget); else print "
    '"skipped: <reason>" and exit 0. See `agent schedule status`.'
)

app = typer.Typer(
    name="schedule",
    help="Periodic sync in the background: a systemd user timer (Linux) or a launchd agent (macOS).",
    no_args_is_help=True,
)


def every_option(value: str | None) -> str | None:
    """Typer callback of ``--every``: a bad duration is a usage error (exit 2) with the reason."""
    if value is not None:
        try:
            parse_duration(value)
        except ScheduleError as error:
            raise typer.BadParameter(f"{error.message} {error.hint}") from None
    return value


def synced_line(summary: dict[str, Any]) -> str:
    """The one line a sync prints on stdout."""
    return (
        f"round {summary['round']}: shared adapter v{summary['version']} applied · "
        f"{summary['bytes_up']:,} bytes up · {summary['bytes_down']:,} bytes down · "
        f"ε this year {summary['epsilon']:.3g} of your budget {summary['privacy_budget']['budget']:g}"
    )


def run_if_eligible(
    url: str, *, timeout: float, as_json: bool, sync_options: Mapping[str, Any] | None = None
) -> float | None:
    """One ``agent sync --if-eligible``: check and record eligibility, then sync at low priority, or print why not.
    Returns when the coordinator asked to come back (the window's start), else None.

    A failing sync raises its :class:`PersonaError` (recorded as the check's outcome first)."""
    with open_store() as store:
        passphrase = passphrase_from_env() if store.encrypted else None
        with progress_bar() as bar:
            task = bar.add_task("sync", total=100, status="checking eligibility")

            def on_progress(fraction: float, text: str) -> None:
                bar.update(task, completed=round(100 * fraction), status=text)

            run = scheduled_sync(
                store, url, timeout=timeout, progress=on_progress, passphrase=passphrase, sync_options=sync_options
            )
    window = None if run.come_back is None else {"not_before": run.come_back[0], "not_after": run.come_back[1]}
    if as_json:
        emit_json({"eligibility": run.eligibility.as_dict(), "sync": run.summary, "come_back": window})
    elif run.come_back is not None:
        out.print(escape(come_back_text(run.come_back)), soft_wrap=True)
    elif run.summary is None:
        out.print(escape(run.eligibility.line()), soft_wrap=True)
    else:
        out.print(escape(synced_line(run.summary)))
    return None if run.come_back is None else run.come_back[0]


def scheduled_command(
    url: str, *, timeout: float, as_json: bool, every: str | None, sync_options: Mapping[str, Any] | None = None
) -> None:
    """``agent sync --if-eligible`` once, or every ``every`` until Ctrl-C (a failing run is reported, the loop
    goes on); ``sync_options`` go on to the sync (``agent sync``'s other options)."""
    if every is None:
        try:
            run_if_eligible(url, timeout=timeout, as_json=as_json, sync_options=sync_options)
        except PersonaError as error:
            fail(error)
        return
    seconds = parse_duration(every)

    def once() -> float | None:
        try:
            return run_if_eligible(url, timeout=timeout, as_json=as_json, sync_options=sync_options)
        except PersonaError as error:
            err.print(f"[bold red]{escape(error.title)}:[/] {escape(error.message)}")
            return None

    def on_wait(wait: float) -> None:
        err.print(f"next try at {time.strftime('%Y-%m-%d %H:%M', time.localtime(time.time() + wait))}")

    err.print(f"trying a sync every {format_duration(seconds)} (± 10 %) when eligible; Ctrl-C stops")
    try:
        run_periodically(seconds, once, on_wait=on_wait)
    except KeyboardInterrupt:
        err.print("stopped")


@app.command("install")
def install_command(
    every: Annotated[
        str, typer.Option("--every", callback=every_option, help="How often to try, e.g. 30m, 6h, 1d.")
    ] = "6h",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run `agent sync --if-eligible` every period in the background (systemd user timer / launchd agent)."""
    try:
        report = install(parse_duration(every))
    except PersonaError as error:
        fail(error)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(f"installed: try a sync every {format_duration(report.period or 0)} ({report.kind})")
    for path in report.files:
        out.print(f"  {path}")
    for note in report.notes:
        err.print(escape(note))


@app.command("status")
def status_command(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Installed or not, the period, the next window, and the last eligibility check with its reasons."""
    with open_store() as store:
        try:
            found = status(store)
        except PersonaError as error:
            fail(error)
    if as_json:
        emit_json(found.as_dict())
        return
    out.print(escape(found.line()))
    if found.installed:
        out.print(f"  files in {found.folder}")
    out.print(escape("Last check: " + (describe_check(found.last) if found.last else "none yet")))
    for check in (found.last or {}).get("checks", []):
        out.print(escape(f"  {'✓' if check['ok'] else '✗'} {check['name']}: {check['reason']}"))


@app.command("remove")
def remove_command(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Stop and delete the background schedule (the profile and its ledger are kept)."""
    try:
        report = remove()
    except PersonaError as error:
        fail(error)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print("removed: " + (", ".join(str(p) for p in report.files) if report.files else "nothing was installed"))
    for note in report.notes:
        err.print(escape(note))
