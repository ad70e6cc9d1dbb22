"""The round rules and the sync defaults: the one owner that the coordinator, the client, the simulation and the
audit all import.

The sync defaults were measured on ML-100K (README, "Privacy"): every agent in every round (a cohort of up to
1,000 — all 943 ML-100K users), C 0.5, σ 0.4, weights capped at 32 examples, noise calibrated for at most 10 %
dropouts. The agent's ``PERSONA_SYNC_*`` overrides are read by :mod:`agent.settings`, not here.

Two dropout fractions, one rule. A round of ``n`` agents is unmasked only if at least :func:`min_survivors` of
them survive, and every agent divides its noise share by that number (``sync.protocol.privacy``), so the sum
carries σ·C of noise even at the worst tolerated dropout. :data:`COORDINATOR_MAX_DROPOUT` is what a coordinator
tolerates when its operator says nothing (``agent-coordinator serve --max-dropout``); :data:`SYNC_MAX_DROPOUT` is
what the federation's agents are calibrated for — the setting the sync defaults and the audit were measured
with, which ``agent eval --via-sync`` hands to the coordinator it starts. A larger tolerance abandons fewer
rounds but adds more noise when nobody drops (√(n / min_survivors) times σ·C).

Two shared parts, one round. The federated vector is ``[θ_g ; φ_g]`` (the first stage's shared vector, then the
language model's shared adapter: today's FFA ``B`` factors, :data:`SYNC_PHI_SIZE` values), each part clipped to its
own bound (:data:`SYNC_CLIP` for θ_g, :data:`SYNC_CLIP_PHI` for φ_g) and the noise calibrated to the joint bound
``√(C_θ² + C_φ²)`` (:func:`sync.protocol.privacy.joint_clip`). Every round rotates its contributions with a shared
random rotation before quantizing (:mod:`sync.protocol.masking`), which shrinks the quantization bound from the
worst case ``‖x‖`` to a few standard deviations of one rotated element; when the masked vector at the usual width
would not fit :data:`SYNC_INPUT_BYTES`, the round uses the widest bit width that fits — still never wrapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # the masking and secagg modules (cryptography) load only when a round's rules are computed,
    # so the agent's settings and the TUI's start, which read the defaults below, do not pay for them
    from sync.protocol.masking import Quantization

SYNC_COHORT = 1000
SYNC_CLIP = 0.5
SYNC_SIGMA = 0.4
SYNC_WEIGHT_CAP = 32.0
SYNC_MAX_DROPOUT = 0.1
SYNC_CLIP_PHI = 0.25
"""C_φ: the L2 bound of the shared LoRA's delta. One Adam step at the adapter trainer's local rate (1e-3) moves each
of the 61,440 ``B`` elements by about the rate, a norm of ≈ 1e-3·√61440 ≈ 0.25."""
SYNC_PHI_SIZE = 61_440
"""The shared LoRA's federated values: the FFA ``B`` factors of ``models.fm.lora.default_shared_spec`` on the
270M model (rank 8 on q_proj (1024 out) and v_proj (256 out) of 6 layers)."""
SYNC_PHI_SERVER_LR = 1.0
"""The coordinator's FedAvg step on the shared LoRA's mean delta (``models.fm.adapter_training.AdapterConfig``)."""
SYNC_UPLOAD_BYTES = 262_144
"""What one agent may upload per round, all requests together (issue 13: ≤ 256 KB for both shared parts)."""
SYNC_PROTOCOL_ALLOWANCE = 32_768
"""Upload bytes kept for everything but the masked vector (round keys, ~6·log2 n encrypted shares, unmask shares,
headers and signatures): measured ≈ 21 KB at 200 agents and ≈ 28 KB at 1,000."""
SYNC_INPUT_BYTES = SYNC_UPLOAD_BYTES - SYNC_PROTOCOL_ALLOWANCE
"""The most bytes a round's packed masked vector may take (:func:`round_quantization`)."""
MIN_BUDGET_LEVELS = 4
"""The fewest quantization levels per side a byte-budgeted round accepts; a larger cohort is refused (loudly)."""
SYNC_EPSILON_BUDGET = 8.0
"""ε an agent spends at most per rolling 365 days by default (``sync.client.budget``; README, "Privacy budget per
year")."""

MIN_COHORT = 10
"""A round is never unmasked with fewer survivors than this (the coordinator's default)."""
COORDINATOR_MAX_DROPOUT = 0.3
"""The fraction of a cohort a coordinator lets drop by default (see the module docstring)."""
NOISE_HEADROOM = 6.0
"""Noise standard deviations of headroom in the quantization bound: clamping an element is then negligible."""

T = TypeVar("T")


def fewest_to_start(min_cohort: int) -> int:
    """The fewest agents an advertise stage must gather, else the round is abandoned (two at least: masks pair)."""
    return max(min_cohort, 2)


def max_cohort(min_cohort: int, target_cohort: int, over_selection: float) -> int:
    """The most agents one round admits: the target plus the over-selection that absorbs dropouts."""
    return max(min_cohort, math.ceil(target_cohort * (1 + over_selection)))


def min_survivors(n: int, *, min_cohort: int, max_dropout: float) -> int:
    """The fewest survivors a round of ``n`` is unmasked with: the agents' noise divisor.

    At least ``min_cohort``, at least the Shamir threshold of the round graph, and ``n`` minus the tolerated drops.
    """
    from sync.protocol.secagg import graph_degree, share_threshold

    threshold = share_threshold(graph_degree(n))
    return max(min_cohort, threshold, n - math.floor(n * max_dropout + 1e-9))


def quantization_bound(clip: float, sigma: float, survivors: int, vector_size: int | None = None) -> float:
    """B: without rotation (``vector_size`` None), each element is at most C before noise, plus
    :data:`NOISE_HEADROOM` deviations of one noise share. With the round's rotation of a ``vector_size`` vector
    (weight element included), every rotated element is sub-Gaussian with variance proxy at most ``‖x‖² / m``
    (``‖x‖ ≤ √2·C``, ``m`` the largest power of two ≤ ``vector_size``) plus the noise share's variance:
    :data:`NOISE_HEADROOM` deviations of that, never more than the worst case ``√2·C`` plus the noise headroom.
    """
    share = sigma * clip / math.sqrt(survivors)
    if vector_size is None:
        return clip * (1.0 + NOISE_HEADROOM * sigma / math.sqrt(survivors))
    m = 1 << (max(vector_size, 1).bit_length() - 1)
    spread = NOISE_HEADROOM * math.sqrt(share**2 + 2.0 * clip**2 / m)
    return min(spread, math.sqrt(2.0) * clip + NOISE_HEADROOM * share)


def round_quantization(
    n: int,
    *,
    clip: float,
    sigma: float,
    survivors: int,
    vector_size: int | None = None,
    rotation: bytes = b"",
    max_bytes: int = SYNC_INPUT_BYTES,
) -> Quantization:
    """The quantization announced for a round of ``n`` agents unmasked with at least ``survivors``.

    Without ``rotation``: the element-wise bound and the narrowest of 16/24/32 bits with enough levels (what the
    in-process audit uses). With a rotation seed and the joint ``vector_size``: the rotated bound, and the same
    width unless the packed vector would exceed ``max_bytes`` — then the widest width that fits. ValueError when
    that width leaves fewer than :data:`MIN_BUDGET_LEVELS` levels for a cohort of ``n`` (the sum must not wrap).
    """
    from sync.protocol.masking import Quantization

    if not rotation or vector_size is None:
        return Quantization.for_cohort(n, quantization_bound(clip, sigma, survivors))
    bound = quantization_bound(clip, sigma, survivors, vector_size)
    usual = Quantization.for_cohort(n, bound, rotation=rotation)
    if usual.packed_bytes(vector_size) <= max_bytes:
        return usual
    bits = min(usual.bits, (8 * max_bytes) // vector_size)
    levels = ((1 << (bits - 1)) - 1) // n if bits >= 2 else 0
    if levels < MIN_BUDGET_LEVELS:
        raise ValueError(
            f"a cohort of {n} cannot be summed without wrapping in the {bits} bits per value that a vector of "
            f"{vector_size:,} values gets within {max_bytes:,} bytes (needs at least {MIN_BUDGET_LEVELS} levels per "
            f"side, i.e. at most {((1 << (bits - 1)) - 1) // MIN_BUDGET_LEVELS if bits >= 2 else 0} agents)"
        )
    return Quantization.for_cohort(n, bound, bits=bits, rotation=rotation)


def select_cohort(agents: Sequence[T], round_id: int, size: int, seed: int) -> list[T]:
    """The round's cohort: ``size`` of ``agents`` sampled without replacement, seeded by the round (all if fewer)."""
    if len(agents) <= size:
        return list(agents)
    rng = np.random.default_rng([seed, round_id, 1])
    keep = np.sort(rng.choice(len(agents), size=size, replace=False))
    return [agents[int(i)] for i in keep]


DAY_S = 86_400.0
"""Seconds in a day (the spacing rule counts days)."""
SYNC_MIN_DAYS_BETWEEN = 7.0
"""An agent takes part at most once per this many days by default (``[schedule] min_days_between``)."""


def power_allows(on_ac: bool | None, *, require_ac: bool) -> bool:
    """The device's power rule: on AC, power source unknown (counts as AC), or on battery when AC is not required.

    ``agent.engine.eligibility`` (the device) and ``sync.simulation.availability`` (the simulated devices) both ask
    this function."""
    return on_ac is None or on_ac or not require_ac


def spacing_allows(last_participation: float | None, now: float, *, min_days_between: float) -> bool:
    """The device's spacing rule: no released participation yet, or the last one (unix or simulated seconds) at
    least ``min_days_between`` days before ``now``."""
    return last_participation is None or (now - last_participation) / DAY_S >= min_days_between
