"""The coordinator's ASGI app (Starlette, served by uvicorn): HTTP in, :class:`Coordinator` calls, JSON out.

Every refusal is a 4xx JSON body ``{"error": REASON, "detail": TEXT}`` where REASON is machine-readable:
``malformed_json``, ``unsupported_content_type``, ``body_too_large``, ``invalid_body``, ``wrong_vector_length``,
``wrong_round``, ``wrong_stage``, ``late_submission``, ``round_abandoned``, ``unknown_agent``, ``missing_signature``,
``bad_signature``, ``invalid_nonce``, ``replayed_nonce``, ``not_in_cohort``, ``already_submitted``, ``cohort_full``,
``not_found``, ``method_not_allowed``, ... A refused request changes nothing but the agent's nonce (a signed GET
does not even consume its nonce: reads write nothing).

``POST /v1/checkin`` (:meth:`sync.coordinator.rounds.Rounds.checkin`) is where an agent ready to take part asks to:
it is admitted to the round in advertise, told a window to come back in (pace steering,
:mod:`sync.coordinator.pacing`), or told to fetch the newest version first. Rounds open on the coordinator's schedule
(``round_interval_s``), never because an agent asked.

Who may join (:mod:`sync.coordinator.access`): registering a new agent takes a one-time enrollment token (401
``enrollment_required``, 403 ``invalid_enrollment`` / ``enrollment_used``) unless the policy is open; signed
requests of each agent and new registrations from each client address are rate-limited (429 ``rate_limited`` with
``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sync.coordinator.access import (
    AccessPolicy,
    RateLimited,
    TokenBuckets,
    enrollment_store,
    retry_after_header,
    token_hash,
)
from sync.coordinator.openapi import OPENAPI
from sync.coordinator.rejection import Rejection
from sync.coordinator.service import Coordinator, check_self_signed
from sync.protocol.wire import (
    API,
    BINARY_TYPE,
    INT64_MAX,
    JSON_TYPE,
    STAGES,
    b64d,
    b64e,
    request_message,
    stage_index,
)

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def _error(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


async def _body(request: Request, limit: int, content_type: str) -> bytes:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != content_type:
        raise Rejection(415, "unsupported_content_type", f"expected {content_type}, got {given or 'none'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, "body_too_large", f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, an integer of 4,300+ digits, nested too deep
        raise Rejection(400, "malformed_json", str(error) or "nested too deeply") from error
    if not isinstance(doc, dict):
        raise Rejection(400, "invalid_body", "the body must be a JSON object")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Rejection(400, "invalid_body", f"field {name!r} must be a {kind.__name__}")
    return value


def _bytes_field(doc: dict[str, Any], name: str) -> bytes:
    try:
        return b64d(_field(doc, name, str))
    except ValueError as error:
        raise Rejection(400, "invalid_body", f"field {name!r} is not base64") from error


def _bytes_map(doc: dict[str, Any], name: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in _field(doc, name, dict).items():
        try:
            out[str(key)] = b64d(value) if isinstance(value, str) else b""
        except ValueError:
            out[str(key)] = b""
        if not out[str(key)]:
            raise Rejection(400, "invalid_body", f"field {name!r} must map agent ids to non-empty base64 strings")
    return out


def _signer(request: Request) -> tuple[str, int, bytes]:
    agent = request.headers.get("x-agent-id")
    nonce = request.headers.get("x-nonce", "")
    signature = request.headers.get("x-signature")
    if not agent or not signature or not nonce:
        raise Rejection(401, "missing_signature", "x-agent-id, x-nonce and x-signature headers are required")
    if not (nonce.isascii() and nonce.isdigit() and int(nonce) <= INT64_MAX):
        raise Rejection(401, "invalid_nonce", f"x-nonce must be a decimal integer from 0 to {INT64_MAX}")
    try:
        return agent, int(nonce), b64d(signature)
    except ValueError as error:
        raise Rejection(401, "bad_signature", "x-signature is not base64") from error


def _enrollment_field(doc: dict[str, Any]) -> str | None:
    token = doc.get("enrollment")
    if token is not None and (not isinstance(token, str) or not token.strip() or len(token) > 200):
        raise Rejection(400, "invalid_body", "field 'enrollment' must be an enrollment token (a short string)")
    return token


def _signed_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _path_id(request: Request, name: str) -> int:
    """An integer path parameter; one beyond what the state can hold names nothing there."""
    value = int(request.path_params[name])
    if value > INT64_MAX:
        raise Rejection(404, f"unknown_{name.removesuffix('_id')}", f"{name} {value} is beyond {INT64_MAX}")
    return value


def _round_id(request: Request) -> int:
    return _path_id(request, "round_id")


async def _http_error(_request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such path, method not allowed) in the same JSON shape as every other one."""
    assert isinstance(error, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
    response = _error(error.status_code, reason, error.detail)
    response.headers.update(error.headers or {})
    return response


def build_app(coordinator: Coordinator, *, tick_seconds: float = 0.2, access: AccessPolicy | None = None) -> Starlette:
    """The ASGI app around one :class:`Coordinator`; a background task closes stages at their deadlines.

    ``access`` says who may register and the rate limits (default :class:`AccessPolicy`: enrollment tokens
    required, limits on)."""
    access = access or AccessPolicy()
    limit = coordinator.config.body_limit(coordinator.vector_size)
    changed: dict[str, asyncio.Event] = {}
    per_agent = TokenBuckets(access.agent_rate, access.agent_burst)
    per_address = TokenBuckets(access.register_rate, access.register_burst)
    tokens = None if access.open_enrollment else enrollment_store(coordinator.state)

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(lambda: fn(*args))

    async def authed(request: Request, content_type: str | None, act: Callable[[str, bytes], T]) -> T:
        """Authenticate the signed request, then ``act(agent, body)``: both in one trip to a worker thread."""
        body = await _body(request, limit, content_type) if content_type else await request.body()
        agent, nonce, signature = _signer(request)
        method, path = request.method, _signed_path(request)

        def run() -> T:
            coordinator.authenticate(agent, nonce, signature, method, path, body)
            per_agent.take(agent, f"agent {agent}")
            return act(agent, body)

        return await anyio.to_thread.run_sync(run)

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except Rejection as rejection:
                response = _error(rejection.status, rejection.reason, rejection.detail)
                if isinstance(rejection, RateLimited):
                    response.headers["retry-after"] = retry_after_header(rejection)
                return response

        return wrapper

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def status(_request: Request) -> Response:
        return JSONResponse(await call(coordinator.status))

    async def coordinator_key(_request: Request) -> Response:
        return JSONResponse({"public_key": b64e(coordinator.public_key)})

    def admit(
        key: bytes, agent: str, nonce: int, signature: bytes, message: bytes, token: str | None, address: str
    ) -> str:
        """Register ``agent`` if it may: a known agent re-registers freely (its own bucket); a new one is charged to
        its client address and, unless enrollment is open, spends a valid unused token (bound to it for good)."""
        with coordinator.lock:
            known = coordinator.state.agent(agent) is not None
        if not known:
            per_address.take(address, f"client {address}")
        # checked before a token is spent or a bucket charged: a request the key did not sign costs its owner nothing
        check_self_signed(key, agent, signature, message)
        if known:
            per_agent.take(agent, f"agent {agent}")
        elif tokens is not None:
            if token is None:
                raise Rejection(
                    401,
                    "enrollment_required",
                    "a new agent registers with an enrollment token (field 'enrollment') issued by the operator "
                    "of this coordinator (agent-coordinator enroll)",
                )
            with coordinator.lock:
                outcome = tokens.claim_enrollment(token_hash(token), agent, coordinator.clock())
            if outcome == "unknown":
                raise Rejection(403, "invalid_enrollment", "this enrollment token was not issued by this coordinator")
            if outcome == "used":
                raise Rejection(403, "enrollment_used", "this enrollment token has already registered another agent")
        return coordinator.register(key, agent, nonce, signature, message)

    async def register(request: Request) -> Response:
        body = await _body(request, limit, JSON_TYPE)
        agent, nonce, signature = _signer(request)
        doc = _json(body)
        key = _bytes_field(doc, "public_key")
        token = _enrollment_field(doc)
        message = request_message(request.method, _signed_path(request), nonce, body)
        address = request.client.host if request.client else "unknown"
        agent_id = await call(admit, key, agent, nonce, signature, message, token, address)
        return JSONResponse({"agent_id": agent_id}, status_code=201)

    async def shared(_request: Request) -> Response:
        latest = await call(coordinator.latest)
        blend = await call(coordinator.publisher.signed_blend, latest.version)
        return JSONResponse(
            {
                **({"blend": blend} if blend is not None else {}),
                "version": latest.version,
                "sha256": latest.sha256,
                "signature": b64e(latest.signature),
                "round_id": latest.round_id,
                "size": coordinator.vector_size,
                "layout": [{"name": n, "size": k} for n, k in coordinator.rounds.layout],
                "public_key": b64e(coordinator.public_key),
            }
        )

    async def shared_blob(request: Request) -> Response:
        blob = await call(coordinator.blob, _path_id(request, "version"))
        return Response(blob, media_type=BINARY_TYPE)

    async def current(_request: Request) -> Response:
        return JSONResponse(await call(coordinator.current_round))

    async def checkin(request: Request) -> Response:
        def act(agent: str, body: bytes) -> dict[str, Any]:
            doc = _json(body)
            base = _field(doc, "base_version", int)
            if not 0 <= base <= INT64_MAX:
                raise Rejection(400, "invalid_body", f"field 'base_version' must be from 0 to {INT64_MAX}")
            return coordinator.checkin(agent, base)

        return JSONResponse(await authed(request, JSON_TYPE, act))

    async def round_info(request: Request) -> Response:
        round_id = _round_id(request)
        wait = request.query_params.get("wait")
        if wait is not None and wait not in STAGES:
            raise Rejection(400, "invalid_query", f"wait must be one of {', '.join(STAGES)}")
        try:
            timeout = min(30.0, max(0.0, float(request.query_params.get("timeout", "0"))))
        except ValueError as error:
            raise Rejection(400, "invalid_query", "timeout must be a number") from error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = changed.setdefault("event", asyncio.Event())
            info = await call(coordinator.round_info, round_id)
            if wait is None or stage_index(info["stage"]) >= stage_index(wait) or loop.time() >= deadline:
                return JSONResponse(info)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(1.0, deadline - loop.time()))

    async def advertise(request: Request) -> Response:
        round_id = _round_id(request)

        def act(agent: str, body: bytes) -> None:
            doc = _json(body)
            fields = (_bytes_field(doc, "c_pk"), _bytes_field(doc, "s_pk"), _bytes_field(doc, "signature"))
            coordinator.advertise(round_id, agent, *fields)

        await authed(request, JSON_TYPE, act)
        return JSONResponse({"accepted": True}, status_code=202)

    async def setup(request: Request) -> Response:
        round_id = _round_id(request)
        round_setup, peers = await authed(request, None, lambda agent, _: coordinator.setup(round_id, agent))
        q = round_setup.quantization
        return JSONResponse(
            {
                "round_id": round_setup.round_id,
                "cohort": list(round_setup.cohort),
                "seed": b64e(round_setup.seed),
                "degree": round_setup.degree,
                "threshold": round_setup.threshold,
                "min_survivors": round_setup.min_survivors,
                "vector_size": round_setup.vector_size,
                "quantization": {"bits": q.bits, "levels": q.levels, "bound": q.bound},
                "neighbours": [
                    {
                        "agent_id": p.agent_id,
                        "identity_key": b64e(p.identity_key),
                        "c_pk": b64e(p.c_pk),
                        "s_pk": b64e(p.s_pk),
                        "signature": b64e(p.signature),
                    }
                    for p in peers
                ],
            }
        )

    async def shares(request: Request) -> Response:
        round_id = _round_id(request)
        await authed(
            request,
            JSON_TYPE,
            lambda agent, body: coordinator.post_shares(round_id, agent, _bytes_map(_json(body), "shares")),
        )
        return JSONResponse({"accepted": True}, status_code=202)

    async def inbox(request: Request) -> Response:
        round_id = _round_id(request)
        u2, found = await authed(request, None, lambda agent, _: coordinator.inbox(round_id, agent))
        return JSONResponse({"u2": u2, "shares": {k: b64e(v) for k, v in found.items()}})

    async def masked_input(request: Request) -> Response:
        round_id = _round_id(request)
        await authed(request, BINARY_TYPE, lambda agent, body: coordinator.post_input(round_id, agent, body))
        return JSONResponse({"accepted": True}, status_code=202)

    async def survivors(request: Request) -> Response:
        round_id = _round_id(request)
        u2, u3 = await authed(request, None, lambda agent, _: coordinator.survivors(round_id, agent))
        return JSONResponse({"u2": u2, "u3": u3})

    async def unmask(request: Request) -> Response:
        round_id = _round_id(request)

        def act(agent: str, body: bytes) -> None:
            doc = _json(body)
            coordinator.post_unmask(round_id, agent, _bytes_map(doc, "self_mask_shares"), _bytes_map(doc, "key_shares"))

        await authed(request, JSON_TYPE, act)
        return JSONResponse({"accepted": True}, status_code=202)

    async def aggregate(request: Request) -> Response:
        total = await call(coordinator.unmasked_sum, _round_id(request))
        return Response(total.astype("<i8").tobytes(), media_type=BINARY_TYPE)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_seconds)
            await call(coordinator.tick)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def notify() -> None:
            old = changed.get("event")
            changed["event"] = asyncio.Event()
            if old is not None:
                old.set()

        def on_change() -> None:
            loop.call_soon_threadsafe(notify)

        coordinator.on_change = on_change
        task = asyncio.create_task(ticker())
        try:
            yield
        finally:
            task.cancel()
            coordinator.on_change = lambda: None

    routes = [
        Route("/healthz", guarded(healthz)),
        Route("/status", guarded(status)),
        Route("/openapi.json", guarded(openapi)),
        Route(f"{API}/coordinator", guarded(coordinator_key)),
        Route(f"{API}/agents", guarded(register), methods=["POST"]),
        Route(f"{API}/shared", guarded(shared)),
        Route(f"{API}/shared/{{version:int}}", guarded(shared_blob)),
        Route(f"{API}/round", guarded(current)),
        Route(f"{API}/checkin", guarded(checkin), methods=["POST"]),
        Route(f"{API}/rounds/{{round_id:int}}", guarded(round_info)),
        Route(f"{API}/rounds/{{round_id:int}}/advertise", guarded(advertise), methods=["POST"]),
        Route(f"{API}/rounds/{{round_id:int}}/setup", guarded(setup)),
        Route(f"{API}/rounds/{{round_id:int}}/shares", guarded(shares), methods=["POST"]),
        Route(f"{API}/rounds/{{round_id:int}}/inbox", guarded(inbox)),
        Route(f"{API}/rounds/{{round_id:int}}/input", guarded(masked_input), methods=["POST"]),
        Route(f"{API}/rounds/{{round_id:int}}/survivors", guarded(survivors)),
        Route(f"{API}/rounds/{{round_id:int}}/unmask", guarded(unmask), methods=["POST"]),
        Route(f"{API}/rounds/{{round_id:int}}/aggregate", guarded(aggregate)),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
