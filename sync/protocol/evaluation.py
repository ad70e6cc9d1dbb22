"""Federated evaluation inside secure aggregation: the round's plan, the eval part an agent adds to its masked
vector, and what the coordinator reads back from the unmasked sum.

A round that evaluates publishes an :class:`EvalPlan` (its candidate rerank blend weights, the metric cut-off and the
number of sampled negatives). Each agent holds out its latest liked item, scores it against ``negatives`` unseen
catalog items with its current models (:mod:`sync.client.evaluate`) and adds to its masked vector an extra part
:data:`EVAL` of :meth:`EvalPlan.size` values, every one in [0, 1] before scaling:

* ``[0:3]`` — the first stage alone (blend weight 0) over every agent that had an item to hold out: HR@k, NDCG@k
  and a count of 1 (0, 0, 0 for an agent with nothing to hold out);
* ``[3:3+2K]`` — for each of the plan's K blend weights, HR@k and NDCG@k, only from agents that scored with the
  language model; ``[3+2K]`` — their count (1 when the agent scored every setting, else 0 and the whole block 0).
  The block is *paired*: every agent in it scored every setting, so the comparison between weights is not skewed by
  which agents have the language model (those with fewer than five liked items have no private adapter).

The part is multiplied by :meth:`EvalPlan.scale` = ``C_e / √size`` so its L2 norm is at most its own bound ``C_e``;
it is never weighted like the model delta (``sync.protocol.privacy.prepare_contribution``), so the coordinator
decodes plain sums Σ hit, Σ NDCG and Σ count, and the noise — calibrated to the joint bound that includes ``C_e`` —
covers it like every other element. Only these bounded values leave: never the held-out item, its rank or the
candidates (the egress test searches the bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sync.errors import ProtocolError

EVAL = "eval"
"""The name of the eval part in the round's layout (always after the model parts, before the weight element)."""
MAX_SETTINGS = 16
"""The most candidate blend weights one round may evaluate."""
EVAL_CLIP = 0.1
"""C_e: the eval part's L2 bound. It joins the joint bound: with C_θ 0.5 and C_φ 0.25, C goes from 0.559 to 0.568
(+1.6 % noise on the model parts); the sum of n agents' eval values then carries noise of σ·C·√size / C_e ≈ 7.9
agent-counts per value at σ 0.4 and 4 weights (size 12; a mean over 943 agents ± 0.008)."""
EVAL_MIN_AGENTS = 20
"""The fewest agents in the paired block the coordinator picks a new blend weight from; below it, it keeps the
previous one."""


MAX_RERANK_K = 20
"""The most candidates an agent's language model rescores: its listwise prompt letters them A to T."""


@dataclass(frozen=True)
class EvalPlan:
    """What a round asks its agents to evaluate, published in the round's public facts."""

    weights: tuple[float, ...]
    """The candidate rerank blend weights; 0 is the first stage alone."""
    clip: float
    """C_e: the L2 bound of one agent's eval part (it joins the joint bound the noise is calibrated to)."""
    k: int = 10
    """The metric cut-off: HR@k and NDCG@k."""
    negatives: int = 99
    """Unseen catalog items sampled (on the device, seeded) beside the held-out one."""
    rerank_k: int = 20
    """How many of the first stage's best candidates the language model rescores (the product's ``[rerank] k``; at
    most :data:`MAX_RERANK_K`)."""
    min_agents: int = 20
    """The fewest agents (noised count of the paired block) the coordinator picks a new blend weight from."""

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in self.weights)
        object.__setattr__(self, "weights", weights)
        if not 1 <= len(weights) <= MAX_SETTINGS:
            raise ProtocolError(f"an evaluation plan has 1 to {MAX_SETTINGS} blend weights, not {len(weights)}")
        if any(not math.isfinite(w) or w < 0 for w in weights) or len(set(weights)) != len(weights):
            raise ProtocolError(f"the blend weights must be distinct, finite and non-negative: {weights}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ProtocolError(f"the eval part's bound must be positive, not {self.clip}")
        if not (
            1 <= self.k <= self.negatives + 1
            and min(self.rerank_k, self.negatives, self.min_agents) >= 1
            and self.rerank_k <= MAX_RERANK_K
        ):
            raise ProtocolError("the evaluation plan's k, negatives, rerank_k or min_agents are out of range")

    @property
    def size(self) -> int:
        """Values in the eval part: 3 for the first stage, 2 per blend weight, 1 for the paired count."""
        return 2 * len(self.weights) + 4

    @property
    def scale(self) -> float:
        """What each value in [0, 1] is multiplied by, so the part's norm is at most :attr:`clip`."""
        return self.clip / math.sqrt(self.size)

    def as_json(self) -> dict[str, Any]:
        """The plan as the round's public facts publish it."""
        return {
            "weights": list(self.weights),
            "clip": self.clip,
            "k": self.k,
            "negatives": self.negatives,
            "rerank_k": self.rerank_k,
            "min_agents": self.min_agents,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EvalPlan:
        """A plan from the round's public facts; ProtocolError when malformed."""
        try:
            return cls(
                weights=tuple(float(w) for w in doc["weights"]),
                clip=float(doc["clip"]),
                k=int(doc.get("k", 10)),
                negatives=int(doc.get("negatives", 99)),
                rerank_k=int(doc.get("rerank_k", 20)),
                min_agents=int(doc.get("min_agents", 20)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"the round's evaluation plan is malformed: {error}") from error


def parse_weights(text: str) -> tuple[float, ...]:
    """Blend weights from a comma-separated setting (``"0,0.25,0.5,1"``); ``()`` for an empty one (no evaluation).
    ValueError names the bad entry."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError as error:
            raise ValueError(f"{item!r} is not a blend weight (a number ≥ 0)") from error
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{item!r} is not a blend weight (a number ≥ 0)")
        out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class LocalEvaluation:
    """What one agent measured on its held-out item (stays on the device; only :func:`encode` of it leaves)."""

    first_stage: tuple[float, float] | None
    """(HR@k, NDCG@k) of the first stage alone; None: no item to hold out."""
    blend: tuple[tuple[float, float], ...] | None = None
    """(HR@k, NDCG@k) per blend weight of the plan, in order; None: the language model did not score."""

    @property
    def scored_blend(self) -> bool:
        """True when the paired block is filled."""
        return self.blend is not None


NOTHING = LocalEvaluation(None, None)
"""An agent with nothing to hold out: its eval part is all zeros (count 0)."""


def encode(evaluation: LocalEvaluation, plan: EvalPlan) -> NDArray[np.float64]:
    """The eval part of one agent's vector (see the module docstring): L2 norm at most ``plan.clip``."""
    values = np.zeros(plan.size, dtype=np.float64)
    if evaluation.first_stage is not None:
        values[0:3] = (*evaluation.first_stage, 1.0)
        if evaluation.blend is not None:
            if len(evaluation.blend) != len(plan.weights):
                raise ValueError(f"{len(evaluation.blend)} blend results for {len(plan.weights)} weights")
            values[3 : 3 + 2 * len(plan.weights)] = np.asarray(evaluation.blend, dtype=np.float64).ravel()
            values[-1] = 1.0
    return np.clip(values, 0.0, 1.0) * plan.scale


@dataclass(frozen=True)
class SettingQuality:
    """One setting's population means."""

    weight: float
    hit: float | None
    ndcg: float | None

    def as_json(self) -> dict[str, Any]:
        """For the quality history."""
        return {"weight": self.weight, "hit_at_k": self.hit, "ndcg_at_k": self.ndcg}


@dataclass(frozen=True)
class PopulationEval:
    """The population totals decoded from one round's unmasked eval part (noise included) and their means."""

    agents: float
    """Σ count of the first stage (noised): agents that held out an item."""
    hit: float | None
    ndcg: float | None
    blend_agents: float
    """Σ count of the paired block (noised): agents that scored every blend weight."""
    settings: tuple[SettingQuality, ...]

    def best(self, min_agents: int) -> SettingQuality | None:
        """The blend weight with the highest mean NDCG@k (ties: the smaller weight), or None below ``min_agents``."""
        if round(self.blend_agents) < min_agents:  # the noised count, to the nearest agent
            return None
        scored = [s for s in self.settings if s.ndcg is not None]
        if not scored:
            return None
        return max(scored, key=lambda s: (s.ndcg, -s.weight))

    def as_json(self) -> dict[str, Any]:
        """Counts rounded to whole agents, means to four decimals."""
        return {
            "agents": round(self.agents),
            "hit_at_k": self.hit,
            "ndcg_at_k": self.ndcg,
            "blend_agents": round(self.blend_agents),
            "settings": [s.as_json() for s in self.settings],
        }


def _mean(total: float, count: float) -> float | None:
    return round(min(max(total / count, 0.0), 1.0), 4) if count >= 1.0 else None


def decode(part_sum: NDArray[np.floating], plan: EvalPlan) -> PopulationEval:
    """Means from the eval part of an unmasked sum: ``part_sum / scale`` are the noised Σ hit, Σ NDCG and Σ count.
    A mean is None when its noised count is below one agent; means are clamped to [0, 1]."""
    totals = np.asarray(part_sum, dtype=np.float64) / plan.scale
    if totals.shape != (plan.size,):
        raise ValueError(f"the eval part has {totals.size} values; the plan needs {plan.size}")
    agents, paired = float(totals[2]), float(totals[-1])
    settings = tuple(
        SettingQuality(w, _mean(float(totals[3 + 2 * i]), paired), _mean(float(totals[4 + 2 * i]), paired))
        for i, w in enumerate(plan.weights)
    )
    return PopulationEval(
        agents=max(agents, 0.0),
        hit=_mean(float(totals[0]), agents),
        ndcg=_mean(float(totals[1]), agents),
        blend_agents=max(paired, 0.0),
        settings=settings,
    )


def local_metrics(rank: int, k: int) -> tuple[float, float]:
    """(HR@k, NDCG@k) of a single held-out item at 0-based ``rank``."""
    return (1.0, 1.0 / math.log2(rank + 2)) if rank < k else (0.0, 0.0)


def per_setting(ranks: Sequence[int], k: int) -> tuple[tuple[float, float], ...]:
    """(HR@k, NDCG@k) for each setting's rank of the held-out item."""
    return tuple(local_metrics(r, k) for r in ranks)
