"""Privacy on the agent: clipping, weighting, Gaussian noise, and the (ε, δ) accountant.

What one agent contributes to a round is the joint vector ``x = (w · clip_C(Δ), w · C)``:

* ``clip_C(Δ)`` scales the whole shared delta down to L2 norm at most ``C``;
* ``w = min(n_u, weight_cap) / weight_cap`` ∈ (0, 1] is the agent's weight, its number of training examples
  capped and normalised, so weighting can only *shrink* a contribution: ``‖w · clip_C(Δ)‖ ≤ C`` and the weight
  element ``w · C ≤ C``. Hence ``‖x‖ ≤ √2 · C`` whatever n_u is — the L2 sensitivity of the cohort sum to adding or
  removing one agent is ``S = √2 · C``;
* each agent adds ``N(0, (σC)² / m)`` to every element, where ``m`` is the smallest number of survivors the
  coordinator will ever unmask (the round's threshold): the unmasked sum therefore carries noise of standard
  deviation at least ``σ · C`` on every element, dropouts included.

With several shared parts (θ_g and φ_g, :class:`Part`), ``clip_C(Δ)`` clips each part to its own bound ``C_i`` and
``C`` is the joint bound ``√(Σ C_i²)`` (:func:`joint_clip`): the clipped delta's norm is at most ``C`` again, so the
weight element, the sensitivity ``√2 · C``, the noise and the accountant are those above, with the joint ``C``.

A round that evaluates (``sync.protocol.evaluation``) adds a last part :data:`~sync.protocol.evaluation.EVAL` of
values in [0, 1] scaled to norm at most its own bound ``C_e``. It is clipped but **never weighted** (nor multiplied
by the personality factor): the coordinator needs plain sums. Its bound is in the joint ``C``, so
``‖x‖² ≤ Σ C_model² + C_e² + (w·C)² ≤ 2·C²`` and the sensitivity, noise and accountant above still hold.

The coordinator divides the first elements of the sum by the last (÷ C) to get the weighted mean delta. The
release per round is a Gaussian mechanism with noise multiplier ``z = σC / S = σ / √2``; the accountant composes
one such event per round the agent actually took part in (RDP, Google's ``dp-accounting``). No sampling
amplification is claimed: cohorts are not Poisson-sampled. :func:`gaussian_epsilon` gives the exact ε of the same
composition (what the agent's yearly budget uses, :mod:`sync.client.budget`).

The noise comes from numpy's PCG64 seeded with 128 bits from :mod:`secrets` (fresh per contribution). Floating-point
Gaussian samplers have known precision side channels; the quantization after noising coarsens them but this is not
a discrete-Gaussian implementation.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dp_accounting import GaussianDpEvent
from dp_accounting.gaussian_mechanism import get_epsilon_gaussian
from dp_accounting.rdp import RdpAccountant
from numpy.typing import NDArray

from sync.errors import ProtocolError
from sync.protocol.evaluation import EVAL
from sync.protocol.rules import SYNC_CLIP, SYNC_SIGMA, SYNC_WEIGHT_CAP

DEFAULT_DELTA = 1e-5
THETA = "theta_g"
"""The first stage's shared vector: always the first part of the federated vector."""
PHI = "phi_g"
"""The language model's shared adapter (today's FFA ``B`` factors): the second part, when the federation has it."""


@dataclass(frozen=True)
class Part:
    """One named slice of the federated vector and the L2 bound its delta is clipped to."""

    name: str
    size: int
    clip: float

    def as_json(self) -> dict[str, Any]:
        """The part as the round's parameters publish it."""
        return {"name": self.name, "size": self.size, "clip": self.clip}


def parts_from_json(items: Sequence[Any]) -> tuple[Part, ...]:
    """Parts from their JSON form (objects, or ``[name, size, clip]`` triples); ProtocolError on anything else."""
    out: list[Part] = []
    try:
        for item in items:
            if isinstance(item, Part):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(Part(str(item["name"]), int(item["size"]), float(item["clip"])))
            else:
                name, size, clip_bound = item
                out.append(Part(str(name), int(size), float(clip_bound)))
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"the round's layout is malformed: {error}") from error
    if any(p.size < 1 or not p.clip > 0 for p in out) or len({p.name for p in out}) != len(out):
        raise ProtocolError("the round's layout has an empty part, a non-positive bound or a repeated name")
    return tuple(out)


def joint_clip(parts: Iterable[Part]) -> float:
    """The joint L2 bound √(Σ C_i²) of a delta whose parts are clipped to their own bounds."""
    return math.sqrt(sum(p.clip**2 for p in parts))


def offsets(parts: Sequence[Part]) -> list[tuple[Part, int]]:
    """Each part with the index of its first value in the federated vector."""
    out, start = [], 0
    for part in parts:
        out.append((part, start))
        start += part.size
    return out


@dataclass(frozen=True)
class PrivacyParams:
    """A round's clipping and noise settings, published by the coordinator and checked by each agent.

    ``parts`` (the layout of the federated vector, with each part's bound) may be empty: the whole delta is then
    clipped to ``clip``. When given, ``clip`` is the joint bound and must be at least :func:`joint_clip` of the
    parts — a round promising noise for a smaller bound than its parts allow is refused (ProtocolError).
    """

    clip: float = SYNC_CLIP  # C: L2 bound of the shared delta (the joint bound of its parts)
    sigma: float = SYNC_SIGMA  # the unmasked sum carries N(0, (σC)²) on every element
    weight_cap: float = SYNC_WEIGHT_CAP  # n_u at or above this gets weight 1
    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        parts = parts_from_json(self.parts) if self.parts else ()
        object.__setattr__(self, "parts", parts)
        if any(p.name == EVAL for p in parts[:-1]) or (parts and all(p.name == EVAL for p in parts)):
            raise ProtocolError(f"the round's {EVAL!r} part must be the last part, after at least one model part")
        if parts and self.clip < joint_clip(parts) * (1.0 - 1e-9):
            raise ProtocolError(
                f"the round's joint bound C={self.clip} is below √(Σ C_i²)={joint_clip(parts):.6g} of its parts: "
                "its noise would not cover one agent's contribution"
            )

    @classmethod
    def for_parts(cls, parts: Sequence[Part], *, sigma: float, weight_cap: float) -> PrivacyParams:
        """The settings of a round over ``parts``: the joint bound as ``clip``."""
        return cls(clip=joint_clip(parts), sigma=sigma, weight_cap=weight_cap, parts=tuple(parts))

    def as_json(self) -> dict[str, Any]:
        """What the round's public facts publish (``PrivacyParams(**json)`` reads it back)."""
        body: dict[str, Any] = {"clip": self.clip, "sigma": self.sigma, "weight_cap": self.weight_cap}
        if self.parts:
            body["parts"] = [p.as_json() for p in self.parts]
        return body

    @property
    def model_parts(self) -> tuple[Part, ...]:
        """The parts the delta covers (every part but the eval part)."""
        return tuple(p for p in self.parts if p.name != EVAL)

    @property
    def eval_part(self) -> Part | None:
        """The eval part of a round that evaluates, else None."""
        return self.parts[-1] if self.parts and self.parts[-1].name == EVAL else None

    @property
    def noise_multiplier(self) -> float:
        """Noise std over L2 sensitivity of the sum (σC / √2C): what the accountant composes."""
        return self.sigma / math.sqrt(2.0)

    def noise_share(self, noise_divisor: int) -> float:
        """The standard deviation of one agent's noise share, σC / √m, for a round unmasked with at least m."""
        return self.sigma * self.clip / math.sqrt(noise_divisor)


@dataclass(frozen=True)
class Contribution:
    """One agent's prepared joint vector and what the ledger records about it."""

    vector: NDArray[np.float64]  # (size + 1,): w·clip(Δ) then w·C, noise included
    norm_before_clip: float
    weight: float
    part_norms: tuple[float, ...] = ()  # each part's norm before clipping (when the round has parts)


def clip(delta: NDArray[np.floating], bound: float) -> tuple[NDArray[np.float64], float]:
    """``delta`` scaled to L2 norm at most ``bound``, and its norm before."""
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    return (d * (bound / norm) if norm > bound else d.copy()), norm


def clip_parts(delta: NDArray[np.floating], parts: Sequence[Part]) -> tuple[NDArray[np.float64], tuple[float, ...]]:
    """``delta`` with each part scaled to L2 norm at most its own bound, and each part's norm before."""
    d = np.asarray(delta, dtype=np.float64)
    if d.shape != (sum(p.size for p in parts),):
        raise ValueError(f"the delta has shape {d.shape}; the round's parts hold {sum(p.size for p in parts)} values")
    out = np.empty_like(d)
    norms = []
    for part, start in offsets(parts):
        out[start : start + part.size], norm = clip(d[start : start + part.size], part.clip)
        norms.append(norm)
    return out, tuple(norms)


def prepare_contribution(
    delta: NDArray[np.floating],
    n_examples: float,
    params: PrivacyParams,
    *,
    noise_divisor: int,
    factor: float = 1.0,
    rng: np.random.Generator | None = None,
    evaluation: NDArray[np.floating] | None = None,
) -> Contribution:
    """Clip (each part to its own bound when ``params`` has parts), weight, append the weight element and add this
    agent's share of the noise (see the module docstring).

    ``delta`` covers the model parts; a round with an eval part gets ``evaluation`` there (clipped to the part's
    bound, not weighted; zeros when None — an agent that evaluated nothing counts 0). ValueError for an
    ``evaluation`` the round has no part for, or of the wrong size.

    ``factor`` ∈ [0, 1] multiplies the weight (personality-aware aggregation, :func:`personality_factor`); it can
    only shrink the contribution, so the sensitivity stays √2·C. ``rng`` replaces the fresh secure seed (for
    reproducible simulations only).
    """
    if noise_divisor < 1:
        raise ValueError("noise_divisor (the round's unmasking threshold) must be at least 1")
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"the weight factor must lie in [0, 1], got {factor}")
    part_norms: tuple[float, ...] = ()
    if params.parts:
        clipped, part_norms = clip_parts(delta, params.model_parts)
        norm = math.sqrt(sum(n**2 for n in part_norms))
    else:
        clipped, norm = clip(delta, params.clip)
    weight = factor * min(max(float(n_examples), 0.0), params.weight_cap) / params.weight_cap
    pieces = [weight * clipped]
    part = params.eval_part
    if part is not None:
        values = np.zeros(part.size) if evaluation is None else np.asarray(evaluation, dtype=np.float64)
        if values.shape != (part.size,):
            raise ValueError(f"the evaluation has shape {values.shape}; the round's eval part holds {part.size} values")
        pieces.append(clip(values, part.clip)[0])  # plain sums: never weighted
    elif evaluation is not None:
        raise ValueError("this round evaluates nothing: it has no eval part")
    joint = np.concatenate([*pieces, [weight * params.clip]])
    if params.sigma > 0:
        noise = rng or np.random.default_rng(secrets.randbits(128))
        joint += noise.normal(0.0, params.noise_share(noise_divisor), size=joint.shape)
    return Contribution(vector=joint, norm_before_clip=norm, weight=weight, part_norms=part_norms)


def personality_factor(leakage: float, quality: float) -> float:
    """An agent's weight factor from its own local scores (personality-aware aggregation, README § Privacy).

    ``leakage`` ∈ [0, 1] is the published probe's confidence on the agent's own delta and ``quality`` ∈ [0, 1]
    its own check that the delta helps (both computed on the device); the factor ``(1 − leakage) · quality``
    lies in [0, 1] and rides inside the masked sum as part of the weight, so the coordinator only ever learns
    the cohort's total.
    """
    return float(np.clip(1.0 - leakage, 0.0, 1.0) * np.clip(quality, 0.0, 1.0))


def weighted_mean(joint_sum: NDArray[np.floating], clip_bound: float) -> NDArray[np.float32] | None:
    """The weighted mean delta from the unmasked joint sum, or None when the (noised) total weight is not positive."""
    total_weight = float(joint_sum[-1]) / clip_bound
    if total_weight <= 1e-9:
        return None
    return (np.asarray(joint_sum[:-1], dtype=np.float64) / total_weight).astype(np.float32)


def epsilon(noise_multipliers: Iterable[float], delta: float = DEFAULT_DELTA) -> float:
    """ε after composing one Gaussian mechanism per round taken part in (RDP accountant); 0 for no rounds."""
    accountant = RdpAccountant()
    count = 0
    for z in noise_multipliers:
        if z <= 0:
            return math.inf
        accountant.compose(GaussianDpEvent(z))
        count += 1
    return float(accountant.get_epsilon(delta)) if count else 0.0


def gaussian_epsilon(noise_multipliers: Iterable[float], delta: float = DEFAULT_DELTA) -> float:
    """The exact ε of composing one Gaussian mechanism per round (noise multipliers ``z_i``); 0 for no rounds.

    Gaussian mechanisms compose exactly into one Gaussian mechanism with ``z = (Σ z_i⁻²)^-½`` (their privacy loss
    distributions are Gaussian; Dong, Roth & Su 2019), whose ε at ``delta`` is analytic (Balle & Wang 2018,
    ``dp_accounting.gaussian_mechanism``): tight where the RDP bound of :func:`epsilon` is not, and it agrees with
    dp-accounting's PLD accountant to three decimals at a fraction of its cost.
    """
    inverse_square = 0.0
    for z in noise_multipliers:
        if z <= 0:
            return math.inf
        inverse_square += z**-2
    return float(get_epsilon_gaussian(inverse_square**-0.5, delta)) if inverse_square else 0.0
