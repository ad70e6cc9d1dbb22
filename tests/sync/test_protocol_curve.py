"""scripts/protocol_curve.py: the first stage's validation curve under the protocol's mechanics, in process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("warm_embedding_cache")

SCRIPT = [sys.executable, "scripts/protocol_curve.py", "--users", "24", "--rounds", "2", "--json"]


def _run(*args: str) -> dict[str, object]:
    done = subprocess.run([*SCRIPT, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_protocols_mechanics_reduce_to_the_plain_federation_when_nothing_binds() -> None:
    plain = _run("--mechanism", "none")
    # clipping to a bound no delta reaches and a weight cap above every n_u weigh each agent by n_u, as `none` does
    unbound = _run("--mechanism", "clip", "--clip", "1e9", "--weight-cap", "1e9")
    assert np.allclose(plain["valid_NDCG@10"], unbound["valid_NDCG@10"], atol=1e-3)  # type: ignore[arg-type]
    curve = unbound["valid_NDCG@10"]
    assert isinstance(curve, list) and len(curve) == 2 and unbound["users"] == 24
    assert unbound["selected_round"] == int(np.argmax(curve)) + 1 and unbound["best_valid_NDCG@10"] == max(curve)
    assert unbound["mechanism"] == "clip" and unbound["sigma"] == 0.4  # the shipped σ, unused without noise


def test_bad_settings_are_refused_with_a_reason() -> None:
    done = subprocess.run([*SCRIPT, "--clip", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--clip must be positive" in done.stderr and "Traceback" not in done.stderr
