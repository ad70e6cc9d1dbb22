"""The one error the coordinator's logic raises to refuse a request; the ASGI app turns it into a 4xx answer."""

from __future__ import annotations


class Rejection(Exception):
    """A request the coordinator refuses: HTTP ``status`` and a machine-readable ``reason``."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
