#!/usr/bin/env python
"""ε per user-year at weekly participation: ML-100K's rounds vs the same noise on the mean with more agents a round.

    .venv/bin/python scripts/epsilon_table.py [--json] [--rounds 52] [--delta 1e-6]

The reference is ML-100K's round: 943 agents, the sync defaults C and σ (:mod:`sync.protocol.rules`), so the
unmasked sum carries N(0, (σC)²) and the mean N(0, (σC / 943)²). A round of n agents with the same noise on the
mean carries σC · n / 943 on the sum: its noise multiplier is z = (σ · n / 943) / √2 (the L2 sensitivity of the
sum is √2 C, :mod:`sync.protocol.privacy`). One agent taking part in ``--rounds`` rounds a year composes that many
Gaussian mechanisms, no sampling amplification: ε is exact (:func:`sync.protocol.privacy.gaussian_epsilon`), the
RDP bound beside it for comparison. Prints a Markdown table, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.protocol.privacy import epsilon, gaussian_epsilon
from sync.protocol.rules import SYNC_CLIP, SYNC_SIGMA

REFERENCE_AGENTS = 943  # ML-100K's users, all in every round
AGENTS_PER_ROUND = (REFERENCE_AGENTS, 10_000, 20_000, 50_000, 100_000)


def table(rounds: int, delta: float) -> dict[str, Any]:
    """ε per round and per year for each round size, at the reference noise on the mean."""
    rows = []
    for n in AGENTS_PER_ROUND:
        z = SYNC_SIGMA * n / REFERENCE_AGENTS / math.sqrt(2.0)
        rows.append(
            {
                "agents_per_round": n,
                "sigma": round(SYNC_SIGMA * n / REFERENCE_AGENTS, 4),
                "noise_multiplier": round(z, 4),
                "epsilon_round": round(gaussian_epsilon([z], delta), 3),
                "epsilon_year": round(gaussian_epsilon([z] * rounds, delta), 3),
                "epsilon_year_rdp": round(epsilon([z] * rounds, delta), 3),
            }
        )
    return {
        "rounds_per_year": rounds,
        "delta": delta,
        "clip": SYNC_CLIP,
        "reference": {"agents_per_round": REFERENCE_AGENTS, "sigma": SYNC_SIGMA},
        "noise_std_on_mean": SYNC_SIGMA * SYNC_CLIP / REFERENCE_AGENTS,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=52, help="participations per user-year (52: weekly)")
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.rounds < 1 or not 0 < args.delta < 1:
        parser.error("--rounds must be at least 1 and --delta lie in (0, 1)")
    body = table(args.rounds, args.delta)
    if args.json:
        print(json.dumps(body, indent=2))
        return
    print(f"| agents per round | σ | z | ε per round | ε per year ({args.rounds} rounds) | RDP bound |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in body["rows"]:
        print(
            f"| {r['agents_per_round']:,} | {r['sigma']:g} | {r['noise_multiplier']:g} | {r['epsilon_round']:g} "
            f"| {r['epsilon_year']:g} | {r['epsilon_year_rdp']:g} |"
        )


if __name__ == "__main__":
    main()
