"""The first-stage scorer: scores the whole catalog for one user in a few milliseconds, in numpy.

Parameters are split explicitly:

* **shared** (θ_g, :class:`SharedParams`) — what the federation averages: a projection of the frozen text vectors
  (``text_proj``), per-item residual embeddings and biases, and the recency weights that pool a history;
* **private** (θ_u, :class:`PrivateParams`) — the user's own vector, which never leaves the device.

An item's vector is ``text @ text_proj + residual``, so an item nobody has interacted with (a cold item, or one
added to the catalog later) is scored from its text alone. A user's state is the recency-weighted mean of their
last ``window`` items plus their private vector; the score is ``state · item + bias``. That formula is written
once, in the functions :func:`item_vectors`, :func:`pooling_weights`, :func:`user_state` and :func:`scores`,
which every numpy caller uses (the torch twin in :mod:`models.firststage.training` mirrors it to differentiate).

This module never imports torch: it is the suggest path.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.assets import atomic_write_bytes
from models.types import FloatArray, IntArray

DEFAULT_DIM = 32
DEFAULT_WINDOW = 50


@dataclass
class SharedParams:
    """θ_g: the part of the first stage that all agents improve together."""

    text_proj: FloatArray  # (text_dim, dim)
    item_residual: FloatArray  # (n_items, dim)
    item_bias: FloatArray  # (n_items,)
    position_logits: FloatArray  # (window,) weight of the k-th most recent item is exp(logits[window-1-k])

    FIELDS = ("text_proj", "item_residual", "item_bias", "position_logits")

    @classmethod
    def init(
        cls, n_items: int, *, text_dim: int = 384, dim: int = DEFAULT_DIM, window: int = DEFAULT_WINDOW, seed: int = 0
    ) -> SharedParams:
        """Fresh parameters: a small random text projection, zero residuals and biases, uniform pooling."""
        rng = np.random.default_rng(seed)
        scale = 1.0 / np.sqrt(text_dim)
        return cls(
            text_proj=rng.uniform(-scale, scale, size=(text_dim, dim)).astype(np.float32),
            item_residual=rng.normal(0.0, 0.01, size=(n_items, dim)).astype(np.float32),
            item_bias=np.zeros(n_items, dtype=np.float32),
            position_logits=np.zeros(window, dtype=np.float32),
        )

    @property
    def n_items(self) -> int:
        """Catalog size these parameters are for."""
        return int(self.item_residual.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.item_residual.shape[1])

    @property
    def window(self) -> int:
        """How many recent history items are pooled."""
        return int(self.position_logits.shape[0])

    def to_vector(self) -> FloatArray:
        """The flat view the federation aggregates (float32, fixed field order)."""
        return np.concatenate([getattr(self, name).ravel() for name in self.FIELDS]).astype(np.float32)

    def with_vector(self, vector: NDArray[np.floating]) -> SharedParams:
        """New parameters of the same shapes, read from a flat vector made by :meth:`to_vector`."""
        if vector.shape != (self.size,):
            raise ValueError(f"shared vector has shape {vector.shape}, expected ({self.size},)")
        parts: dict[str, FloatArray] = {}
        offset = 0
        for name in self.FIELDS:
            like = getattr(self, name)
            parts[name] = np.asarray(vector[offset : offset + like.size], dtype=np.float32).reshape(like.shape)
            offset += like.size
        return SharedParams(**parts)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(int(getattr(self, name).size) for name in self.FIELDS)

    def copy(self) -> SharedParams:
        """A deep copy."""
        return self.with_vector(self.to_vector())


@dataclass
class PrivateParams:
    """θ_u: the user's private vector, trained only on their own feedback, never sent anywhere."""

    user_vector: FloatArray  # (dim,)

    @classmethod
    def init(cls, dim: int = DEFAULT_DIM) -> PrivateParams:
        """A new user starts at zero: their state is their history alone."""
        return cls(user_vector=np.zeros(dim, dtype=np.float32))

    def copy(self) -> PrivateParams:
        """A deep copy."""
        return PrivateParams(user_vector=self.user_vector.copy())


def item_vectors(shared: SharedParams, text_vectors: FloatArray, items: IntArray | None = None) -> FloatArray:
    """Item vectors ``text @ text_proj + residual`` of ``items`` (default: the whole catalog)."""
    if items is None:
        return (text_vectors @ shared.text_proj + shared.item_residual).astype(np.float32)
    return np.asarray(text_vectors[items] @ shared.text_proj + shared.item_residual[items], dtype=np.float32)


def pooling_weights(shared: SharedParams, n_history: int) -> FloatArray:
    """The pooling weight of each of the last ``min(n_history, window)`` history items, oldest first (sum 1)."""
    window = shared.window
    tail_len = min(n_history, window)
    if tail_len == 0:
        return np.zeros(0, dtype=np.float32)
    logits = shared.position_logits[window - tail_len :]
    weights: FloatArray = np.exp(logits - logits.max()).astype(np.float32)
    weights /= weights.sum()
    return weights


def user_state(shared: SharedParams, private: PrivateParams, tail_vectors: FloatArray) -> FloatArray:
    """The user's state: the recency-weighted mean of the history tail's item vectors plus the private vector.

    ``tail_vectors`` are the vectors of the last ``min(len(history), window)`` history items, oldest first.
    """
    state = private.user_vector.astype(np.float32).copy()
    if len(tail_vectors):
        state += pooling_weights(shared, len(tail_vectors)) @ tail_vectors
    return state


def scores(state: FloatArray, vectors: FloatArray, bias: FloatArray) -> FloatArray:
    """First-stage scores ``vector · state + bias`` of the items whose vectors and biases are given."""
    return vectors @ state + bias


QUERY_WEIGHT = 0.25
"""The default pull of a query on the user state, relative to the state's own norm (``[agent] query_weight``):
validation's pick on the query protocol (``agent eval --protocol query``; 1.0 cost a third of NDCG@10)."""


def query_vector(shared: SharedParams, text_vector: FloatArray) -> FloatArray:
    """A query's text vector (MiniLM) projected into item space, as an item with that text and no residual would be."""
    return np.asarray(text_vector @ shared.text_proj, dtype=np.float32)


def with_query(state: FloatArray, query: FloatArray, weight: float = QUERY_WEIGHT) -> FloatArray:
    """The user state pulled toward a query's item-space vector (:func:`query_vector`).

    The query is rescaled to ``weight`` times the state's norm (or to norm ``weight`` when the state is zero, as for
    a newcomer), so the same weight means the same balance between taste and request for every user.
    """
    norm = float(np.linalg.norm(state))
    scale = weight * (norm if norm > 1e-6 else 1.0) / max(float(np.linalg.norm(query)), 1e-9)
    return np.asarray(state + scale * query, dtype=np.float32)


def history_tail(shared: SharedParams, history: IntArray) -> IntArray:
    """The last ``window`` items of a history: the ones the state pools."""
    return np.asarray(history, dtype=np.int64)[-shared.window :]


class FirstStageScorer:
    """Scores items for users from shared parameters and frozen text vectors (numpy only)."""

    def __init__(self, shared: SharedParams, text_vectors: FloatArray) -> None:
        if text_vectors.shape[0] != shared.n_items:
            raise ValueError(f"{text_vectors.shape[0]} text vectors for {shared.n_items} items")
        self.shared = shared
        self.item_vectors: FloatArray = item_vectors(shared, text_vectors)
        self.item_bias = shared.item_bias

    def user_state(self, history: IntArray, private: PrivateParams) -> FloatArray:
        """Recency-weighted mean of the last ``window`` history items, plus the private vector."""
        return user_state(self.shared, private, self.item_vectors[history_tail(self.shared, history)])

    def history_weights(self, history: IntArray) -> FloatArray:
        """The pooling weight of each of the last ``window`` history items (for explanations)."""
        return pooling_weights(self.shared, len(history))

    def score_state(self, state: FloatArray, items: IntArray | None = None) -> FloatArray:
        """Scores of ``items`` (default: every catalog item) for a user in ``state``."""
        if items is None:
            return scores(state, self.item_vectors, self.item_bias)
        return scores(state, self.item_vectors[items], self.item_bias[items])

    def score_all(self, history: IntArray, private: PrivateParams) -> FloatArray:
        """Scores of every catalog item for this user."""
        return self.score_state(self.user_state(history, private))

    def score_items(self, history: IntArray, private: PrivateParams, items: IntArray) -> FloatArray:
        """Scores of the given items only."""
        return self.score_state(self.user_state(history, private), items)

    def top_k(self, history: IntArray, private: PrivateParams, k: int, *, exclude: IntArray | None = None) -> IntArray:
        """The ``k`` best items, best first, never one from ``exclude`` (by default the history)."""
        item_scores = self.score_all(history, private)
        banned = history if exclude is None else exclude
        item_scores[np.asarray(banned, dtype=np.int64)] = -np.inf
        k = min(k, int(np.isfinite(item_scores).sum()))
        top = np.argpartition(-item_scores, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        return top[np.argsort(-item_scores[top], kind="stable")].astype(np.int64)


def save_params(path: Path, shared: SharedParams, *, meta: dict[str, str] | None = None) -> None:
    """Write shared parameters (and string metadata) as an .npz file, atomically."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: getattr(shared, name) for name in SharedParams.FIELDS}
    arrays["meta"] = np.array(json.dumps(meta or {}))
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_params(path: Path) -> tuple[SharedParams, dict[str, str]]:
    """Read parameters written by :func:`save_params`."""
    with np.load(path, allow_pickle=False) as data:
        shared = SharedParams(**{name: data[name].astype(np.float32) for name in SharedParams.FIELDS})
        meta = json.loads(str(data["meta"]))
    return shared, meta


def save_private(path: Path, private: PrivateParams) -> None:
    """Write a private vector as .npy bytes, atomically (it stays on this device)."""
    buffer = io.BytesIO()
    np.save(buffer, private.user_vector)
    atomic_write_bytes(path, buffer.getvalue())


def load_private(path: Path) -> PrivateParams:
    """Read a private vector written by :func:`save_private`."""
    return PrivateParams(user_vector=np.load(path, allow_pickle=False).astype(np.float32))
