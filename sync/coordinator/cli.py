"""``agent-coordinator``: the operator's command for the federation coordinator.

``agent-coordinator serve --host 127.0.0.1 --port 8750 --db coordinator.sqlite3`` runs the ASGI service under
uvicorn. Every setting is a flag and an environment variable ``PERSONA_COORDINATOR_<NAME>`` (flags win).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import fields
from pathlib import Path

from sync.coordinator.config import ENV_PREFIX, CoordinatorConfig


def _field_help() -> dict[str, str]:
    """One line per setting, read from the docstrings under the fields of :class:`CoordinatorConfig`."""
    import ast
    import inspect

    source = inspect.getsource(CoordinatorConfig)
    tree = ast.parse(source)
    helps: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            helps[node.target.id] = str(following.value.value)
    return helps


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="agent-coordinator",
        description="Coordinator of Persona's federation: rounds, cohorts and secure aggregation of shared deltas.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the coordinator service (ASGI under uvicorn, state in SQLite)",
        description="Run the coordinator. Each option can also be set by the environment variable shown "
        f"({ENV_PREFIX}<NAME>); a flag wins over the variable, the variable over the default. "
        "Endpoints: /healthz, /status, /openapi.json and the /v1 agent API.",
    )
    serve.add_argument(
        "--host",
        default=os.environ.get(ENV_PREFIX + "HOST", "127.0.0.1"),
        help=f"interface to listen on ({ENV_PREFIX}HOST)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(ENV_PREFIX + "PORT", "8750")),
        help=f"TCP port ({ENV_PREFIX}PORT)",
    )
    serve.add_argument(
        "--init-shared",
        type=Path,
        default=None,
        help=f"a .npy float32 vector to publish as version 0 when nothing is published yet ({ENV_PREFIX}INIT_SHARED)",
    )
    defaults = CoordinatorConfig()
    helps = _field_help()
    for f in fields(CoordinatorConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = Path if f.name == "db" else type(getattr(defaults, f.name))
        serve.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{helps.get(f.name, '')} ({ENV_PREFIX}{f.name.upper()}; default: {getattr(defaults, f.name)})",
        )
    serve.add_argument("--log-level", default="warning", help="uvicorn log level")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        raise SystemExit(2)
    import numpy as np
    import uvicorn

    from sync.coordinator.app import build_app
    from sync.coordinator.service import Coordinator

    overrides = {f.name: getattr(args, f.name) for f in fields(CoordinatorConfig)}
    try:
        config = CoordinatorConfig.from_env(**overrides)
        init = args.init_shared or os.environ.get(ENV_PREFIX + "INIT_SHARED")
        initial = np.load(init, allow_pickle=False).astype(np.float32).ravel() if init else None
        coordinator = Coordinator(config, initial=initial)
    except (ValueError, OSError) as error:
        print(f"agent-coordinator: {error}", file=sys.stderr)
        sys.exit(1)
    print(
        f"agent-coordinator: serving on http://{args.host}:{args.port} (state in {config.db}, "
        f"vector of {coordinator.vector_size}, published version {coordinator.latest().version})",
        file=sys.stderr,
    )
    uvicorn.run(build_app(coordinator), host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=30)
