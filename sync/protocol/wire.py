"""The wire protocol shared by the coordinator and the agent client: signed requests, stage names, encodings.

Every agent request carries three headers: ``x-agent-id``, ``x-nonce`` (an integer that must grow with every
request of that agent: a write's is consumed and a replayed write refused; a signed read's must be above the last
write's but is not stored, so reads write nothing) and ``x-signature``, the Ed25519 signature (base64) of
``persona-request|METHOD|PATH_WITH_QUERY|NONCE|SHA256_HEX(BODY)``. Registration is signed the same way by the key
being registered (proof of possession). The coordinator signs each published shared vector:
``persona-shared|VERSION|SHA256_HEX``. A published version is one blob, the float32 concatenation of the
federation's parts (θ_g, then φ_g when the federation has it; the layout is in the round parameters and the
``/shared`` metadata), so one signature covers both parts.

Every round rotates its contributions with the shared random rotation seeded by the round's public seed
(:func:`sync.protocol.masking.rotation_seed`): a protocol rule, not an option, so both sides derive it from the
setup alone.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from sync.protocol.masking import Quantization, rotation_seed
from sync.protocol.secagg import PeerKeys, RoundSetup, shared_ids

STAGES = ("advertise", "share_keys", "masked_input", "unmask", "done", "abandoned")
TERMINAL = frozenset({"done", "abandoned"})
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
API = "/v1"
INT64_MAX = 2**63 - 1
"""The largest round id, version or nonce on the wire (the coordinator stores them as signed 64-bit integers)."""


def stage_index(stage: str) -> int:
    """Order of stages; both terminal stages rank last."""
    return min(STAGES.index(stage), STAGES.index("done"))


def b64e(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Strict base64 decoding; raises ValueError on anything else."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def b64e_map(values: Mapping[str, bytes]) -> dict[str, str]:
    """Each value as base64 text (shares by agent id)."""
    return {k: b64e(v) for k, v in values.items()}


def b64d_map(values: Mapping[str, str]) -> dict[str, bytes]:
    """Each base64 value decoded (shares by agent id)."""
    return {k: b64d(v) for k, v in values.items()}


def advertise_body(c_pk: bytes, s_pk: bytes, signature: bytes) -> dict[str, str]:
    """The advertise request's body: the signed X25519 round keys."""
    return {"c_pk": b64e(c_pk), "s_pk": b64e(s_pk), "signature": b64e(signature)}


def unmask_body(b_shares: Mapping[str, bytes], s_shares: Mapping[str, bytes]) -> dict[str, dict[str, str]]:
    """The unmask request's body: self-mask shares of survivors, key shares of agents that dropped."""
    return {"self_mask_shares": b64e_map(b_shares), "key_shares": b64e_map(s_shares)}


def request_message(method: str, path: str, nonce: int, body: bytes) -> bytes:
    """The bytes an agent signs for one request."""
    return f"persona-request|{method.upper()}|{path}|{nonce}|{hashlib.sha256(body).hexdigest()}".encode()


def shared_message(version: int, sha256_hex: str) -> bytes:
    """The bytes the coordinator signs for one published shared vector."""
    return f"persona-shared|{version}|{sha256_hex}".encode()


def blend_message(version: int, sha256_hex: str, weight: float, measured_version: int, agents: int) -> bytes:
    """The bytes the coordinator signs for the rerank blend weight published with one shared version: the weight
    federated evaluation picked on version ``measured_version`` from ``agents`` agents (``sync.protocol.evaluation``).
    """
    return f"persona-blend|{version}|{sha256_hex}|{float(weight)!r}|{measured_version}|{agents}".encode()


def setup_from_json(doc: Mapping[str, Any], *, round_id: int, seed: bytes) -> RoundSetup:
    """A round setup from its JSON form (the coordinator's stored copy, or its ``/setup`` answer)."""
    q = doc["quantization"]
    return RoundSetup(
        round_id=round_id,
        cohort=shared_ids(tuple(doc["cohort"])),
        seed=seed,
        degree=int(doc["degree"]),
        threshold=int(doc["threshold"]),
        min_survivors=int(doc["min_survivors"]),
        quantization=Quantization(
            bits=int(q["bits"]), levels=int(q["levels"]), bound=float(q["bound"]), rotation=rotation_seed(seed)
        ),
        vector_size=int(doc["vector_size"]),
    )


def peer_keys_from_json(doc: Mapping[str, str]) -> PeerKeys:
    """A neighbour's keys from one entry of the ``/setup`` answer's ``neighbours``."""
    return PeerKeys(
        doc["agent_id"], b64d(doc["identity_key"]), b64d(doc["c_pk"]), b64d(doc["s_pk"]), b64d(doc["signature"])
    )
