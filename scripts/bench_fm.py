#!/usr/bin/env python3
"""Foundation-model figures: rerank 20/50 candidates (idle and beside a busy process), LoRA training time,
peak RSS of the serving and training processes, adapter file sizes, and the listwise rerank of 20 (one prompt per
list: p50/p90 seconds with one and two llama.cpp threads, prompt tokens, torch seconds per training list).

Usage: .venv/bin/python scripts/bench_fm.py [--json] [--users N] [--listwise-only] [--sync-phi]

--sync-phi: only one sync's local training in the real worker process on an ML-100K profile (the median user's
training items as likes), once for θ_g alone and once with the language model's shared adapter φ_g (at
``[sync] lm_train_seconds``, default 60): wall seconds, the worker's peak RSS and what its φ_g training did.

Training uses the recipe every agent runs and `agent eval --model persona` measures
(models.fm.adapter_training.AdapterConfig).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.experiments.bench_fm import bench_fm

ROOT = Path(__file__).resolve().parent.parent


def _worker(env: dict[str, str], args: list[str], folder: Path) -> tuple[dict[str, Any], float, float, float]:
    """Run the training worker once: its JSON result, wall seconds, peak RSS (MB) and CPU seconds (its rusage)."""
    with (folder / "stdout").open("w") as out, (folder / "stderr").open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "agent.engine.worker", *args], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {(folder / 'stderr').read_text()[-2000:]}")
    result: dict[str, Any] = json.loads((folder / "stdout").read_text().strip().splitlines()[-1])
    return result, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def sync_phi_figures() -> dict[str, Any]:
    """One sync's local training on an ML-100K profile, θ_g alone and with φ_g (module docstring)."""
    from models.data.movielens import load_ml100k
    from models.data.split import make_loo_split
    from sync.protocol.rules import SYNC_PHI_SIZE

    dataset = load_ml100k()
    split = make_loo_split(dataset)
    users = sorted(split.users, key=lambda u: (len(split.users[u].train), u))
    user = users[len(users) // 2]
    train = split.users[user].train
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "PERSONA_HOME": str(home / "home"), "PYTHONPATH": str(ROOT)}
        likes = [("ml-100k", dataset.catalog.item_ids[int(i)], "like", 5.0, t, "bench") for t, i in enumerate(train)]
        seed = (
            "import sys, json, numpy as np\n"
            "from agent.store.profile_store import ProfileStore\n"
            "from agent.engine.profile import Profile\n"
            "with ProfileStore.open() as s:\n"
            f"    s.add_interactions({likes!r})\n"
            "    np.save(sys.argv[1], Profile.load(s).shared.to_vector())\n"
        )
        subprocess.run([sys.executable, "-c", seed, str(home / "shared.npy")], env=env, check=True, cwd=ROOT)
        np.save(home / "phi.npy", np.zeros(SYNC_PHI_SIZE, dtype=np.float32))
        theta, theta_wall, theta_rss, theta_cpu = _worker(
            env, ["sync-train", str(home / "shared.npy"), str(home / "a")], home
        )
        both, both_wall, both_rss, both_cpu = _worker(
            env, ["sync-train", str(home / "shared.npy"), str(home / "b"), str(home / "phi.npy")], home
        )
    return {
        "user": int(user),
        "liked_items": len(train),
        "theta_only_wall_s": round(theta_wall, 2),
        "theta_only_peak_rss_mb": round(theta_rss),
        "theta_only_train_s": theta["seconds"],
        "theta_only_cpu_s": round(theta_cpu, 1),
        "with_phi_cpu_s": round(both_cpu, 1),
        "with_phi_wall_s": round(both_wall, 2),
        "with_phi_peak_rss_mb": round(both_rss),
        "language_model": both["language_model"],
        "loadavg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--users", type=int, default=10, help="users whose candidates are reranked (default 10)")
    parser.add_argument("--listwise-only", action="store_true", help="only the listwise figures (listwise_* keys)")
    parser.add_argument("--sync-phi", action="store_true", help="only one sync's training with and without φ_g")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users takes a positive number")
    figures = sync_phi_figures() if args.sync_phi else bench_fm(users=args.users, listwise_only=args.listwise_only)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value:.3f}" if isinstance(value, float) else f"{key:28} {value}")


if __name__ == "__main__":
    main()
