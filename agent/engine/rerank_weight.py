"""The blend weight of the language model's rerank now in force, and where it came from.

Three sources, first one present wins: ``[rerank]`` in config.toml (``enabled = false`` or a ``weight``: "your
setting"), a measurement the federation publishes with the shared adapter ("federation"; issue 13 passes it as
``published``), else the measurement shipped with the model (:data:`models.fm.measured.MEASURED_BLEND`,
"measured"). A weight of 0 means the rerank does not run: no foundation model is loaded, no time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agent.settings import RerankSettings
from models.fm.measured import MEASURED_BLEND, BlendMeasurement

WeightSource = Literal["your setting", "measured", "federation"]
TURN_ON = "set [rerank] weight, e.g. 0.5, in config.toml to use it anyway"


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
    """The weight in force: the person's ``[rerank]`` setting, else ``published`` (the federation's), else the
    measured one."""
    if not settings.enabled:
        return WeightInForce(0.0, "your setting", "switched off in config.toml ([rerank] enabled = false)")
    if settings.weight is not None:
        weight = settings.weight
        why = f"[rerank] weight = {weight:g} in config.toml" + ("" if weight > 0 else ": the rerank is off")
        return WeightInForce(weight, "your setting", why)
    source: WeightSource = "measured" if published is None else "federation"
    measurement = published or MEASURED_BLEND
    why = measurement.explanation()
    if measurement.weight == 0:
        why += f"; the rerank is off ({TURN_ON})"
    return WeightInForce(measurement.weight, source, why)
