#!/usr/bin/env python3
"""Reason fidelity: does removing the liked item a reason cites lower that suggestion's score more than a random one?

Trains the federated first stage on ML-100K (in-process, --rounds), then cites the top 10 of --users seeded users.
Usage: .venv/bin/python scripts/bench_reasons.py [--json] [--users N] [--rounds R] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from agent.engine.catalogs import embedding_cache_dir
from models.experiments.bench_reasons import bench_reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--users", type=int, default=100, help="seeded ML-100K users to cite for (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds to train first (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample and the random items")
    args = parser.parse_args()
    if args.users < 1 or args.rounds < 1:
        parser.error("--users and --rounds must be at least 1")
    figures = bench_reasons(embedding_cache_dir(), users=args.users, rounds=args.rounds, seed=args.seed)
    if args.json:
        print(json.dumps(figures))
        return
    for key in ("users", "rounds", "selected_round", "default_margin"):
        print(f"{key:48} {figures[key]}")
    for rule, summary in figures["rules"].items():
        print(rule)
        for key, value in summary.items():
            print(f"  {key:46} {value}")


if __name__ == "__main__":
    main()
