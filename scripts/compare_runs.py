#!/usr/bin/env python
"""Two runs of ``agent eval`` on the same split, compared user by user with paired bootstrap intervals.

    .venv/bin/agent eval --model persona --via-sync --ranks A.json ...
    .venv/bin/agent eval --model persona --ranks B.json ...
    .venv/bin/python scripts/compare_runs.py A.json B.json [--json]

For every row both files carry (``first_stage`` on every user; ``persona`` or ``persona-shared`` on the users the
run rescored), over the users both runs ranked: A's and B's NDCG@10 and HR@10, A − B with its paired bootstrap 95 %
interval, and A / B − 1 with its interval (the same resample of users for both runs; :func:`compare_runs`). This is
how issue 13's "within 3 % of the in-process run" is read: A the run through the protocol, B the run in process.
The two files must come from the same dataset, protocol and split (their ``split_sha256``), or it says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.evaluation.stats import compare_runs

SAME = ("dataset", "protocol", "split_sha256")


def load(path: Path) -> dict[str, Any]:
    """One ``agent eval --ranks`` file; ValueError saying what is wrong with it."""
    try:
        record = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror}).") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("ranks"), dict):
        raise ValueError(f"{path}: not an `agent eval --ranks` file (no 'ranks' object).")
    return record


def compare(a: dict[str, Any], b: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Each row both runs carry, A against B (see the module docstring); ValueError for runs on different splits."""
    for key in SAME:
        if a.get(key) != b.get(key):
            raise ValueError(
                f"the runs differ in {key} ({a.get(key)!r} against {b.get(key)!r}): compare runs of one split."
            )
    rows = [row for row in a["ranks"] if row in b["ranks"]]
    if not rows:
        raise ValueError(f"no row in common: A has {sorted(a['ranks'])}, B has {sorted(b['ranks'])}.")
    out: dict[str, Any] = {key: a.get(key) for key in SAME}
    out["a"] = {"model": a.get("model"), "via_sync": a.get("via_sync")}
    out["b"] = {"model": b.get("model"), "via_sync": b.get("via_sync")}
    out["rows"] = {}
    for row in rows:
        ranks_a = {int(u): int(r) for u, r in a["ranks"][row].items()}
        ranks_b = {int(u): int(r) for u, r in b["ranks"][row].items()}
        out["rows"][row] = compare_runs(ranks_a, ranks_b, seed=seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the run compared (e.g. through the protocol)")
    parser.add_argument("b", type=Path, help="the reference run (e.g. in process)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    try:
        result = compare(load(args.a), load(args.b), seed=args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for row, r in result["rows"].items():
        (a, b), (low, high) = r["ndcg10"], r["relative_ndcg10_ci95"]
        print(
            f"{row}: {r['users']} users, NDCG@10 {a:.4f} vs {b:.4f}, "
            f"{100 * r['relative_ndcg10']:+.1f} % [{100 * low:+.1f}, {100 * high:+.1f}]; "
            f"HR@10 {r['hr10'][0]:.4f} vs {r['hr10'][1]:.4f}"
        )


if __name__ == "__main__":
    main()
