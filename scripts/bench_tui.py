#!/usr/bin/env python3
"""Benchmark the TUI headless (Textual ``run_test``) on a throw-away profile with three likes.

* **startup**: wall time from spawning ``python`` to the first suggestions painted, p50 over 5 runs, warm
  embedding cache (one unmeasured warm-up run fills it). Target ≤ 1.5 s. Also the process's CPU time (all threads)
  at that moment, which other load on a shared machine disturbs much less than the wall time.
* **idle RSS**: peak resident memory of the TUI process after 2 s idle on the Suggestions screen. Target ≤ 700 MB.
* **key latency under training**: a private-adapter training worker process is started from the TUI, and while it
  runs, cursor keys are pressed; each press is timed from sending the key to the table's cursor handler running
  (and, separately, until Pilot sees every widget idle and repainted). Target ≤ 100 ms (max).

Usage: ``scripts/bench_tui.py [--json] [--runs 5] [--startup-only] [--baseline CHECKOUT]``. Results go to stdout;
progress to stderr.

``--baseline CHECKOUT`` compares the start-up with another checkout of this repository (e.g. ``git worktree add
/tmp/before 998634b``): each checkout gets its own throw-away profile (made by that checkout's own copy of this
script), then runs alternate A B B A …, so a slower or busier moment hits both alike; the figures add the
baseline's p50s and the relative differences. Only such interleaved relative figures mean much on a shared machine.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SIZE = (100, 30)
LIKES = ("1", "95", "71")  # Toy Story, Aladdin, The Lion King


async def _child(mode: str) -> dict[str, float]:
    """Runs inside the measured process."""
    from agent.settings import Settings
    from agent.tui.app import PersonaApp

    app = PersonaApp(settings=Settings(retrain_after_feedback=False))
    result: dict[str, float] = {}
    async with app.run_test(size=SIZE) as pilot:
        # waited for in a thread, not polled: polling would add CPU time in proportion to the wait
        if not await asyncio.get_running_loop().run_in_executor(None, app.painted.wait, 120.0):
            raise SystemExit("no suggestions were painted within 120 s")
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
        usage = resource.getrusage(resource.RUSAGE_SELF)
        if mode == "startup":
            result["cpu_s"] = usage.ru_utime + usage.ru_stime
        result["maxrss_mb"] = usage.ru_maxrss / 1024
    return result


def _spawn(mode: str, env: dict[str, str], root: Path = ROOT) -> dict[str, float]:
    """Run one measured child with the packages of checkout ``root``."""
    started = time.time()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--code-root", str(root)],
        env={**env, "PYTHONPATH": str(root)},
        cwd=root,
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


def _prepare_baseline_home(checkout: Path, home: Path) -> dict[str, str]:
    """The baseline's profile, made by the baseline's own ``_prepare_home`` (its store and worker may differ)."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "sys.path[:0] = ['.', 'scripts']\n"
        "import bench_tui\n"
        f"print(json.dumps(bench_tui._prepare_home(Path({str(home)!r}))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"could not prepare the baseline {checkout}:\n{proc.stderr[-2000:]}")
    prepared: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return prepared


def _startups(runs: int, env: dict[str, str], baseline: tuple[Path, dict[str, str]] | None) -> dict[str, Any]:
    """Startup wall and CPU times of ``runs`` children; with a baseline, alternating A B B A … with its runs."""
    sides: dict[str, tuple[Path, dict[str, str]]] = {"this": (ROOT, env)}
    if baseline is not None:
        sides["baseline"] = baseline
    print("warm-up run (fills the embedding cache)", file=sys.stderr)
    for root, side_env in sides.values():
        _spawn("startup", side_env, root)
    walls: dict[str, list[float]] = {side: [] for side in sides}
    cpus: dict[str, list[float]] = {side: [] for side in sides}
    for run in range(runs):
        order = list(sides) if run % 2 == 0 else list(reversed(sides))
        for side in order:
            root, side_env = sides[side]
            result = _spawn("startup", side_env, root)
            walls[side].append(result["startup_s"])
            cpus[side].append(result["cpu_s"])
        shown = ", ".join(f"{side} {walls[side][-1]:.2f} s (CPU {cpus[side][-1]:.2f} s)" for side in sides)
        print(f"startup run {run + 1}: {shown}", file=sys.stderr)
    figures: dict[str, Any] = {
        "startup_p50_s": round(statistics.median(walls["this"]), 3),
        "startup_runs_s": [round(s, 3) for s in walls["this"]],
        "startup_cpu_p50_s": round(statistics.median(cpus["this"]), 3),
    }
    if baseline is not None:
        base_wall, base_cpu = statistics.median(walls["baseline"]), statistics.median(cpus["baseline"])
        figures["baseline"] = {
            "checkout": str(baseline[0]),
            "startup_p50_s": round(base_wall, 3),
            "startup_runs_s": [round(s, 3) for s in walls["baseline"]],
            "startup_cpu_p50_s": round(base_cpu, 3),
        }
        figures["startup_vs_baseline"] = round(figures["startup_p50_s"] / base_wall - 1, 3)
        figures["startup_cpu_vs_baseline"] = round(figures["startup_cpu_p50_s"] / base_cpu - 1, 3)
        figures["targets_vs_baseline"] = {"startup_vs_baseline": 0.05}
    return figures


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--startup-only", action="store_true", help="measure the start-up only (no idle, no keys)")
    parser.add_argument(
        "--baseline", type=Path, metavar="CHECKOUT", help="another checkout to compare the start-up with (interleaved)"
    )
    parser.add_argument("--child", choices=("startup", "idle", "keys"), help=argparse.SUPPRESS)
    parser.add_argument("--code-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.code_root))
        print(json.dumps(asyncio.run(_child(args.child))))
        return
    sys.path.insert(0, str(ROOT))
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    baseline_root = args.baseline.resolve() if args.baseline else None
    if baseline_root is not None and not (baseline_root / "agent" / "tui" / "app.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository (no agent/tui/app.py)")
    homes = [Path(tempfile.mkdtemp(prefix="persona-bench-"))]
    try:
        env = _prepare_home(homes[0])
        baseline = None
        if baseline_root is not None:
            homes.append(Path(tempfile.mkdtemp(prefix="persona-bench-baseline-")))
            baseline = (baseline_root, _prepare_baseline_home(baseline_root, homes[1]))
        startup = _startups(args.runs, env, baseline)
        idle = None if args.startup_only else _spawn("idle", env)
        keys = None if args.startup_only else _spawn("keys", env)
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    common = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    if idle is None or keys is None:
        figures: dict[str, Any] = {**startup, "targets": {"startup_p50_s": 1.5}, **common}
        print(json.dumps(figures, indent=2) if args.json else _startup_lines(figures))
        return
    figures = {
        **startup,
        "idle_peak_rss_mb": round(idle["maxrss_mb"], 1),
        "key_presses_during_training": int(keys["presses"]),
        "key_latency_p50_ms": round(keys["key_p50_ms"], 1),
        "key_latency_max_ms": round(keys["key_max_ms"], 1),
        "key_settled_p50_ms": round(keys["settled_p50_ms"], 1),
        "key_settled_max_ms": round(keys["settled_max_ms"], 1),
        "targets": {"startup_p50_s": 1.5, "idle_peak_rss_mb": 700, "key_latency_max_ms": 100},
        **common,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(_startup_lines(figures))
    print(f"peak RSS idle on Suggestions: {figures['idle_peak_rss_mb']:.0f} MB")
    print(
        f"key press while training: p50 {figures['key_latency_p50_ms']:.1f} ms, "
        f"max {figures['key_latency_max_ms']:.1f} ms over {figures['key_presses_during_training']} presses "
        f"(until repainted and idle: p50 {figures['key_settled_p50_ms']:.1f} ms, "
        f"max {figures['key_settled_max_ms']:.1f} ms)"
    )
    print(f"load average (1 min) {figures['load_average_1m']} on {figures['cpus']} CPUs")


def _startup_lines(figures: dict[str, Any]) -> str:
    """The start-up figures as text (and the comparison with the baseline, when there is one)."""
    lines = [
        f"startup to first suggestions painted: p50 {figures['startup_p50_s']:.2f} s, "
        f"CPU p50 {figures['startup_cpu_p50_s']:.2f} s  (runs {figures['startup_runs_s']})"
    ]
    if "baseline" in figures:
        base = figures["baseline"]
        lines.append(
            f"baseline {base['checkout']}: p50 {base['startup_p50_s']:.2f} s, CPU p50 {base['startup_cpu_p50_s']:.2f} s"
            f"  (runs {base['startup_runs_s']}); this vs baseline: {figures['startup_vs_baseline']:+.1%} wall, "
            f"{figures['startup_cpu_vs_baseline']:+.1%} CPU"
        )
    if "idle_peak_rss_mb" not in figures:
        lines.append(f"load average (1 min) {figures['load_average_1m']} on {figures['cpus']} CPUs")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
