#!/usr/bin/env python
"""The first stage's federated validation curve under the sync protocol's mechanics, in this process.

    .venv/bin/python scripts/protocol_curve.py [--mechanism default] [--clip 0.5] [--sigma 0.4] [--weight-cap 32]
        [--server-lr 0.1] [--rounds 40] [--local-epochs 1] [--users N] [--json]

Every ML-100K user trains as an agent each round, and the round is summed as the protocol sums it
(:func:`sync.simulation.federation.train_setting`): ``none`` (the in-process federation: raw deltas weighted by
n_u), ``clip`` (clipped to C, weights capped), ``clip+noise`` (plus each agent's noise share) or ``default``
(plus the round's rotation and quantization; secure aggregation's masks cancel exactly in the sum). ``default``
tracks ``agent eval --via-sync`` round by round at a fraction of its cost (no HTTP, no key agreement, no masks), so
recipe choices for the protocol (C, the weight cap, the server's learning rate, the rounds) can be compared on
validation before the real protocol run confirms one. Validation only: it prints each round's validation NDCG@10 and
HR@10 and the best round, never a test figure. ``--users N`` keeps the first N users (a quick look, or a test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.engine.catalogs import ml100k_with_vectors
from models.data.split import make_loo_split
from models.firststage.recipe import FederatedConfig
from sync.protocol.privacy import PrivacyParams
from sync.protocol.rules import SYNC_CLIP, SYNC_SIGMA, SYNC_WEIGHT_CAP
from sync.simulation.federation import MECHANISMS, AuditConfig, Federation, train_setting


def curve(args: argparse.Namespace) -> dict[str, Any]:
    """Train under the chosen mechanics and return the per-round validation curve and the best round."""
    dataset, vectors = ml100k_with_vectors()
    split = make_loo_split(dataset, seed=args.seed)
    if args.users is not None:
        split = split.subset(sorted(split.users)[: args.users])
    federated = replace(
        FederatedConfig(seed=args.seed), rounds=args.rounds, server_lr=args.server_lr, local_epochs=args.local_epochs
    )
    privacy = PrivacyParams(clip=args.clip, sigma=args.sigma, weight_cap=args.weight_cap)
    config = AuditConfig(privacy=privacy, cohort=len(split.users), federated=federated, rotate=True, seed=args.seed)
    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {line}", file=sys.stderr, flush=True)

    run = train_setting(Federation(split, vectors, MECHANISMS[args.mechanism], config, [], {}), progress=progress)
    ndcg = [round(h["valid_NDCG@10"], 4) for h in run.history]
    return {
        "mechanism": args.mechanism,
        "clip": args.clip,
        "sigma": args.sigma,
        "weight_cap": args.weight_cap,
        "server_lr": args.server_lr,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "users": len(split.users),
        "selected_round": run.selected_round,
        "best_valid_NDCG@10": max(ndcg),
        "valid_NDCG@10": ndcg,
        "valid_HR@10": [round(h["valid_HR@10"], 4) for h in run.history],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mechanism", choices=("none", "clip", "clip+noise", "default"), default="default")
    parser.add_argument("--clip", type=float, default=SYNC_CLIP, help="C, the L2 bound of an agent's delta")
    parser.add_argument("--sigma", type=float, default=SYNC_SIGMA, help="σ, the noise multiplier")
    parser.add_argument("--weight-cap", type=float, default=SYNC_WEIGHT_CAP, help="n_u at or above it weighs 1")
    parser.add_argument("--server-lr", type=float, default=FederatedConfig.server_lr, help="FedAdam's learning rate")
    parser.add_argument("--rounds", type=int, default=FederatedConfig.rounds)
    parser.add_argument(
        "--local-epochs", type=int, default=FederatedConfig.local_epochs, help="an agent's epochs a round"
    )
    parser.add_argument("--users", type=int, default=None, help="keep the first N users only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for name in ("clip", "weight_cap", "server_lr"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.sigma < 0 or args.rounds < 1 or args.local_epochs < 1 or (args.users is not None and args.users < 2):
        parser.error("--sigma must be ≥ 0, --rounds and --local-epochs ≥ 1, --users ≥ 2")
    result = curve(args)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['mechanism']} C={result['clip']} σ={result['sigma']} cap={result['weight_cap']} "
        f"lr={result['server_lr']}: best validation NDCG@10 {result['best_valid_NDCG@10']:.4f} "
        f"at round {result['selected_round']} of {result['rounds']}"
    )


if __name__ == "__main__":
    main()
