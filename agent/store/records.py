"""The store's records: one piece of feedback (:class:`Interaction`), an adapter's current file
(:class:`AdapterRecord`), and the names of the adapters a profile keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRIVATE_FIRST_STAGE = "private_first_stage"
"""The private first-stage vector θ_u (trained by the worker on the person's own feedback)."""
SHARED_FIRST_STAGE = "shared_first_stage"
"""The shared first-stage parameters θ_g (from the federation, the demo, or the text bootstrap)."""
PRIVATE_LORA = "private_lora"
"""The private LoRA φ_u of the foundation model, stored as the GGUF llama.cpp loads (trained by the worker)."""
PRIVATE_LORA_PROMPT = "listwise"
"""The prompt the private LoRA is trained for (its record's ``prompt``): the rerank serves no private LoRA trained for
another (an earlier version's pointwise one waits for the next `agent train`)."""
SHARED_LORA = "shared_lora"
"""The shared LoRA φ_g's numbers (what the federation averages); absent until a sync provides one."""

POSITIVE_KINDS = ("like", "watched")
"""Interaction kinds that always count as liked; a ``rating`` counts as liked when it is at least 3."""
LIKED_FROM_RATING = 3.0


@dataclass(frozen=True)
class Interaction:
    """One piece of feedback on one catalog item."""

    id: int
    catalog: str
    item_id: str
    kind: str
    """``like``, ``dislike``, ``rating`` (with ``rating`` 0.5-5) or ``watched`` (no rating)."""
    rating: float | None
    ts: int
    source: str

    @property
    def liked(self) -> bool:
        """True when this interaction says the person liked the item."""
        if self.kind in POSITIVE_KINDS:
            return True
        return self.kind == "rating" and self.rating is not None and self.rating >= LIKED_FROM_RATING

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "catalog": self.catalog,
            "item": self.item_id,
            "kind": self.kind,
            "rating": self.rating,
            "ts": self.ts,
            "source": self.source,
            "liked": self.liked,
        }


@dataclass(frozen=True)
class AdapterRecord:
    """Where an adapter's current file is and the checksum it must have."""

    name: str
    file: Path
    sha256: str
    version: int
    updated_at: int
    meta: dict[str, Any]


def feedback_to_row(feedback: str) -> tuple[str, float | None]:
    """``like``/``dislike``/a number from 0.5 to 5 → (kind, rating); raises ValueError on anything else."""
    text = feedback.strip().lower()
    if text in ("like", "dislike"):
        return text, 5.0 if text == "like" else 1.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{feedback!r} is not like, dislike or a rating from 1 to 5") from None
    if not 0.5 <= value <= 5.0:
        raise ValueError(f"rating {value:g} is outside 0.5-5")
    return "rating", value
