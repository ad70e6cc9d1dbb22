"""The coordinator's OpenAPI description (served at ``/openapi.json``): every operation with its path and query
parameters, the signature headers of the signed ones, the JSON schema (or binary type) of every request body, its
success status and the error body every refusal carries — enough for a generic client generator or fuzzer to reach
every operation. Who may join is declared too: the ``enrollment`` token of a registration, its 401/403 refusals and
the 429 (with ``Retry-After``) of the rate limits.
"""

from __future__ import annotations

from typing import Any

from sync.protocol.wire import API, BINARY_TYPE, INT64_MAX, JSON_TYPE, STAGES

_BASE64 = {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/]*={0,2}$", "minLength": 1}
_SHARES = {
    "type": "object",
    "description": "agent id -> base64 share",
    "additionalProperties": {"$ref": "#/components/schemas/Base64"},
}
_SIGNED = [{"$ref": f"#/components/parameters/{name}"} for name in ("AgentId", "Nonce", "Signature")]


def _refusal(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}


_UNAUTHORIZED = _refusal(
    "missing_signature, invalid_nonce, bad_signature, unknown_agent; on registration also enrollment_required "
    "(a new agent without an enrollment token)"
)
_FORBIDDEN = _refusal("invalid_enrollment (not a token of this coordinator) or enrollment_used (it registered another)")
_RATE_LIMITED = {
    **_refusal("rate_limited: this agent (or, registering, this client address) is over its request rate"),
    "headers": {
        "Retry-After": {"description": "Seconds until a request would be accepted", "schema": {"type": "integer"}}
    },
}


def _int_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
    }


_ROUND_ID = _int_param("round_id", "A round's id (0, 1, 2, ... in the order rounds opened)")
_VERSION = _int_param("version", "A published version (0 is the initial vector)")


def _op(
    summary: str,
    *,
    signed: bool = False,
    body: str | None = None,
    schema: str | None = None,
    params: tuple[dict[str, Any], ...] = (),
    returns: str = JSON_TYPE,
    status: str = "200",
) -> dict[str, Any]:
    """One operation; ``schema`` names the request body's schema under components (required with ``body``)."""
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {"description": "OK", "content": {returns: {}}},
            "4XX": {
                "description": "Refused: a machine-readable reason and a sentence",
                "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if signed:
        op["responses"]["401"] = _UNAUTHORIZED
        op["responses"]["429"] = _RATE_LIMITED
    parameters = [*params, *(_SIGNED if signed else ())]
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {body: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    return op


_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long-poll until the round reaches this stage (or the timeout passes)",
    "schema": {"type": "string", "enum": list(STAGES)},
}
_TIMEOUT = {
    "name": "timeout",
    "in": "query",
    "required": False,
    "description": "Seconds to long-poll (at most 30)",
    "schema": {"type": "number", "minimum": 0, "maximum": 30},
}
_R = f"{API}/rounds/{{round_id}}"


def _round_get(summary: str) -> dict[str, Any]:
    """A signed read of one round's stage data."""
    return {"get": _op(summary, signed=True, params=(_ROUND_ID,))}


def _round_post(summary: str, schema: str, body: str = JSON_TYPE) -> dict[str, Any]:
    """A signed submission to one round's stage (202 Accepted)."""
    return {"post": _op(summary, signed=True, body=body, schema=schema, params=(_ROUND_ID,), status="202")}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Persona coordinator",
        "version": "1",
        "description": "Rounds of secure aggregation of clipped, noised, quantized, masked shared deltas. "
        "Signed operations carry x-agent-id, x-nonce and x-signature (see the Signature parameter). "
        "A new agent registers with a one-time enrollment token issued by the operator (agent-coordinator enroll); "
        "a registered agent needs none again. Signed requests of each agent and registrations from each client "
        "address are rate-limited (429 with Retry-After). "
        "Transport: a coordinator reachable from other machines is served over HTTPS (serve --certfile/--keyfile, or "
        "a TLS proxy in front); agents verify it against their system trust store, a CA file, or the SHA-256 "
        "fingerprint of its certificate pinned in their config (serve prints it), and refuse plain HTTP to "
        "anything but their own machine unless told otherwise.",
    },
    "paths": {
        "/healthz": {"get": _op("Liveness")},
        "/status": {"get": _op("Current round, cohort size, stage and deadlines; published version")},
        "/openapi.json": {"get": _op("This document")},
        f"{API}/coordinator": {"get": _op("The coordinator's Ed25519 public key")},
        f"{API}/agents": {
            "post": _op(
                "Register an Ed25519 identity key (signed by it)",
                signed=True,
                body=JSON_TYPE,
                schema="Registration",
                status="201",
            )
        },
        f"{API}/shared": {"get": _op("Metadata of the newest published shared vector (sha256, signature)")},
        f"{API}/shared/{{version}}": {
            "get": _op("A published shared vector, float32 little-endian", params=(_VERSION,), returns=BINARY_TYPE)
        },
        f"{API}/round": {
            "get": _op("The open round, else the newest with next_open_at (rounds open on a schedule); 404 no_round")
        },
        f"{API}/checkin": {
            "post": _op(
                "Ready to take part: {admit: round and stage deadlines}, {retry_after: {not_before, not_after}} "
                "(come back then; pace steering) or {update: {latest_version}} (base version too far behind)",
                signed=True,
                body=JSON_TYPE,
                schema="Checkin",
            )
        },
        _R: {
            "get": _op("A round's public state; ?wait=STAGE&timeout=S long-polls", params=(_ROUND_ID, _WAIT, _TIMEOUT))
        },
        f"{_R}/advertise": _round_post("Join with signed X25519 round keys", "Advertise"),
        f"{_R}/setup": _round_get("Cohort, graph seed, quantization, neighbours' keys"),
        f"{_R}/shares": _round_post("Encrypted Shamir shares, one per neighbour", "Shares"),
        f"{_R}/inbox": _round_get("U2 and the shares addressed to the caller"),
        f"{_R}/input": _round_post("The packed masked vector", "MaskedInput", BINARY_TYPE),
        f"{_R}/survivors": _round_get("U2 and U3 for unmasking"),
        f"{_R}/unmask": _round_post("Revealed shares: self-mask of U3, key of U2∖U3", "Unmask"),
        f"{_R}/aggregate": {
            "get": _op(
                "The unmasked integer sum of a finished round (int64 LE)", params=(_ROUND_ID,), returns=BINARY_TYPE
            )
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            },
            "Base64": _BASE64,
            "Registration": {
                "type": "object",
                "required": ["public_key"],
                "properties": {
                    "public_key": {**_BASE64, "description": "raw Ed25519 public key (32 bytes)"},
                    "enrollment": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "description": "one-time enrollment token (agent-coordinator enroll); required to register a "
                        "new agent unless the coordinator has open enrollment, ignored for a registered one",
                    },
                },
            },
            "Advertise": {
                "type": "object",
                "required": ["c_pk", "s_pk", "signature"],
                "properties": {
                    "c_pk": {**_BASE64, "description": "X25519 key for share encryption (32 bytes)"},
                    "s_pk": {**_BASE64, "description": "X25519 key for pairwise masks (32 bytes)"},
                    "signature": {**_BASE64, "description": "Ed25519 signature of the two keys by the identity key"},
                },
            },
            "Checkin": {
                "type": "object",
                "required": ["base_version"],
                "properties": {
                    "base_version": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": INT64_MAX,
                        "description": "the published version the agent's delta is based on (at most 2 behind)",
                    }
                },
            },
            "Shares": {"type": "object", "required": ["shares"], "properties": {"shares": _SHARES}},
            "MaskedInput": {
                "type": "string",
                "format": "binary",
                "description": "the masked vector (vector size + 1 elements) packed at the round's bit width",
            },
            "Unmask": {
                "type": "object",
                "required": ["self_mask_shares", "key_shares"],
                "properties": {"self_mask_shares": _SHARES, "key_shares": _SHARES},
            },
        },
        "parameters": {
            "AgentId": {
                "name": "x-agent-id",
                "in": "header",
                "required": True,
                "description": "The agent's id (derived from its Ed25519 identity key)",
                "schema": {"type": "string", "minLength": 1},
            },
            "Nonce": {
                "name": "x-nonce",
                "in": "header",
                "required": True,
                "description": "A decimal integer above every nonce this agent sent before (replays are refused)",
                "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            },
            "Signature": {
                "name": "x-signature",
                "in": "header",
                "required": True,
                "description": "base64 Ed25519 signature of "
                "persona-request|METHOD|PATH_WITH_QUERY|NONCE|SHA256_HEX(BODY) by the agent's identity key",
                "schema": _BASE64,
            },
        },
    },
}
OPENAPI["paths"][f"{API}/agents"]["post"]["responses"]["403"] = _FORBIDDEN
