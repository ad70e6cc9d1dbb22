"""One whole sync in one call (:func:`run_sync`, what ``agent sync`` runs) and the ledger entry it leaves.

Register if needed, fetch and verify the current shared vector, let the caller compute its delta from it, take
part in one round and return the new shared vector (the caller applies it atomically). A ledger entry is recorded
whatever happens after joining. When the round evaluates (federated evaluation, ``sync.protocol.evaluation``), the
caller's ``evaluate`` scores its held-out item under the round's candidate settings (:mod:`sync.client.evaluate`)
and only the bounded per-setting counts ride in the masked vector; the new shared vector comes back with the blend
weight the coordinator signed with it (checked here).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx
import numpy as np
from numpy.typing import NDArray

from models.types import FloatArray, Progress
from sync.client.budget import epsilon_this_year
from sync.client.http_client import AgentClient, RoundResult, SharedVector
from sync.client.identity import Identity
from sync.client.ledger import EgressLedger, LedgerEntry
from sync.errors import ComeBackLater, StaleBase, SyncError, SyncTimeout
from sync.protocol.evaluation import EvalPlan, LocalEvaluation
from sync.protocol.privacy import DEFAULT_DELTA, PrivacyParams


def ledger_entry(result: RoundResult, ledger: EgressLedger, *, delta: float = DEFAULT_DELTA) -> LedgerEntry:
    """The ledger entry for a round result, with ε over the released rounds of the last 365 days (this one too)."""
    now = time.time()
    entry = LedgerEntry(
        time=now,
        round_id=result.round_id,
        status=result.status,
        bytes_sent=result.traffic.sent,
        bytes_received=result.traffic.received,
        clip=result.privacy.clip,
        sigma=result.privacy.sigma,
        noise_multiplier=result.privacy.noise_multiplier,
        cohort_size=result.cohort_size,
        released=result.released,
        epsilon=0.0,
        delta=delta,
    )
    return replace(entry, epsilon=epsilon_this_year([*ledger.entries(), entry], now, delta))


@dataclass
class SyncOutcome:
    """What :func:`run_sync` returns: the new shared vector (apply it atomically) and the ledger entry."""

    shared: SharedVector
    entry: LedgerEntry
    round: RoundResult


def run_sync(
    url: str,
    identity: Identity,
    compute_delta: Callable[[FloatArray], tuple[NDArray[np.floating], float]],
    ledger: EgressLedger,
    *,
    coordinator_key: bytes | None = None,
    min_sigma: float = 0.0,
    timeout: float = 300.0,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
    enrollment: str | None = None,
    register: bool = True,
    evaluate: Callable[[EvalPlan, int], LocalEvaluation] | None = None,
    max_wait: float = 120.0,
) -> SyncOutcome:
    """One full sync: register, fetch + verify the shared vector, ``compute_delta(shared) -> (delta, n_examples)``,
    one secure-aggregation round, fetch the new vector. Records a ledger entry whatever happens after joining.
    A round offering less noise than ``min_sigma`` is refused (what the agent's privacy budget was checked at).
    ``verify`` checks an https coordinator (:func:`sync.client.tls.ssl_context`); ``enrollment`` is the one-time
    token a coordinator that requires enrollment takes when this agent registers for the first time
    (``register=False``: the caller registered it already). ``evaluate(plan, base_version)`` is what this agent
    measures when the round evaluates (:func:`sync.client.evaluate.evaluate_held_out`); without it, it adds zeros.

    The agent checks in before it joins (``POST /v1/checkin``): asked to come back within ``max_wait`` seconds, it
    waits (then has ``timeout`` seconds from its admission for the round); asked to come back later, it raises
    :class:`sync.errors.ComeBackLater` with the window — nothing was sent, no ledger entry. A delta based on a version
    too far behind raises :class:`sync.errors.StaleBase` (cannot happen here: the vector is fetched just before).
    """

    async def go() -> SyncOutcome:
        async with httpx.AsyncClient(
            base_url=url, transport=transport, timeout=httpx.Timeout(30.0), verify=verify
        ) as http:
            client = AgentClient(
                http, identity, coordinator_key=coordinator_key, min_sigma=min_sigma, max_checkin_wait=max_wait
            )
            if register:
                await client.register(enrollment)
            current = await client.fetch_shared()
            if progress:
                progress("fetched", {"version": current.version})
            delta, n_examples = compute_delta(current.vector)
            try:
                result = await asyncio.wait_for(
                    client.take_part(delta, n_examples, timeout=timeout, progress=progress, evaluate=evaluate),
                    timeout + max_wait + 5.0,
                )
            except (ComeBackLater, StaleBase):
                raise  # nothing was sent: no participation to record
            except (SyncError, TimeoutError) as error:
                failed = RoundResult(-1, "failed", 0, PrivacyParams(), None, None, None, 0.0, client.traffic, False)
                ledger.record(ledger_entry(failed, ledger))
                if isinstance(error, TimeoutError):
                    raise SyncTimeout(f"no round finished within {timeout:.0f} s") from error
                raise
            new = await client.fetch_shared()
            result.traffic = client.traffic
            entry = ledger_entry(result, ledger)
            ledger.record(entry)
            return SyncOutcome(new, entry, result)

    return asyncio.run(go())
