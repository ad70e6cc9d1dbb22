"""Masks, key derivation, quantization and the packed wire form of masked vectors.

* **Masks** are AES-256-CTR keystreams keyed by a 32-byte seed, read as little-endian uint32 and reduced modulo
  2^bits — a cryptographic PRG, never numpy's generator.
* **Pairwise seeds** and **share-encryption keys** come from an X25519 exchange passed through HKDF-SHA256 whose
  ``info`` binds the purpose, the round id and both agent ids (sorted), so a seed is never reused across rounds
  or pairs.
* **Quantization**: a float ``x`` clamped to ``[-B, B]`` becomes the integer ``round(x · Q / B)`` in ``[-Q, Q]``,
  stored modulo 2^bits (two's complement). With ``Q = ⌊(2^(bits−1) − 1) / n⌋`` the exact integer sum of ``n``
  contributions lies in ``[-nQ, nQ] ⊂ (−2^(bits−1), 2^(bits−1))``, so the sum modulo 2^bits can never wrap and
  decodes exactly. ``bits`` is the smallest of 16, 24, 32 that leaves at least ``MIN_LEVELS`` levels per side,
  unless the round's upload budget forces fewer (``sync.protocol.rules.round_quantization``): then any width from
  2 to 32 bits, packed bit-tight on the wire, with the same no-wrap rule — :meth:`Quantization.for_cohort` refuses
  a cohort too large for the width.
* **Rotation**: a round may announce a shared random rotation (a seed derived from the round's public seed). Each
  agent rotates its noised contribution before quantizing, the coordinator rotates the decoded sum back (the
  rotation is linear, so the sum of rotated vectors is the rotated sum). The rotation is a randomized Hadamard
  transform — random signs, a random permutation, a normalized Walsh–Hadamard transform on the first ``m``
  elements (``m`` the largest power of two ≤ ``d``), random signs again, the same transform on the last ``m`` — so it
  is orthogonal, needs no padding (``2m ≥ d``) and spreads any vector's energy evenly: every rotated element is
  sub-Gaussian with variance proxy at most ``‖x‖² / m``. The quantization bound can then be a few standard
  deviations instead of the worst case ``‖x‖``, which is what lets ~14 bits carry both shared adapters.
"""

from __future__ import annotations

import hashlib
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
MAX_BITS = 32


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


def rotation_seed(round_seed: bytes) -> bytes:
    """The 32-byte seed of a round's shared rotation, derived from the round's public seed."""
    return hashlib.sha256(b"persona-rotation|" + round_seed).digest()


@lru_cache(maxsize=4)
def _rotation_plan(seed: bytes, size: int) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], int]:
    """(signs, permutation, signs, m) of the rotation of ``size`` elements seeded by ``seed`` (public randomness)."""
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(seed).digest(), dtype="<u4"))
    first = rng.choice(np.array([-1.0, 1.0]), size=size)
    permutation = rng.permutation(size).astype(np.int64)
    second = rng.choice(np.array([-1.0, 1.0]), size=size)
    return first, permutation, second, 1 << (max(size, 1).bit_length() - 1)


def _hadamard(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The normalized Walsh–Hadamard transform of a power-of-two length vector (its own inverse)."""
    y = x.copy()
    n, h = y.size, 1
    while h < n:
        view = y.reshape(-1, 2, h)
        upper = view[:, 0, :].copy()
        view[:, 0, :] += view[:, 1, :]
        view[:, 1, :] = upper - view[:, 1, :]
        h *= 2
    y *= 1.0 / np.sqrt(n)
    return y


def rotate(values: NDArray[np.floating], seed: bytes) -> NDArray[np.float64]:
    """The shared random rotation of ``values`` (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    first, permutation, second, m = _rotation_plan(seed, x.size)
    y = (x * first)[permutation]
    y[:m] = _hadamard(y[:m])
    y *= second
    y[x.size - m :] = _hadamard(y[x.size - m :])
    return y


def unrotate(values: NDArray[np.floating], seed: bytes) -> NDArray[np.float64]:
    """The inverse of :func:`rotate` (its transpose: the rotation is orthogonal)."""
    y = np.array(values, dtype=np.float64)
    first, permutation, second, m = _rotation_plan(seed, y.size)
    y[y.size - m :] = _hadamard(y[y.size - m :])
    y *= second
    y[:m] = _hadamard(y[:m])
    x = np.empty_like(y)
    x[permutation] = y
    return x * first


@dataclass(frozen=True)
class Quantization:
    """How floats become integers modulo 2^bits for a cohort of ``n`` (see the module docstring).

    With a ``rotation`` seed, :meth:`encode` and :meth:`integers` quantize the rotated vector and :meth:`to_float`
    rotates back; without one (empty), the element-wise quantization of the vector itself.
    """

    bits: int
    levels: int  # Q: the largest magnitude one contribution may take
    bound: float  # B: floats are clamped to [-B, B]
    rotation: bytes = b""  # the seed of the round's shared rotation; b"" for none

    @classmethod
    def for_cohort(cls, n: int, bound: float, *, bits: int | None = None, rotation: bytes = b"") -> Quantization:
        """The narrowest byte-aligned modulus whose sum of ``n`` contributions cannot wrap, or exactly ``bits`` bits
        (ValueError when a sum of ``n`` cannot be held in them)."""
        if n < 1 or bound <= 0:
            raise ValueError("cohort size and bound must be positive")
        if bits is not None:
            if not 2 <= bits <= MAX_BITS:
                raise ValueError(f"a quantization width must lie between 2 and {MAX_BITS} bits, got {bits}")
            levels = ((1 << (bits - 1)) - 1) // n
            if levels < 1:
                raise ValueError(f"a cohort of {n} cannot be summed in {bits} bits")
            return cls(bits=bits, levels=levels, bound=bound, rotation=rotation)
        for width in BIT_WIDTHS:
            levels = ((1 << (width - 1)) - 1) // n
            if levels >= MIN_LEVELS or width == BIT_WIDTHS[-1]:
                if levels < 1:
                    raise ValueError(f"a cohort of {n} cannot be summed in {width} bits")
                return cls(bits=width, levels=levels, bound=bound, rotation=rotation)
        raise AssertionError("unreachable")

    @property
    def modulus_mask(self) -> np.uint32:
        """2^bits − 1 as a uint32 (for reducing sums)."""
        return np.uint32((1 << self.bits) - 1)

    def packed_bytes(self, length: int) -> int:
        """Bytes of one packed vector of ``length`` values (what an agent uploads as its masked input)."""
        return packed_size(length, self.bits)

    def _scaled(self, values: NDArray[np.floating]) -> tuple[NDArray[np.float64], int]:
        x = np.asarray(values, dtype=np.float64)
        if self.rotation:
            x = rotate(x, self.rotation)
        clamped = int(np.count_nonzero(np.abs(x) > self.bound))
        return np.clip(x, -self.bound, self.bound) * (self.levels / self.bound), clamped

    def _round(self, scaled: NDArray[np.float64], rng: np.random.Generator | None) -> NDArray[np.int64]:
        if rng is None:
            return np.rint(scaled).astype(np.int64)
        low = np.floor(scaled)
        return (low + (rng.random(scaled.shape) < scaled - low)).astype(np.int64)

    def encode(self, values: NDArray[np.floating], *, rng: np.random.Generator | None = None) -> tuple[UIntArray, int]:
        """Quantized ``values`` modulo 2^bits, and how many were clamped to the bound.

        Rounding is to the nearest level; with ``rng``, stochastic (up with probability the fractional part:
        unbiased whatever the input) — the option the wire measurements compare.
        """
        scaled, clamped = self._scaled(values)
        q = self._round(scaled, rng)
        return (q & int(self.modulus_mask)).astype(np.uint32), clamped

    def integers(self, values: NDArray[np.floating], *, rng: np.random.Generator | None = None) -> NDArray[np.int64]:
        """The signed integers that :meth:`encode` stores (for checking sums exactly)."""
        return self._round(self._scaled(values)[0], rng)

    def decode_sum(self, total: UIntArray) -> NDArray[np.int64]:
        """The exact signed integer sum from a sum modulo 2^bits."""
        t = total.astype(np.int64) & int(self.modulus_mask)
        half = 1 << (self.bits - 1)
        return np.where(t >= half, t - (1 << self.bits), t)

    def to_float(self, integers: NDArray[np.int64]) -> NDArray[np.float64]:
        """Integers back to floats (the inverse scaling of :meth:`encode`, and the inverse rotation)."""
        x = integers.astype(np.float64) * (self.bound / self.levels)
        return unrotate(x, self.rotation) if self.rotation else x


def packed_size(length: int, bits: int) -> int:
    """Bytes of ``length`` values packed at ``bits`` bits each (bit-tight when ``bits`` is not a multiple of 8)."""
    return (length * bits + 7) // 8


def pack(values: UIntArray, bits: int) -> bytes:
    """Little-endian, ``bits // 8`` bytes per value when ``bits`` is a multiple of 8, else the values' low ``bits``
    bits back to back, least significant first (the wire form of a masked vector)."""
    raw = np.ascontiguousarray(values.astype("<u4")).view(np.uint8).reshape(-1, 4)
    if bits % 8 == 0:
        return raw[:, : bits // 8].tobytes()
    bit_rows = np.unpackbits(raw, axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_rows.ravel(), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, length: int) -> UIntArray:
    """Inverse of :func:`pack`; raises ValueError when ``data`` does not hold exactly ``length`` values."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"a packed width must lie between 1 and {MAX_BITS} bits, got {bits}")
    expected = packed_size(length, bits)
    if len(data) != expected:
        raise ValueError(f"expected {expected} bytes ({length} values of {bits} bits), got {len(data)}")
    if bits % 8 == 0:
        width = bits // 8
        raw = np.zeros((length, 4), dtype=np.uint8)
        raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(length, width)
        return raw.view("<u4").reshape(length).astype(np.uint32)
    bit_rows = np.zeros((length, 32), dtype=np.uint8)
    bit_rows[:, :bits] = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=length * bits)[
        : length * bits
    ].reshape(length, bits)
    return np.packbits(bit_rows, axis=1, bitorder="little").view("<u4").reshape(length).astype(np.uint32)
