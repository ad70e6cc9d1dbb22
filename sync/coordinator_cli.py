"""``agent-coordinator``: the operator's command for the federation coordinator."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="agent-coordinator",
        description="Coordinator of Persona's federation: rounds, cohorts and secure aggregation of shared deltas.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the coordinator service (not built yet: see the sync issue)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        print(
            "agent-coordinator serve: the secure-aggregation coordinator is not built yet; "
            "federated training currently runs in simulation (`agent eval --model federated`).",
            file=sys.stderr,
        )
        sys.exit(1)
