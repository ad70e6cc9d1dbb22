"""The demo (``agent demo``): a short federation of all ML-100K users as agents, then the profile becomes one of them.

The federation runs through a real coordinator on 127.0.0.1 (secure aggregation, clipping, noise; see
:func:`agent.engine.sync.sync_aggregator`) or averages in this process. Afterwards the chosen user's ratings, the
federated shared adapter (the round validation picked) and that agent's private vector go into the profile store.

Imports torch (through the first stage's training): the CLI imports this module only for ``agent demo``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.engine.catalogs import ml100k_with_vectors
from agent.engine.sync import sync_aggregator, sync_summary
from agent.errors import ProfileError
from agent.store.profile_store import ProfileStore
from models.data.catalog import Dataset
from models.data.split import Split, make_loo_split
from models.firststage.fit import TrainedModel, train_federated
from models.firststage.recipe import FederatedConfig
from models.types import FloatArray, Progress

DEMO_SOURCE = "demo"
"""The ``source`` of the interactions the demo stores (a rerun replaces them)."""


@dataclass(frozen=True)
class DemoRun:
    """What a demo federation runs on: the data set, its text vectors, the split and the recipe."""

    dataset: Dataset
    vectors: FloatArray
    split: Split
    config: FederatedConfig


def dataset_user_rows(dataset: Dataset, user: str) -> list[tuple[str, str, str, float, int, str]]:
    """One data-set user's ratings as profile-store interaction rows (source "demo"): what `agent demo` stores."""
    mine = dataset.interactions.users == dataset.interactions.user_ids.index(user)
    return [
        (dataset.catalog.name, dataset.catalog.item_ids[int(i)], "rating", float(r), int(t), DEMO_SOURCE)
        for i, r, t in zip(
            dataset.interactions.items[mine],
            dataset.interactions.ratings[mine],
            dataset.interactions.timestamps[mine],
            strict=True,
        )
    ]


def prepare_demo(store: ProfileStore, *, user: str, rounds: int) -> DemoRun:
    """Check the profile can become ML-100K user ``user`` and load what the federation needs.

    Refuses (:class:`ProfileError`) a profile with interactions of the person's own, and an unknown user.
    """
    own = [i for i in store.interactions() if i.source != DEMO_SOURCE]
    if own:
        raise ProfileError(
            f"This profile has {len(own)} interactions of your own; the demo would mix its user into them.",
            hint="Run the demo with another PERSONA_HOME, e.g. `PERSONA_HOME=/tmp/persona-demo agent demo`.",
        )
    dataset, vectors = ml100k_with_vectors()
    if user not in dataset.interactions.user_ids:
        raise ProfileError(f"ML-100K has no user {user!r}.", hint="Users are numbered 1 to 943.")
    split = make_loo_split(dataset, seed=0)
    return DemoRun(dataset, vectors, split, replace(FederatedConfig(), rounds=rounds))


def federate(
    run: DemoRun, *, via_coordinator: bool, cohort: int, progress: Progress
) -> tuple[TrainedModel, dict[str, Any] | None]:
    """Train the first stage federated over every ML-100K agent; the model and, through a coordinator, what the
    protocol did (:func:`agent.engine.sync.sync_summary`)."""
    with sync_aggregator(via_coordinator, run.split, 0, run.config.server_lr, cohort=cohort) as aggregator:
        model = train_federated(run.split, run.vectors, config=run.config, aggregator=aggregator, progress=progress)
        summary = sync_summary(aggregator) if aggregator is not None else None
    return model, summary


def become_user(store: ProfileStore, run: DemoRun, model: TrainedModel, user: str) -> tuple[int, bool]:
    """Store the federated shared adapter, user ``user``'s ratings and, when the user took part in a round, their
    private vector; returns (how many ratings, whether a private vector was stored)."""
    assert model.shared is not None
    catalog = run.dataset.catalog.name
    store.save_shared(model.shared, version=f"demo-federated-r{model.selected['round']}", meta={"catalog": catalog})
    user_index = run.dataset.interactions.user_ids.index(user)
    store.delete_interactions_from(DEMO_SOURCE)
    rows = dataset_user_rows(run.dataset, user)
    store.add_interactions(rows)
    private = model.privates.get(user_index) if model.privates else None
    store.set_meta("demo_user", user)
    if private is not None:
        store.save_private(private, meta={"catalog": catalog, "source": "demo federation"})
    return len(rows), private is not None
