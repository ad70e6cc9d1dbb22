"""``agent audit``: how much of this person's traits (gender, age group) the profile's updates and suggestions reveal.

Attackers are trained on ML-100K users as agents at this agent's sync settings (the shipped defaults: clipping,
noise, quantization and masks) and shown the same four views of this person: the raw shared update (which never
leaves), what the agent sends, what a coordinator can isolate with a difference attack, and the suggestion list.
For each view it prints the attacker's guess for this person and how good that attacker is across the population
(AUC with a 95 % interval; 0.5 is chance). The logic is :func:`sync.simulation.audit.audit_user`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.engine.sync import SYNC_CLIP, SYNC_COHORT, SYNC_MAX_DROPOUT, SYNC_SIGMA, SYNC_WEIGHT_CAP
from agent.errors import ProfileError
from agent.engine.profile import Profile, egress_summary
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
    from agent.cli import main as cli
    from models.privacy.attackers import AGE_GROUPS, age_group
    from models.evaluation.protocols import FederatedConfig
    from models.data.movielens import load_ml100k
    from sync.simulation.audit import AuditConfig, audit_user
    from sync.protocol.privacy import PrivacyParams

    with cli._open_store() as store:
        try:
            profile = Profile.load(store)
            if profile.catalog.name != "ml-100k":
                raise ProfileError(
                    f"The audit compares you with ML-100K agents; the active catalog is {profile.catalog.name!r}.",
                    hint="Switch with `agent use ml-100k`.",
                )
            liked, _disliked = profile.feedback()
            if len(liked) < 2:
                raise ProfileError(
                    "The audit needs at least two liked items (your agent sends nothing before that).",
                    hint="Like a few items first: `agent rate ITEM like`.",
                )
            dataset = load_ml100k()
            demo_user = store.get_meta("demo_user")
            exclude = dataset.interactions.user_ids.index(demo_user) if demo_user else None
            config = AuditConfig(
                privacy=PrivacyParams(clip=SYNC_CLIP, sigma=SYNC_SIGMA, weight_cap=SYNC_WEIGHT_CAP),
                cohort=SYNC_COHORT,
                max_dropout=SYNC_MAX_DROPOUT,
            )
            with cli._progress() as bar:
                task = bar.add_task("audit", total=None, status="local updates of the population")
                report = audit_user(
                    dataset,
                    profile.text_vectors,
                    profile.shared,
                    profile.private(),
                    liked,
                    config,
                    train=FederatedConfig().train_config(),  # what `agent sync` trains with (agent.engine.worker)
                    population=population,
                    exclude=exclude,
                    progress=lambda text: bar.update(task, status=text),
                )
            egress = egress_summary(store.egress_entries())
        except PersonaError as error:
            cli._fail(error)
    known: dict[str, str] | None = None
    if demo_user:
        attributes = dataset.user_attributes[demo_user]
        known = {"gender": attributes["gender"], "age": AGE_GROUPS[age_group(int(attributes["age"]))]}
    for row in report["rows"]:
        row["correct"] = None if known is None else max(row["guess"], key=row["guess"].get) == known[row["target"]]
    body = {
        "settings": {"clip": SYNC_CLIP, "sigma": SYNC_SIGMA, "cohort": SYNC_COHORT, "weight_cap": SYNC_WEIGHT_CAP},
        "epsilon_spent": egress["epsilon"],
        "sync_rounds": egress["rounds"],
        "population": report["population"],
        "known": known,
        "chance": 0.5,
        "rows": report["rows"],
    }
    if as_json:
        cli._emit_json(body)
        return
    cli.out.print(
        f"Attackers trained on {body['population']} ML-100K agents at C={SYNC_CLIP:g}, σ={SYNC_SIGMA:g}, "
        f"cohorts of {SYNC_COHORT}; you have synced {egress['rounds']} rounds, ε so far {egress['epsilon']:.3g}."
    )
    for row in report["rows"]:
        verdict = "" if row["correct"] is None else (" (right)" if row["correct"] else " (wrong)")
        cli.out.print(f"({row['view']}) {describe(row)}{verdict}")
