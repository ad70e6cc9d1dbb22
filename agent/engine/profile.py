"""The profile engine: suggestions, explanations, the personality profile, item lookup — numpy only, never torch.

It joins the store (history, adapters) with a catalog and its frozen text vectors:

* the **shared adapter** is the stored one (from the federation, or the demo); before any exists it is
  :func:`bootstrap_shared`, the catalog texts' principal directions, so a fresh install ranks by text similarity.
  For an imported catalog the shared text projection and recency weights are reused with zero item residuals and
  biases: items are then scored from their text alone.
* the **history** is the person's liked items in time order (likes, "watched", ratings ≥ 3); disliked items
  (dislikes, ratings < 3) are never suggested and are hard negatives for the private adapter's training.
* the **private adapter** is the stored private vector, or zero before the first local training.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import paths
from agent.errors import AmbiguousItemError, ItemNotFoundError, ProfileError
from agent.store.database import PRIVATE_LORA, SHARED_FIRST_STAGE, SHARED_LORA, AdapterRecord, ProfileStore
from models.data.catalog import Catalog
from models.firststage.scorer import (
    DEFAULT_DIM,
    DEFAULT_WINDOW,
    FirstStageScorer,
    FloatArray,
    IntArray,
    PrivateParams,
    SharedParams,
)

BUILT_IN_CATALOG = "ml-100k"
BOOTSTRAP_VERSION = "text-pca bootstrap (no federation yet)"
QUERY_WEIGHT = 1.0
"""How strongly a ``--query`` pulls the user state toward the query's text, relative to the state's own norm."""


def load_catalog(store: ProfileStore, name: str) -> Catalog:
    """The catalog called ``name``: the built-in MovieLens-100K or one imported into this profile."""
    if name == BUILT_IN_CATALOG:
        from models.data.movielens import load_ml100k_catalog

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
    from models.text.encoder import ItemEncoder, embed_catalog

    return embed_catalog(catalog, ItemEncoder(), embedding_cache_dir())


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


def normalize_title(text: str) -> str:
    """Lower case, no accents or punctuation, a leading or trailing English article dropped."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").casefold()
    text = re.sub(r"[^a-z0-9]+", " ", text).strip()
    text = re.sub(r"^(the|a|an) ", "", text)
    text = re.sub(r" (the|a|an)$", "", text)
    return text


_TITLE_WITH_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


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
    """Labels of the history items that pulled hardest toward this item."""
    first_stage_rank: int | None = None
    """1-based rank in the first stage, when the language model reranked the list (else None)."""
    fm_score: float | None = None
    """The language model's logit(" Yes") − logit(" No") for this item, when it was reranked (else None)."""

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


@dataclass(frozen=True)
class Contribution:
    """How much one part of the user state adds to an item's score."""

    label: str
    value: float
    tags: list[str] = field(default_factory=list)


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
        self._normalized_titles: list[str] | None = None

    @property
    def _normalized(self) -> list[str]:
        """Every title normalised for matching (computed on first use: suggestions do not need it)."""
        if self._normalized_titles is None:
            self._normalized_titles = [normalize_title(t) for t in self.catalog.titles]
        return self._normalized_titles

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
            from models.text.encoder import ItemEncoder

            text = ItemEncoder().encode([query])[0]
            self._query_cache[query] = (text @ self.shared.text_proj).astype(np.float32)
        return self._query_cache[query]

    def user_state(self, history: IntArray, private: PrivateParams, query: str | None = None) -> FloatArray:
        """History pooled by the shared recency weights, plus the private vector, plus the query's pull."""
        state = self.scorer.user_state(history, private)
        if query:
            q = self.query_vector(query)
            norm = float(np.linalg.norm(state))
            scale = self.query_weight * (norm if norm > 1e-6 else 1.0) / max(float(np.linalg.norm(q)), 1e-9)
            state = state + scale * q
        return state

    # -- suggestions -----------------------------------------------------------------------------------------
    def suggest(self, n: int = 10, *, query: str | None = None, exclude: IntArray | None = None) -> list[Suggestion]:
        """The ``n`` best unrated items, best first, each with a reason."""
        liked, disliked = self.feedback()
        private = self.private()
        state = self.user_state(liked, private, query)
        scores = self.scorer.item_vectors @ state + self.scorer.item_bias
        banned = np.concatenate([liked, disliked, exclude if exclude is not None else np.zeros(0, np.int64)])
        scores[banned.astype(np.int64)] = -np.inf
        k = min(n, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self._suggestion(int(i), float(scores[i]), liked, query) for i in top]

    def _pulls(self, item: int, liked: IntArray) -> tuple[IntArray, FloatArray]:
        """The pooled history items and how much each adds to ``item``'s score."""
        weights = self.scorer.history_weights(liked)
        recent = liked[-len(weights) :] if len(weights) else liked[:0]
        pulls = weights * (self.scorer.item_vectors[recent] @ self.scorer.item_vectors[item])
        return recent, pulls.astype(np.float32)

    def _suggestion(self, item: int, score: float, liked: IntArray, query: str | None) -> Suggestion:
        recent, pulls = self._pulls(item, liked)
        order = np.argsort(-pulls)[:2] if len(pulls) else np.zeros(0, np.int64)
        because = [self.catalog.label(int(recent[j])) for j in order if pulls[j] > 0]
        tags = self.catalog.tags[item]
        top_tags: list[str] = []
        if len(order):
            source_tags = {t for j in order for t in self.catalog.tags[int(recent[j])]}
            top_tags = [t for t in tags if t in source_tags][:2]
        parts = []
        if query:
            parts.append(f'matches "{query}"')
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
        spread = float(delta.std()) or 1.0
        z = (delta - float(delta.mean())) / spread
        liked_set, disliked_set = set(liked.tolist()), set(disliked.tolist())
        by_tag: dict[str, list[int]] = {}
        for i, tags in enumerate(self.catalog.tags):
            for tag in tags:
                by_tag.setdefault(tag, []).append(i)
        rows: list[dict[str, Any]] = []
        for tag, members in by_tag.items():
            idx = np.array(members, dtype=np.int64)
            ranked = idx[np.argsort(-z[idx])]
            rows.append(
                {
                    "tag": tag,
                    "lift": round(float(z[idx].mean()), 3),
                    "items_in_catalog": len(members),
                    "liked": sum(1 for i in members if i in liked_set),
                    "disliked": sum(1 for i in members if i in disliked_set),
                    "examples": [self.catalog.label(int(i)) for i in ranked[:3]],
                    "least": [self.catalog.label(int(i)) for i in ranked[::-1][:3]],
                }
            )
        rows.sort(key=lambda r: -r["lift"])
        affinities = [{k: v for k, v in r.items() if k != "least"} for r in rows[:top] if r["lift"] > 0]
        aversions = [
            {**{k: v for k, v in r.items() if k != "least"}, "examples": r["least"]}
            for r in reversed(rows[-top:])
            if r["lift"] < 0
        ]
        with_private = self.scorer.item_vectors @ (pooled + private.user_vector) + self.scorer.item_bias
        without = self.scorer.item_vectors @ pooled + self.scorer.item_bias
        banned = np.concatenate([liked, disliked]).astype(np.int64)
        with_private[banned] = -np.inf
        without[banned] = -np.inf
        top20 = set(np.argsort(-with_private)[:20].tolist())
        top20_shared = set(np.argsort(-without)[:20].tolist())
        private_norm = float(np.linalg.norm(private.user_vector))
        pooled_norm = float(np.linalg.norm(pooled))
        record = self.store.adapter_record("private_first_stage")
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
        text = text.strip()
        if text in self.catalog.index:
            return self.catalog.index[text]
        year: int | None = None
        match = _TITLE_WITH_YEAR.match(text)
        if match:
            text, year = match["title"], int(match["year"])
        wanted = normalize_title(text)
        hits = [
            i
            for i, title in enumerate(self._normalized)
            if title == wanted and (year is None or self.catalog.years[i] == year)
        ]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AmbiguousItemError(
                f"{len(hits)} items are called {text!r}.",
                hint="Give the year or the id: " + "; ".join(self._describe(i) for i in hits[:10]),
                candidates=[self._describe(i) for i in hits],
            )
        close = self.search(text, limit=5)
        raise ItemNotFoundError(
            f"No item in {self.catalog.name} is called {text!r}" + (f" ({year})." if year else "."),
            hint=("Did you mean: " + "; ".join(self._describe(i) for i in close)) if close else "Try `agent search`.",
            candidates=[self._describe(i) for i in close],
        )

    def _describe(self, i: int) -> str:
        return f"{self.catalog.label(i)} [id {self.catalog.item_ids[i]}]"

    def search(self, text: str, *, limit: int = 20) -> list[int]:
        """Items whose title starts with, then contains, then closely resembles ``text``; then tag matches."""
        wanted = normalize_title(text)
        if not wanted:
            return []
        starts = [i for i, t in enumerate(self._normalized) if t.startswith(wanted)]
        contains = [i for i, t in enumerate(self._normalized) if wanted in t and not t.startswith(wanted)]
        found = starts + contains
        if len(found) < limit:
            close = difflib.get_close_matches(wanted, self._normalized, n=limit, cutoff=0.6)
            seen = set(found)
            for title in close:
                for i, t in enumerate(self._normalized):
                    if t == title and i not in seen:
                        found.append(i)
                        seen.add(i)
        if len(found) < limit:
            seen = set(found)
            found += [
                i
                for i, tags in enumerate(self.catalog.tags)
                if i not in seen and any(normalize_title(t) == wanted for t in tags)
            ]
        return found[:limit]

    def match_title(self, title: str, year: int | None) -> int | None:
        """The item with this title (and year, ±1 for release-date differences), or None."""
        wanted = normalize_title(title)
        hits = [i for i, t in enumerate(self._normalized) if t == wanted]
        if year is not None and hits:
            exact = [i for i in hits if self.catalog.years[i] == year]
            near = [
                i
                for i in hits
                if self.catalog.years[i] is not None and abs(int(self.catalog.years[i] or 0) - year) <= 1
            ]
            hits = exact or near
        return hits[0] if len(hits) == 1 else None


def lora_summary(record: AdapterRecord | None) -> dict[str, Any]:
    """What ``agent inspect`` says about a LoRA adapter of the language model (its record's meta and file)."""
    if record is None:
        return {"stored": False}
    return {
        "stored": True,
        **record.meta,
        "revision": record.version,
        "sha256": record.sha256,
        "updated_at": record.updated_at,
        "file": str(record.file),
        "bytes": record.file.stat().st_size if record.file.is_file() else None,
    }


def egress_summary(ledger: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the egress ledger: rounds, bytes each way, the latest ε and when the last round was."""
    epsilons = [e["epsilon"] for e in ledger if e.get("epsilon") is not None]
    return {
        "rounds": len(ledger),
        "bytes_sent": sum(int(e.get("bytes_sent") or 0) for e in ledger),
        "bytes_received": sum(int(e.get("bytes_received") or 0) for e in ledger),
        "epsilon": float(epsilons[-1]) if epsilons else 0.0,
        "last_round_at": ledger[-1]["ts"] if ledger else None,
    }
