#!/usr/bin/env python
"""What each way of fitting both shared parts (θ_g and φ_g) into the upload budget costs, on real deltas.

    .venv/bin/python scripts/bench_wire.py --agents 943 --json
    .venv/bin/python scripts/bench_wire.py --agents 300 --quality-rounds 8 --json

Every ML-100K user taken (the first ``--agents``) trains locally from the bootstrap shared vector (the first
stage's real local training); its θ_g delta, a zero φ_g delta (simulated agents train no φ_g) and the round's noise
share make its contribution, exactly as ``sync.protocol.privacy.prepare_contribution`` builds it. For each option
the contributions are quantized as the protocol does (secure aggregation's masks cancel exactly in the sum, which
the sync tests prove, so they are left out here) and the decoded weighted mean is compared with the exact float
mean of the same noised contributions: ``quant_rel_error`` is ‖decoded − exact‖ / ‖exact‖ on θ_g, and
``quant_vs_dp_noise`` the quantization error's norm over the DP noise's norm in the same mean. ``input_bytes`` is
the packed masked vector one agent uploads (the rest of a round's upload is ≈ 28 KB at 1,000 agents, bench_sync.py).

Options: ``today`` (θ_g alone, 24 bits); ``bits_sr`` (both parts, the widest width within the budget, stochastic
rounding, no rotation); ``rotate_sr`` (the same width after the round's shared random rotation, stochastic
rounding); ``rotate`` (rotation, round to nearest: what rounds do); ``alternate`` (θ_g and φ_g in alternate rounds,
each alone at 24 bits). With ``--quality-rounds R`` it also trains the federation R rounds (the audit's
``train_setting``, protocol mechanics in process) under ``today`` and under ``rotate`` and prints the best
validation NDCG@10 of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.paths import cache_dir  # noqa: E402
from models.data.movielens import load_ml100k  # noqa: E402
from models.data.split import make_loo_split  # noqa: E402
from models.firststage.recipe import FederatedConfig  # noqa: E402
from models.firststage.scorer import PrivateParams, SharedParams  # noqa: E402
from models.firststage.training import local_train  # noqa: E402
from models.text.encoder import ItemEncoder, embed_catalog  # noqa: E402
from sync.protocol import rules  # noqa: E402
from sync.protocol.masking import Quantization, rotation_seed  # noqa: E402
from sync.protocol.privacy import PHI, THETA, Part, PrivacyParams, prepare_contribution, weighted_mean  # noqa: E402
from sync.simulation.federation import MECHANISMS, AuditConfig, Federation, train_setting  # noqa: E402

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def local_deltas(users: list[int], split: Any, vectors: Any, seed: int) -> list[tuple[FloatArray, int]]:
    """Each user's real θ_g delta (one local training from the bootstrap vector) and its number of examples."""
    import torch

    text = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    config = FederatedConfig(seed=seed)
    shared = SharedParams.init(split.n_items, seed=seed)
    out = []
    for user in users:
        result = local_train(
            shared, PrivateParams.init(shared.dim), split.users[user].train, text, config.train_config(), seed=seed
        )
        out.append(((result.shared.to_vector() - shared.to_vector()).astype(np.float64), result.n_examples))
    return out


def measure(
    name: str,
    deltas: list[tuple[FloatArray, int]],
    privacy: PrivacyParams,
    quantization: Quantization,
    phi_size: int,
    *,
    stochastic: bool,
    seed: int,
) -> dict[str, Any]:
    """Quantization error of one option on the cohort's real contributions."""
    n = len(deltas)
    survivors = rules.min_survivors(n, min_cohort=rules.MIN_COHORT, max_dropout=rules.SYNC_MAX_DROPOUT)
    rng = np.random.default_rng([seed, 11])
    rounding = np.random.default_rng([seed, 12]) if stochastic else None
    theta = deltas[0][0].size
    size = theta + phi_size + 1
    exact = np.zeros(size)
    clean = np.zeros(size)
    integers = np.zeros(size, dtype=np.int64)
    clamped = 0
    for delta, n_examples in deltas:
        full = np.concatenate([delta, np.zeros(phi_size)])
        x = prepare_contribution(full, n_examples, privacy, noise_divisor=survivors, rng=rng).vector
        clean += prepare_contribution(full, n_examples, replace(privacy, sigma=0.0), noise_divisor=survivors).vector
        exact += x
        integers += quantization.integers(x, rng=rounding)
        clamped += int(quantization.encode(x)[1]) if not stochastic else 0
    decoded = quantization.to_float(integers)
    exact_mean = weighted_mean(exact, privacy.clip)
    clean_mean = weighted_mean(clean, privacy.clip)
    decoded_mean = weighted_mean(decoded, privacy.clip)
    assert exact_mean is not None and clean_mean is not None and decoded_mean is not None
    e, d, c = exact_mean[:theta], decoded_mean[:theta], clean_mean[:theta]
    quant = float(np.linalg.norm(d - e))
    return {
        "option": name,
        "bits": quantization.bits,
        "levels": quantization.levels,
        "rotated": bool(quantization.rotation),
        "stochastic_rounding": stochastic,
        "input_bytes": quantization.packed_bytes(size),
        "quant_rel_error": round(quant / float(np.linalg.norm(e)), 5),
        "quant_vs_dp_noise": round(quant / float(np.linalg.norm(e - c)), 5),
        "dp_noise_rel_error": round(float(np.linalg.norm(e - c)) / float(np.linalg.norm(c)), 5),
        "clamped_values": clamped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=943, help="ML-100K users in the cohort (the first N)")
    parser.add_argument("--phi-size", type=int, default=rules.SYNC_PHI_SIZE)
    parser.add_argument("--quality-rounds", type=int, default=0, help="also train R rounds under today and rotate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--input-bytes",
        type=int,
        default=rules.SYNC_INPUT_BYTES,
        help="budget of one packed masked vector (smaller: fewer bits, e.g. to give a small cohort the levels of a "
        "large one)",
    )
    parser.add_argument("--only", choices=("today", "rotate"), default=None, help="train only this quality setting")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = load_ml100k()
    split = make_loo_split(dataset, seed=args.seed)
    users = sorted(split.users)[: args.agents]
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir() / "embeddings")
    deltas = local_deltas(users, split, vectors, args.seed)
    n, theta = len(deltas), deltas[0][0].size
    survivors = rules.min_survivors(n, min_cohort=rules.MIN_COHORT, max_dropout=rules.SYNC_MAX_DROPOUT)
    sigma, cap = rules.SYNC_SIGMA, rules.SYNC_WEIGHT_CAP
    alone = PrivacyParams(clip=rules.SYNC_CLIP, sigma=sigma, weight_cap=cap)
    parts = [Part(THETA, theta, rules.SYNC_CLIP), Part(PHI, args.phi_size, rules.SYNC_CLIP_PHI)]
    both = PrivacyParams.for_parts(parts, sigma=sigma, weight_cap=cap)
    size = theta + args.phi_size + 1
    seed = rotation_seed(b"bench-wire")
    today = rules.round_quantization(n, clip=alone.clip, sigma=sigma, survivors=survivors)
    chosen = rules.round_quantization(
        n, clip=both.clip, sigma=sigma, survivors=survivors, vector_size=size, rotation=seed, max_bytes=args.input_bytes
    )
    flat = Quantization.for_cohort(
        n, rules.quantization_bound(both.clip, sigma, survivors), bits=chosen.bits
    )  # the same width, element-wise bound, no rotation
    options = [
        measure("today", deltas, alone, today, 0, stochastic=False, seed=args.seed),
        measure("bits_sr", deltas, both, flat, args.phi_size, stochastic=True, seed=args.seed),
        measure("rotate_sr", deltas, both, chosen, args.phi_size, stochastic=True, seed=args.seed),
        measure("rotate", deltas, both, chosen, args.phi_size, stochastic=False, seed=args.seed),
    ]
    alternate = dict(options[0], option="alternate")
    alternate["input_bytes_phi_round"] = today.packed_bytes(args.phi_size + 1)
    alternate["note"] = "each part is updated every other round: half the updates per part for the same ε"
    options.append(alternate)
    body: dict[str, Any] = {
        "agents": n,
        "parts": {THETA: theta, PHI: args.phi_size},
        "clip": {THETA: rules.SYNC_CLIP, PHI: rules.SYNC_CLIP_PHI, "joint": round(both.clip, 5)},
        "sigma": sigma,
        "input_budget_bytes": rules.SYNC_INPUT_BYTES,
        "options": options,
    }
    if args.quality_rounds:
        quality = {}
        federated = replace(FederatedConfig(seed=args.seed), rounds=args.quality_rounds)
        subset = split.subset(users)
        for name, config in (
            ("today", AuditConfig(privacy=alone, cohort=n, federated=federated, max_dropout=rules.SYNC_MAX_DROPOUT)),
            (
                "rotate",
                AuditConfig(
                    privacy=both,
                    cohort=n,
                    federated=federated,
                    max_dropout=rules.SYNC_MAX_DROPOUT,
                    phi_size=args.phi_size,
                    rotate=True,
                    max_input_bytes=args.input_bytes,
                ),
            ),
        ):
            if args.only not in (None, name):
                continue
            federation = Federation(subset, vectors, MECHANISMS["default"], config, [], {})
            run = train_setting(federation)
            best = max(h["valid_NDCG@10"] for h in run.history)
            quality[name] = {"valid_NDCG@10": round(best, 4), "selected_round": run.selected_round}
        body["quality"] = quality | {"rounds": args.quality_rounds, "users": n}
    body["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(body, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
