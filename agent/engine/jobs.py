"""Long work that the CLI and the TUI start: local training runs in a separate process (torch stays out of the app)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from agent.errors import TrainingError
from agent.settings import PASSPHRASE_ENV


def run_training(
    *, passphrase: str | None = None, timeout: float = 600.0, args: tuple[str, ...] = ("train",)
) -> dict[str, Any]:
    """Run ``python -m agent.engine.worker train`` and wait; returns its JSON result or raises :class:`TrainingError`.

    The worker inherits the environment (so ``PERSONA_HOME`` points it at the same profile); an encrypted
    profile's passphrase is handed over in ``PERSONA_PASSPHRASE``, never on the command line. ``args`` picks the
    worker's mode (``("sync-train", SHARED, OUT_DIR)`` for a sync).
    """
    env = dict(os.environ)
    if passphrase is not None:
        env[PASSPHRASE_ENV] = passphrase
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.engine.worker", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise TrainingError(f"Local training took longer than {timeout:.0f} s and was stopped.") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise TrainingError(f"Local training failed: {detail}", hint="The previous private adapter is kept.")
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise TrainingError(f"The training worker printed no result: {proc.stdout[-200:]!r}") from exc
    return result
