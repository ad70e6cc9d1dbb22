"""The agent's side of a round, over HTTP (httpx): signed requests, verified downloads, and one round of secure
aggregation.

:class:`AgentClient` is the async building block that ``agent sync`` (:func:`sync.client.run.run_sync`) runs once
and the simulation runs by the hundred. Only what the protocol needs leaves the device: signed round keys,
encrypted Shamir shares, one packed masked vector and the unmask shares (the egress test checks the bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from models.types import FloatArray, Progress
from sync.client.identity import Identity
from sync.errors import (
    ComeBackLater,
    CoordinatorError,
    ProtocolError,
    RoundAbandoned,
    StaleBase,
    SyncError,
    SyncTimeout,
)
from sync.protocol import secagg
from sync.protocol.evaluation import EvalPlan, LocalEvaluation, encode
from sync.protocol.masking import Quantization
from sync.protocol.privacy import Contribution, PrivacyParams, prepare_contribution
from sync.protocol.wire import (
    API,
    BINARY_TYPE,
    JSON_TYPE,
    STAGES,
    advertise_body,
    b64d,
    b64d_map,
    b64e,
    b64e_map,
    blend_message,
    peer_keys_from_json,
    request_message,
    setup_from_json,
    shared_message,
    stage_index,
    unmask_body,
)


@dataclass
class Traffic:
    """Bytes on the HTTP layer (request line, headers and body; TCP/IP overhead excluded)."""

    sent: int = 0
    received: int = 0


def _request_bytes(request: httpx.Request) -> int:
    head = len(request.method) + len(request.url.raw_path) + 11
    return head + sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + len(request.content)


def _response_bytes(response: httpx.Response) -> int:
    head = 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
    return head + len(response.content)


def retry_after(response: httpx.Response, cap: float) -> float:
    """Seconds a 429 asks to wait (its ``Retry-After`` in seconds; 1 when absent or an HTTP date), within [0, cap]."""
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), cap) if math.isfinite(wait) else cap


class StageWatcher:
    """Waits for rounds to reach stages by long-polling the coordinator.

    One watcher can serve many agents of one process (a simulation): a single poll is in flight at a time and
    each answer is shared, so N waiting agents cost one connection, not N.
    """

    def __init__(self, http: httpx.AsyncClient, traffic: Traffic | None = None) -> None:
        self.http = http
        self.traffic = traffic
        self._known: dict[int, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def _reached(self, round_id: int, stage: str) -> dict[str, Any] | None:
        info = self._known.get(round_id)
        return info if info is not None and stage_index(info["stage"]) >= stage_index(stage) else None

    async def wait(self, round_id: int, stage: str, deadline: float) -> dict[str, Any]:
        """The round's info once it reached ``stage`` (or ended); SyncTimeout past ``deadline`` (monotonic)."""
        while True:
            found = self._reached(round_id, stage)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise SyncTimeout(f"round {round_id} did not reach {stage} in time")
            async with self._lock:
                if self._reached(round_id, stage) is not None:
                    continue
                known = self._known.get(round_id)
                following = STAGES[stage_index(known["stage"]) + 1] if known is not None else stage
                await self._poll(round_id, following, min(left, 20.0))

    async def _poll(self, round_id: int, stage: str, timeout: float) -> None:
        try:
            response = await self.http.get(
                f"{API}/rounds/{round_id}", params={"wait": stage, "timeout": f"{timeout:.1f}"}
            )
        except httpx.TransportError:
            await asyncio.sleep(0.5)
            return
        if self.traffic is not None:
            self.traffic.sent += _request_bytes(response.request)
            self.traffic.received += _response_bytes(response)
        if response.status_code >= 500:
            await asyncio.sleep(0.2)
            return
        info: dict[str, Any] = response.json()
        if response.status_code >= 400:
            raise CoordinatorError(response.status_code, info.get("error", "?"), info.get("detail", ""))
        self._known[round_id] = info


@dataclass(frozen=True)
class PublishedBlend:
    """The rerank blend weight published (and signed) with a shared version: what federated evaluation picked."""

    weight: float
    measured_version: int
    """The shared version the agents evaluated when the weight was picked."""
    agents: int
    """How many agents scored every candidate weight then (the noised count, rounded)."""
    round_id: int

    def as_dict(self) -> dict[str, Any]:
        """For ``agent sync --json`` and the profile's record."""
        return {
            "weight": self.weight,
            "measured_version": self.measured_version,
            "agents": self.agents,
            "round_id": self.round_id,
        }


@dataclass
class SharedVector:
    """A verified published shared vector."""

    version: int
    sha256: str
    vector: FloatArray
    blend: PublishedBlend | None = None
    """The blend weight signed with this version, when the federation evaluates (verified like the vector)."""


@dataclass
class RoundResult:
    """What one round did for this agent."""

    round_id: int
    status: str
    cohort_size: int
    privacy: PrivacyParams
    quantization: Quantization | None
    contribution: Contribution | None  # local only: kept for the agent's own display and for tests
    published_version: int | None
    secagg_cpu_s: float
    traffic: Traffic
    released: bool
    evaluation: dict[str, Any] | None = None
    """The round's public quality entry (population means, the weight picked) when it evaluated."""
    local_evaluation: LocalEvaluation | None = None
    """Local only: what this agent measured on its held-out item (never sent; only its bounded encoding is)."""


@dataclass
class AgentClient:
    """One agent talking to one coordinator."""

    http: httpx.AsyncClient
    identity: Identity
    coordinator_key: bytes | None = None  # pinned after the first contact
    min_sigma: float = 0.0  # refuse rounds that promise less noise than this
    max_clip: float = math.inf  # or a looser bound than this
    watcher: StageWatcher | None = None
    traffic: Traffic = field(default_factory=Traffic)
    retry_seconds: float = 60.0
    max_retry_after: float = 30.0  # a 429's Retry-After is honoured up to this many seconds a wait
    # a check-in's "come back" further away than this: ComeBackLater (set: the round's timeout counts from admission;
    # inf: the waits come out of take_part's timeout)
    max_checkin_wait: float = math.inf
    base_version: int | None = None  # the version the delta is based on: the last one fetched (else the newest)
    come_back: tuple[float, float] | None = None  # the last window the check-in gave (agent clock), or None
    _nonce: int = 0

    def _next_nonce(self) -> int:
        self._nonce = max(self._nonce + 1, time.time_ns())
        return self._nonce

    async def request(
        self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None, signed: bool = True
    ) -> httpx.Response:
        """One request, signed, retried on connection errors for ``retry_seconds``; 4xx raise CoordinatorError.

        A 429 (rate limited) is retried after its ``Retry-After`` (at most ``max_retry_after`` a wait) while the
        ``retry_seconds`` last; past them it raises CoordinatorError like any other refusal."""
        if json_body is not None:
            body, content_type = json.dumps(json_body, separators=(",", ":")).encode(), JSON_TYPE
        elif content is not None:
            body, content_type = content, BINARY_TYPE
        else:
            body, content_type = b"", None
        give_up = time.monotonic() + self.retry_seconds
        retried = False  # a write sent again may have been accepted the first time: its 409 already_submitted is OK
        while True:
            headers = {"content-type": content_type} if content_type else {}
            request = self.http.build_request(method, path, content=body or None, headers=headers)
            if signed:
                nonce = self._next_nonce()
                signed_path = request.url.raw_path.decode()
                signature = self.identity.key.sign(request_message(method, signed_path, nonce, body))
                request.headers["x-agent-id"] = self.identity.agent_id
                request.headers["x-nonce"] = str(nonce)
                request.headers["x-signature"] = b64e(signature)
            try:
                response = await self.http.send(request)
            except httpx.TransportError as error:
                if time.monotonic() > give_up:
                    raise SyncError(f"coordinator unreachable: {error}") from error
                retried = True
                await asyncio.sleep(0.5)
                continue
            self.traffic.sent += _request_bytes(request)
            self.traffic.received += _response_bytes(response)
            if response.status_code >= 500 and time.monotonic() < give_up:
                retried = True
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 429:
                wait = retry_after(response, self.max_retry_after)
                if time.monotonic() + wait <= give_up:
                    await asyncio.sleep(wait)
                    continue
            if response.status_code >= 400:
                try:
                    doc = response.json()
                except ValueError:
                    doc = {}
                if retried and method == "POST" and doc.get("error") == "already_submitted":
                    return response  # the earlier attempt landed (its answer was lost): the same outcome
                raise CoordinatorError(response.status_code, doc.get("error", "http_error"), doc.get("detail", ""))
            return response

    async def register(self, enrollment: str | None = None) -> None:
        """Register this agent's identity key (idempotent). A coordinator that requires enrollment takes a one-time
        ``enrollment`` token the first time; once registered, the agent needs none."""
        body = {"public_key": b64e(self.identity.public)}
        if enrollment:
            body["enrollment"] = enrollment.strip()
        await self.request("POST", f"{API}/agents", json_body=body)

    async def fetch_shared(self) -> SharedVector:
        """The newest published shared vector, checked against its SHA-256 and the (pinned) coordinator key."""
        meta = (await self.request("GET", f"{API}/shared", signed=False)).json()
        key = b64d(meta["public_key"])
        if self.coordinator_key is None:
            self.coordinator_key = key
        elif key != self.coordinator_key:
            raise ProtocolError("the coordinator's signing key changed")
        blob = (await self.request("GET", f"{API}/shared/{meta['version']}", signed=False)).content
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta["sha256"]:
            raise ProtocolError(f"shared vector {meta['version']} does not match its sha256")
        try:
            Ed25519PublicKey.from_public_bytes(self.coordinator_key).verify(
                b64d(meta["signature"]), shared_message(int(meta["version"]), digest)
            )
        except InvalidSignature as error:
            raise ProtocolError(f"shared vector {meta['version']} is not signed by the coordinator") from error
        self.base_version = int(meta["version"])  # what a delta computed from it is based on (the check-in says)
        blend = self._verified_blend(meta.get("blend"), int(meta["version"]), digest)
        return SharedVector(int(meta["version"]), digest, np.frombuffer(blob, dtype="<f4").astype(np.float32), blend)

    def _verified_blend(self, doc: Any, version: int, digest: str) -> PublishedBlend | None:
        """The blend weight published with ``version``, its signature checked; ProtocolError if it does not verify."""
        if doc is None:
            return None
        assert self.coordinator_key is not None
        try:
            blend = PublishedBlend(
                float(doc["weight"]), int(doc["measured_version"]), int(doc["agents"]), int(doc["round_id"])
            )
            signature = b64d(doc["signature"])
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"the blend weight published with version {version} is malformed: {error}") from error
        message = blend_message(version, digest, blend.weight, blend.measured_version, blend.agents)
        try:
            Ed25519PublicKey.from_public_bytes(self.coordinator_key).verify(signature, message)
        except InvalidSignature as error:
            raise ProtocolError(f"the blend weight of version {version} is not signed by the coordinator") from error
        if not (math.isfinite(blend.weight) and blend.weight >= 0):
            raise ProtocolError(f"the blend weight of version {version} is not a weight: {blend.weight}")
        return blend

    async def _join(
        self, session_for: Callable[[int], secagg.AgentSession], deadline: float
    ) -> tuple[secagg.AgentSession, dict[str, Any]]:
        watcher = self.watcher or StageWatcher(self.http, self.traffic)
        while True:
            answer = await self.checkin()
            if "update" in answer:
                update = answer["update"]
                raise StaleBase(str(update.get("detail", "")), int(update["latest_version"]))
            if "retry_after" in answer:
                await self._come_back(answer, watcher, deadline)
                continue
            info = answer["admit"]
            round_id = int(info["round_id"])
            if info["stage"] == "advertise":
                session = session_for(round_id)
                c_pk, s_pk, signature = session.advertise()
                try:
                    await self.request(
                        "POST",
                        f"{API}/rounds/{round_id}/advertise",
                        json_body=advertise_body(c_pk, s_pk, signature),
                    )
                    return session, info
                except CoordinatorError as error:
                    if error.reason not in ("cohort_full", "late_submission", "wrong_round", "wrong_stage"):
                        raise

    async def checkin(self, base_version: int | None = None) -> dict[str, Any]:
        """``POST /v1/checkin`` with the version the delta is based on (``base_version``, else the last one fetched,
        else the newest): the coordinator's answer, ``{"now", "admit" | "retry_after" | "update"}``."""
        base = base_version if base_version is not None else self.base_version
        if base is None:
            base = int((await self.request("GET", f"{API}/shared", signed=False)).json()["version"])
        response = await self.request("POST", f"{API}/checkin", json_body={"base_version": base})
        answer: dict[str, Any] = response.json()
        return answer

    async def _come_back(self, answer: dict[str, Any], watcher: StageWatcher, deadline: float) -> None:
        """Wait as a check-in's ``retry_after`` says: until its window opens (or, sooner, until the round running now
        ends, when the next one may open before the estimate); ComeBackLater if that is further than this agent
        waits (``max_checkin_wait``, or its deadline)."""
        retry = answer["retry_after"]
        now = float(answer["now"])  # the windows are on the coordinator's clock: only differences are used here
        wait, until = float(retry["not_before"]) - now, float(retry["not_after"]) - now
        self.come_back = (time.time() + wait, time.time() + until)
        if wait > self.max_checkin_wait or time.monotonic() + max(wait, 0.0) >= deadline:
            if wait > 0:
                raise ComeBackLater(*self.come_back, int(retry["round_id"]))
            raise SyncTimeout("no round admitted this agent in time")
        after = retry.get("after_round")
        if after is None:
            await asyncio.sleep(max(0.0, wait))
            return
        try:
            await watcher.wait(int(after), "done", min(deadline, time.monotonic() + max(wait, 1.0)))
        except SyncTimeout:
            return

    async def take_part(
        self,
        delta: NDArray[np.floating],
        n_examples: float,
        *,
        timeout: float = 300.0,
        progress: Progress | None = None,
        drop_after_shares: bool = False,
        factor: float = 1.0,
        evaluate: Callable[[EvalPlan, int], LocalEvaluation] | None = None,
    ) -> RoundResult:
        """Join the next round with this shared delta and weight; return when it is unmasked or abandoned.

        A round that evaluates (its public facts carry an ``evaluation`` plan) calls ``evaluate(plan,
        base_version)`` once joined, in a worker thread while the key shares go round: what this agent measured on its
        held-out item, added as the bounded eval part (``sync.protocol.evaluation``); without ``evaluate`` the agent
        adds zeros (it counts for nothing).

        ``factor`` ∈ [0, 1] scales the weight inside the masked vector (personality-aware aggregation,
        ``sync.protocol.privacy.personality_factor``). ``drop_after_shares`` simulates a device that vanishes after the
        share-keys stage (for tests and benches).
        """
        report = progress or (lambda _stage, _info: None)
        deadline = time.monotonic() + timeout
        watcher = self.watcher or StageWatcher(self.http, self.traffic)
        cpu = 0.0

        def timed(fn: Callable[[], Any]) -> Any:
            nonlocal cpu
            start = time.thread_time()
            try:
                return fn()
            finally:
                cpu += time.thread_time() - start

        # the check-in's "come back" waits count against max_checkin_wait when it is set; the round then has timeout
        joining = deadline if math.isinf(self.max_checkin_wait) else time.monotonic() + self.max_checkin_wait
        session, info = await self._join(
            lambda r: timed(lambda: secagg.AgentSession(self.identity.agent_id, self.identity.key, r)), joining
        )
        if not math.isinf(self.max_checkin_wait):
            deadline = time.monotonic() + timeout
        round_id = session.round_id
        privacy = PrivacyParams(**info["privacy"])
        if privacy.sigma < self.min_sigma or privacy.clip > self.max_clip:
            raise ProtocolError(f"round {round_id} offers σ={privacy.sigma}, C={privacy.clip}: weaker than allowed")
        report("advertised", {"round_id": round_id})
        result = RoundResult(round_id, "failed", 0, privacy, None, None, None, 0.0, self.traffic, False)
        plan = EvalPlan.from_json(info["evaluation"]) if info.get("evaluation") and privacy.eval_part else None
        if plan is not None and privacy.eval_part is not None and privacy.eval_part.size != plan.size:
            raise ProtocolError(f"round {round_id}'s eval part does not match its evaluation plan")
        measuring = (
            asyncio.ensure_future(asyncio.to_thread(evaluate, plan, int(info["base_version"])))
            if plan is not None and evaluate is not None
            else None
        )
        try:
            await self._stage(watcher, round_id, "share_keys", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/setup")).json()
            setup = setup_from_json(doc, round_id=int(doc["round_id"]), seed=b64d(doc["seed"]))
            peers = [peer_keys_from_json(p) for p in doc["neighbours"]]
            doc = {}  # not kept while waiting: its cohort list is n ids, and a simulation runs n agents at once
            result.cohort_size, result.quantization = len(setup.cohort), setup.quantization
            encrypted = timed(lambda: session.share_keys(setup, peers))
            await self.request(
                "POST",
                f"{API}/rounds/{round_id}/shares",
                json_body={"shares": b64e_map(encrypted)},
            )
            report("shared_keys", {"round_id": round_id, "cohort": len(setup.cohort), "neighbours": len(peers)})
            if drop_after_shares:
                result.status = "dropped"
                return result
            await self._stage(watcher, round_id, "masked_input", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/inbox")).json()
            if measuring is not None:
                result.local_evaluation = await measuring
            measured = result.local_evaluation
            contribution = prepare_contribution(
                delta,
                n_examples,
                privacy,
                noise_divisor=setup.min_survivors,
                factor=factor,
                evaluation=None if plan is None or measured is None else encode(measured, plan),
            )
            result.contribution = contribution
            inbox = b64d_map(doc["shares"])
            masked = timed(lambda: session.masked_input(doc["u2"], inbox, contribution.vector))
            doc = {}  # U2 (n ids): the session keeps the process's one copy
            await self.request("POST", f"{API}/rounds/{round_id}/input", content=masked)
            report("sent_input", {"round_id": round_id, "bytes": len(masked)})
            await self._stage(watcher, round_id, "unmask", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/survivors")).json()
            b_shares, s_shares = timed(lambda: session.unmask(doc["u2"], doc["u3"]))
            await self.request(
                "POST",
                f"{API}/rounds/{round_id}/unmask",
                json_body=unmask_body(b_shares, s_shares),
            )
            report("unmasking", {"round_id": round_id, "survivors": len(doc["u3"])})
            doc = {}
            final = await watcher.wait(round_id, "done", deadline)
            if final["stage"] == "abandoned":
                result.status = "abandoned"
                raise RoundAbandoned(f"round {round_id} abandoned: {final.get('outcome', {}).get('abandoned', '')}")
            result.status, result.released = "done", True
            result.published_version = final.get("outcome", {}).get("published_version")
            result.evaluation = final.get("outcome", {}).get("evaluation")
            report("done", {"round_id": round_id, "version": result.published_version})
            return result
        finally:
            result.secagg_cpu_s = cpu
            if measuring is not None and not measuring.done():
                measuring.cancel()  # the thread finishes on its own; nobody waits for it

    async def _stage(self, watcher: StageWatcher, round_id: int, stage: str, deadline: float) -> None:
        info = await watcher.wait(round_id, stage, deadline)
        if info["stage"] == "abandoned":
            reason = info.get("outcome", {}).get("abandoned", "")
            raise RoundAbandoned(f"round {round_id} was abandoned before {stage}: {reason}")
        if stage_index(info["stage"]) > stage_index(stage):
            raise RoundAbandoned(f"round {round_id} moved past {stage} without this agent")
