"""``agent-coordinator``: the operator's command for the federation coordinator.

``agent-coordinator init --catalog ml-100k --db coordinator.sqlite3`` publishes the catalog's bootstrap shared vector
(:mod:`sync.coordinator.bootstrap`) as version 0; ``agent-coordinator serve --host 127.0.0.1 --port 8750 --db
coordinator.sqlite3`` runs the ASGI service under uvicorn (publishing that bootstrap vector itself when nothing is
published and no other initial vector is given). Every setting is a flag and an environment variable
``PERSONA_COORDINATOR_<NAME>`` (flags win).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import uvicorn

from models.errors import PersonaError
from sync.coordinator.app import build_app
from sync.coordinator.bootstrap import BOOTSTRAP_SEED, bootstrap_vector, check_catalog
from sync.coordinator.config import ENV_PREFIX, CoordinatorConfig
from sync.coordinator.publishing import FloatVector, InitialVector
from sync.coordinator.service import Coordinator


def _field_help() -> dict[str, str]:
    """One line per setting, read from the docstrings under the fields of :class:`CoordinatorConfig`."""
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


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of one :class:`CoordinatorConfig` field, its help read from the field's docstring."""
    default = getattr(CoordinatorConfig(), name)
    parser.add_argument(
        "--" + name.replace("_", "-"),
        type=Path if name == "db" else type(default),
        default=None,
        help=f"{_field_help().get(name, '')} ({ENV_PREFIX}{name.upper()}; default: {default})",
    )


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
    for f in fields(CoordinatorConfig):
        _add_setting(serve, f.name)
    serve.add_argument("--log-level", default="warning", help="uvicorn log level")
    init = sub.add_parser(
        "init",
        help="publish a built-in catalog's bootstrap shared vector as version 0 (what serve starts from)",
        description="Create the coordinator's state and publish the bootstrap shared vector of a built-in catalog "
        f"as version 0: the first stage's fresh shared parameters drawn with seed {BOOTSTRAP_SEED}, so every operator "
        "publishes the same bytes. Does nothing if a version is already published. Needs the prepared catalog "
        "(`agent prepare`).",
    )
    _add_setting(init, "catalog")
    _add_setting(init, "db")
    return parser


def _announced(config: CoordinatorConfig, vector: FloatVector) -> FloatVector:
    """``vector``, once stderr says it becomes version 0 as the catalog's bootstrap vector."""
    print(
        f"agent-coordinator: nothing is published in {config.db} yet: publishing the {config.catalog} bootstrap shared "
        f"vector ({vector.size:,} values, seed {BOOTSTRAP_SEED}) as version 0",
        file=sys.stderr,
    )
    return vector


def _initial(init_shared: Path | None, config: CoordinatorConfig) -> InitialVector | None:
    """Version 0 if nothing is published yet: --init-shared, else --vector-size zeros, else the catalog's bootstrap."""
    init = init_shared or os.environ.get(ENV_PREFIX + "INIT_SHARED")
    if init:
        vector: FloatVector = np.load(init, allow_pickle=False).astype(np.float32).ravel()
        return vector
    if config.vector_size > 0:
        return None
    return lambda: _announced(config, bootstrap_vector(config.catalog))


def _init(args: argparse.Namespace) -> None:
    """``agent-coordinator init``: publish the bootstrap vector as version 0 unless a version is published."""
    config = CoordinatorConfig.from_env(catalog=args.catalog, db=args.db)
    vector = bootstrap_vector(config.catalog)  # before the state is created: a missing catalog leaves no file
    used: list[bool] = []

    def announce() -> FloatVector:
        used.append(True)
        return _announced(config, vector)

    coordinator = Coordinator(config, initial=announce)
    latest = coordinator.latest()
    if used:
        print(
            f"agent-coordinator: wrote version 0 to {config.db} (sha256 {latest.sha256}); "
            f"next: agent-coordinator serve --db {config.db}",
            file=sys.stderr,
        )
    elif coordinator.vector_size != vector.size:
        raise ValueError(
            f"{config.db} already publishes a shared vector of {coordinator.vector_size:,} values, not the "
            f"{config.catalog} bootstrap's {vector.size:,}: nothing written (give another --db)"
        )
    else:
        print(
            f"agent-coordinator: {config.db} already publishes version {latest.version}; nothing written",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            _init(args)
            return
        config = CoordinatorConfig.from_env(**{f.name: getattr(args, f.name) for f in fields(CoordinatorConfig)})
        check_catalog(config.catalog)
        coordinator = Coordinator(config, initial=_initial(args.init_shared, config))
    except (ValueError, OSError, PersonaError) as error:
        print(f"agent-coordinator: {error}", file=sys.stderr)
        sys.exit(1)
    print(
        f"agent-coordinator: serving on http://{args.host}:{args.port} (state in {config.db}, "
        f"vector of {coordinator.vector_size}, published version {coordinator.latest().version})",
        file=sys.stderr,
    )
    uvicorn.run(build_app(coordinator), host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=30)
