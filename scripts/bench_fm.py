#!/usr/bin/env python3
"""Foundation-model figures: rerank 20/50 candidates (idle and beside a busy process), LoRA training time,
peak RSS of the serving and training processes, adapter file sizes.

Usage: .venv/bin/python scripts/bench_fm.py [--json] [--users N]

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
    args = parser.parse_args()
    figures = bench_fm(users=args.users)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value:.3f}" if isinstance(value, float) else f"{key:28} {value}")


if __name__ == "__main__":
    main()
