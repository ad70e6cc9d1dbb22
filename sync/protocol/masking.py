"""Masks, key derivation, quantization and the packed wire form of masked vectors.

* **Masks** are AES-256-CTR keystreams keyed by a 32-byte seed, read as little-endian uint32 and reduced modulo
  2^bits — a cryptographic PRG, never numpy's generator.
* **Pairwise seeds** and **share-encryption keys** come from an X25519 exchange passed through HKDF-SHA256 whose
  ``info`` binds the purpose, the round id and both agent ids (sorted), so a seed is never reused across rounds
  or pairs.
* **Quantization**: a float ``x`` clamped to ``[-B, B]`` becomes the integer ``round(x · Q / B)`` in ``[-Q, Q]``,
  stored modulo 2^bits (two's complement). With ``Q = ⌊(2^(bits−1) − 1) / n⌋`` the exact integer sum of ``n``
  contributions lies in ``[-nQ, nQ] ⊂ (−2^(bits−1), 2^(bits−1))``, so the sum modulo 2^bits can never wrap and
  decodes exactly. ``bits`` is the smallest of 16, 24, 32 that leaves at least ``MIN_LEVELS`` levels per side.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

UIntArray = NDArray[np.uint32]
MIN_LEVELS = 2048
BIT_WIDTHS = (16, 24, 32)


def _keystream(seed: bytes, length: int) -> bytes:
    """``4 · length`` bytes of the AES-256-CTR keystream keyed by the 32-byte ``seed``."""
    if len(seed) != 32:
        raise ValueError(f"mask seed must be 32 bytes, got {len(seed)}")
    # Each seed keys exactly one keystream, so a fixed counter block is safe.
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(_zeros(4 * length)) + encryptor.finalize()


@lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    return bytes(size)


def prg_mask(seed: bytes, length: int, bits: int) -> UIntArray:
    """``length`` pseudo-random integers modulo 2^bits from AES-256-CTR keyed by the 32-byte ``seed``."""
    out = np.frombuffer(_keystream(seed, length), dtype="<u4").astype(np.uint32)
    return out & np.uint32((1 << bits) - 1) if bits < 32 else out


def add_prg_mask(total: UIntArray, seed: bytes, *, subtract: bool = False) -> None:
    """Add (or subtract) ``seed``'s mask to ``total`` in place, modulo 2^32.

    The full 32-bit keystream is used: since 2^bits divides 2^32, reducing ``total`` modulo 2^bits afterwards
    gives exactly what adding ``prg_mask(seed, len(total), bits)`` would, without a temporary per mask.
    """
    if total.dtype != np.uint32 or total.ndim != 1:
        raise ValueError("masks accumulate into a one-dimensional uint32 array")
    stream = np.frombuffer(_keystream(seed, total.size), dtype="<u4")
    (np.subtract if subtract else np.add)(total, stream, out=total)


def derive_key(
    private_key: X25519PrivateKey, peer_public: bytes, *, purpose: str, round_id: int, a: str, b: str
) -> bytes:
    """32 bytes from X25519(private, peer) and HKDF-SHA256 bound to (purpose, round, the two agent ids)."""
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    low, high = sorted((a, b))
    info = f"persona-secagg|{purpose}|round={round_id}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


@dataclass(frozen=True)
class Quantization:
    """How floats become integers modulo 2^bits for a cohort of ``n`` (see the module docstring)."""

    bits: int
    levels: int  # Q: the largest magnitude one contribution may take
    bound: float  # B: floats are clamped to [-B, B]

    @classmethod
    def for_cohort(cls, n: int, bound: float) -> Quantization:
        """The narrowest byte-aligned modulus whose sum of ``n`` contributions cannot wrap."""
        if n < 1 or bound <= 0:
            raise ValueError("cohort size and bound must be positive")
        for bits in BIT_WIDTHS:
            levels = ((1 << (bits - 1)) - 1) // n
            if levels >= MIN_LEVELS or bits == BIT_WIDTHS[-1]:
                if levels < 1:
                    raise ValueError(f"a cohort of {n} cannot be summed in {bits} bits")
                return cls(bits=bits, levels=levels, bound=bound)
        raise AssertionError("unreachable")

    @property
    def modulus_mask(self) -> np.uint32:
        """2^bits − 1 as a uint32 (for reducing sums)."""
        return np.uint32((1 << self.bits) - 1)

    def encode(self, values: NDArray[np.floating]) -> tuple[UIntArray, int]:
        """Quantized ``values`` modulo 2^bits, and how many were clamped to the bound."""
        x = np.asarray(values, dtype=np.float64)
        clamped = int(np.count_nonzero(np.abs(x) > self.bound))
        q = np.rint(np.clip(x, -self.bound, self.bound) * (self.levels / self.bound)).astype(np.int64)
        return (q & int(self.modulus_mask)).astype(np.uint32), clamped

    def integers(self, values: NDArray[np.floating]) -> NDArray[np.int64]:
        """The signed integers that :meth:`encode` stores (for checking sums exactly)."""
        x = np.clip(np.asarray(values, dtype=np.float64), -self.bound, self.bound)
        return np.rint(x * (self.levels / self.bound)).astype(np.int64)

    def decode_sum(self, total: UIntArray) -> NDArray[np.int64]:
        """The exact signed integer sum from a sum modulo 2^bits."""
        t = total.astype(np.int64) & int(self.modulus_mask)
        half = 1 << (self.bits - 1)
        return np.where(t >= half, t - (1 << self.bits), t)

    def to_float(self, integers: NDArray[np.int64]) -> NDArray[np.float64]:
        """Integers back to floats (the inverse scaling of :meth:`encode`)."""
        return integers.astype(np.float64) * (self.bound / self.levels)


def pack(values: UIntArray, bits: int) -> bytes:
    """Little-endian, ``bits // 8`` bytes per value (the wire form of a masked vector)."""
    width = bits // 8
    raw = np.ascontiguousarray(values.astype("<u4")).view(np.uint8).reshape(-1, 4)
    return raw[:, :width].tobytes()


def unpack(data: bytes, bits: int, length: int) -> UIntArray:
    """Inverse of :func:`pack`; raises ValueError when ``data`` does not hold exactly ``length`` values."""
    width = bits // 8
    if len(data) != width * length:
        raise ValueError(f"expected {width * length} bytes ({length} values of {bits} bits), got {len(data)}")
    raw = np.zeros((length, 4), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(length, width)
    return raw.view("<u4").reshape(length).astype(np.uint32)
