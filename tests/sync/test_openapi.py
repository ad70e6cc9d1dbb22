"""The coordinator's OpenAPI document against its real app, and a generic fuzzer (schemathesis) over every operation
of a real coordinator on 127.0.0.1: every request — well-formed, malformed, signed by a registered agent or not —
gets an answer below 500, and every refusal is a 4xx JSON body with a machine-readable reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from starlette.routing import Route
from starlette.testclient import TestClient

from sync.client.identity import Identity
from sync.coordinator.app import build_app
from sync.coordinator.config import CoordinatorConfig
from sync.coordinator.local import serve_in_thread
from sync.coordinator.openapi import OPENAPI
from sync.coordinator.service import Coordinator
from sync.protocol.wire import API, JSON_TYPE, b64e, request_message
from tests.sync.conftest import BACKENDS, db_for

SIGNATURE_HEADERS = {"x-agent-id", "x-nonce", "x-signature"}
EXAMPLES = 20  # per operation and generation mode: ~600 requests, ~15 s of CPU


@pytest.fixture(params=BACKENDS)
def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator over each backend (SQLite, and the session's real PostgreSQL)."""
    # round 0 stays in its advertise stage for the whole test: what the fuzzer meets does not depend on timing
    db = db_for(str(request.param), tmp_path, request)
    coordinator = Coordinator(CoordinatorConfig(db=db, vector_size=16, min_cohort=3, advertise_s=3600.0))
    yield coordinator
    coordinator.close()


@pytest.fixture
def served(coordinator: Coordinator) -> Iterator[str]:
    with serve_in_thread(coordinator) as url:
        yield url


def _resolve(item: dict[str, Any]) -> dict[str, Any]:
    ref = item.get("$ref")
    if ref is None:
        return item
    node: Any = OPENAPI
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _parameters(operation: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    params = (_resolve(p) for p in operation.get("parameters", []))
    return {p["name"]: p for p in params if p["in"] == where}


def _documented(route: Route) -> tuple[str, dict[str, Any]]:
    path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
    assert path in OPENAPI["paths"], f"{route.path} is not in the OpenAPI document"
    return path, OPENAPI["paths"][path]


def test_every_route_declares_its_path_parameters_bodies_and_signature_headers(coordinator: Coordinator) -> None:
    app = build_app(coordinator)
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert {_documented(r)[0] for r in routes} == set(OPENAPI["paths"])
    client = TestClient(app)
    for route in routes:
        path, item = _documented(route)
        assert {m.lower() for m in route.methods or ()} - {"head"} == set(item)
        for method, operation in item.items():
            declared = _parameters(operation, "path")
            assert set(declared) == set(route.param_convertors), f"{method} {path}"
            for param in declared.values():
                assert param["required"] and param["schema"]["type"] == "integer"
            if method == "post":
                (content_type, media), *_ = operation["requestBody"]["content"].items()
                assert "$ref" in media["schema"], f"POST {path} has no body schema"
                headers = {"content-type": content_type}
            else:
                headers = {}
            # an unsigned request to a signed operation is refused for want of a signature, and only those
            concrete = path.replace("{round_id}", "0").replace("{version}", "0")
            answer = client.request(method, concrete, headers=headers)
            signed = answer.status_code == 401 and answer.json()["error"] == "missing_signature"
            assert (set(_parameters(operation, "header")) == SIGNATURE_HEADERS) is signed, f"{method} {path}"
            for name in SIGNATURE_HEADERS & set(_parameters(operation, "header")):
                assert _parameters(operation, "header")[name]["required"]


class Signer:
    """Signs a fuzzed request as a registered agent (so the fuzzer reaches what lies behind authentication)."""

    def __init__(self, http: httpx.Client) -> None:
        self.identity = Identity.generate()
        self.nonces = itertools.count(1)
        body = json.dumps({"public_key": b64e(self.identity.public)}).encode()
        request = http.build_request("POST", f"{API}/agents", content=body, headers={"content-type": JSON_TYPE})
        self.sign(request)
        assert http.send(request).status_code == 201

    def sign(self, request: httpx.Request) -> None:
        """Put this agent's signature headers on ``request``."""
        nonce = next(self.nonces)
        message = request_message(request.method, request.url.raw_path.decode(), nonce, request.content)
        request.headers["x-agent-id"] = self.identity.agent_id
        request.headers["x-nonce"] = str(nonce)
        request.headers["x-signature"] = b64e(self.identity.key.sign(message))


def _request(http: httpx.Client, case: schemathesis.Case[Any]) -> httpx.Request:
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url).rstrip("/"))
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif isinstance(kwargs.get("data"), bytes | str):
        body["content"] = kwargs["data"]
    elif "data" in kwargs:
        body["data"] = kwargs["data"]
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
    params = dict(kwargs.get("params") or {})
    with contextlib.suppress(KeyError, TypeError, ValueError):
        if float(params["timeout"]) > 0:  # the fuzzer is after answers, not long polls
            params["timeout"] = 0
    return http.build_request(kwargs["method"], kwargs["url"], params=params, headers=headers, **body)


def _check(response: httpx.Response, request: httpx.Request) -> None:
    where = f"{request.method} {request.url} -> {response.status_code} {response.text[:200]!r}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        refusal = response.json()
        assert isinstance(refusal.get("error"), str) and refusal["error"], where
        assert isinstance(refusal.get("detail"), str), where


def test_fuzzed_requests_to_every_operation_get_a_4xx_with_a_reason_never_a_5xx(served: str) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    http = httpx.Client(base_url=served, timeout=30.0)
    signer = Signer(http)
    ready = http.build_request("POST", f"{API}/checkin", json={"base_version": 0})
    signer.sign(ready)
    assert http.send(ready).json()["admit"]["round_id"] == 0  # a check-in opens a round for the fuzzer to aim at
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) == sum(len(item) for item in OPENAPI["paths"].values()) - 1  # all but /openapi.json
    answered: dict[tuple[int, str], int] = {}
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        declared = OPENAPI["paths"][operation.path][operation.method]
        if mode is GenerationMode.NEGATIVE and not ("parameters" in declared or "requestBody" in declared):
            continue  # nothing to malform
        strategy = operation.as_strategy(mode)
        if "{round_id}" in operation.path:  # the open round as often as a random one
            strategy = strategy | operation.as_strategy(mode, path_parameters={"round_id": 0})

        @given(case=strategy, sign=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case[Any], sign: bool) -> None:
            request = _request(http, case)
            if sign:
                signer.sign(request)
            response = http.send(request)
            _check(response, request)
            key = (response.status_code, response.json()["error"] if response.status_code >= 400 else "")
            answered[key] = answered.get(key, 0) + 1

        run()
    http.close()
    assert any(200 <= status < 300 for status, _ in answered)
    reasons = {reason for _, reason in answered}
    assert {"missing_signature", "bad_signature", "not_found"} <= reasons  # refused at the door ...
    assert {"invalid_body", "wrong_stage"} <= reasons  # ... and, signed, behind authentication


def _unsigned() -> dict[str, str]:
    return {"x-agent-id": "someone", "x-nonce": "1", "x-signature": b64e(b"not a signature"), "content-type": JSON_TYPE}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [
        ("GET", f"{API}/shared/{2**64}", {}, b"", (404, "unknown_version")),  # was 500: SQLite integer overflow
        ("GET", f"{API}/rounds/{2**64}", {}, b"", (404, "unknown_round")),  # was 500: SQLite integer overflow
        ("GET", f"{API}/rounds/-1", {}, b"", (404, "not_found")),  # was a text/plain "Not Found"
        ("DELETE", f"{API}/round", {}, b"", (405, "method_not_allowed")),  # was a text/plain "Method Not Allowed"
        (
            "POST",
            f"{API}/agents",
            _unsigned(),
            b'{"public_key": 1' + b"0" * 5000 + b"}",
            (400, "malformed_json"),
        ),  # was 500
        ("POST", f"{API}/agents", _unsigned(), b"[" * 100_000, (400, "malformed_json")),  # was 500: RecursionError
    ],
)
def test_requests_that_once_failed_with_a_5xx_or_without_a_reason_get_a_4xx_with_one(
    coordinator: Coordinator,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    expected: tuple[int, str],
) -> None:
    response = TestClient(build_app(coordinator)).request(method, path, headers=headers, content=body)
    assert (response.status_code, response.json()["error"]) == expected
    assert response.json()["detail"]


def test_a_signed_nonce_beyond_64_bits_is_refused_not_a_server_error(served: str) -> None:
    """It once reached SQLite and failed there with a 500."""
    http = httpx.Client(base_url=served, timeout=30.0)
    signer = Signer(http)
    signer.nonces = itertools.count(2**64)
    request = http.build_request("GET", f"{API}/rounds/0/setup")
    signer.sign(request)
    response = http.send(request)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_nonce")
