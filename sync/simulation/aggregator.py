""":class:`SecureAggregator`: the ``models.federation.Aggregator`` interface, carried out by real agent
clients against a real coordinator over 127.0.0.1 — so ``train_federated(..., aggregator=SecureAggregator(...))``
trains through secure aggregation, clipping, noise and quantization without any change to the training code.

Where the server optimizer lives: the coordinator applies FedAdam to the unmasked mean and publishes the result;
:meth:`SecureAggregator.finish` returns the same unmasked mean (read from the round's public aggregate) and the
simulation's own FedAdam applies it. Started from the same initial vector with the same server learning rate, both
produce the same vector (:meth:`SecureAggregator.published_vector` reads the coordinator's, to check).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.types import FloatArray
from sync.client.http_client import AgentClient, RoundResult, StageWatcher
from sync.client.identity import Identity
from sync.coordinator.local import coordinator_process
from sync.errors import SyncError
from sync.protocol import rules
from sync.protocol.privacy import DEFAULT_DELTA, epsilon, weighted_mean
from sync.protocol.wire import API


class _Throttled(httpx.AsyncBaseTransport):
    """A pool of ``limit`` keep-alive connections with at most ``limit`` requests in flight; the rest queue here,
    requests with a body (an agent's answer) ahead of the others.

    httpcore's pool rescans all its connections (and every request queued in it) whenever a request starts or
    ends; with a thousand simulated agents queueing inside it, that bookkeeping cost more CPU than the agents'
    cryptography. Each response is read in full before its slot is released, since only then is its connection
    free again. Answers go first because every agent of a stage first asks for its inputs and then posts: served
    in arrival order, the posts would wait behind all the questions and reach the coordinator in one burst at the
    end of the stage, instead of while the simulation computes the next agents' answers.
    """

    def __init__(self, limit: int, replicas: tuple[str, ...] = ()) -> None:
        if limit < 2:
            raise ValueError("at least two connections: one long poll may hold a slot")
        self._replicas = [httpx.URL(url) for url in replicas]
        self._turn = 0
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        )
        self._free = limit
        self._answers: deque[asyncio.Future[None]] = deque()
        self._questions: deque[asyncio.Future[None]] = deque()

    async def _acquire(self, answer: bool) -> None:
        if self._free > 0 and not self._answers and not self._questions:
            self._free -= 1
            return
        slot = asyncio.get_running_loop().create_future()
        (self._answers if answer else self._questions).append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        for queue in (self._answers, self._questions):
            while queue:
                slot = queue.popleft()
                if not slot.done():
                    slot.set_result(None)  # the slot passes straight to the next waiter
                    return
        self._free += 1

    def _route(self, request: httpx.Request) -> None:
        """With replicas, as a load balancer would: an agent's signed requests always to the same replica (by its
        id), the others in turn. The signature covers the path, not the host, so it still verifies."""
        if not self._replicas:
            return
        agent = request.headers.get("x-agent-id")
        if agent:
            target = self._replicas[int(hashlib.sha256(agent.encode()).hexdigest()[:8], 16) % len(self._replicas)]
        else:
            target, self._turn = self._replicas[self._turn % len(self._replicas)], self._turn + 1
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._route(request)
        await self._acquire(answer=request.method != "GET")
        try:
            response = await self._inner.handle_async_request(request)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        finally:
            self._release()
        return httpx.Response(
            response.status_code, headers=response.headers, content=raw, request=request, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class RoundStats:
    """What one aggregated round cost and gave."""

    round_id: int
    status: str
    agents: int
    dropped: int
    survivors: int
    wall_s: float
    bytes_up_per_agent: float
    bytes_down_per_agent: float
    secagg_cpu_s_per_agent: float


@dataclass
class SecureAggregator:
    """Drives one :class:`AgentClient` per submitted agent through one coordinator round per ``finish()``."""

    url: str
    dropout: float = 0.0  # fraction of each cohort that vanishes after sharing keys
    timeout: float = 900.0
    max_connections: int = 8  # requests in flight at once; the others wait their turn in asyncio (see _Throttled)
    replicas: tuple[str, ...] = ()  # coordinator replicas' URLs to spread the agents over (by agent id); () = url only
    seed: int = 0
    cohort_size: int | None = None  # sample this many of the submitted agents per round (None: all of them)
    stats: list[RoundStats] = field(default_factory=list)
    released_rounds: dict[int, int] = field(default_factory=dict)  # agent -> rounds its input was unmasked in
    noise_multiplier: float = 0.0
    _identities: dict[int, Identity] = field(default_factory=dict)
    _pending: list[tuple[int, FloatArray, float]] = field(default_factory=list)
    _factors: dict[int, float] = field(default_factory=dict)  # agent -> weight factor of this round (default 1)
    _round: int = -1
    _registered: set[int] = field(default_factory=set)

    def select(self, round_id: int, agent_ids: list[int]) -> list[int]:
        """Sample this round's cohort of ``cohort_size`` agents (all of them when unset), seeded by the round."""
        if self.cohort_size is None:
            return agent_ids
        return rules.select_cohort(agent_ids, round_id, self.cohort_size, self.seed)

    def begin_round(self, round_id: int, vector_size: int) -> None:
        """Start collecting this round's contributions."""
        self._round = round_id
        self._pending = []
        self._factors = {}
        self._vector_size = vector_size

    def submit(self, agent_id: int, delta: FloatArray, weight: float, *, factor: float = 1.0) -> None:
        """Keep one agent's delta and weight until :meth:`finish` runs the protocol (it stays on this 'device');
        ``factor`` ∈ [0, 1] scales its weight inside the masked vector (``AgentClient.take_part``), e.g. the
        staleness weight of an update trained from an older version."""
        if delta.shape != (self._vector_size,):
            raise ValueError(f"delta has shape {delta.shape}, expected ({self._vector_size},)")
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"the weight factor must lie in [0, 1], got {factor}")
        self._factors[agent_id] = float(factor)
        self._pending.append((agent_id, np.asarray(delta, dtype=np.float32), float(weight)))

    def finish(self) -> FloatArray | None:
        """Run one round of secure aggregation over HTTP; the unmasked weighted mean, or None if abandoned."""
        if not self._pending:
            return None
        if self.cohort_size is not None and len(self._pending) > self.cohort_size:
            raise SyncError(f"{len(self._pending)} agents submitted but the cohort is {self.cohort_size}: use select()")
        return asyncio.run(self._run())

    async def _run(self) -> FloatArray | None:
        transport = _Throttled(self.max_connections, self.replicas)
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(120.0), transport=transport) as http:
            status = (await http.get("/status")).json()
            max_cohort = status["round"]["max_cohort"] if status.get("round") else None
            if max_cohort is not None and max_cohort < len(self._pending):
                raise SyncError(f"{len(self._pending)} agents but the coordinator admits {max_cohort} per round")
            watcher = StageWatcher(http)
            clients = {}
            for agent_id, _, _ in self._pending:
                identity = self._identities.setdefault(agent_id, Identity.generate())
                clients[agent_id] = AgentClient(http, identity, watcher=watcher, retry_seconds=self.timeout)
            await asyncio.gather(*(c.register() for a, c in clients.items() if a not in self._registered))
            self._registered.update(clients)
            rng = np.random.default_rng([self.seed, self._round])
            n_drop = int(len(self._pending) * self.dropout)
            dropped = set(rng.choice([a for a, _, _ in self._pending], size=n_drop, replace=False).tolist())
            start = time.perf_counter()
            outcomes = await asyncio.gather(
                *(
                    clients[a].take_part(
                        d, w, timeout=self.timeout, drop_after_shares=a in dropped, factor=self._factors.get(a, 1.0)
                    )
                    for a, d, w in self._pending
                ),
                return_exceptions=True,
            )
            wall = time.perf_counter() - start
            results = [r for r in outcomes if isinstance(r, RoundResult)]
            finished = [r for r in results if r.status == "done"]
            for (agent_id, _, _), outcome in zip(self._pending, outcomes, strict=True):
                if isinstance(outcome, RoundResult) and outcome.released:
                    self.released_rounds[agent_id] = self.released_rounds.get(agent_id, 0) + 1
                    self.noise_multiplier = outcome.privacy.noise_multiplier
            n = len(self._pending)
            self.stats.append(
                RoundStats(
                    round_id=results[0].round_id if results else -1,
                    status="done" if finished else "abandoned",
                    agents=n,
                    dropped=n_drop,
                    survivors=len(finished),
                    wall_s=wall,
                    bytes_up_per_agent=sum(c.traffic.sent for c in clients.values()) / n,
                    bytes_down_per_agent=sum(c.traffic.received for c in clients.values()) / n,
                    secagg_cpu_s_per_agent=sum(r.secagg_cpu_s for r in results) / max(1, len(results)),
                )
            )
            for c in clients.values():
                c.traffic.sent = c.traffic.received = 0
            if not finished:
                return None
            round_id = finished[0].round_id
            q = finished[0].quantization
            assert q is not None
            raw = (await http.get(f"{API}/rounds/{round_id}/aggregate")).content
            joint = q.to_float(np.frombuffer(raw, dtype="<i8").astype(np.int64))
            return weighted_mean(joint, finished[0].privacy.clip)

    def epsilon(self, delta: float = DEFAULT_DELTA) -> float:
        """The largest ε of any agent so far (one Gaussian event per round its input was unmasked in)."""
        most = max(self.released_rounds.values(), default=0)
        return epsilon([self.noise_multiplier] * most, delta)

    def published_vector(self) -> FloatArray:
        """The coordinator's newest published shared vector (unverified read, for consistency checks)."""
        with httpx.Client(base_url=self.url, timeout=60) as http:
            meta = http.get(f"{API}/shared").json()
            blob = http.get(f"{API}/shared/{meta['version']}").content
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)

    @classmethod
    @contextlib.contextmanager
    def local(
        cls,
        initial: FloatArray,
        admit: int,
        *,
        workdir: Path | None = None,
        coordinator_args: tuple[str, ...] = (),
        **options: Any,
    ) -> Any:
        """Start a coordinator subprocess on 127.0.0.1 seeded with ``initial`` and admitting ``admit`` agents
        per round; yield a SecureAggregator bound to it."""
        with contextlib.ExitStack() as stack:
            folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="persona-sync-")))
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "initial.npy", np.asarray(initial, dtype=np.float32))
            args = (
                "--init-shared",
                str(folder / "initial.npy"),
                "--target-cohort",
                str(admit),
                "--over-selection",
                "0",
                "--advertise-s",
                "600",
                *coordinator_args,
            )
            url, _process = stack.enter_context(
                coordinator_process(folder / "coordinator.sqlite3", args=args, log=folder / "coordinator.log")
            )
            yield cls(url, **options)
