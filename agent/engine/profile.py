"""The profile engine: suggestions and their explanations over one catalog — numpy only, never torch.

A :class:`Profile` joins the store (history, adapters) with a catalog, its frozen text vectors and the shared
adapter (:mod:`agent.engine.catalogs`):

* the **history** is the person's liked items in time order (likes, "watched", ratings ≥ 3); disliked items
  (dislikes, ratings < 3) are never suggested and are hard negatives for the private adapter's training.
* the **private adapter** is the stored private vector, or zero before the first local training.

The personality profile (:meth:`Profile.inspect`) is drawn by :mod:`agent.engine.personality`; items are found
from what the person typed by :mod:`agent.engine.lookup`; the liked items a reason names are chosen by
:mod:`models.firststage.reasons`, down the first stage's list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent import paths
from agent.engine.catalogs import catalog_vectors, load_catalog, shared_for
from agent.engine.lookup import ItemLookup
from agent.engine.personality import lora_summary, tag_lifts
from agent.store.egress import egress_summary
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_FIRST_STAGE, PRIVATE_LORA, SHARED_FIRST_STAGE, SHARED_LORA
from models.data.catalog import Catalog
from models.data.request import Request, filter_scores, parse_request
from models.firststage.reasons import citations
from models.firststage.scorer import (
    QUERY_WEIGHT,
    FirstStageScorer,
    PrivateParams,
    SharedParams,
    query_vector,
    with_query,
)
from models.text.encoder import ItemEncoder
from models.types import FloatArray, IntArray


@dataclass(frozen=True)
class Suggestion:
    """One suggested item with its score and a one-line, grounded reason."""

    item: int
    item_id: str
    title: str
    year: int | None
    tags: list[str]
    score: float
    reason: str
    because: list[str] = field(default_factory=list)
    """Labels of the liked items closest to this item in the first stage's item space, lead first."""
    first_stage_rank: int | None = None
    """1-based rank in the first stage, when the language model reranked the list (else None)."""
    fm_score: float | None = None
    """The language model's score for this item (its letter's logit in the listwise prompt), when it was reranked
    (else None)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "item": self.item_id,
            "title": self.title,
            "year": self.year,
            "tags": self.tags,
            "score": round(self.score, 4),
            "reason": self.reason,
            "because": self.because,
            "first_stage_rank": self.first_stage_rank,
            "fm_score": None if self.fm_score is None else round(self.fm_score, 4),
        }


class Profile:
    """One person's profile over one catalog, ready to score (build with :meth:`load`)."""

    def __init__(
        self,
        store: ProfileStore,
        catalog: Catalog,
        text_vectors: FloatArray,
        shared: SharedParams,
        shared_meta: dict[str, Any],
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.text_vectors = text_vectors
        self.shared = shared
        self.shared_meta = shared_meta
        self.scorer = FirstStageScorer(shared, text_vectors)
        self._query_cache: dict[str, FloatArray] = {}
        self.query_weight = QUERY_WEIGHT
        self.lookup = ItemLookup(catalog)

    @classmethod
    def load(cls, store: ProfileStore, catalog_name: str | None = None) -> Profile:
        """Load the catalog, its text vectors and the shared adapter for the store's active catalog."""
        catalog = load_catalog(store, catalog_name or store.active_catalog)
        vectors = catalog_vectors(catalog)
        shared, meta = shared_for(store, catalog, vectors)
        return cls(store, catalog, vectors, shared, meta)

    # -- state -----------------------------------------------------------------------------------------------
    def feedback(self) -> tuple[IntArray, IntArray]:
        """(liked items in time order, disliked items), as catalog indices; the latest feedback per item wins."""
        liked: list[int] = []
        disliked: list[int] = []
        for interaction in self.store.latest_feedback(self.catalog.name).values():
            index = self.catalog.index.get(interaction.item_id)
            if index is None:
                continue
            (liked if interaction.liked else disliked).append(index)
        return np.array(liked, dtype=np.int64), np.array(disliked, dtype=np.int64)

    def private(self) -> PrivateParams:
        """The stored private vector, or zero before the first local training."""
        stored = self.store.load_private()
        if stored is None or stored.user_vector.shape != (self.shared.dim,):
            return PrivateParams.init(self.shared.dim)
        return stored

    def query_vector(self, query: str) -> FloatArray:
        """The query's MiniLM text vector projected into item space (as an item with that text would be)."""
        if query not in self._query_cache:
            self._query_cache[query] = query_vector(self.shared, ItemEncoder().encode([query])[0])
        return self._query_cache[query]

    def user_state(self, history: IntArray, private: PrivateParams, query: str | None = None) -> FloatArray:
        """History pooled by the shared recency weights, plus the private vector, plus the query's pull
        (:func:`models.firststage.scorer.with_query`, the formula ``agent eval --protocol query`` measures)."""
        state = self.scorer.user_state(history, private)
        if query:
            state = with_query(state, self.query_vector(query), self.query_weight)
        return state

    # -- suggestions -----------------------------------------------------------------------------------------
    def suggest(self, n: int = 10, *, query: str | None = None, exclude: IntArray | None = None) -> list[Suggestion]:
        """The ``n`` best unrated items, best first, each with a reason."""
        liked, disliked = self.feedback()
        private = self.private()
        request = parse_request(query, self.catalog) if query else Request()
        # A request naming tags or a decade is served by the filter alone; the MiniLM pull is for other requests
        # (models.experiments.query.product_query: the measured choice).
        state = self.user_state(liked, private, None if request else query)
        scores = self.scorer.score_state(state)
        banned = np.concatenate([liked, disliked, exclude if exclude is not None else np.zeros(0, np.int64)])
        scores[banned.astype(np.int64)] = -np.inf
        if request:
            everything = np.arange(len(scores))
            scores = filter_scores(scores, request.mask(self.catalog, everything)).astype(np.float32)
        k = min(n, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        cites = citations(self.scorer, liked, top)
        return [
            self._suggestion(int(i), float(scores[i]), cited, query, request)
            for i, cited in zip(top, cites, strict=True)
        ]

    def _pulls(self, item: int, liked: IntArray) -> tuple[IntArray, FloatArray]:
        """The pooled history items and how much each adds to ``item``'s score."""
        weights = self.scorer.history_weights(liked)
        recent = liked[-len(weights) :] if len(weights) else liked[:0]
        pulls = weights * (self.scorer.item_vectors[recent] @ self.scorer.item_vectors[item])
        return recent, pulls.astype(np.float32)

    def _suggestion(
        self, item: int, score: float, cited: IntArray, query: str | None, request: Request | None = None
    ) -> Suggestion:
        """A suggestion whose reason names the ``cited`` liked items (:mod:`models.firststage.reasons`) and, for a
        query that names tags or a decade (``request``), whether the item satisfies them."""
        because = [self.catalog.label(int(c)) for c in cited]
        tags = self.catalog.tags[item]
        source_tags = {t for c in cited for t in self.catalog.tags[int(c)]}
        top_tags = [t for t in tags if t in source_tags][:2]
        parts = []
        request = request or Request()
        if query and request and not request.satisfied_by(self.catalog, item):
            parts.append(f'close to "{query}" but not {request.describe()}')
        elif query:
            parts.append(f'matches "{query}"' + (f" ({request.describe()})" if request else ""))
        if because:
            parts.append("because you liked " + " and ".join(because))
        if top_tags:
            parts.append(f"({', '.join(top_tags)})")
        if not parts:
            parts.append("ranked high by the shared adapter")
        return Suggestion(
            item=item,
            item_id=self.catalog.item_ids[item],
            title=self.catalog.titles[item],
            year=self.catalog.years[item],
            tags=list(tags),
            score=score,
            reason=" ".join(parts),
            because=because,
        )

    def explain(self, item: int, *, query: str | None = None, limit: int = 8) -> dict[str, Any]:
        """What makes up ``item``'s score: each history item's pull, the private vector's, the bias, the query's."""
        liked, _ = self.feedback()
        private = self.private()
        recent, pulls = self._pulls(item, liked)
        vector = self.scorer.item_vectors[item]
        order = np.argsort(-np.abs(pulls))[:limit]
        history = [
            {
                "item": self.catalog.item_ids[int(recent[j])],
                "label": self.catalog.label(int(recent[j])),
                "tags": self.catalog.tags[int(recent[j])],
                "pull": round(float(pulls[j]), 4),
            }
            for j in order
        ]
        total = float(vector @ self.user_state(liked, private, query) + self.scorer.item_bias[item])
        parts = {
            "history": round(float(pulls.sum()), 4),
            "private_adapter": round(float(vector @ private.user_vector), 4),
            "item_bias": round(float(self.scorer.item_bias[item]), 4),
        }
        if query:
            parts["query"] = round(total - sum(parts.values()), 4)
        return {
            "item": self.catalog.item_ids[item],
            "label": self.catalog.label(item),
            "tags": self.catalog.tags[item],
            "score": round(total, 4),
            "parts": parts,
            "history": history,
        }

    # -- the personality profile -----------------------------------------------------------------------------
    def inspect(self, *, top: int = 5) -> dict[str, Any]:
        """The personality profile (see ``agent inspect``): affinities and aversions from the private adapter."""
        liked, disliked = self.feedback()
        private = self.private()
        zero = PrivateParams.init(self.shared.dim)
        pooled = self.scorer.user_state(liked, zero)
        trained = bool(np.any(private.user_vector))
        # The delta the private vector makes to every item's score; before any training, the history's delta.
        direction = private.user_vector if trained else pooled
        delta = self.scorer.item_vectors @ direction
        affinities, aversions = tag_lifts(self.catalog, delta, liked, disliked, top=top)
        with_private = self.scorer.score_state(pooled + private.user_vector)
        without = self.scorer.score_state(pooled)
        banned = np.concatenate([liked, disliked]).astype(np.int64)
        with_private[banned] = -np.inf
        without[banned] = -np.inf
        top20 = set(np.argsort(-with_private)[:20].tolist())
        top20_shared = set(np.argsort(-without)[:20].tolist())
        private_norm = float(np.linalg.norm(private.user_vector))
        pooled_norm = float(np.linalg.norm(pooled))
        record = self.store.adapter_record(PRIVATE_FIRST_STAGE)
        shared_record = self.store.adapter_record(SHARED_FIRST_STAGE)
        ledger = self.store.egress_entries()
        interactions = self.store.interactions(self.catalog.name)
        return {
            "catalog": self.catalog.name,
            "encrypted": self.store.encrypted,
            "interactions": {
                "total": len(interactions),
                "liked_items": len(liked),
                "disliked_items": len(disliked),
                "likes": sum(1 for i in interactions if i.kind == "like"),
                "dislikes": sum(1 for i in interactions if i.kind == "dislike"),
                "ratings": sum(1 for i in interactions if i.kind == "rating"),
            },
            "derived_from": "private adapter" if trained else "history (the private adapter is not trained yet)",
            "affinities": affinities,
            "aversions": aversions,
            "private_adapter": {
                "trained": trained,
                "norm": round(private_norm, 4),
                "history_state_norm": round(pooled_norm, 4),
                "relative_shift": round(private_norm / pooled_norm, 4) if pooled_norm > 1e-9 else None,
                "top20_changed_by_private": len(top20 - top20_shared),
                "version": record.version if record else None,
                "sha256": record.sha256 if record else None,
                "updated_at": record.updated_at if record else None,
            },
            "shared_adapter": {
                "version": self.shared_meta.get("version"),
                "adapted_to_catalog": bool(self.shared_meta.get("adapted")),
                "stored": shared_record is not None,
            },
            "private_lora": lora_summary(self.store.adapter_record(PRIVATE_LORA)),
            "shared_lora": lora_summary(self.store.adapter_record(SHARED_LORA)),
            "last_training": self.store.last_training(),
            "egress": egress_summary(ledger),
            "paths": {**paths.all_paths(), "profile_files": [str(p) for p in self.store.files()]},
        }

    # -- finding items ---------------------------------------------------------------------------------------
    def resolve(self, text: str) -> int:
        """The catalog index of an item given by id, title or "title (year)"; raises with close matches."""
        return self.lookup.resolve(text)

    def search(self, text: str, *, limit: int = 20) -> list[int]:
        """Items whose title starts with, then contains, then closely resembles ``text``; then tag matches."""
        return self.lookup.search(text, limit=limit)

    def match_title(self, title: str, year: int | None) -> int | None:
        """The item with this title (and year, ±1 for release-date differences), or None."""
        return self.lookup.match_title(title, year)
