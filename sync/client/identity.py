"""An agent's long-term identity: the Ed25519 key its requests and round keys are signed with, kept in a 0600 file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from models.assets import atomic_write_bytes
from sync.protocol import secagg


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
