#!/usr/bin/env python3
"""First-stage retrieval figures: catalog scoring latency, encoder throughput, suggest-only peak RSS.

Usage: .venv/bin/python scripts/bench_retrieve.py [--json] [--users N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from models.experiments.bench_retrieve import bench_retrieve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--users", type=int, default=500, help="users to time (default 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = bench_retrieve(Path(tmp), users=args.users)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
