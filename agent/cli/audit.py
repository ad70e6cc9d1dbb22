"""``agent audit``: how much of this person's traits (gender, age group) the profile's updates and suggestions reveal.

For each view of the person (the raw shared update, what the agent sends, what a coordinator can isolate, the
suggestion list) it prints the attacker's guess and how good that attacker is across the population (AUC with a
95 % interval; 0.5 is chance). The audit itself is :mod:`agent.engine.audit`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.cli.console import emit_json, fail, out, progress_bar
from agent.cli.session import open_store
from models.errors import PersonaError

DEFAULT_POPULATION = 400


def exposure_words(auc: float, low: float) -> str:
    """How exposed a view is, from the attacker's population AUC and the interval's lower end."""
    if low <= 0.5 or auc < 0.55:
        return "no better than chance"
    if auc < 0.65:
        return "slightly exposed"
    return "exposed"


def describe(row: dict[str, Any]) -> str:
    """One sentence for one (view, target) row."""
    guess = max(row["guess"], key=row["guess"].get)
    confidence = row["guess"][guess]
    low, high = row["auc_ci"]
    words = exposure_words(row["population_auc"], low)
    return (
        f"{row['what']}: an attacker guesses {row['target']} {guess} ({confidence:.0%}); across the population it "
        f"scores AUC {row['population_auc']:.2f} (95 % CI {low:.2f}–{high:.2f}, chance 0.50) — {words}"
    )


def audit_command(
    population: Annotated[
        int, typer.Option(help="ML-100K users the attacker is trained on (fewer is faster).", min=20)
    ] = DEFAULT_POPULATION,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Your exposure: how well attackers trained on other agents guess your gender and age from your updates."""
    from agent.engine.audit import audit_exposure, audit_subject  # torch: the attackers' population trains locally

    with open_store() as store:
        try:
            subject = audit_subject(store)
            with progress_bar() as bar:
                task = bar.add_task("audit", total=None, status="local updates of the population")
                body = audit_exposure(
                    subject, population=population, progress=lambda text: bar.update(task, status=text)
                )
        except PersonaError as error:
            fail(error)
    if as_json:
        emit_json(body)
        return
    settings = body["settings"]
    out.print(
        f"Attackers trained on {body['population']} ML-100K agents at C={settings['clip']:g}, "
        f"σ={settings['sigma']:g}, cohorts of {settings['cohort']}; you have synced {body['sync_rounds']} rounds, "
        f"ε so far {body['epsilon_spent']:.3g}."
    )
    for row in body["rows"]:
        verdict = "" if row["correct"] is None else (" (right)" if row["correct"] else " (wrong)")
        out.print(f"({row['view']}) {describe(row)}{verdict}")
