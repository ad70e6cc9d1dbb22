"""The agent's side of a sync, over HTTP (httpx): identity, verified downloads, and one round of secure aggregation.

:func:`run_sync` is the one-call API for ``agent sync``: register if needed, fetch and verify the current shared
vector, let the caller compute its delta from it, take part in one round and return the new shared vector (the
caller applies it atomically). :class:`AgentClient` is the async building block the simulation runs by the
hundred. Only what the protocol needs leaves the device: signed round keys, encrypted Shamir shares, one packed
masked vector and the unmask shares (the egress test checks the bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from numpy.typing import NDArray

from models.assets import atomic_write_bytes
from sync.protocol import secagg
from sync.errors import CoordinatorError, ProtocolError, RoundAbandoned, SyncError, SyncTimeout
from sync.client.ledger import EgressLedger, LedgerEntry
from sync.protocol.masking import Quantization
from sync.protocol.privacy import DEFAULT_DELTA, Contribution, PrivacyParams, epsilon, prepare_contribution
from sync.protocol.wire import API, BINARY_TYPE, JSON_TYPE, STAGES, b64d, b64e, request_message, shared_message, stage_index

Progress = Callable[[str, dict[str, Any]], None]
FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Identity:
    """An agent's long-term Ed25519 key and the id derived from it."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        """Raw public key."""
        return secagg.raw_public(self.key)

    @property
    def agent_id(self) -> str:
        """The id the coordinator knows this agent by."""
        return secagg.agent_id_for(self.public)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Read the key from ``path`` (32 raw bytes), creating it (mode 0600) the first time."""
        if path.is_file():
            return cls(Ed25519PrivateKey.from_private_bytes(path.read_bytes()))
        identity = cls.generate()
        atomic_write_bytes(path, identity.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
        path.chmod(0o600)
        return identity


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


@dataclass
class SharedVector:
    """A verified published shared vector."""

    version: int
    sha256: str
    vector: FloatArray


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
    _nonce: int = 0

    def _next_nonce(self) -> int:
        self._nonce = max(self._nonce + 1, time.time_ns())
        return self._nonce

    async def request(
        self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None, signed: bool = True
    ) -> httpx.Response:
        """One request, signed, retried on connection errors for ``retry_seconds``; 4xx raise CoordinatorError."""
        import json as _json

        if json_body is not None:
            body, content_type = _json.dumps(json_body, separators=(",", ":")).encode(), JSON_TYPE
        elif content is not None:
            body, content_type = content, BINARY_TYPE
        else:
            body, content_type = b"", None
        give_up = time.monotonic() + self.retry_seconds
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
                await asyncio.sleep(0.5)
                continue
            self.traffic.sent += _request_bytes(request)
            self.traffic.received += _response_bytes(response)
            if response.status_code >= 500 and time.monotonic() < give_up:
                await asyncio.sleep(0.5)
                continue
            if response.status_code >= 400:
                try:
                    doc = response.json()
                except ValueError:
                    doc = {}
                raise CoordinatorError(response.status_code, doc.get("error", "http_error"), doc.get("detail", ""))
            return response

    async def register(self) -> None:
        """Register this agent's identity key (idempotent)."""
        await self.request("POST", f"{API}/agents", json_body={"public_key": b64e(self.identity.public)})

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
        return SharedVector(int(meta["version"]), digest, np.frombuffer(blob, dtype="<f4").astype(np.float32))

    async def _join(
        self, session_for: Callable[[int], secagg.AgentSession], deadline: float
    ) -> tuple[secagg.AgentSession, dict[str, Any]]:
        watcher = self.watcher or StageWatcher(self.http, self.traffic)
        while True:
            info = (await self.request("GET", f"{API}/round", signed=False)).json()
            round_id = int(info["round_id"])
            if info["stage"] == "advertise":
                session = session_for(round_id)
                c_pk, s_pk, signature = session.advertise()
                try:
                    await self.request(
                        "POST",
                        f"{API}/rounds/{round_id}/advertise",
                        json_body={"c_pk": b64e(c_pk), "s_pk": b64e(s_pk), "signature": b64e(signature)},
                    )
                    return session, info
                except CoordinatorError as error:
                    if error.reason not in ("cohort_full", "late_submission", "wrong_round", "wrong_stage"):
                        raise
            await watcher.wait(round_id, "done", deadline)

    async def take_part(
        self,
        delta: NDArray[np.floating],
        n_examples: float,
        *,
        timeout: float = 300.0,
        progress: Progress | None = None,
        drop_after_shares: bool = False,
        factor: float = 1.0,
    ) -> RoundResult:
        """Join the next round with this shared delta and weight; return when it is unmasked or abandoned.

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

        session, info = await self._join(
            lambda r: timed(lambda: secagg.AgentSession(self.identity.agent_id, self.identity.key, r)), deadline
        )
        round_id = session.round_id
        privacy = PrivacyParams(**info["privacy"])
        if privacy.sigma < self.min_sigma or privacy.clip > self.max_clip:
            raise ProtocolError(f"round {round_id} offers σ={privacy.sigma}, C={privacy.clip}: weaker than allowed")
        report("advertised", {"round_id": round_id})
        result = RoundResult(round_id, "failed", 0, privacy, None, None, None, 0.0, self.traffic, False)
        try:
            await self._stage(watcher, round_id, "share_keys", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/setup")).json()
            setup = _setup_from(doc)
            peers = [
                secagg.PeerKeys(
                    p["agent_id"], b64d(p["identity_key"]), b64d(p["c_pk"]), b64d(p["s_pk"]), b64d(p["signature"])
                )
                for p in doc["neighbours"]
            ]
            result.cohort_size, result.quantization = len(setup.cohort), setup.quantization
            encrypted = timed(lambda: session.share_keys(setup, peers))
            await self.request(
                "POST",
                f"{API}/rounds/{round_id}/shares",
                json_body={"shares": {k: b64e(v) for k, v in encrypted.items()}},
            )
            report("shared_keys", {"round_id": round_id, "cohort": len(setup.cohort), "neighbours": len(peers)})
            if drop_after_shares:
                result.status = "dropped"
                return result
            await self._stage(watcher, round_id, "masked_input", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/inbox")).json()
            contribution = prepare_contribution(
                delta, n_examples, privacy, noise_divisor=setup.min_survivors, factor=factor
            )
            result.contribution = contribution
            inbox = {k: b64d(v) for k, v in doc["shares"].items()}
            masked = timed(lambda: session.masked_input(doc["u2"], inbox, contribution.vector))
            await self.request("POST", f"{API}/rounds/{round_id}/input", content=masked)
            report("sent_input", {"round_id": round_id, "bytes": len(masked)})
            await self._stage(watcher, round_id, "unmask", deadline)
            doc = (await self.request("GET", f"{API}/rounds/{round_id}/survivors")).json()
            b_shares, s_shares = timed(lambda: session.unmask(doc["u2"], doc["u3"]))
            await self.request(
                "POST",
                f"{API}/rounds/{round_id}/unmask",
                json_body={
                    "self_mask_shares": {k: b64e(v) for k, v in b_shares.items()},
                    "key_shares": {k: b64e(v) for k, v in s_shares.items()},
                },
            )
            report("unmasking", {"round_id": round_id, "survivors": len(doc["u3"])})
            final = await watcher.wait(round_id, "done", deadline)
            if final["stage"] == "abandoned":
                result.status = "abandoned"
                raise RoundAbandoned(f"round {round_id} abandoned: {final.get('outcome', {}).get('abandoned', '')}")
            result.status, result.released = "done", True
            result.published_version = final.get("outcome", {}).get("published_version")
            report("done", {"round_id": round_id, "version": result.published_version})
            return result
        finally:
            result.secagg_cpu_s = cpu

    async def _stage(self, watcher: StageWatcher, round_id: int, stage: str, deadline: float) -> None:
        info = await watcher.wait(round_id, stage, deadline)
        if info["stage"] == "abandoned":
            reason = info.get("outcome", {}).get("abandoned", "")
            raise RoundAbandoned(f"round {round_id} was abandoned before {stage}: {reason}")
        if stage_index(info["stage"]) > stage_index(stage):
            raise RoundAbandoned(f"round {round_id} moved past {stage} without this agent")


def _setup_from(doc: dict[str, Any]) -> secagg.RoundSetup:
    q = doc["quantization"]
    return secagg.RoundSetup(
        round_id=int(doc["round_id"]),
        cohort=tuple(doc["cohort"]),
        seed=b64d(doc["seed"]),
        degree=int(doc["degree"]),
        threshold=int(doc["threshold"]),
        min_survivors=int(doc["min_survivors"]),
        quantization=Quantization(bits=int(q["bits"]), levels=int(q["levels"]), bound=float(q["bound"])),
        vector_size=int(doc["vector_size"]),
    )


def ledger_entry(result: RoundResult, ledger: EgressLedger, *, delta: float = DEFAULT_DELTA) -> LedgerEntry:
    """The ledger entry for a round result, with ε over every released round so far (this one included)."""
    released = [e.noise_multiplier for e in ledger.entries() if e.released]
    if result.released:
        released.append(result.privacy.noise_multiplier)
    return LedgerEntry(
        time=time.time(),
        round_id=result.round_id,
        status=result.status,
        bytes_sent=result.traffic.sent,
        bytes_received=result.traffic.received,
        clip=result.privacy.clip,
        sigma=result.privacy.sigma,
        noise_multiplier=result.privacy.noise_multiplier,
        cohort_size=result.cohort_size,
        released=result.released,
        epsilon=epsilon(released, delta),
        delta=delta,
    )


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
    timeout: float = 300.0,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SyncOutcome:
    """One full sync: register, fetch + verify the shared vector, ``compute_delta(shared) -> (delta, n_examples)``,
    one secure-aggregation round, fetch the new vector. Records a ledger entry whatever happens after joining.
    """

    async def go() -> SyncOutcome:
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=httpx.Timeout(30.0)) as http:
            client = AgentClient(http, identity, coordinator_key=coordinator_key)
            await client.register()
            current = await client.fetch_shared()
            if progress:
                progress("fetched", {"version": current.version})
            delta, n_examples = compute_delta(current.vector)
            try:
                result = await asyncio.wait_for(
                    client.take_part(delta, n_examples, timeout=timeout, progress=progress), timeout + 5.0
                )
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
