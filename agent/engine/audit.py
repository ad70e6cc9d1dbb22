"""The person's exposure (``agent audit``): how much of their traits (gender, age group) the profile's updates and
suggestions reveal.

Attackers are trained on ML-100K users as agents at this agent's sync settings (:func:`agent.settings.sync_settings`:
clipping, noise, quantization and masks) and shown the same four views of this person: the raw shared update
(which never leaves), what the agent sends, what a coordinator can isolate with a difference attack, and the
suggestion list. For each view the result holds the attacker's guess for this person and how good that attacker is
across the population (AUC with a 95 % interval; 0.5 is chance). The attack is :func:`sync.simulation.audit.audit_user`.

Imports torch (through the simulation's local training): the CLI imports this module only for ``agent audit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.engine.profile import Profile
from agent.errors import ProfileError
from agent.settings import sync_settings
from agent.store.egress import egress_summary
from agent.store.profile_store import ProfileStore
from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.firststage.recipe import FederatedConfig
from models.privacy.attackers import AGE_GROUPS, age_group
from models.types import IntArray
from sync.protocol.privacy import PrivacyParams
from sync.simulation.audit import AuditConfig, audit_user


@dataclass(frozen=True)
class AuditSubject:
    """The person to audit: their profile and liked items, the ML-100K data set, and their egress ledger totals."""

    profile: Profile
    liked: IntArray
    dataset: Dataset
    demo_user: str | None
    """The ML-100K user this profile is (after ``agent demo``), else None: their true traits are then known."""
    egress: dict[str, Any]


def audit_subject(store: ProfileStore) -> AuditSubject:
    """Load what the audit needs; :class:`ProfileError` when the profile cannot be audited (catalog, history)."""
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
    return AuditSubject(profile, liked, dataset, store.get_meta("demo_user"), egress_summary(store.egress_entries()))


def audit_exposure(
    subject: AuditSubject, *, population: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The exposure report ``agent audit --json`` prints: the settings, ε spent so far, and one row per (view,
    target) with the attacker's guess, its population AUC and, for a demo user, whether the guess was right."""
    settings = sync_settings()
    dataset = subject.dataset
    exclude = dataset.interactions.user_ids.index(subject.demo_user) if subject.demo_user else None
    config = AuditConfig(
        privacy=PrivacyParams(clip=settings.clip, sigma=settings.sigma, weight_cap=settings.weight_cap),
        cohort=settings.cohort,
        max_dropout=settings.max_dropout,
    )
    profile = subject.profile
    report = audit_user(
        dataset,
        profile.text_vectors,
        profile.shared,
        profile.private(),
        subject.liked,
        config,
        train=FederatedConfig().train_config(),  # what `agent sync` trains with (agent.engine.worker)
        population=population,
        exclude=exclude,
        progress=progress,
    )
    known: dict[str, str] | None = None
    if subject.demo_user:
        attributes = dataset.user_attributes[subject.demo_user]
        known = {"gender": attributes["gender"], "age": AGE_GROUPS[age_group(int(attributes["age"]))]}
    for row in report["rows"]:
        row["correct"] = None if known is None else max(row["guess"], key=row["guess"].get) == known[row["target"]]
    return {
        "settings": {
            "clip": settings.clip,
            "sigma": settings.sigma,
            "cohort": settings.cohort,
            "weight_cap": settings.weight_cap,
        },
        "epsilon_spent": subject.egress["epsilon"],
        "sync_rounds": subject.egress["rounds"],
        "population": report["population"],
        "known": known,
        "chance": 0.5,
        "rows": report["rows"],
    }
