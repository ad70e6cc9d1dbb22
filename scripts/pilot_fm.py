#!/usr/bin/env python3
"""The foundation model's go/no-go pilot: its AUC within the first stage's top 20, a likelihood-ratio test that it
adds to the first stage, the blend's and feature_rerank's ΔNDCG@10 with paired bootstrap intervals, and the verdict.

Usage: .venv/bin/python scripts/pilot_fm.py [--json] [--cohort N] [--rounds N] [--valid-users N] [--test-users N]
       .venv/bin/python scripts/pilot_fm.py --listwise [--json] [--cohort N] [--rounds N] [--train-users N]
           [--valid-users N] [--epochs N] [--lists-per-user N] [--shuffle] [--lam X ...]
       .venv/bin/python scripts/pilot_fm.py --listwise --coldstart [--json] [--rounds N] [--train-users N]
           [--cold-users N] [--epochs N] [--shuffle]

--listwise trains a shared listwise adapter centrally on the cohort's training lists and reports, on validation
lists only, the model's within-list AUC and the blend's ΔNDCG@10 (weight picked on one half of the users, reported on
the other) for the base model and the adapter. --shuffle letters the candidates in a seeded random order (training and
scoring), so a letter no longer carries the first stage's rank; each --lam trains one adapter with that distillation
weight on the same cached lists.

--listwise --coldstart measures the listwise model on the cold-start protocol instead: the first stage on the warm
80 % of users (--rounds, default 40), the cold users' lists at k = 0, 1, 3, 5 items rescored by the base model and by
a shared listwise adapter trained on --train-users warm users' k-item lists (0: base model only); the
blend weight is picked per k on validation lists, and the test figures carry paired bootstrap intervals
(models.experiments.listwise_coldstart).

The logic is models.experiments.pilot; every sample is seeded (--seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agent.engine.catalogs import ml100k_with_vectors
from models.data.split import make_loo_split
from models.errors import PersonaError
from models.experiments.listwise_coldstart import ListwiseColdstartConfig, run_listwise_coldstart
from models.experiments.pilot import ListwisePilotConfig, PilotConfig, run_listwise_pilot, run_pilot


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = PilotConfig()
    cold = ListwiseColdstartConfig()
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cohort", type=int, default=defaults.cohort, help="users the first stage trains on")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"federated rounds of the first stage (default {defaults.rounds}; --coldstart: {cold.rounds})",
    )
    parser.add_argument(
        "--valid-users",
        type=int,
        default=None,
        help=f"validation lists the FM scores (default {defaults.valid_users}; --listwise: 100)",
    )
    parser.add_argument("--test-users", type=int, default=defaults.test_users, help="test lists the FM scores")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the samples and of training")
    listwise = ListwisePilotConfig()
    parser.add_argument("--listwise", action="store_true", help="the listwise pilot (one prompt per list of 20)")
    parser.add_argument(
        "--train-users",
        type=int,
        default=None,
        help=(
            f"--listwise: users with training lists (default {listwise.train_users}; "
            f"--coldstart: {cold.train_users}, 0 for the base model only)"
        ),
    )
    parser.add_argument(
        "--lists-per-user",
        type=int,
        default=listwise.lists_per_user,
        help="--listwise: training lists per user (its last training items, each after its prefix)",
    )
    parser.add_argument("--epochs", type=int, default=listwise.epochs, help="--listwise: epochs over the lists")
    parser.add_argument(
        "--shuffle",
        action="store_true",
        help="--listwise: letter the candidates in a seeded random order, not first-stage order",
    )
    parser.add_argument(
        "--lam",
        type=float,
        action="append",
        default=None,
        help=f"--listwise: distillation weight; repeat to train one adapter per weight (default {listwise.lams[0]})",
    )
    parser.add_argument(
        "--coldstart", action="store_true", help="with --listwise: the cold-start protocol (k = 0, 1, 3, 5 items)"
    )
    parser.add_argument(
        "--cold-users", type=int, default=None, help="--coldstart: a seeded sample of the cold users (default all)"
    )
    args = parser.parse_args()
    if args.coldstart and not args.listwise:
        parser.error("--coldstart measures the listwise model: add --listwise")
    if args.shuffle and not args.listwise:
        parser.error("--shuffle letters the listwise prompt's candidates at random: use it with --listwise")
    if args.lam is not None and (args.coldstart or not args.listwise):
        parser.error("--lam belongs to the listwise pilot: use it with --listwise, without --coldstart")
    if args.lam is not None and any(not 0 <= lam <= 100 for lam in args.lam):
        parser.error("--lam takes a distillation weight between 0 and 100")
    if args.rounds is None:
        args.rounds = cold.rounds if args.coldstart else defaults.rounds
    if args.train_users is None:
        args.train_users = cold.train_users if args.coldstart else listwise.train_users
    if args.valid_users is None:
        args.valid_users = listwise.valid_users if args.listwise else defaults.valid_users
    if min(args.cohort, args.rounds, args.valid_users, args.test_users, args.epochs, args.lists_per_user) < 1:
        parser.error(
            "--cohort, --rounds, --valid-users, --test-users, --epochs and --lists-per-user take positive numbers"
        )
    if args.train_users < (0 if args.coldstart else 1) or (args.cold_users is not None and args.cold_users < 1):
        parser.error("--train-users takes a positive number (0 or more with --coldstart), --cold-users a positive one")
    coldstart_config = ListwiseColdstartConfig(
        rounds=args.rounds,
        cold_users=args.cold_users,
        train_users=args.train_users,
        epochs=args.epochs,
        shuffle=args.shuffle,
        seed=args.seed,
    )
    listwise_config = ListwisePilotConfig(
        cohort=args.cohort,
        rounds=args.rounds,
        train_users=args.train_users,
        lists_per_user=args.lists_per_user,
        valid_users=args.valid_users,
        epochs=args.epochs,
        lams=tuple(args.lam) if args.lam is not None else listwise.lams,
        shuffle=args.shuffle,
        seed=args.seed,
    )
    config = PilotConfig(
        cohort=args.cohort,
        rounds=args.rounds,
        valid_users=args.valid_users,
        test_users=args.test_users,
        seed=args.seed,
    )
    try:
        dataset, vectors = ml100k_with_vectors()
        split = make_loo_split(dataset, seed=args.seed)

        def progress(kind: str, info: dict[str, object]) -> None:
            print(kind, json.dumps(info), file=sys.stderr, flush=True)

        if args.coldstart:
            figures = run_listwise_coldstart(split, vectors, dataset.catalog, coldstart_config, progress)
        elif args.listwise:
            figures = run_listwise_pilot(split, vectors, dataset.catalog, listwise_config, progress)
        else:
            figures = run_pilot(split, vectors, dataset.catalog, config, progress)
    except PersonaError as error:
        sys.exit(f"error: {error}")
    if args.json:
        print(json.dumps(figures))
    else:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
