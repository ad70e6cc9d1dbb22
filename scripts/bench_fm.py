#!/usr/bin/env python3
"""Foundation-model figures: rerank 20/50 candidates (idle and beside a busy process), LoRA training time,
peak RSS of the serving and training processes, adapter file sizes, and the listwise rerank of 20 (one prompt per
list: p50/p90 seconds with one and two llama.cpp threads, prompt tokens, torch seconds per training list).

Usage: .venv/bin/python scripts/bench_fm.py [--json] [--users N] [--listwise-only]

Training uses the recipe every agent runs and `agent eval --model persona` measures
(models.fm.adapter_training.AdapterConfig).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.experiments.bench_fm import bench_fm


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--users", type=int, default=10, help="users whose candidates are reranked (default 10)")
    parser.add_argument("--listwise-only", action="store_true", help="only the listwise figures (listwise_* keys)")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users takes a positive number")
    figures = bench_fm(users=args.users, listwise_only=args.listwise_only)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value:.3f}" if isinstance(value, float) else f"{key:28} {value}")


if __name__ == "__main__":
    main()
