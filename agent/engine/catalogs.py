"""The catalogs a profile scores and the shared adapter it scores them with.

* a **catalog** is the built-in MovieLens-100K or one imported into the profile; its items' frozen MiniLM text
  vectors are cached per catalog (keyed by content hash) in the cache folder.
* the **shared adapter** is the stored one (from the federation, or the demo); before any exists it is
  :func:`bootstrap_shared`, the catalog texts' principal directions, so a fresh install ranks by text similarity.
  For an imported catalog the shared text projection and recency weights are reused with zero item residuals and
  biases: items are then scored from their text alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent import paths
from agent.errors import ProfileError
from agent.store.profile_store import BUILT_IN_CATALOG, ProfileStore
from models.data.catalog import Catalog, Dataset
from models.data.movielens import load_ml100k, load_ml100k_catalog
from models.firststage.scorer import DEFAULT_DIM, DEFAULT_WINDOW, SharedParams
from models.text.encoder import ItemEncoder, embed_catalog
from models.types import FloatArray

BOOTSTRAP_VERSION = "text-pca bootstrap (no federation yet)"


def load_catalog(store: ProfileStore, name: str) -> Catalog:
    """The catalog called ``name``: the built-in MovieLens-100K or one imported into this profile."""
    if name == BUILT_IN_CATALOG:
        return load_ml100k_catalog()
    known = [c["name"] for c in store.catalogs()]
    if name not in known:
        raise ProfileError(f"There is no catalog named {name!r}.", hint=f"Catalogs: {', '.join(known)}.")
    items = [json.loads(line) for line in store.read_catalog(name).decode("utf-8").splitlines() if line]
    return Catalog(
        name=name,
        item_ids=[i["id"] for i in items],
        titles=[i["title"] for i in items],
        texts=[i["text"] for i in items],
        tags=[i["tags"] for i in items],
        years=[i["year"] for i in items],
    )


def embedding_cache_dir() -> Path:
    """Where catalog text vectors are cached (rebuildable)."""
    return paths.cache_dir() / "embeddings"


def catalog_vectors(catalog: Catalog) -> FloatArray:
    """The frozen MiniLM text vectors of every item (from the cache when the texts are unchanged)."""
    return embed_catalog(catalog, ItemEncoder(), embedding_cache_dir())


def ml100k_with_vectors() -> tuple[Dataset, FloatArray]:
    """The MovieLens-100K data set and its catalog's text vectors (what ``agent eval`` and ``agent demo`` train on)."""
    dataset = load_ml100k()
    return dataset, catalog_vectors(dataset.catalog)


def bootstrap_shared(text_vectors: FloatArray, *, dim: int = DEFAULT_DIM, window: int = DEFAULT_WINDOW) -> SharedParams:
    """A shared adapter for a profile that has none yet: the catalog texts' top principal directions.

    Projecting onto them keeps far more of the text similarity than a random projection does (with three liked
    animated films, 10 of the top 10 are family films, against 2 with ``SharedParams.init``); residuals and
    biases are zero and pooling is uniform until the federation provides a trained adapter.
    """
    centered = (text_vectors - text_vectors.mean(axis=0, keepdims=True)).astype(np.float64)
    variances, directions = np.linalg.eigh(centered.T @ centered)  # the text dim is small: cheaper than an SVD
    k = min(dim, directions.shape[1])
    proj = np.zeros((text_vectors.shape[1], dim), dtype=np.float32)
    proj[:, :k] = directions[:, np.argsort(-variances)[:k]]
    n_items = text_vectors.shape[0]
    return SharedParams(
        text_proj=proj,
        item_residual=np.zeros((n_items, dim), dtype=np.float32),
        item_bias=np.zeros(n_items, dtype=np.float32),
        position_logits=np.zeros(window, dtype=np.float32),
    )


def shared_for(store: ProfileStore, catalog: Catalog, text_vectors: FloatArray) -> tuple[SharedParams, dict[str, Any]]:
    """The shared adapter to score ``catalog`` with, and its meta (``version``, ``catalog``, ``adapted``)."""
    stored = store.load_shared()
    if stored is None:  # computed once, then kept like any shared adapter until the federation sends one
        bootstrap = bootstrap_shared(text_vectors)
        record = store.save_shared(bootstrap, version=BOOTSTRAP_VERSION, meta={"catalog": catalog.name})
        stored = bootstrap, record.meta
    shared, meta = stored
    if meta.get("catalog", BUILT_IN_CATALOG) == catalog.name and shared.n_items == len(catalog):
        return shared, {**meta, "adapted": False}
    adapted = SharedParams(
        text_proj=shared.text_proj,
        item_residual=np.zeros((len(catalog), shared.dim), dtype=np.float32),
        item_bias=np.zeros(len(catalog), dtype=np.float32),
        position_logits=shared.position_logits,
    )
    return adapted, {**meta, "catalog": catalog.name, "adapted": True}
