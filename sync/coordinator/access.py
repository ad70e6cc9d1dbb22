"""Who may join and how often they may ask: one-time enrollment tokens and token-bucket rate limits.

Enrollment: the operator issues tokens (``agent-coordinator enroll --count N``); only their SHA-256 is stored. A new
agent registers with one in the ``enrollment`` field of ``POST /v1/agents``; the token is then bound to that agent
and registers no other. An agent already registered needs no token again. ``open_enrollment`` (for a coordinator
on a loopback address: tests, demos, a developer's machine) lets any key register.

Rate limits: a token bucket per registered agent for its signed requests, and one per client address for
registrations of new agents (the only thing an unknown client can make the coordinator store). A request over the
limit is refused with 429 and ``Retry-After`` (whole seconds until a token is back). The buckets live in the
process: each replica limits on its own.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from sync.coordinator.rejection import Rejection

TOKEN_PREFIX = "pe1-"
"""Every enrollment token starts with this (Persona enrollment, format 1); 32 random bytes follow, base32."""


def new_token() -> str:
    """A fresh one-time enrollment token (256 bits of randomness, URL- and shell-safe)."""
    return TOKEN_PREFIX + base64.b32encode(secrets.token_bytes(32)).decode("ascii").rstrip("=").lower()


def token_hash(token: str) -> str:
    """What the state stores of a token: the hex SHA-256 of its text (the token has 256 bits: no salt needed)."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


class EnrollmentStore(Protocol):
    """The three enrollment methods a coordinator store has (the marked section of :mod:`sync.coordinator.state`)."""

    def add_enrollment_tokens(self, token_hashes: Sequence[str], created: float) -> None:
        """Store the hashes of new one-time enrollment tokens (all or none)."""
        ...

    def claim_enrollment(self, token_hash: str, agent_id: str, used_at: float) -> str:
        """Use a token for ``agent_id``: "claimed", "used" (by another agent) or "unknown"."""
        ...

    def enrollment_counts(self) -> tuple[int, int]:
        """(tokens issued, of which used)."""
        ...


def enrollment_store(store: object) -> EnrollmentStore:
    """``store`` as an :class:`EnrollmentStore`; ValueError (said at start-up, not as a 500 later) if its backend has
    no enrollment table."""
    missing = [
        name for name in ("add_enrollment_tokens", "claim_enrollment", "enrollment_counts") if not hasattr(store, name)
    ]
    if missing:
        raise ValueError(f"this coordinator's storage backend ({type(store).__name__}) does not keep enrollment tokens")
    return cast(EnrollmentStore, store)


class RateLimited(Rejection):
    """429: too many requests; ``retry_after`` seconds until the next one would be accepted."""

    def __init__(self, retry_after: float, detail: str) -> None:
        super().__init__(429, "rate_limited", detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AccessPolicy:
    """Who may register and how fast anyone may call (what ``agent-coordinator serve`` is told)."""

    open_enrollment: bool = False
    """Register any key without a token (only for a coordinator listening on a loopback address)."""
    agent_rate: float = 2.0
    """Signed requests per second each registered agent may sustain (0: no limit)."""
    agent_burst: int = 60
    """... and how many it may send at once (a round takes about ten)."""
    register_rate: float = 0.2
    """Registrations of new agents per second from one client address (0: no limit)."""
    register_burst: int = 20
    """... and how many at once."""


OPEN = AccessPolicy(open_enrollment=True, agent_rate=0.0, register_rate=0.0)
"""A loopback development coordinator: anyone registers, nothing is rate-limited (tests, demos, simulations)."""


class TokenBuckets:
    """One token bucket per key (an agent id, a client address): ``rate`` tokens a second up to ``burst``."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()
        self._calls = 0

    def take(self, key: str, what: str) -> None:
        """Spend one token of ``key``'s bucket; :class:`RateLimited` (429) if it is empty. ``what`` names the caller
        in the refusal."""
        if self.rate <= 0:
            return
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimited(
                    wait, f"{what} is over its limit of {self.rate:g} requests/s (burst {self.burst}); retry later"
                )
            self._buckets[key] = (tokens - 1.0, now)
            self._calls += 1
            if self._calls % 4096 == 0:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled completely (they are the same as no bucket): memory stays bounded
        by the callers of the last burst/rate seconds."""
        full = [k for k, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


def retry_after_header(error: RateLimited) -> str:
    """The ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(error.retry_after)))
