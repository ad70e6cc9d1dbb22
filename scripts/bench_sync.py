#!/usr/bin/env python
"""Benchmark one or more secure-aggregation rounds at N agents over a real coordinator on 127.0.0.1.

    .venv/bin/python scripts/bench_sync.py --agents 200 --json

The vector is the ML-100K shared first-stage vector θ_g (dim 32) unless --size says otherwise, followed by the
language model's shared adapter φ_g (--phi-size values, default 61,440; 0: θ_g alone) — one round carries both;
deltas are random with a realistic norm per part. Prints agents, rounds_completed, bytes_up/down_per_agent_round,
coordinator_peak_rss_mb, round_wall_s and agent_secagg_cpu_s_per_round (per agent).

--backend sqlite (default: a file in a temporary folder) or postgres (a throwaway PostgreSQL server on 127.0.0.1 from
the machine's binaries, as the tests start it; synchronous_commit=off, the same durability as SQLite's WAL with
synchronous=NORMAL). --replicas R (postgres only) runs R coordinator processes on the one database, the agents spread
over them by agent id as a load balancer with affinity would. Also prints backend, replicas,
db_bytes_written_per_round (SQLite: bytes the coordinator process wrote to disk, /proc/PID/io write_bytes, WAL and
checkpoints; PostgreSQL: WAL bytes generated, pg_current_wal_lsn difference), db_bytes_by_table (PostgreSQL: that WAL
split by the table its records touch, read with pg_walinspect), stage_s (seconds each stage of a round lasted, from
/status) and each replica's peak RSS. PostgreSQL also: db_data_bytes_written_per_round and
db_data_bytes_by_writer_per_round (pages the server handed to the kernel for its data files: the checkpointer, the
background writer, backends; a CHECKPOINT is forced before and after each round, so the round's dirty pages of logged
tables are counted and nobody else's; up to PostgreSQL 15 "backends" also counts every page a backend adds to a
file, zero-filled — the unlogged relay's file growth, whose contents PostgreSQL itself never writes),
relay_peak_bytes (the largest the round's unlogged key-share partitions grew, sampled every second) and
db_table_bytes (each table's size, indexes and TOAST included, after the last round).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# As the agent CLI does (agent/__init__.py), so the figures are the evaluation's: single-threaded BLAS, here and in
# the coordinator subprocess. Multithreaded OpenBLAS on the busy 2-core machine took ~8 ms per 68k-element norm
# (20 µs on one thread), once per simulated agent.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from sync.coordinator.local import coordinator_process  # noqa: E402
from sync.protocol.rules import SYNC_PHI_SIZE  # noqa: E402
from sync.simulation.aggregator import SecureAggregator  # noqa: E402

ML100K_SHARED_SIZE = 384 * 32 + 1682 * 32 + 1682 + 50


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


BENCH_POSTGRES_SETTINGS = {
    "synchronous_commit": "off",
    "wal_keep_size": "8192",
}  # MB: a long round's WAL stays readable
WRITTEN_HOW = {
    "sqlite": "write_bytes of the coordinator process (/proc/PID/io): WAL frames and checkpoints into the file",
    "postgres": "WAL bytes the server generated (pg_current_wal_lsn difference); data-file writes are apart, in "
    "db_data_bytes_written_per_round",
}


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    """The ``--db`` of the benchmarked coordinator: a SQLite file in ``folder`` or a database on a throwaway server."""
    if backend == "sqlite":
        yield str(folder / "c.sqlite3")
        return
    from sync.coordinator.postgres import create_database, temporary_server

    with temporary_server(BENCH_POSTGRES_SETTINGS) as server:
        yield create_database(server, "bench")


def db_bytes_written(backend: str, db: str, pid: int) -> int:
    """A counter of bytes the database has written so far (differences of two readings are what a round wrote)."""
    if backend == "sqlite":
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{pid}/io has no write_bytes")
    import psycopg

    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()
    assert row is not None
    return int(row[0])


def wal_lsn(db: str) -> str:
    """The server's current WAL position (PostgreSQL)."""
    import psycopg

    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_by_table(db: str, start: str, end: str) -> dict[str, int]:
    """WAL bytes between two positions by the table each record touches (its first block; TOAST and indexes counted
    with their table), read with pg_walinspect; records of relations gone by now (the round's dropped key-share
    partitions) are "dropped partitions", records touching no relation (commits, ...) "other"."""
    import re

    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        names: dict[int, str] = {}
        for node, name in conn.execute(
            "SELECT c.relfilenode, COALESCE(t.relname, i.relname, c.relname) FROM pg_class c"
            " LEFT JOIN pg_class t ON t.reltoastrelid = c.oid"
            " LEFT JOIN pg_index x ON x.indexrelid = c.oid LEFT JOIN pg_class i ON i.oid = x.indrelid"
            " WHERE c.relfilenode <> 0"
        ):
            names[int(node)] = str(name)
        split: dict[str, int] = {}
        for ref, length in conn.execute(
            "SELECT block_ref, record_length FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)", (start, end)
        ):
            found = re.search(r"rel \d+/\d+/(\d+)", ref or "")
            name = "other" if found is None else names.get(int(found.group(1)), "dropped partitions")
            split[name] = split.get(name, 0) + int(length)
    return dict(sorted(split.items(), key=lambda kv: -kv[1]))


def data_bytes_written(db: str) -> dict[str, int]:
    """Counters of bytes the server wrote to its data files (relation pages written), by who wrote them: the
    checkpointer (dirty pages of logged tables only: checkpoints skip unlogged ones), the background writer and
    backends (any dirty page they evict or clean ahead of need, an unlogged relay page included; up to PostgreSQL 15
    also each zero-filled page a backend adds to a file, which pg_stat_bgwriter counts as a backend write). Read
    after a CHECKPOINT that writes every dirty page of a logged table out: pg_stat_io where it exists (PostgreSQL
    16+, writes only), else pg_stat_bgwriter's buffer counts."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        time.sleep(1.0)  # backends and the checkpointer report their counts at most once a second
        conn.execute("SELECT pg_stat_clear_snapshot()")
        for query in (
            "SELECT backend_type, SUM(write_bytes) FROM pg_stat_io WHERE object = 'relation' GROUP BY 1",  # 18+
            "SELECT backend_type, SUM(writes * op_bytes) FROM pg_stat_io WHERE object = 'relation' GROUP BY 1",
        ):
            try:
                rows = conn.execute(query).fetchall()
            except psycopg.Error:
                continue
            found: dict[str, int] = {}
            for kind, written in rows:
                name = {"checkpointer": "checkpointer", "background writer": "background writer"}.get(kind, "backends")
                found[name] = found.get(name, 0) + int(written or 0)
            return found
        setting = conn.execute("SELECT current_setting('block_size')::int").fetchone()
        block = 8192 if setting is None else int(setting[0])
        row = conn.execute("SELECT buffers_checkpoint, buffers_clean, buffers_backend FROM pg_stat_bgwriter").fetchone()
    assert row is not None
    return {
        "checkpointer": int(row[0]) * block,
        "background writer": int(row[1]) * block,
        "backends": int(row[2]) * block,
    }


class RelaySize:
    """Samples, every second in a thread, how large the open round's key-share relay partitions are (PostgreSQL);
    :attr:`peak` is the largest sum seen."""

    def __init__(self, db: str) -> None:
        """Start sampling the database ``db``."""
        self.db, self.peak = db, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.db, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                    " WHERE c.relkind = 'r' AND c.relname ~ '^(shares|reveals)_r[0-9]+$'"
                ).fetchone()
                if row is not None:
                    self.peak = max(self.peak, int(row[0]))
                self.stop.wait(1.0)

    def close(self) -> int:
        """Stop sampling; the peak."""
        self.stop.set()
        self.thread.join(timeout=10)
        return self.peak


def table_bytes(db: str) -> dict[str, int]:
    """Each table's size with its indexes and TOAST (PostgreSQL), largest first."""
    with psycopg.connect(db) as conn:
        found = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall()
    return dict(sorted(((str(name), int(size)) for name, size in found), key=lambda kv: -kv[1]))


class StageClock:
    """Polls /status in a thread and notes when each round entered each stage (time.monotonic())."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        """Start polling ``url``."""
        self.url, self.interval = url, interval
        self.seen: dict[int, dict[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as http:
            while not self.stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    info = http.get("/status").json()["round"]
                    if info is not None:
                        self.seen.setdefault(int(info["round_id"]), {}).setdefault(str(info["stage"]), time.monotonic())
                self.stop.wait(self.interval)

    def close(self) -> None:
        """Stop polling."""
        self.stop.set()
        self.thread.join(timeout=5)

    def stage_seconds(self) -> dict[str, float]:
        """Mean seconds per stage over the rounds seen (a stage lasts until the next one is seen)."""
        order = ["advertise", "share_keys", "masked_input", "unmask", "done"]
        lasted: dict[str, list[float]] = {}
        for stages in self.seen.values():
            for stage, following in itertools.pairwise(order):
                if stage in stages and following in stages:
                    lasted.setdefault(stage, []).append(stages[following] - stages[stage])
        return {stage: round(float(np.mean(values)), 2) for stage, values in lasted.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=ML100K_SHARED_SIZE)
    parser.add_argument("--phi-size", type=int, default=SYNC_PHI_SIZE, help="φ_g values after θ_g (0: θ_g only)")
    parser.add_argument("--dropout", type=float, default=0.0, help="fraction dropping after sharing keys")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite", help="the coordinator's store")
    parser.add_argument(
        "--advertise-s",
        type=float,
        default=600.0,
        help="the advertise stage deadline; agents checking in before the round opens come back in its first half",
    )
    parser.add_argument("--replicas", type=int, default=1, help="coordinator processes (more than 1: postgres only)")
    parser.add_argument(
        "--stage-s",
        type=float,
        default=None,
        help="the share-keys, masked-input and unmask deadlines (default: 600 s, or 0.2 s an agent when more: the "
        "bench's one client process needs about 0.1 s of CPU an agent a stage at 10,000); the agents wait for "
        "the whole round at full length",
    )
    parser.add_argument(
        "--checkpoint-s",
        type=float,
        default=None,
        help="passed to serve: how often a process writes its partial sum (0: only when the stage closes)",
    )
    args = parser.parse_args()
    if args.replicas < 1 or (args.replicas > 1 and args.backend != "postgres"):
        parser.error("--replicas: at least 1, and more than 1 only with --backend postgres (a SQLite file has one)")
    stage_s = args.stage_s if args.stage_s is not None else max(600.0, 0.2 * args.agents)
    if not (args.advertise_s > 0 and stage_s > 0):
        parser.error("--advertise-s and --stage-s must be positive")
    rng = np.random.default_rng(0)
    total = args.size + args.phi_size
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        coordinator_args = [
            "--vector-size",
            str(args.size),
            "--phi-size",
            str(args.phi_size),
            "--target-cohort",
            str(args.agents),
            "--over-selection",
            "0",
            "--advertise-s",
            str(args.advertise_s),
            "--masked-input-s",
            str(stage_s),
            "--share-keys-s",
            str(stage_s),
            "--unmask-s",
            str(stage_s),
            "--min-cohort",
            str(min(10, args.agents)),
        ]
        if args.checkpoint_s is not None:
            coordinator_args += ["--checkpoint-s", str(args.checkpoint_s)]
        with database(args.backend, Path(tmp)) as db, contextlib.ExitStack() as stack:
            replicas = [
                stack.enter_context(coordinator_process(db, args=coordinator_args)) for _ in range(args.replicas)
            ]
            url, process = replicas[0]
            urls = tuple(u for u, _ in replicas) if args.replicas > 1 else ()
            aggregator = SecureAggregator(
                url, dropout=args.dropout, timeout=args.advertise_s + 4 * stage_s, replicas=urls
            )
            clock = StageClock(url)
            completed = 0
            written: list[int] = []
            data_written: dict[str, list[int]] = {}
            relay_peaks: list[int] = []
            by_table: dict[str, int] = {}
            postgres = args.backend == "postgres"
            for r in range(args.rounds):
                data_before = data_bytes_written(db) if postgres else {}
                before = db_bytes_written(args.backend, db, process.pid)
                start_lsn = wal_lsn(db) if postgres else ""
                relay = RelaySize(db) if postgres else None
                aggregator.begin_round(r, total)
                for a in range(args.agents):
                    aggregator.submit(
                        a,
                        np.concatenate(
                            [
                                rng.normal(0, 1, args.size) * 0.5 / np.sqrt(args.size),
                                rng.normal(0, 1, args.phi_size) * 0.25 / np.sqrt(max(args.phi_size, 1)),
                            ]
                        ).astype(np.float32),
                        float(rng.integers(20, 300)),
                    )
                completed += aggregator.finish() is not None
                written.append(db_bytes_written(args.backend, db, process.pid) - before)
                if relay is not None:
                    relay_peaks.append(relay.close())
                if postgres:
                    for writer, count in data_bytes_written(db).items():
                        data_written.setdefault(writer, []).append(count - data_before.get(writer, 0))
                if args.backend == "postgres":
                    try:
                        split = wal_by_table(db, start_lsn, wal_lsn(db))
                    except psycopg.Error as error:  # e.g. the round's first WAL segment recycled already
                        print(f"round {r}: no WAL split: {error}", file=sys.stderr)
                        split = {}
                    for name, size in split.items():
                        by_table[name] = by_table.get(name, 0) + size
                print(f"round {r}: {aggregator.stats[-1]}", file=sys.stderr)
            rss = [peak_rss_mb(p.pid) for _, p in replicas]
            clock.close()
            tables = table_bytes(db) if postgres else {}
    stats = aggregator.stats
    body = {
        "agents": args.agents,
        "rounds_completed": completed,
        "vector_size": total,
        "parts": {"theta_g": args.size, "phi_g": args.phi_size},
        "bytes_up_per_agent_round": round(float(np.mean([s.bytes_up_per_agent for s in stats]))),
        "bytes_down_per_agent_round": round(float(np.mean([s.bytes_down_per_agent for s in stats]))),
        "coordinator_peak_rss_mb": round(max(rss), 1),
        "replica_peak_rss_mb": [round(m, 1) for m in rss],
        "round_wall_s": round(float(np.mean([s.wall_s for s in stats])), 2),
        "agent_secagg_cpu_s_per_round": round(float(np.mean([s.secagg_cpu_s_per_agent for s in stats])), 4),
        "dropout": args.dropout,
        "backend": args.backend,
        "replicas": args.replicas,
        "db_bytes_written_per_round": round(float(np.mean(written))),
        "db_bytes_written_how": WRITTEN_HOW[args.backend],
        **(
            {"db_bytes_by_table_per_round": {k: round(v / args.rounds) for k, v in by_table.items()}}
            if by_table
            else {}
        ),
        **(
            {
                "db_data_bytes_written_per_round": round(float(np.mean(np.sum(list(data_written.values()), axis=0)))),
                "db_data_bytes_by_writer_per_round": {w: round(float(np.mean(v))) for w, v in data_written.items()},
                "relay_peak_bytes": max(relay_peaks),
                "db_table_bytes": tables,
            }
            if data_written
            else {}
        ),
        "stage_s": clock.stage_seconds(),
    }
    print(json.dumps(body, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
