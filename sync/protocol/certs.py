"""What the agent and the coordinator agree on about TLS: how a certificate's SHA-256 fingerprint is written
(``sha256:`` then 64 hex digits, colons optional — what ``openssl x509 -fingerprint -sha256`` prints is accepted too)
and which hosts count as loopback (plain HTTP and open enrollment are for those only).
"""

from __future__ import annotations

import hashlib
import ipaddress

FINGERPRINT_PREFIX = "sha256:"


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, ``sha256:`` + 64 lowercase hex digits."""
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """``text`` in the canonical form of :func:`fingerprint`; ValueError saying what is wrong otherwise.

    Accepted: ``sha256:AB:CD:…`` or ``sha256:abcd…`` (case and colons do not matter), or the 64 hex digits alone.
    """
    raw = text.strip()
    if raw.lower().startswith(FINGERPRINT_PREFIX):
        raw = raw[len(FINGERPRINT_PREFIX) :]
    elif raw.lower().startswith("sha256 fingerprint="):  # openssl x509 -noout -fingerprint -sha256
        raw = raw.split("=", 1)[1]
    digits = raw.replace(":", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint: expected sha256: followed by 64 hex digits")
    return FINGERPRINT_PREFIX + digits


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) names this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
