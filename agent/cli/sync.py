"""``agent sync``: take part in one federation round (the service is :func:`agent.engine.sync.sync_profile`)."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.console import emit_json, err, fail, out, progress_bar
from agent.cli.session import open_store
from agent.engine.sync import DEFAULT_TIMEOUT, no_coordinator_error, sync_profile
from agent.settings import COORDINATOR_ENV, coordinator_url, passphrase_from_env
from models.errors import PersonaError


def sync_command(
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help=f"Coordinator URL (default: {COORDINATOR_ENV} or the config).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Wait at most this many seconds for the round.", min=1.0)] = (
        DEFAULT_TIMEOUT
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Take part in one federation round: train locally, send only the clipped, noised, masked shared delta."""
    url = coordinator or coordinator_url()
    if not url:
        fail(no_coordinator_error())
    with open_store() as store:
        passphrase = passphrase_from_env() if store.encrypted else None
        try:
            with progress_bar() as bar:
                task = bar.add_task("sync", total=100, status="")

                def on_progress(fraction: float, text: str) -> None:
                    bar.update(task, completed=round(100 * fraction), status=text)

                summary = sync_profile(store, url, timeout=timeout, progress=on_progress, passphrase=passphrase)
        except PersonaError as error:
            fail(error)
    if as_json:
        emit_json(summary)
        return
    err.print(f"synced with {summary['coordinator']}")
    out.print(
        f"round {summary['round']}: shared adapter v{summary['version']} applied · "
        f"{summary['bytes_up']:,} bytes up · {summary['bytes_down']:,} bytes down · "
        f"C={summary['C']:g} σ={summary['sigma']:g} · cohort {summary['cohort']} · "
        f"ε this year {summary['epsilon']:.3g} of your budget {summary['privacy_budget']['budget']:g}"
    )
