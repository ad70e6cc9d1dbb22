"""The ``agent`` command line. stdout carries data (tables or ``--json``); stderr carries progress and errors.

``agent`` with no command opens the TUI (onboarding on the first run). Every read command (``suggest``,
``history``, ``search``, ``inspect``, ``paths``, ``import``, ``catalogs``) takes ``--json`` and then prints exactly
one JSON object.
``NO_COLOR`` turns colour off. ``PERSONA_HOME`` relocates the person's files; ``PERSONA_PASSPHRASE`` unlocks an
encrypted profile without a prompt (every variable: :mod:`agent.settings`).

This module builds the Typer app from the commands of the other modules of :mod:`agent.cli` (one per group of
verbs), in the order ``agent --help`` lists them.

Exit codes:
    0    success
    1    a known problem: a missing asset, a bad file, a wrong passphrase, an unknown item, a refused reset —
         the message on stderr says what went wrong and what to do
    2    a usage error: unknown command, option or value (e.g. ``agent rate X maybe``)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

# typer vendors its own click; its completion scripts match the `_AGENT_COMPLETE` protocol its runtime answers
from typer._completion_shared import get_completion_script

from agent.cli import audit, demo, evaluate, feedback, importing, profile, schedule, sync
from agent.cli.console import err, out, usage_error
from agent.cli.plot import PlotFlagGroup, plot_command
from agent.cli.session import run_tui

app = typer.Typer(
    name="agent",
    help="Persona: an on-device recommendation agent with a private and a federated shared adapter.",
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
    cls=PlotFlagGroup,
)


def root(ctx: typer.Context) -> None:
    """Persona: with no command, opens the TUI (onboarding on the first run)."""
    if ctx.invoked_subcommand is not None:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        out.print(ctx.get_help())
        return
    run_tui()


def completion(
    shell: Annotated[str, typer.Argument(help="bash | zsh | fish")],
) -> None:
    """Print the shell completion script, e.g. `agent completion bash >> ~/.bashrc`."""
    if shell not in ("bash", "zsh", "fish"):
        usage_error(f"Unknown shell {shell!r}: choose bash, zsh or fish.")
    sys.stdout.write(get_completion_script(prog_name="agent", complete_var="_AGENT_COMPLETE", shell=shell) + "\n")


app.callback(invoke_without_command=True)(root)
app.command()(evaluate.prepare)
app.command("paths")(profile.show_paths)
app.command("eval")(evaluate.eval_command)
app.command()(profile.init)
app.command()(feedback.suggest)
app.command()(feedback.rate)
app.command()(feedback.train)
app.command()(feedback.history)
app.command()(feedback.search)
app.command("import")(importing.import_command)
app.command()(profile.inspect)
app.command()(profile.catalogs)
app.command()(profile.use)
app.command()(feedback.forget)
app.command()(profile.reset)
app.command()(completion)
app.command()(demo.demo)
app.command(name="sync")(sync.sync_command)
app.add_typer(schedule.app, name="schedule")
app.command(name="audit")(audit.audit_command)
app.command(name="plot")(plot_command)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # the scheduled sync runs `python -m agent.cli.main sync --if-eligible`
    main()
