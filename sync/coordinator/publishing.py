"""Publishing shared vectors: versions, content addressing (SHA-256), the coordinator's Ed25519 signature, and the
server optimizer that turns a round's unmasked mean delta into the next version.

A published version is never rewritten; its signature covers ``persona-shared|VERSION|SHA256`` (``sync.protocol
.wire.shared_message``), which every agent checks against the coordinator key it pinned at first contact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from models.federation import FedAdam
from sync.coordinator.rejection import Rejection
from sync.coordinator.state import CoordinatorState, Published
from sync.protocol import secagg
from sync.protocol.wire import shared_message

FloatVector = np.ndarray[Any, np.dtype[np.float32]]
InitialVector = FloatVector | Callable[[], FloatVector]
"""Version 0: a vector, or a function making one (called only when nothing is published yet)."""


class Publisher:
    """The published versions of one coordinator, its signing key and its FedAdam server step."""

    def __init__(self, state: CoordinatorState, clock: Callable[[], float]) -> None:
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

    def ensure_initial(self, initial: InitialVector | None, vector_size: int) -> int:
        """Publish version 0 if nothing is published yet (``initial``, else ``vector_size`` zeros); the length.

        ``initial`` may be a function making the vector: it is called only when nothing is published.
        """
        latest = self.state.latest_vector()
        if latest is not None:
            return len(latest) // 4
        if callable(initial):
            initial = initial()
        if initial is None:
            if vector_size <= 0:
                raise ValueError("nothing is published yet: give an initial vector (--init-shared) or --vector-size")
            initial = np.zeros(vector_size, dtype=np.float32)
        self.publish(np.asarray(initial, dtype="<f4").ravel(), None)
        return int(initial.size)

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
        """FedAdam on the unmasked mean delta; its moments live in the database with the published vector."""
        current = np.frombuffer(self.blob(self.latest().version), dtype="<f4").astype(np.float32)
        server = FedAdam(lr=server_lr)
        for name in ("m", "v"):
            raw = self.state.meta(f"fedadam_{name}")
            if raw is not None:
                setattr(server, name, np.frombuffer(raw, dtype="<f8").copy())
        new = server.step(current, mean)
        assert server.m is not None and server.v is not None
        for name, value in (("m", server.m), ("v", server.v)):
            self.state.put_meta(f"fedadam_{name}", value.astype("<f8").tobytes())
        return new
