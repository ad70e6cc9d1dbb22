"""The bootstrap shared vector a new coordinator publishes as version 0 when the operator gives none.

It is the starting point of the federation for a built-in catalog: the first stage's fresh shared parameters
(:meth:`models.firststage.scorer.SharedParams.init`) for that catalog's items, drawn with a fixed seed — the same
start as ``agent demo`` and ``agent eval --model federated`` (``FederatedConfig.seed``) — so every operator
publishes the same bytes (same SHA-256) and the agents' vector length matches their catalog.
"""

from __future__ import annotations

from collections.abc import Callable

from models.data.catalog import Catalog
from models.data.movielens import load_ml100k_catalog
from models.firststage.scorer import SharedParams
from models.types import FloatArray

BOOTSTRAP_SEED = 0
"""The seed of every bootstrap vector (``models.firststage.recipe.FederatedConfig.seed``, the demo's)."""

CATALOGS: dict[str, Callable[[], Catalog]] = {"ml-100k": load_ml100k_catalog}
"""The built-in catalogs a coordinator can bootstrap, by name (as ``agent catalogs`` lists them)."""


def check_catalog(catalog: str) -> None:
    """ValueError naming the choices unless ``catalog`` is a built-in catalog."""
    if catalog not in CATALOGS:
        raise ValueError(f"unknown catalog {catalog!r}: choose one of {', '.join(sorted(CATALOGS))}")


def bootstrap_vector(catalog: str) -> FloatArray:
    """The flat float32 bootstrap shared vector for ``catalog``; ValueError names the choices for an unknown one.

    Reading the catalog needs the prepared data (``agent prepare``); an AssetError says so when it is missing.
    """
    check_catalog(catalog)
    n_items = len(CATALOGS[catalog]())
    return SharedParams.init(n_items, seed=BOOTSTRAP_SEED).to_vector()
