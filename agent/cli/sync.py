"""``agent sync``: take part in one federation round (the service is :func:`agent.engine.sync.sync_profile`)."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.console import emit_json, err, fail, out, progress_bar
from agent.cli.schedule import EVERY_HELP, IF_ELIGIBLE_HELP, every_option, scheduled_command
from agent.cli.session import open_store
from agent.engine.sync import DEFAULT_TIMEOUT, no_coordinator_error, sync_profile
from agent.settings import COORDINATOR_ENV, coordinator_url, passphrase_from_env
from models.errors import PersonaError
from sync.errors import ComeBackLater


def sync_command(
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help=f"Coordinator URL (default: {COORDINATOR_ENV} or the config).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Wait at most this many seconds for the round.", min=1.0)] = (
        DEFAULT_TIMEOUT
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    if_eligible: Annotated[bool, typer.Option("--if-eligible", help=IF_ELIGIBLE_HELP)] = False,
    every: Annotated[str | None, typer.Option("--every", callback=every_option, help=EVERY_HELP)] = None,
    enroll: Annotated[
        str | None,
        typer.Option(
            "--enroll",
            metavar="TOKEN",
            help="The one-time enrollment token from the coordinator's operator, for this profile's first sync "
            "with a coordinator that requires one (not needed afterwards).",
        ),
    ] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="Allow a plain http:// coordinator on another machine (traffic readable and changeable on the way; "
            "also [sync] insecure_http = true).",
        ),
    ] = False,
) -> None:
    """Take part in one federation round: train locally, send only the clipped, noised, masked shared delta."""
    url = coordinator or coordinator_url()
    if not url:
        fail(no_coordinator_error())
    if if_eligible or every is not None:
        options = {"enrollment": enroll, "insecure_http": insecure_http}
        scheduled_command(url, timeout=timeout, as_json=as_json, every=every, sync_options=options)
        return
    with open_store() as store:
        passphrase = passphrase_from_env() if store.encrypted else None
        try:
            with progress_bar() as bar:
                task = bar.add_task("sync", total=100, status="")

                def on_progress(fraction: float, text: str) -> None:
                    bar.update(task, completed=round(100 * fraction), status=text)

                summary = sync_profile(
                    store,
                    url,
                    timeout=timeout,
                    progress=on_progress,
                    passphrase=passphrase,
                    enrollment=enroll,
                    insecure_http=insecure_http,
                )
        except ComeBackLater as later:  # the window is further than a one-shot sync waits (2 minutes)
            if as_json:
                window = {"not_before": later.not_before, "not_after": later.not_after, "round_id": later.round_id}
                emit_json({"come_back": window, "detail": later.message})
                raise typer.Exit(1) from None
            fail(later)
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
    if summary.get("blend"):  # federated evaluation: the weight the federation signed with this version
        blend = summary["blend"]
        out.print(
            f"federation's rerank blend weight {blend['weight']:g} (version {blend['version']}, measured on "
            f"v{blend['measured_version']} from {blend['agents']} agents); in force: {blend['in_force']['weight']:g} "
            f"({blend['in_force']['source']})"
        )
    lm = summary.get("language_model")
    if lm:  # the round carried the language model's shared adapter φ_g
        if lm["trained"]:
            out.print(
                f"language model's shared adapter: trained on {lm['lists']} of your lists ({lm['steps']} steps, "
                f"{lm['seconds']:g} s; their loss {lm['loss_before']:.3f} → {lm['loss_after']:.3f}), its change sent"
            )
        else:
            out.print(f"language model's shared adapter: not trained ({lm['skipped']}), a zero change sent")
