"""A local coordinator subprocess does not outlive the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import sys, time
from pathlib import Path
from sync.coordinator.local import coordinator_process
with coordinator_process(Path(sys.argv[1]), args=("--vector-size", "8")) as (url, process):
    print(process.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited: it only waits to be reaped
        return stat.read().split()[2] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is a Linux prctl")
def test_a_killed_parent_takes_its_coordinator_with_it(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "c.sqlite3")], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)  # no context manager runs: only the kernel can tell the child
    parent.wait()
    deadline = time.monotonic() + 30.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    survived = _alive(child)
    if survived:  # leave no orphan behind a failing run
        os.kill(child, signal.SIGKILL)
    assert not survived
