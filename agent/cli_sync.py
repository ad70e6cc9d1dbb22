"""Sync pieces of the ``agent`` CLI: the ``--via-sync`` aggregator of ``agent eval``.

``agent eval --model federated --via-sync`` starts a coordinator on 127.0.0.1 (a subprocess, SQLite in a temporary
folder) seeded with the same initial shared vector as the simulation, and trains through the real protocol:
each round a cohort of ``SYNC_COHORT`` agents is sampled from those that trained; their deltas are clipped,
weighted, noised, quantized, masked and summed by the coordinator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from models.retrieval import SharedParams
from models.split import Split
from sync.aggregator import SecureAggregator
from sync.privacy import DEFAULT_DELTA

SYNC_COHORT = int(os.environ.get("PERSONA_SYNC_COHORT", "200"))
SYNC_CLIP = float(os.environ.get("PERSONA_SYNC_CLIP", "0.5"))
SYNC_SIGMA = float(os.environ.get("PERSONA_SYNC_SIGMA", "0.5"))
SYNC_WEIGHT_CAP = float(os.environ.get("PERSONA_SYNC_WEIGHT_CAP", "128"))


@contextlib.contextmanager
def sync_aggregator(enabled: bool, split: Split, seed: int, server_lr: float) -> Iterator[SecureAggregator | None]:
    """A SecureAggregator bound to a fresh local coordinator when ``enabled``, else None."""
    if not enabled:
        yield None
        return
    initial = SharedParams.init(split.n_items, seed=seed).to_vector()
    args = (
        "--clip",
        str(SYNC_CLIP),
        "--sigma",
        str(SYNC_SIGMA),
        "--weight-cap",
        str(SYNC_WEIGHT_CAP),
        "--server-lr",
        str(server_lr),
        "--min-cohort",
        str(min(10, SYNC_COHORT)),
    )
    with SecureAggregator.local(
        initial, SYNC_COHORT, coordinator_args=args, cohort_size=SYNC_COHORT, seed=seed
    ) as aggregator:
        yield aggregator


def sync_summary(aggregator: SecureAggregator) -> dict[str, Any]:
    """What the protocol did over the run: settings, ε, bytes and time per round."""
    stats = aggregator.stats
    n = max(1, len(stats))
    return {
        "cohort": SYNC_COHORT,
        "clip": SYNC_CLIP,
        "sigma": SYNC_SIGMA,
        "weight_cap": SYNC_WEIGHT_CAP,
        "noise_multiplier": aggregator.noise_multiplier,
        "rounds_done": sum(s.status == "done" for s in stats),
        "rounds_abandoned": sum(s.status != "done" for s in stats),
        "max_rounds_per_agent": max(aggregator.released_rounds.values(), default=0),
        "epsilon": aggregator.epsilon(),
        "delta": DEFAULT_DELTA,
        "bytes_up_per_agent_round": round(sum(s.bytes_up_per_agent for s in stats) / n),
        "bytes_down_per_agent_round": round(sum(s.bytes_down_per_agent for s in stats) / n),
        "protocol_wall_s_per_round": round(sum(s.wall_s for s in stats) / n, 2),
    }
