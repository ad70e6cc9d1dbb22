"""Shared pytest setup: make the repository root importable (``models``, ``sync``, ``agent``).

The project is not installed into the venv, and pytest's default ``prepend`` import mode only puts ``tests/``
on ``sys.path``; this file puts the repository root there too.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
