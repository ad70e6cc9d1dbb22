#!/usr/bin/env python3
"""Benchmark the TUI headless (Textual ``run_test``) on a throw-away profile with three likes.

* **startup**: wall time from spawning ``python`` to the first suggestions painted, p50 over 5 runs, warm
  embedding cache (one unmeasured warm-up run fills it). Target ≤ 1.5 s.
* **idle RSS**: peak resident memory of the TUI process after 2 s idle on the Suggestions screen. Target ≤ 700 MB.
* **key latency under training**: a private-adapter training worker process is started from the TUI, and while it
  runs, cursor keys are pressed; each press is timed from sending the key to the table's cursor handler running
  (and, separately, until Pilot sees every widget idle and repainted). Target ≤ 100 ms (max).

Usage: ``scripts/bench_tui.py [--json] [--runs 5]``. Results go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = (100, 30)
LIKES = ("1", "95", "71")  # Toy Story, Aladdin, The Lion King


async def _child(mode: str) -> dict[str, float]:
    """Runs inside the measured process."""
    from agent.settings import Settings
    from agent.tui.app import PersonaApp

    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    result: dict[str, float] = {}
    async with app.run_test(size=SIZE) as pilot:
        while not app.painted.is_set():
            await pilot.pause(0.005)
        result["painted_at"] = time.time()
        if mode == "idle":
            for _ in range(40):
                await pilot.pause(0.05)
        elif mode == "keys":
            app.start_training()
            while not app.training:
                await pilot.pause(0.01)
            from textual.widgets import DataTable

            table = app.screen.query_one("#suggestions", DataTable)
            handled: list[float] = []
            table.watch(table, "cursor_coordinate", lambda _old, _new: handled.append(time.perf_counter()), init=False)
            latencies: list[float] = []  # key sent → the table's handler moved the cursor
            settled: list[float] = []  # key sent → Pilot saw every widget idle again (includes repaint)
            while app.training and len(latencies) < 200:
                for key in ("down", "up"):
                    before = len(handled)
                    started = time.perf_counter()
                    await pilot.press(key)
                    settled.append(time.perf_counter() - started)
                    if len(handled) > before:
                        latencies.append(handled[before] - started)
                await pilot.pause(0.05)
            result["presses"] = len(latencies)
            result["key_p50_ms"] = 1000 * statistics.median(latencies) if latencies else float("nan")
            result["key_max_ms"] = 1000 * max(latencies) if latencies else float("nan")
            result["settled_p50_ms"] = 1000 * statistics.median(settled) if settled else float("nan")
            result["settled_max_ms"] = 1000 * max(settled) if settled else float("nan")
        result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _spawn(mode: str, env: dict[str, str]) -> dict[str, float]:
    started = time.time()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["startup_s"] = result["painted_at"] - started
    return result


def _prepare_home(home: Path) -> dict[str, str]:
    env = {**os.environ, "PERSONA_HOME": str(home), "HF_HUB_OFFLINE": "1", "ORT_DISABLE_TELEMETRY": "1"}
    if "PERSONA_ASSETS" not in env:
        from models.assets import assets_dir

        env["PERSONA_ASSETS"] = str(assets_dir())
    seed = (
        "from agent.store.profile_store import ProfileStore\n"
        "with ProfileStore.open() as s:\n"
        f"    s.add_interactions([('ml-100k', i, 'like', 5.0, t, 'bench') for t, i in enumerate({LIKES!r})])\n"
    )
    subprocess.run([sys.executable, "-c", seed], env=env, check=True, cwd=ROOT)
    worker = [sys.executable, "-m", "agent.engine.worker", "train"]
    subprocess.run(worker, env=env, check=True, cwd=ROOT, capture_output=True)
    return env


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", choices=("startup", "idle", "keys"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child))))
        return
    home = Path(tempfile.mkdtemp(prefix="persona-bench-"))
    try:
        env = _prepare_home(home)
        print("warm-up run (fills the embedding cache)", file=sys.stderr)
        _spawn("startup", env)
        startups = []
        for run in range(args.runs):
            startups.append(_spawn("startup", env)["startup_s"])
            print(f"startup run {run + 1}: {startups[-1]:.2f} s", file=sys.stderr)
        idle = _spawn("idle", env)
        keys = _spawn("keys", env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    figures = {
        "startup_p50_s": round(statistics.median(startups), 3),
        "startup_runs_s": [round(s, 3) for s in startups],
        "idle_peak_rss_mb": round(idle["maxrss_mb"], 1),
        "key_presses_during_training": int(keys["presses"]),
        "key_latency_p50_ms": round(keys["key_p50_ms"], 1),
        "key_latency_max_ms": round(keys["key_max_ms"], 1),
        "key_settled_p50_ms": round(keys["settled_p50_ms"], 1),
        "key_settled_max_ms": round(keys["settled_max_ms"], 1),
        "targets": {"startup_p50_s": 1.5, "idle_peak_rss_mb": 700, "key_latency_max_ms": 100},
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"startup to first suggestions painted: p50 {figures['startup_p50_s']:.2f} s  (runs {startups})")
    print(f"peak RSS idle on Suggestions: {figures['idle_peak_rss_mb']:.0f} MB")
    print(
        f"key press while training: p50 {figures['key_latency_p50_ms']:.1f} ms, "
        f"max {figures['key_latency_max_ms']:.1f} ms over {figures['key_presses_during_training']} presses "
        f"(until repainted and idle: p50 {figures['key_settled_p50_ms']:.1f} ms, "
        f"max {figures['key_settled_max_ms']:.1f} ms)"
    )
    print(f"load average (1 min) {figures['load_average_1m']} on {figures['cpus']} CPUs")


if __name__ == "__main__":
    main()
