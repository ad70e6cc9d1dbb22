"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).

A share is the pair (x, f(x)) of a random polynomial f of degree t − 1 with f(0) = the secret; any t shares give
the secret back by Lagrange interpolation at 0, fewer reveal nothing about it. The x coordinates are small positive
integers (an agent's 1-based index in the round's cohort). Randomness comes from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import lru_cache

PRIME = 2**521 - 1  # a Mersenne prime, larger than any 32-byte secret
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[bytes]:
    """Shares of ``secret`` (32 bytes) at the points ``xs``; any ``threshold`` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares {len(xs)}")
    if len(set(xs)) != len(xs) or min(xs) <= 0:
        raise ValueError("share points must be distinct positive integers")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: list[bytes] = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        out.append(y.to_bytes(SHARE_BYTES, "big"))
    return out


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    coefficients = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        coefficients.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(coefficients)


def combine(shares: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``(x, share)`` (the first ``threshold`` are used)."""
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares, got {len(shares)}")
    chosen = sorted(shares[:threshold])
    xs = tuple(x for x, _ in chosen)
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share points")
    total = 0
    for coefficient, (_, share) in zip(_lagrange_at_zero(xs), chosen, strict=True):
        if len(share) != SHARE_BYTES:
            raise ValueError(f"share must be {SHARE_BYTES} bytes, got {len(share)}")
        total = (total + coefficient * int.from_bytes(share, "big")) % PRIME
    if total >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent: the combined value is not a 32-byte secret")
    return total.to_bytes(SECRET_BYTES, "big")
