#!/usr/bin/env python3
"""The knowledge probe of the base foundation model: for the most-rated ML-100K titles, does it rank the true genre
and the true decade above the others? hit@1 and mean rank against the frequency prior and chance, with bootstrap
95 % intervals over titles.

Usage: .venv/bin/python scripts/probe_fm.py [--json] [--titles N] [--threads N] [--seed N]

The logic is models.experiments.probe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.data.movielens import load_ml100k
from models.errors import PersonaError
from models.experiments.probe import ProbeConfig, run_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = ProbeConfig()
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--titles", type=int, default=defaults.titles, help="how many of the most-rated titles")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the idle cores)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the bootstrap resamples")
    args = parser.parse_args()
    if args.titles < 2 or (args.threads is not None and args.threads < 1):
        parser.error("--titles takes a number ≥ 2 and --threads a positive number")
    try:
        figures = run_probe(load_ml100k(), ProbeConfig(titles=args.titles, threads=args.threads, seed=args.seed))
    except PersonaError as error:
        sys.exit(f"error: {error}")
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
