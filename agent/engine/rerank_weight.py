"""The blend weight of the language model's rerank now in force, and where it came from.

Three sources, first one present wins: ``[rerank]`` in config.toml (``enabled = false`` or a ``weight``: "your
setting"), a measurement the federation publishes with the shared adapter ("federation"; recorded by ``agent sync``, or
passed as ``published``), else the measurement shipped with the model (:data:`models.fm.measured.MEASURED_BLEND`,
"measured"). A weight of 0 means the rerank does not run: no foundation model is loaded, no time is spent.

The federation's weight is what its federated evaluation picked (``sync.protocol.evaluation``: agents score their
held-out items under candidate weights inside secure aggregation) and signed with the shared version; ``agent sync``
verifies it and records it here (:func:`save_federation_blend`, :data:`FEDERATION_BLEND_FILE` in the data folder:
public facts only — the weight, the versions, how many agents — never anything of the person's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from agent import paths
from agent.settings import RerankSettings
from models.assets import atomic_write_bytes
from models.fm.measured import MEASURED_BLEND, BlendMeasurement

WeightSource = Literal["your setting", "measured", "federation"]
TURN_ON = "set [rerank] weight (a number above 0, e.g. 0.25) in config.toml to use it anyway"
FEDERATION_BLEND_FILE = "federation_blend.json"


def save_federation_blend(
    weight: float, *, version: int, measured_version: int, agents: int, round_id: int
) -> BlendMeasurement:
    """Record the blend weight the federation published (signed, already verified) with shared ``version``
    (atomically, in the data folder); the measurement :func:`weight_in_force` now uses."""
    doc = {
        "weight": float(weight),
        "version": int(version),
        "measured_version": int(measured_version),
        "agents": int(agents),
        "round_id": int(round_id),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    path = paths.ensure_dir(paths.data_dir()) / FEDERATION_BLEND_FILE
    atomic_write_bytes(path, json.dumps(doc).encode())
    return _measurement(doc)


def _measurement(doc: dict[str, Any]) -> BlendMeasurement:
    return BlendMeasurement(
        weight=float(doc["weight"]),
        adapters="shared + private",
        command="federated evaluation in agent sync",
        dataset=f"federation, version {int(doc['version'])}, from {int(doc['agents'])} agents' held-out items",
        date=str(doc["date"]),
        evidence=(
            f"the best population NDCG@10 of the candidate weights on shared version {int(doc['measured_version'])} "
            f"(round {int(doc['round_id'])}), signed by the coordinator"
        ),
    )


def federation_blend() -> BlendMeasurement | None:
    """The blend weight the last sync recorded from the federation, or None (never synced with a federation that
    evaluates, or an unreadable record)."""
    path = paths.data_dir() / FEDERATION_BLEND_FILE
    try:
        return _measurement(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class WeightInForce:
    """The weight the rerank blends with, its source and why."""

    weight: float
    source: WeightSource
    why: str

    @property
    def on(self) -> bool:
        """True when the language model reranks (a weight above 0)."""
        return self.weight > 0

    def summary(self) -> str:
        """A few words for a status line, e.g. ``rerank off (weight 0, measured: validation picked 0)``."""
        picked = "" if self.source == "your setting" else f": validation picked {self.weight:g}"
        return f"rerank {'on' if self.on else 'off'} (weight {self.weight:g}, {self.source}{picked})"

    def line(self) -> str:
        """One line for the terminal: on or off, the weight, its source and why."""
        return f"language-model rerank {'on' if self.on else 'off'}, weight {self.weight:g} ({self.source}): {self.why}"

    def as_dict(self) -> dict[str, Any]:
        """The ``weight``, ``source`` and ``why`` of ``agent suggest --json``'s and ``agent inspect --json``'s
        ``rerank`` object."""
        return {"weight": self.weight, "source": self.source, "why": self.why}


def weight_in_force(settings: RerankSettings, published: BlendMeasurement | None = None) -> WeightInForce:
    """The weight in force: the person's ``[rerank]`` setting, else ``published`` (the federation's; by default the
    one the last sync recorded, :func:`federation_blend`), else the measured one."""
    if not settings.enabled:
        return WeightInForce(0.0, "your setting", "switched off in config.toml ([rerank] enabled = false)")
    if settings.weight is not None:
        weight = settings.weight
        why = f"[rerank] weight = {weight:g} in config.toml" + ("" if weight > 0 else ": the rerank is off")
        return WeightInForce(weight, "your setting", why)
    if published is None:
        published = federation_blend()
    source: WeightSource = "measured" if published is None else "federation"
    measurement = published or MEASURED_BLEND
    why = measurement.explanation()
    if measurement.weight == 0:
        why += f"; the rerank is off ({TURN_ON})"
    return WeightInForce(measurement.weight, source, why)
