#!/usr/bin/env python
"""Benchmark one or more secure-aggregation rounds at N agents over a real coordinator on 127.0.0.1.

    .venv/bin/python scripts/bench_sync.py --agents 200 --json

The vector is the size of the ML-100K shared first-stage vector (dim 32) unless --size says otherwise; deltas are
random with a realistic norm. Prints agents, rounds_completed, bytes_up/down_per_agent_round, coordinator_peak_rss_mb,
round_wall_s and agent_secagg_cpu_s_per_round (per agent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# As the agent CLI does (agent/__init__.py), so the figures are the evaluation's: single-threaded BLAS, here and in
# the coordinator subprocess. Multithreaded OpenBLAS on the busy 2-core machine took ~8 ms per 68k-element norm
# (20 µs on one thread), once per simulated agent.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.coordinator.local import coordinator_process  # noqa: E402
from sync.simulation.aggregator import SecureAggregator  # noqa: E402

ML100K_SHARED_SIZE = 384 * 32 + 1682 * 32 + 1682 + 50


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=ML100K_SHARED_SIZE)
    parser.add_argument("--dropout", type=float, default=0.0, help="fraction dropping after sharing keys")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        coordinator_args = [
            "--vector-size",
            str(args.size),
            "--target-cohort",
            str(args.agents),
            "--over-selection",
            "0",
            "--advertise-s",
            "600",
            "--masked-input-s",
            "600",
            "--share-keys-s",
            "600",
            "--unmask-s",
            "600",
            "--min-cohort",
            str(min(10, args.agents)),
        ]
        with coordinator_process(Path(tmp) / "c.sqlite3", args=coordinator_args) as (url, process):
            aggregator = SecureAggregator(url, dropout=args.dropout, timeout=1800)
            completed = 0
            for r in range(args.rounds):
                aggregator.begin_round(r, args.size)
                for a in range(args.agents):
                    aggregator.submit(
                        a,
                        (rng.normal(0, 1, args.size) * 0.5 / np.sqrt(args.size)).astype(np.float32),
                        float(rng.integers(20, 300)),
                    )
                completed += aggregator.finish() is not None
                print(f"round {r}: {aggregator.stats[-1]}", file=sys.stderr)
            rss = peak_rss_mb(process.pid)
    stats = aggregator.stats
    body = {
        "agents": args.agents,
        "rounds_completed": completed,
        "vector_size": args.size,
        "bytes_up_per_agent_round": round(float(np.mean([s.bytes_up_per_agent for s in stats]))),
        "bytes_down_per_agent_round": round(float(np.mean([s.bytes_down_per_agent for s in stats]))),
        "coordinator_peak_rss_mb": round(rss, 1),
        "round_wall_s": round(float(np.mean([s.wall_s for s in stats])), 2),
        "agent_secagg_cpu_s_per_round": round(float(np.mean([s.secagg_cpu_s_per_agent for s in stats])), 4),
        "dropout": args.dropout,
    }
    print(json.dumps(body, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
