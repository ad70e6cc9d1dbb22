#!/usr/bin/env python
"""The personality-leakage audit on ML-100K: attacker AUC (gender, age group) on four views of every user under five
protection settings, next to LOO-99 quality and ε (the logic is ``sync.simulation.audit``; this is its entry point).

    .venv/bin/python scripts/audit.py --json                  # all settings, the shipped sync defaults
    .venv/bin/python scripts/audit.py --rounds 10 --settings none,default

Every ML-100K user is an agent; cohorts, C, σ and the weight cap are the agent's sync settings
(``agent.settings.sync_settings``: the shipped defaults, overridable with their PERSONA_SYNC_* variables). Progress
goes to stderr; ``--json`` prints ``{"rows": [...], "quality": {...}, "epsilon": {...}}`` on stdout, else a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.engine.catalogs import ml100k_with_vectors
from agent.settings import sync_settings
from models.data.split import make_loo_split
from models.firststage.recipe import FederatedConfig
from models.privacy.leakage import LeakageObjective
from sync.protocol.privacy import PrivacyParams
from sync.simulation.audit import SETTINGS, AuditConfig
from sync.simulation.audit import run_audit as audit

# Every agent trains in every round at the shipped defaults; 40 rounds (the federated default; validation keeps the
# best) take all five settings about 36 minutes on 2 busy cores. At 25 the protected runs are still improving.
DEFAULT_ROUNDS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="federated rounds per setting (40: about 36 min on 2 cores)"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the settings")
    parser.add_argument("--objective-weight", type=float, default=None, help="λ (default: PERSONA_LEAKAGE_WEIGHT)")
    parser.add_argument("--folds", type=int, default=5, help="attacker cross-validation folds")
    args = parser.parse_args()
    started = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {text}", file=sys.stderr, flush=True)

    dataset, vectors = ml100k_with_vectors()
    sync = sync_settings()
    split = make_loo_split(dataset, seed=0)
    config = AuditConfig(
        privacy=PrivacyParams(clip=sync.clip, sigma=sync.sigma, weight_cap=sync.weight_cap),
        cohort=sync.cohort,
        max_dropout=sync.max_dropout,
        federated=replace(FederatedConfig(), rounds=args.rounds),
        objective=LeakageObjective.from_env(weight=args.objective_weight),
    )
    config = replace(config, attacker=replace(config.attacker, folds=args.folds))
    progress(
        f"{len(split.users)} agents, cohorts of {config.cohort}, C={config.privacy.clip} σ={config.privacy.sigma} "
        f"cap={config.privacy.weight_cap}, max dropout {config.max_dropout}, {args.rounds} rounds, "
        f"λ={config.objective.weight}"
    )
    body = audit(dataset, split, vectors, config, settings=args.settings.split(","), progress=progress)
    progress(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return
    print(f"{'setting':18} {'target':6} view  AUC    95% CI          ")
    for row in body["rows"]:
        lo, hi = row["auc_ci"]
        print(f"{row['setting']:18} {row['target']:6} {row['view']:4}  {row['auc']:.3f}  [{lo:.3f}, {hi:.3f}]")
    for name, quality in body["quality"].items():
        eps = body["epsilon"][name]
        spent = "∞ (no noise)" if eps is None else f"{eps:g}"
        print(f"{name:18} HR@10 {quality['HR@10']:.3f} NDCG@10 {quality['NDCG@10']:.3f} ε {spent}")


if __name__ == "__main__":
    main()
