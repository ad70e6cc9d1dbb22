"""Encryption at rest for the profile: a passphrase-derived key (scrypt) and AES-256-GCM.

The key file (``keyfile.json`` in the data folder) holds the KDF parameters, a random salt and a *check* blob:
a known constant encrypted with the derived key. Opening a profile first decrypts the check blob, so a wrong
passphrase is detected before anything is read or written. Every encrypted file is ``nonce (12 bytes) ||
ciphertext+tag`` with the file's role as associated data, so two encrypted files cannot be swapped unnoticed.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from agent.errors import ProfileError, WrongPassphraseError
from models.assets import atomic_write_bytes

KEYFILE_FORMAT = 1
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_CHECK_PLAINTEXT = b"persona profile key check v1"
_NONCE_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class Cipher:
    """AES-256-GCM with one key; ``role`` binds each ciphertext to the file it belongs in."""

    key: bytes

    def encrypt(self, data: bytes, role: str) -> bytes:
        """``nonce || ciphertext`` of ``data``."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, data, role.encode("utf-8"))

    def decrypt(self, blob: bytes, role: str) -> bytes:
        """The plaintext of a blob made by :meth:`encrypt` for the same ``role``; a bad key or blob raises."""
        try:
            return AESGCM(self.key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], role.encode("utf-8"))
        except InvalidTag as exc:
            raise ProfileError(
                f"Encrypted file for {role!r} failed authentication: it was changed or damaged.",
                hint="Restore it from a backup, or run `agent reset` to start over.",
            ) from exc


def create_keyfile(path: Path, passphrase: str) -> Cipher:
    """Write a new key file for ``passphrase`` (atomically) and return its cipher."""
    if not passphrase:
        raise ProfileError("An empty passphrase cannot encrypt the profile.", hint="Choose a non-empty passphrase.")
    salt = os.urandom(16)
    cipher = Cipher(_derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    doc = {
        "format": KEYFILE_FORMAT,
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64(salt),
        "check": _b64(cipher.encrypt(_CHECK_PLAINTEXT, "keycheck")),
    }
    atomic_write_bytes(path, json.dumps(doc, indent=2).encode("utf-8"))
    return cipher


def unlock(path: Path, passphrase: str) -> Cipher:
    """The cipher of the key file at ``path``; :class:`WrongPassphraseError` when the passphrase does not fit."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        salt = base64.b64decode(doc["salt"])
        check = base64.b64decode(doc["check"])
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"The key file {path} is missing or unreadable: {exc}") from exc
    cipher = Cipher(_derive(passphrase, salt, n, r, p))
    try:
        AESGCM(cipher.key).decrypt(check[:_NONCE_BYTES], check[_NONCE_BYTES:], b"keycheck")
    except InvalidTag:
        raise WrongPassphraseError(
            "The passphrase does not unlock this profile; nothing was read or changed.",
            hint="Try again, or set PERSONA_PASSPHRASE. A forgotten passphrase cannot be recovered "
            "(`agent reset --yes` deletes the profile).",
        ) from None
    return cipher
