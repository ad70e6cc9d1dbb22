"""`agent demo`: a federation of ML-100K agents through a real coordinator on 127.0.0.1, then one agent's view."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.store.profile_store import ProfileStore

AGENT = [sys.executable, "-c", "from agent.cli.main import main; main()"]


@pytest.mark.usefixtures("warm_embedding_cache")
def test_demo_federates_through_a_coordinator_then_suggests() -> None:
    done = subprocess.run(
        [*AGENT, "demo", "--rounds", "1", "--cohort", "20", "--user", "7"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "a coordinator on 127.0.0.1, cohorts of 20" in done.stderr
    assert "Secure aggregation: 1 rounds" in done.stderr
    assert "Traceback" not in done.stderr
    with ProfileStore.open() as store:
        assert store.get_meta("demo_user") == "7"
        assert len(store.interactions()) > 0
        assert store.load_private() is not None  # trained in a cohort, or locally when never drawn
    listed = subprocess.run([*AGENT, "suggest", "--json", "-n", "10"], capture_output=True, text=True, check=True)
    suggestions = json.loads(listed.stdout)["suggestions"]
    assert len(suggestions) == 10 and all(s["title"] for s in suggestions)
