#!/usr/bin/env python
"""Federated simulation over the real protocol: a coordinator on 127.0.0.1 (subprocess), N ML-100K users as agents,
R rounds with a fraction dropping after sharing keys; validation quality per round from models.evaluation.protocols.

    .venv/bin/python scripts/simulate.py --agents 200 --rounds 10 --dropout 0.1

Prints one JSON line per round (stdout): validation metrics, the round's protocol figures and ε so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.paths import cache_dir
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.firststage.fit import train_federated
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import SharedParams
from models.text.encoder import ItemEncoder, embed_catalog
from sync.simulation.aggregator import SecureAggregator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help="ML-100K users taking part (the first N)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage-deadline", type=float, default=15.0, help="seconds to wait for late agents")
    args = parser.parse_args()
    dataset = load_ml100k()
    split = make_loo_split(dataset, seed=args.seed)
    users = sorted(split.users)[: args.agents]
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir() / "embeddings")
    config = replace(FederatedConfig(seed=args.seed), rounds=args.rounds)
    initial = SharedParams.init(split.n_items, seed=args.seed).to_vector()
    coordinator_args = (
        "--clip",
        str(args.clip),
        "--sigma",
        str(args.sigma),
        "--server-lr",
        str(config.server_lr),
        "--min-cohort",
        str(min(10, args.agents)),
        "--masked-input-s",
        str(args.stage_deadline),
    )
    with SecureAggregator.local(
        initial, args.agents, coordinator_args=coordinator_args, dropout=args.dropout, seed=args.seed
    ) as aggregator:

        def report(_kind: str, info: dict[str, object]) -> None:
            stats = aggregator.stats[-1]
            print(json.dumps(info | {"protocol": stats.__dict__, "epsilon": aggregator.epsilon()}), flush=True)

        model = train_federated(split, vectors, config=config, aggregator=aggregator, users=users, progress=report)
    assert model.shared is not None
    history = model.selected["history"]
    print(
        json.dumps(
            {
                "selected_round": model.selected["round"],
                "valid_NDCG@10": model.selected["valid_NDCG@10"],
                "rounds": len(history),
                "epsilon": aggregator.epsilon(),
            }
        )
    )


if __name__ == "__main__":
    main()
