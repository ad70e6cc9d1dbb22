"""The budget rule of the language model's bounded work (caching lists, training steps): under a deadline, no unit
of work after the first starts unless it would end before the deadline at the pace of the one before it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Pace:
    """Paces units of work against a :func:`time.monotonic` ``deadline`` (None: no deadline); the first always runs."""

    def __init__(self, deadline: float | None) -> None:
        """Start pacing against ``deadline``; nothing has run yet."""
        self.deadline = deadline
        self.done = 0
        self._took = 0.0

    def allows(self) -> bool:
        """Whether the next unit may start: it is the first, there is no deadline, or it would end before the
        deadline if it took as long as the unit before it."""
        return not self.done or self.deadline is None or time.monotonic() + self._took <= self.deadline

    @contextmanager
    def unit(self) -> Iterator[None]:
        """Time one unit of work (the next :meth:`allows` reads its length) and count it."""
        began = time.monotonic()
        yield
        self._took = time.monotonic() - began
        self.done += 1
