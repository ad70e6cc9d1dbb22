"""Publishing shared vectors: versions, content addressing (SHA-256), the coordinator's Ed25519 signature, and the
server optimizer that turns a round's unmasked mean delta into the next version.

A published version is never rewritten; its signature covers ``persona-shared|VERSION|SHA256`` (``sync.protocol
.wire.shared_message``), which every agent checks against the coordinator key it pinned at first contact.

One version holds every shared part: the blob is the float32 concatenation ``[θ_g ; φ_g]`` in the order of the
coordinator's **layout** (part names and sizes, fixed when version 0 is published and kept in the state's meta), so
applying, versioning and signing have one code path whatever the number of parts. The server step differs per
part: FedAdam on θ_g (as the first stage's federation trains it), a plain FedAvg step on φ_g (as the adapter
trainer does; Adam's per-element normalisation would turn a noise-only mean into full-size steps).

Federated evaluation (``sync.protocol.evaluation``): each evaluated round appends one entry to the **quality
history** (the population means of the round's base version, per blend weight) and picks the rerank blend weight;
every version published afterwards carries the weight in force with its own signature over ``persona-blend|VERSION|
SHA256|WEIGHT|MEASURED_VERSION|AGENTS`` (``sync.protocol.wire.blend_message``). Both live in the state's meta, written
in the transaction that publishes the version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from models.federation import FedAdam
from sync.coordinator.rejection import Rejection
from sync.coordinator.storage import CoordinatorStore, Published
from sync.protocol import secagg
from sync.protocol.evaluation import EvalPlan, PopulationEval
from sync.protocol.privacy import PHI, THETA
from sync.protocol.rules import SYNC_PHI_SERVER_LR
from sync.protocol.wire import b64e, blend_message, shared_message

FloatVector = np.ndarray[Any, np.dtype[np.float32]]
InitialVector = FloatVector | Callable[[], FloatVector]
"""Version 0: a vector, or a function making one (called only when nothing is published yet)."""
HISTORY_KEY = "eval_history"
BLEND_KEY = "blend"
HISTORY_KEPT = 1000
"""Entries of the quality history kept (the oldest go first)."""


class Publisher:
    """The published versions of one coordinator, its signing key and its FedAdam server step."""

    def __init__(self, state: CoordinatorStore, clock: Callable[[], float]) -> None:
        """Load the signing key from ``state``, creating it the first time."""
        self.state = state
        self.clock = clock
        raw = state.meta("signing_key")
        if raw is not None:
            self.signing_key = Ed25519PrivateKey.from_private_bytes(raw)
        else:
            self.signing_key = Ed25519PrivateKey.generate()
            raw = self.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            state.put_meta("signing_key", raw)

    @property
    def public_key(self) -> bytes:
        """The coordinator's Ed25519 public key (raw), which signs every published shared vector."""
        return secagg.raw_public(self.signing_key)

    def ensure_initial(self, initial: InitialVector | None, vector_size: int, *, phi_size: int = 0) -> int:
        """Publish version 0 if nothing is published yet (``initial``, else ``vector_size`` zeros) as θ_g, followed by
        ``phi_size`` zeros as φ_g when positive (the FFA ``B`` factors start at zero); the total length.

        ``initial`` may be a function making the vector: it is called only when nothing is published. With a
        version published, the stored layout stands; ValueError when a positive ``phi_size`` disagrees with it.
        """
        if phi_size < 0:
            raise ValueError(f"the shared LoRA part cannot have {phi_size} values")
        latest = self.state.latest_vector()
        if latest is not None:
            size = len(latest) // 4
            stored = dict(self.layout(size))
            if phi_size > 0 and stored.get(PHI) != phi_size:
                raise ValueError(
                    f"this coordinator's state publishes a layout {self.layout(size)}: it cannot switch to a shared "
                    f"LoRA part of {phi_size:,} values (start a new state, or leave the LoRA size unset)"
                )
            return size
        if callable(initial):
            initial = initial()
        if initial is None:
            if vector_size <= 0:
                raise ValueError("nothing is published yet: give an initial vector (--init-shared) or --vector-size")
            initial = np.zeros(vector_size, dtype=np.float32)
        theta = np.asarray(initial, dtype="<f4").ravel()
        layout = [(THETA, int(theta.size))] + ([(PHI, phi_size)] if phi_size else [])
        self.state.put_meta("layout", json.dumps(layout).encode())
        self.publish(np.concatenate([theta, np.zeros(phi_size, dtype="<f4")]), None)
        return int(theta.size) + phi_size

    def layout(self, vector_size: int) -> list[tuple[str, int]]:
        """The published vector's parts, ``[(name, size), ...]`` in order (θ_g alone for a state that predates
        layouts)."""
        raw = self.state.meta("layout")
        if raw is None:
            return [(THETA, vector_size)]
        return [(str(name), int(size)) for name, size in json.loads(bytes(raw).decode())]

    def publish(self, vector: np.ndarray[Any, np.dtype[Any]], round_id: int | None) -> Published:
        """Store ``vector`` as the next version, content-addressed and signed."""
        blob = np.asarray(vector, dtype="<f4").tobytes()
        digest = hashlib.sha256(blob).hexdigest()
        version = self.state.next_version()
        entry = Published(version, digest, self.signing_key.sign(shared_message(version, digest)), round_id)
        self.state.add_published(entry, blob, self.clock())
        return entry

    def latest(self) -> Published:
        """The newest published shared vector's metadata."""
        latest = self.state.latest_published()
        assert latest is not None  # version 0 is published when the coordinator is created
        return latest

    def blob(self, version: int) -> bytes:
        """The bytes (float32, little-endian) of a published version."""
        blob = self.state.published_vector(version)
        if blob is None:
            raise Rejection(404, "unknown_version", f"no published version {version}")
        return blob

    def server_step(self, mean: FloatVector, server_lr: float) -> FloatVector:
        """The next vector from the unmasked mean delta: FedAdam on θ_g (its moments live in the database with the
        published vector), a FedAvg step of :data:`~sync.protocol.rules.SYNC_PHI_SERVER_LR` on every other part."""
        current = np.frombuffer(self.blob(self.latest().version), dtype="<f4").astype(np.float32)
        if mean.shape != current.shape:
            raise ValueError(f"the mean delta has {mean.size} values, the published vector {current.size}")
        new = current.copy()
        start = 0
        for name, size in self.layout(current.size):
            part = slice(start, start + size)
            start += size
            if name != THETA:
                new[part] = current[part] + np.float32(SYNC_PHI_SERVER_LR) * mean[part]
                continue
            server = FedAdam(lr=server_lr)
            for moment in ("m", "v"):
                raw = self.state.meta(f"fedadam_{moment}")
                if raw is not None:
                    setattr(server, moment, np.frombuffer(raw, dtype="<f8").copy())
            new[part] = server.step(current[part], mean[part])
            assert server.m is not None and server.v is not None
            for moment, value in (("m", server.m), ("v", server.v)):
                self.state.put_meta(f"fedadam_{moment}", value.astype("<f8").tobytes())
        return new

    # -- federated evaluation ------------------------------------------------------------------------------------

    def quality_history(self) -> list[dict[str, Any]]:
        """Every evaluated round's entry, oldest first (what ``/status`` shows the end of)."""
        raw = self.state.meta(HISTORY_KEY)
        return list(json.loads(bytes(raw).decode())) if raw is not None else []

    def blend_in_force(self) -> dict[str, Any] | None:
        """The blend weight the federation picked last (``weight``, ``measured_version``, ``agents``, ``round_id``),
        or None before any evaluated round reached :attr:`EvalPlan.min_agents`."""
        raw = self.state.meta(BLEND_KEY)
        return dict(json.loads(bytes(raw).decode())) if raw is not None else None

    def signed_blend(self, version: int) -> dict[str, Any] | None:
        """The blend weight published with ``version`` and its signature (``/v1/shared``), or None."""
        raw = self.state.meta(f"{BLEND_KEY}:{version}")
        return dict(json.loads(bytes(raw).decode())) if raw is not None else None

    def record_evaluation(
        self,
        round_id: int,
        base_version: int,
        evaluation: PopulationEval,
        plan: EvalPlan,
        published: Published | None,
    ) -> dict[str, Any]:
        """Append the round's entry to the quality history, pick the blend weight (the best mean NDCG@k of the
        paired block when it holds at least ``plan.min_agents`` agents, else the previous pick is kept) and sign the
        weight in force with ``published``, the version this round produced (nothing is signed without one).
        Returns the entry."""
        best = evaluation.best(plan.min_agents)
        blend = self.blend_in_force()
        if best is not None:
            blend = {
                "weight": best.weight,
                "measured_version": base_version,
                "agents": round(evaluation.blend_agents),
                "round_id": round_id,
            }
            self.state.put_meta(BLEND_KEY, json.dumps(blend).encode())
        entry: dict[str, Any] = {
            "round_id": round_id,
            "base_version": base_version,
            "published_version": None if published is None else published.version,
            "time": self.clock(),
            "k": plan.k,
            **evaluation.as_json(),
            "chosen_weight": None if blend is None else blend["weight"],
            "chosen": "this round" if best is not None else ("kept" if blend is not None else "none yet"),
        }
        history = [*self.quality_history(), entry][-HISTORY_KEPT:]
        self.state.put_meta(HISTORY_KEY, json.dumps(history).encode())
        if published is not None and blend is not None:
            message = blend_message(
                published.version, published.sha256, blend["weight"], blend["measured_version"], blend["agents"]
            )
            signed = {**blend, "signature": b64e(self.signing_key.sign(message))}
            self.state.put_meta(f"{BLEND_KEY}:{published.version}", json.dumps(signed).encode())
        return entry
