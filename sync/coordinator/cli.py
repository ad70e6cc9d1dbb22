"""``agent-coordinator``: the operator's command for the federation coordinator.

``agent-coordinator init --catalog ml-100k --db coordinator.sqlite3`` publishes the catalog's bootstrap shared vector
(:mod:`sync.coordinator.bootstrap`) as version 0; ``agent-coordinator serve --host 127.0.0.1 --port 8750 --db
coordinator.sqlite3`` runs the ASGI service under uvicorn (publishing that bootstrap vector itself when nothing is
published and no other initial vector is given). Every setting is a flag and an environment variable
``PERSONA_COORDINATOR_<NAME>`` (flags win).

Who may join (issue 14.4): ``agent-coordinator enroll --count N --db coordinator.sqlite3`` prints N one-time
enrollment tokens (only their SHA-256 is stored); ``serve`` requires one from every new agent unless
``--open-enrollment`` (loopback addresses only), rate-limits each agent and each address registering, and serves
HTTPS with ``--certfile``/``--keyfile`` (it prints the certificate's SHA-256 fingerprint for agents to pin).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import os
import ssl
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from models.errors import PersonaError
from sync.coordinator.access import AccessPolicy, enrollment_store, new_token, token_hash
from sync.coordinator.app import build_app
from sync.coordinator.bootstrap import BOOTSTRAP_SEED, bootstrap_vector, check_catalog
from sync.coordinator.config import ENV_PREFIX, CoordinatorConfig
from sync.coordinator.publishing import FloatVector, InitialVector
from sync.coordinator.service import Coordinator
from sync.coordinator.storage import open_store, redacted
from sync.protocol.certs import fingerprint, is_loopback

MAX_TOKENS = 100_000


def _field_help(cls: type = CoordinatorConfig) -> dict[str, str]:
    """One line per setting, read from the docstrings under the fields of ``cls`` (:class:`CoordinatorConfig`)."""
    source = inspect.getsource(cls)
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
        type=str if name == "db" else type(default),
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
        help="run the coordinator service (ASGI under uvicorn; state in SQLite, or in PostgreSQL shared by any "
        "number of replicas, one of which leads)",
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
    _add_access_settings(serve)
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
    enroll = sub.add_parser(
        "enroll",
        help="print one-time enrollment tokens: each registers one new agent (agent sync --enroll TOKEN)",
        description="Issue COUNT one-time enrollment tokens and print them, one a line, on stdout. Only their SHA-256 "
        "is stored, so keep the output: hand one token to each agent's owner (`agent sync --enroll TOKEN`). A token "
        "registers one agent; an agent registered once needs no token again.",
    )
    enroll.add_argument("--count", type=int, default=1, help=f"how many tokens (1 to {MAX_TOKENS:,}; default 1)")
    _add_setting(enroll, "db")
    return parser


def _env_flag(name: str) -> bool:
    return os.environ.get(ENV_PREFIX + name, "").strip().lower() in ("1", "true", "yes", "on")


def _add_access_settings(serve: argparse.ArgumentParser) -> None:
    """serve's TLS, enrollment and rate-limit flags (each also PERSONA_COORDINATOR_<NAME>)."""
    for name, what in (("certfile", "PEM certificate (chain)"), ("keyfile", "PEM private key")):
        serve.add_argument(
            f"--{name}",
            type=Path,
            default=os.environ.get(ENV_PREFIX + name.upper()) or None,
            help=f"serve HTTPS with this {what}; give both --certfile and --keyfile ({ENV_PREFIX}{name.upper()})",
        )
    helps = _field_help(AccessPolicy)
    default = AccessPolicy()
    serve.add_argument(
        "--open-enrollment",
        action="store_true",
        default=_env_flag("OPEN_ENROLLMENT"),
        help=f"{helps['open_enrollment']} ({ENV_PREFIX}OPEN_ENROLLMENT=1; default: tokens required)",
    )
    for name in ("agent_rate", "agent_burst", "register_rate", "register_burst"):
        value = getattr(default, name)
        raw = os.environ.get(ENV_PREFIX + name.upper())
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=type(value),
            default=raw or value,  # argparse converts a string default with type: a bad variable is a usage error
            help=f"{helps.get(name, '')} ({ENV_PREFIX}{name.upper()}; default: {value})",
        )


def _certificate(certfile: Path | None, keyfile: Path | None) -> str | None:
    """The served certificate's SHA-256 fingerprint once the pair is checked to load; None without TLS."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise ValueError("give both --certfile and --keyfile to serve HTTPS (or neither for plain HTTP)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        first = x509.load_pem_x509_certificates(certfile.read_bytes())[0]
    except (ssl.SSLError, OSError, ValueError) as error:
        raise ValueError(f"cannot serve HTTPS with --certfile {certfile} and --keyfile {keyfile}: {error}") from error
    return fingerprint(first.public_bytes(Encoding.DER))


def _access(args: argparse.Namespace) -> AccessPolicy:
    """The access policy of ``serve``; open enrollment is refused on an address other machines can reach."""
    if args.open_enrollment and not is_loopback(args.host):
        raise ValueError(
            f"--open-enrollment lets anyone register any number of agents: it is only for a coordinator on a "
            f"loopback address, not --host {args.host}; issue tokens with `agent-coordinator enroll` instead"
        )
    for name in ("agent_rate", "agent_burst", "register_rate", "register_burst"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 0 (0: no limit)")
    return AccessPolicy(
        open_enrollment=args.open_enrollment,
        agent_rate=args.agent_rate,
        agent_burst=args.agent_burst,
        register_rate=args.register_rate,
        register_burst=args.register_burst,
    )


def _enroll(args: argparse.Namespace) -> None:
    """``agent-coordinator enroll``: store the hashes of COUNT new tokens, then print the tokens."""
    if not 1 <= args.count <= MAX_TOKENS:
        raise ValueError(f"--count must be from 1 to {MAX_TOKENS:,}, not {args.count}")
    config = CoordinatorConfig.from_env(db=args.db)
    store = open_store(config.db)
    try:
        tokens = [new_token() for _ in range(args.count)]
        enrollment = enrollment_store(store)
        enrollment.add_enrollment_tokens([token_hash(t) for t in tokens], time.time())
        issued, used = enrollment.enrollment_counts()
    finally:
        store.close()
    print("\n".join(tokens))
    print(
        f"agent-coordinator: {len(tokens)} one-time enrollment token(s) for {_db(config)} ({issued} issued in all, "
        f"{used} used); only their SHA-256 is stored, so keep these lines: each registers one agent "
        "(agent sync --enroll TOKEN)",
        file=sys.stderr,
    )


def _db(config: CoordinatorConfig) -> str:
    """Where the state lives, fit for messages (a PostgreSQL URL's password hidden)."""
    return redacted(str(config.db))


def _announced(config: CoordinatorConfig, vector: FloatVector) -> FloatVector:
    """``vector``, once stderr says it becomes version 0 as the catalog's bootstrap vector."""
    print(
        f"agent-coordinator: nothing is published in {_db(config)} yet: publishing the {config.catalog} bootstrap "
        f"shared vector ({vector.size:,} values, seed {BOOTSTRAP_SEED}) as version 0",
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
            f"agent-coordinator: wrote version 0 to {_db(config)} (sha256 {latest.sha256}); "
            f"next: agent-coordinator serve --db {_db(config)}",
            file=sys.stderr,
        )
    elif coordinator.vector_size != vector.size:
        raise ValueError(
            f"{_db(config)} already publishes a shared vector of {coordinator.vector_size:,} values, not the "
            f"{config.catalog} bootstrap's {vector.size:,}: nothing written (give another --db)"
        )
    else:
        print(
            f"agent-coordinator: {_db(config)} already publishes version {latest.version}; nothing written",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            _init(args)
            return
        if args.command == "enroll":
            _enroll(args)
            return
        access = _access(args)
        certificate = _certificate(args.certfile, args.keyfile)
        config = CoordinatorConfig.from_env(**{f.name: getattr(args, f.name) for f in fields(CoordinatorConfig)})
        check_catalog(config.catalog)
        coordinator = Coordinator(config, initial=_initial(args.init_shared, config))
        app = build_app(coordinator, access=access)
    except (ValueError, OSError, PersonaError) as error:
        print(f"agent-coordinator: {error}", file=sys.stderr)
        sys.exit(1)
    scheme = "https" if certificate else "http"
    print(
        f"agent-coordinator: serving on {scheme}://{args.host}:{args.port} (state in {_db(config)}, "
        f"vector of {coordinator.vector_size}, published version {coordinator.latest().version}; "
        f"{'open enrollment' if access.open_enrollment else 'new agents need an enrollment token'})",
        file=sys.stderr,
    )
    if certificate:
        print(
            f"agent-coordinator: certificate {certificate} (agents pin it with "
            f'[sync] coordinator_fingerprint = "{certificate}")',
            file=sys.stderr,
        )
    elif not is_loopback(args.host):
        print(
            "agent-coordinator: warning: plain HTTP on an address other machines reach; agents refuse it unless "
            "told to (--insecure-http). Serve HTTPS with --certfile/--keyfile or behind a TLS proxy.",
            file=sys.stderr,
        )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_keep_alive=30,
        ssl_certfile=args.certfile if certificate else None,
        ssl_keyfile=args.keyfile if certificate else None,
    )
