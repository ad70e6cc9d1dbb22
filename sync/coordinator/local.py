"""Running a coordinator on this machine: in a thread (tests) or as an ``agent-coordinator`` subprocess
(simulation, benchmarks, tests of crash recovery). Both listen on 127.0.0.1 for real.

Both are loopback development coordinators: unless told otherwise they let any key register and limit no rate
(:data:`sync.coordinator.access.OPEN`, ``--open-enrollment``), so simulations of a thousand agents on one address
run as before; ``serve_in_thread(..., access=AccessPolicy())`` or ``dev=False`` gives the operator's defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import uvicorn

from sync.coordinator.access import OPEN, AccessPolicy
from sync.coordinator.app import build_app
from sync.coordinator.service import Coordinator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``url``/healthz answers; RuntimeError after ``timeout`` or if ``process`` exits. (An ``https``
    URL is probed without checking its certificate: this only waits for a local server to come up.)"""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1.0, verify=False).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the coordinator at {url} did not become healthy within {timeout:.0f} s")


@contextlib.contextmanager
def serve_in_thread(
    coordinator: Coordinator,
    *,
    port: int | None = None,
    access: AccessPolicy = OPEN,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> Iterator[str]:
    """Serve ``coordinator`` with uvicorn in a daemon thread; yields its base URL (``https`` with a certificate)."""
    port = port or free_port()
    config = uvicorn.Config(
        build_app(coordinator, access=access),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"{'https' if certfile else 'http'}://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def cli_command(*args: str) -> list[str]:
    """The command line that runs ``agent-coordinator ARGS`` with this interpreter."""
    return [sys.executable, "-c", "import sys; from sync.coordinator.cli import main; main(sys.argv[1:])", *args]


DEV_ARGS = ("--open-enrollment", "--agent-rate", "0", "--register-rate", "0", "--round-interval-s", "0")
"""What makes ``serve`` a loopback development coordinator: open enrollment, no rate limits, rounds back to back."""


def coordinator_command(db: str | Path, port: int, args: Sequence[str] = (), *, dev: bool = True) -> list[str]:
    """The command line that runs ``agent-coordinator serve`` with this interpreter on 127.0.0.1 (with ``dev``: as
    a development coordinator, :data:`DEV_ARGS`)."""
    extra = DEV_ARGS if dev else ()
    return cli_command("serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db), *extra, *args)


def _die_with_parent() -> None:
    """In the child, before it runs the coordinator (Linux): ask for SIGTERM when the process that started it dies,
    so a killed ``agent eval --via-sync``, simulation or bench leaves no coordinator behind. Elsewhere: nothing."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1
"""prctl option: the signal a child gets when its parent dies (linux/prctl.h)."""


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a coordinator subprocess if it still runs: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def coordinator_process(
    db: str | Path, *, port: int | None = None, args: Sequence[str] = (), log: Path | None = None, dev: bool = True
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``agent-coordinator serve`` as a subprocess (``dev``: :data:`DEV_ARGS`); yields (base URL, process) and
    stops it afterwards. The URL is ``https`` when ``args`` give a ``--certfile``."""
    port = port or free_port()
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the sync package
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        coordinator_command(db, port, args, dev=dev), env=env, stdout=out, stderr=out, preexec_fn=_die_with_parent
    )
    url = f"{'https' if '--certfile' in args else 'http'}://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=120.0, process=process)  # a loaded machine takes a while to import and start it
        yield url, process
    finally:
        stop_process(process)
        if log and not isinstance(out, int):
            out.close()
