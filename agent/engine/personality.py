"""The personality profile ``agent inspect`` shows: which catalog tags the private adapter (or, before its first
training, the history) pulls toward and away from, and what is stored about the language model's LoRAs."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.store.records import AdapterRecord
from models.data.catalog import Catalog
from models.types import FloatArray, IntArray


def tag_lifts(
    catalog: Catalog, delta: FloatArray, liked: IntArray, disliked: IntArray, *, top: int = 5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(affinities, aversions): the ``top`` tags whose items ``delta`` (a change to every item's score) lifts
    most and least, in standard deviations, each with example items and the person's likes and dislikes in it."""
    spread = float(delta.std()) or 1.0
    z = (delta - float(delta.mean())) / spread
    liked_set, disliked_set = set(liked.tolist()), set(disliked.tolist())
    by_tag: dict[str, list[int]] = {}
    for i, tags in enumerate(catalog.tags):
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
                "examples": [catalog.label(int(i)) for i in ranked[:3]],
                "least": [catalog.label(int(i)) for i in ranked[::-1][:3]],
            }
        )
    rows.sort(key=lambda r: -r["lift"])
    affinities = [{k: v for k, v in r.items() if k != "least"} for r in rows[:top] if r["lift"] > 0]
    aversions = [
        {**{k: v for k, v in r.items() if k != "least"}, "examples": r["least"]}
        for r in reversed(rows[-top:])
        if r["lift"] < 0
    ]
    return affinities, aversions


def private_lora_examples(summary: dict[str, Any]) -> str:
    """What a stored private LoRA (its :func:`lora_summary`) trained on, in words: "7 lists", or for one an earlier
    version trained on pointwise pairs, that the rerank does not serve it until the next training run."""
    if "lists" in summary:
        return f"{summary['lists']} lists"
    return f"{summary.get('pairs', '?')} pointwise pairs (an earlier version's: not served; `agent train` replaces it)"


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
