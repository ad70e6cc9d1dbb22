"""Types shared across the learning core: array aliases and the progress callbacks long runs report through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]

ScoreAllFn = Callable[[int, IntArray], FloatArray]
"""A first stage's scores of every catalog item for (user, history)."""

Progress = Callable[[str, dict[str, Any]], None]
"""A structured progress report: an event name ("round", "epoch", ...) and its fields."""

Status = Callable[[str], None]
"""A one-line status message (asset preparation, the audit): ``"<step>: <text>"``."""
