"""Simulated agents for the tests that run a round over a real coordinator: a cohort of :class:`AgentClient` on one
HTTP client and one :class:`StageWatcher` (one long poll for them all), registered and taking part together, in
this thread or in a background one while the test drives another agent (``agent sync``, the TUI, ``run_sync``).

A module rather than fixtures in conftest.py so that tests/agent can import it too.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import httpx
import numpy as np
from numpy.typing import NDArray

from sync.client.http_client import AgentClient, RoundResult, StageWatcher
from sync.client.identity import Identity
from sync.protocol.evaluation import EvalPlan, LocalEvaluation

Deltas = NDArray[np.floating] | Sequence[NDArray[np.floating]]
"""One shared delta per agent (the rows of a 2-D array, or a list)."""
Evaluate = Callable[[EvalPlan, int], LocalEvaluation]
"""What an agent measured on its held-out item (``AgentClient.take_part``'s ``evaluate``)."""


def noise(n: int, size: int, scale: float, seed: int) -> NDArray[np.float64]:
    """``n`` deltas of ``size`` values drawn from N(0, ``scale``²), one per row (seeded)."""
    return np.random.default_rng(seed).normal(0.0, scale, (n, size))


@asynccontextmanager
async def cohort(
    url: str,
    n: int,
    *,
    verify: ssl.SSLContext | bool = True,
    tokens: Sequence[str] | None = None,
    max_connections: int | None = None,
) -> AsyncIterator[list[AgentClient]]:
    """``n`` agents on one HTTP client and one stage watcher, registered (with ``tokens``, one each, when the
    coordinator requires enrollment); ``max_connections`` caps the client's connections (default: httpx's). The
    client closes on exit."""
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"{n} agents need {n} enrollment tokens, got {len(tokens)}")
    client = (
        httpx.AsyncClient(
            base_url=url, timeout=60.0, verify=verify, limits=httpx.Limits(max_connections=max_connections)
        )
        if max_connections
        else httpx.AsyncClient(base_url=url, timeout=60.0, verify=verify)
    )
    async with client as http:
        watcher = StageWatcher(http)
        agents = [AgentClient(http, Identity.generate(), watcher=watcher) for _ in range(n)]
        await asyncio.gather(*(a.register(None if tokens is None else tokens[i]) for i, a in enumerate(agents)))
        yield agents


async def take_part(
    agents: Sequence[AgentClient],
    deltas: Deltas,
    n_examples: float | Sequence[float],
    *,
    timeout: float = 300.0,
    drop: int = 0,
    evaluate: Evaluate | None = None,
) -> list[RoundResult | BaseException]:
    """Every agent takes part in the next round with its delta and weight (one for all, or one each); the first
    ``drop`` vanish after the share-keys stage. Each agent's result, or what it raised, in order."""
    if len(deltas) != len(agents):
        raise ValueError(f"{len(agents)} agents need {len(agents)} deltas, got {len(deltas)}")
    weights = [float(n_examples)] * len(agents) if isinstance(n_examples, (int, float)) else list(n_examples)
    return await asyncio.gather(
        *(
            a.take_part(delta, weight, timeout=timeout, drop_after_shares=i < drop, evaluate=evaluate)
            for i, (a, delta, weight) in enumerate(zip(agents, deltas, weights, strict=True))
        ),
        return_exceptions=True,
    )


async def cohort_round(
    url: str,
    deltas: Deltas,
    n_examples: float | Sequence[float],
    *,
    timeout: float = 300.0,
    drop: int = 0,
    evaluate: Evaluate | None = None,
    verify: ssl.SSLContext | bool = True,
    tokens: Sequence[str] | None = None,
    max_connections: int | None = None,
) -> list[RoundResult | BaseException]:
    """A :func:`cohort` of one agent per delta, registered, taking part in the next round (:func:`take_part`)."""
    async with cohort(url, len(deltas), verify=verify, tokens=tokens, max_connections=max_connections) as agents:
        return await take_part(agents, deltas, n_examples, timeout=timeout, drop=drop, evaluate=evaluate)


@contextmanager
def cohort_in_background(
    url: str,
    deltas: Deltas,
    n_examples: float,
    *,
    timeout: float = 300.0,
    evaluate: Evaluate | None = None,
    join_timeout: float = 180.0,
) -> Iterator[list[RoundResult | BaseException]]:
    """:func:`cohort_round` in a background thread for the body of the ``with``, which drives the cohort's last
    agent; the list it yields holds the cohort's results once the block ends (the thread is joined, up to
    ``join_timeout`` seconds). A block that raises does not wait for the thread (a daemon)."""
    results: list[RoundResult | BaseException] = []

    def run() -> None:
        results.extend(asyncio.run(cohort_round(url, deltas, n_examples, timeout=timeout, evaluate=evaluate)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield results
    thread.join(timeout=join_timeout)


def finished(results: Sequence[RoundResult | BaseException]) -> list[RoundResult]:
    """The results, once every agent came back with one (an AssertionError naming what any agent raised)."""
    done = [r for r in results if isinstance(r, RoundResult)]
    assert len(done) == len(results), [r for r in results if not isinstance(r, RoundResult)]
    return done
