"""The pacing rule shared by the bounded language-model work (caching lists, training steps)."""

from __future__ import annotations

import time

from models.fm.pace import Pace


def test_the_first_unit_always_runs_and_a_passed_deadline_stops_the_next() -> None:
    pace = Pace(time.monotonic() - 1.0)  # already passed
    assert pace.allows()
    with pace.unit():
        pass
    assert pace.done == 1 and not pace.allows()


def test_without_a_deadline_or_far_from_it_every_unit_runs() -> None:
    for deadline in (None, time.monotonic() + 3600.0):
        pace = Pace(deadline)
        for _ in range(3):
            assert pace.allows()
            with pace.unit():
                pass
        assert pace.done == 3


def test_a_unit_that_would_end_past_the_deadline_at_the_last_pace_does_not_start() -> None:
    pace = Pace(time.monotonic() + 0.5)
    with pace.unit():
        time.sleep(0.6)  # the deadline passes during the first unit; the rule reads its length
    assert not pace.allows()
