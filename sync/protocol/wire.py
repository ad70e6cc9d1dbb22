"""The wire protocol shared by the coordinator and the agent client: signed requests, stage names, encodings.

Every agent request carries three headers: ``x-agent-id``, ``x-nonce`` (an integer that must grow with every
request of that agent: replays are refused) and ``x-signature``, the Ed25519 signature (base64) of
``persona-request|METHOD|PATH_WITH_QUERY|NONCE|SHA256_HEX(BODY)``. Registration is signed the same way by the key
being registered (proof of possession). The coordinator signs each published shared vector:
``persona-shared|VERSION|SHA256_HEX``.
"""

from __future__ import annotations

import base64
import hashlib

STAGES = ("advertise", "share_keys", "masked_input", "unmask", "done", "abandoned")
TERMINAL = frozenset({"done", "abandoned"})
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
API = "/v1"


def stage_index(stage: str) -> int:
    """Order of stages; both terminal stages rank last."""
    return min(STAGES.index(stage), STAGES.index("done"))


def b64e(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Strict base64 decoding; raises ValueError on anything else."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def request_message(method: str, path: str, nonce: int, body: bytes) -> bytes:
    """The bytes an agent signs for one request."""
    return f"persona-request|{method.upper()}|{path}|{nonce}|{hashlib.sha256(body).hexdigest()}".encode()


def shared_message(version: int, sha256_hex: str) -> bytes:
    """The bytes the coordinator signs for one published shared vector."""
    return f"persona-shared|{version}|{sha256_hex}".encode()
