"""Secure-aggregation building blocks: Shamir sharing, AES-CTR masks, quantization, the graph, the accountant."""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.errors import ProtocolError
from sync.protocol import secagg, shamir
from sync.protocol.masking import Quantization, add_prg_mask, pack, prg_mask, unpack
from sync.protocol.privacy import PrivacyParams, clip, epsilon, prepare_contribution, weighted_mean


def test_shamir_any_threshold_subset_recovers_and_fewer_do_not() -> None:
    secret = os.urandom(32)
    xs = list(range(1, 11))
    shares = list(zip(xs, shamir.split(secret, xs, threshold=6), strict=True))
    assert shamir.combine(shares[:6], 6) == secret
    assert shamir.combine(shares[4:], 6) == secret
    with pytest.raises(ValueError, match="need 6"):
        shamir.combine(shares[:5], 6)
    # five shares plus a forged sixth give something else (or an invalid value), never the secret
    forged = [*shares[:5], (11, (12345).to_bytes(shamir.SHARE_BYTES, "big"))]
    with contextlib.suppress(ValueError):
        assert shamir.combine(forged, 6) != secret


def test_prg_masks_are_deterministic_per_seed_and_reduced() -> None:
    seed = os.urandom(32)
    a, b = prg_mask(seed, 1000, 24), prg_mask(seed, 1000, 24)
    assert np.array_equal(a, b)
    assert int(a.max()) < 2**24 and len(np.unique(a)) > 990
    assert not np.array_equal(a, prg_mask(os.urandom(32), 1000, 24))
    with pytest.raises(ValueError, match="32 bytes"):
        prg_mask(b"short", 10, 24)


def test_quantization_sum_of_full_cohort_at_the_bound_does_not_wrap() -> None:
    n = 1000
    q = Quantization.for_cohort(n, bound=2.0)
    assert q.bits == 24 and q.levels == (2**23 - 1) // n
    extreme = np.full(5, 10.0)  # clamped to +bound
    parts = [q.encode(extreme)[0] for _ in range(n)]
    total = np.zeros(5, dtype=np.uint32)
    for part in parts:
        total = (total + part) & q.modulus_mask
    assert np.array_equal(q.decode_sum(total), np.full(5, n * q.levels))
    negative = np.zeros(5, dtype=np.uint32)
    for _ in range(n):
        negative = (negative + q.encode(-extreme)[0]) & q.modulus_mask
    assert np.array_equal(q.decode_sum(negative), np.full(5, -n * q.levels))
    values = np.array([0.5, -0.25, 1.0])
    assert np.allclose(q.to_float(q.integers(values)), values, atol=q.bound / q.levels)


def test_pack_roundtrip_and_length_check() -> None:
    values = prg_mask(os.urandom(32), 77, 24)
    data = pack(values, 24)
    assert len(data) == 77 * 3
    assert np.array_equal(unpack(data, 24, 77), values)
    with pytest.raises(ValueError, match="expected"):
        unpack(data[:-1], 24, 77)


def test_masks_accumulated_in_place_equal_the_reduced_masks() -> None:
    a, b = os.urandom(32), os.urandom(32)
    total = np.arange(1000, dtype=np.uint32)
    add_prg_mask(total, a)
    add_prg_mask(total, b, subtract=True)
    expected = (np.arange(1000, dtype=np.int64) + prg_mask(a, 1000, 24) - prg_mask(b, 1000, 24)) % (1 << 24)
    assert np.array_equal(total & np.uint32((1 << 24) - 1), expected.astype(np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        add_prg_mask(np.zeros(10, dtype=np.int64), a)  # type: ignore[arg-type]


def test_round_keys_must_be_signed_by_the_identity_key_even_after_a_valid_check() -> None:
    identity = Ed25519PrivateKey.generate()
    public = secagg.raw_public(identity)
    agent = secagg.agent_id_for(public)
    c_pk, s_pk = os.urandom(32), os.urandom(32)
    signature = identity.sign(secagg.round_keys_message(3, agent, c_pk, s_pk))
    secagg.PeerKeys(agent, public, c_pk, s_pk, signature).verify(3)
    secagg.PeerKeys(agent, public, c_pk, s_pk, signature).verify(3)  # the memoised answer
    for tampered in (
        secagg.PeerKeys(agent, public, c_pk, os.urandom(32), signature),
        secagg.PeerKeys(agent, public, c_pk, s_pk, bytes(64)),
    ):
        with pytest.raises(ProtocolError, match="not signed"):
            tampered.verify(3)
    with pytest.raises(ProtocolError, match="not signed"):
        secagg.PeerKeys(agent, public, c_pk, s_pk, signature).verify(4)  # another round


def test_graph_is_symmetric_regular_and_seeded() -> None:
    seed = os.urandom(32)
    n = 300
    k = secagg.graph_degree(n)
    assert k < n - 1 and k % 2 == 0
    graph = secagg.neighbours(n, seed, k)
    assert all(len(g) == k and i not in g for i, g in enumerate(graph))
    assert all(i in graph[j] for i, g in enumerate(graph) for j in g)
    assert graph == secagg.neighbours(n, seed, k)
    assert graph != secagg.neighbours(n, os.urandom(32), k)
    assert secagg.graph_degree(20) == 19  # small cohorts use the complete graph


def test_clipping_weighting_and_noise_bound_the_contribution() -> None:
    rng = np.random.default_rng(1)
    delta = rng.normal(size=500) * 10
    clipped, norm = clip(delta, 1.0)
    assert norm > 1 and np.linalg.norm(clipped) == pytest.approx(1.0)
    quiet = PrivacyParams(clip=1.0, sigma=0.0, weight_cap=100.0)
    c = prepare_contribution(delta, 50, quiet, noise_divisor=10)
    assert c.weight == 0.5 and np.linalg.norm(c.vector) <= np.sqrt(2) + 1e-9
    assert c.vector[-1] == pytest.approx(0.5)
    noisy = prepare_contribution(np.zeros(20000), 1000, PrivacyParams(clip=2.0, sigma=1.0), noise_divisor=25)
    assert np.std(noisy.vector[:-1]) == pytest.approx(2.0 / 5, rel=0.05)
    mean = weighted_mean(np.concatenate([c.vector[:-1] * 3, [c.vector[-1] * 3]]), 1.0)
    assert mean is not None and np.allclose(mean, clipped, atol=1e-6)


def test_accountant_is_monotone_in_rounds_and_in_noise() -> None:
    z = PrivacyParams(sigma=1.0).noise_multiplier
    eps = [epsilon([z] * r) for r in (0, 1, 5, 20, 60)]
    assert eps[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert epsilon([2 * z] * 20) < eps[3]
    assert epsilon([0.0]) == float("inf")
