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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from sync.protocol.masking import Quantization
from sync.protocol.secagg import graph_degree, share_threshold

SYNC_COHORT = 1000
SYNC_CLIP = 0.5
SYNC_SIGMA = 0.4
SYNC_WEIGHT_CAP = 32.0
SYNC_MAX_DROPOUT = 0.1
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
    threshold = share_threshold(graph_degree(n))
    return max(min_cohort, threshold, n - math.floor(n * max_dropout + 1e-9))


def quantization_bound(clip: float, sigma: float, survivors: int) -> float:
    """B: each element is at most C before noise, plus :data:`NOISE_HEADROOM` deviations of one noise share."""
    return clip * (1.0 + NOISE_HEADROOM * sigma / math.sqrt(survivors))


def round_quantization(n: int, *, clip: float, sigma: float, survivors: int) -> Quantization:
    """The quantization announced for a round of ``n`` agents unmasked with at least ``survivors``."""
    return Quantization.for_cohort(n, quantization_bound(clip, sigma, survivors))


def select_cohort(agents: Sequence[T], round_id: int, size: int, seed: int) -> list[T]:
    """The round's cohort: ``size`` of ``agents`` sampled without replacement, seeded by the round (all if fewer)."""
    if len(agents) <= size:
        return list(agents)
    rng = np.random.default_rng([seed, round_id, 1])
    keep = np.sort(rng.choice(len(agents), size=size, replace=False))
    return [agents[int(i)] for i in keep]
