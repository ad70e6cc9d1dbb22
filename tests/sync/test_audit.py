"""The audit's mechanics (sync.simulation), the personality-aware weight factor (sync.protocol.privacy) and the
leakage-aware objective (models.privacy.leakage + the local_train penalty hook), on real ML-100K users and the real
masking code."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.firststage.recipe import FederatedConfig, TrainConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.firststage.training import local_train
from models.privacy.attackers import AttackerConfig, attribute_labels
from models.privacy.leakage import LeakageObjective, fit_probe, holdout_rank, local_quality
from models.text.encoder import ItemEncoder, embed_catalog
from sync.protocol import rules, secagg
from sync.protocol.masking import prg_mask
from sync.protocol.privacy import PrivacyParams, personality_factor, prepare_contribution
from sync.simulation.audit import audit_setting, setting_epsilon
from sync.simulation.federation import MECHANISMS, AuditConfig, Federation, contribution, mean_delta, train_setting
from sync.simulation.views import compute_views, masked_uploads

PRIVACY = PrivacyParams(clip=0.5, sigma=0.5, weight_cap=128.0)
SGD = TrainConfig(n_negatives=100, batch_size=64, lr=1.0, epochs=1, private_lr=0.05, optimizer="sgd")


@pytest.fixture(scope="module")
def ml100k(_catalog_embeddings: Path):  # type: ignore[no-untyped-def]
    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    return dataset, make_loo_split(dataset, seed=0), vectors


def test_factor_only_shrinks_the_contribution() -> None:
    delta = np.full(100, 1.0)
    full = prepare_contribution(delta, 500, replace(PRIVACY, sigma=0.0), noise_divisor=10)
    half = prepare_contribution(delta, 500, replace(PRIVACY, sigma=0.0), noise_divisor=10, factor=0.5)
    assert np.allclose(half.vector, 0.5 * full.vector)
    assert np.linalg.norm(full.vector) <= math.sqrt(2) * PRIVACY.clip + 1e-12
    zero = prepare_contribution(delta, 500, replace(PRIVACY, sigma=0.0), noise_divisor=10, factor=0.0)
    assert not zero.vector.any()
    with pytest.raises(ValueError):
        prepare_contribution(delta, 500, PRIVACY, noise_divisor=10, factor=1.5)
    seeded = [
        prepare_contribution(delta, 5, PRIVACY, noise_divisor=4, rng=np.random.default_rng(0)).vector for _ in range(2)
    ]
    assert np.array_equal(seeded[0], seeded[1])


def test_personality_factor_is_a_weight_in_the_unit_interval() -> None:
    assert personality_factor(0.0, 1.0) == 1.0
    assert personality_factor(0.9, 1.0) == pytest.approx(0.1)
    assert personality_factor(0.2, 0.5) == pytest.approx(0.4)
    assert personality_factor(1.7, 1.0) == 0.0 and personality_factor(-1.0, 2.0) == 1.0
    assert local_quality(3, 2) == 1.0 and local_quality(3, 3) == 1.0 and local_quality(2, 9) == 0.5


def test_masked_uploads_are_the_real_protocol_and_unmask_to_the_exact_sum() -> None:
    rng = np.random.default_rng(0)
    n, size = 12, 40
    config = AuditConfig(privacy=PRIVACY, cohort=n)
    survivors = config.min_survivors(n)
    q = config.quantization(n)
    vectors = [
        prepare_contribution(rng.normal(size=size - 1), 50, PRIVACY, noise_divisor=survivors, rng=rng).vector
        for _ in range(n)
    ]
    uploads = masked_uploads(vectors, q, survivors, round_id=7)
    assert len(uploads) == n and all(u.shape == (size,) for u in uploads)
    for upload, vector in zip(uploads, vectors, strict=True):  # the mask hides the quantized contribution
        assert np.count_nonzero(upload == q.encode(vector)[0]) < size // 4
    modulus = 1 << q.bits
    total = np.zeros(size, dtype=np.int64)
    for upload in uploads:
        total = (total + upload.astype(np.int64)) % modulus
    # masks are pairwise ± and cancel in the sum, except each agent's self mask: not removable without the
    # protocol's shares, so the total is still uniform-looking ...
    exact = np.sum([q.integers(v) for v in vectors], axis=0)
    assert not np.array_equal(q.decode_sum(total.astype(np.uint32)), exact)


def test_masked_uploads_minus_the_self_masks_give_the_exact_quantized_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[bytes] = []
    original = secagg.AgentSession.masked_input

    def spy(self: secagg.AgentSession, *args, **kwargs):  # type: ignore[no-untyped-def]
        seeds.append(self.self_seed)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(secagg.AgentSession, "masked_input", spy)
    rng = np.random.default_rng(1)
    n, size = 10, 30
    q = rules.round_quantization(n, clip=PRIVACY.clip, sigma=PRIVACY.sigma, survivors=n)
    vectors = [rng.uniform(-0.3, 0.3, size=size) for _ in range(n)]
    uploads = masked_uploads(vectors, q, n, round_id=1)
    total = np.zeros(size, dtype=np.int64)
    for upload, seed in zip(uploads, seeds, strict=True):
        total = total + upload.astype(np.int64) - prg_mask(seed, size, q.bits).astype(np.int64)
    recovered = q.decode_sum((total % (1 << q.bits)).astype(np.uint32))
    assert np.array_equal(recovered, np.sum([q.integers(v) for v in vectors], axis=0))


def test_contributions_and_means_per_setting() -> None:
    delta = np.array([3.0, 4.0])  # norm 5, clipped to 0.5
    none = contribution(MECHANISMS["none"], delta, 10, PRIVACY, survivors=5)
    assert np.allclose(none, [30.0, 40.0, 10.0])
    assert np.allclose(mean_delta(MECHANISMS["none"], none + none, PRIVACY), delta)  # type: ignore[arg-type]
    clipped = contribution(MECHANISMS["clip"], delta, 64, PRIVACY, survivors=5)
    assert np.allclose(clipped, 0.5 * np.array([0.3, 0.4, 0.5]))
    assert np.allclose(mean_delta(MECHANISMS["clip"], clipped, PRIVACY), [0.3, 0.4])  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    noisy = np.stack(
        [contribution(MECHANISMS["clip+noise"], delta, 64, PRIVACY, survivors=4, rng=rng) for _ in range(4000)]
    )
    assert noisy.std(0) == pytest.approx(np.full(3, 0.5 * 0.5 / 2), rel=0.05)  # σC/√m with m = 4
    quiet = contribution(MECHANISMS["clip+noise"], delta, 64, PRIVACY, survivors=4, noise=False)
    assert np.allclose(quiet, clipped)


def test_epsilon_is_none_without_noise_and_much_larger_without_secure_aggregation() -> None:
    assert setting_epsilon(MECHANISMS["clip"], PRIVACY, 10, 140) is None
    secure = setting_epsilon(MECHANISMS["default"], PRIVACY, 10, 140)
    alone = setting_epsilon(MECHANISMS["clip+noise"], PRIVACY, 10, 140)
    assert secure is not None and alone is not None and 0 < secure < alone


def proxy_deltas(ml100k, users: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    _dataset, split, vectors = ml100k
    shared = SharedParams.init(split.n_items)
    text = torch.from_numpy(vectors)
    return np.stack(
        [
            local_train(shared, PrivateParams.init(), split.users[u].train, text, SGD, seed=u).shared.to_vector()
            - shared.to_vector()
            for u in users
        ]
    )


def test_the_penalty_pulls_a_delta_to_the_probe_centre_and_lowers_its_leakage(ml100k) -> None:  # type: ignore[no-untyped-def]
    import torch

    dataset, split, vectors = ml100k
    proxies = sorted(split.users)[:40]
    probe = fit_probe(proxy_deltas(ml100k, proxies), attribute_labels(dataset, proxies), LeakageObjective())
    assert len(probe.names) == 8  # gender + 3 age classes, two INLP rounds
    assert np.allclose(probe.directions @ probe.directions.T, np.eye(8), atol=1e-4)
    shared = SharedParams.init(split.n_items)
    text = torch.from_numpy(vectors)
    plain_gaps, penalised_gaps, plain_leak, penalised_leak = [], [], [], []
    for u in sorted(split.users)[100:110]:
        seq = split.users[u].train
        plain = local_train(shared, PrivateParams.init(), seq, text, SGD, seed=u).shared.to_vector()
        pulled = local_train(
            shared, PrivateParams.init(), seq, text, SGD, seed=u, proximal=probe.proximal(2.0)
        ).shared.to_vector()
        base = shared.to_vector()
        plain_gaps.append(np.abs(probe.projections(plain - base)).sum())
        penalised_gaps.append(np.abs(probe.projections(pulled - base)).sum())
        plain_leak.append(probe.leakage(plain - base))
        penalised_leak.append(probe.leakage(pulled - base))
    assert np.mean(penalised_gaps) < 0.5 * np.mean(plain_gaps)
    assert np.mean(penalised_leak) < np.mean(plain_leak)
    unchanged = local_train(shared, PrivateParams.init(), seq, text, SGD, seed=u, proximal=probe.proximal(0.0))
    assert np.allclose(unchanged.shared.to_vector(), plain, atol=1e-6)  # λ = 0 changes nothing


def test_holdout_rank_matches_the_scorer(ml100k) -> None:  # type: ignore[no-untyped-def]
    from models.firststage.scorer import FirstStageScorer

    _dataset, split, vectors = ml100k
    shared = SharedParams.init(split.n_items, seed=3)
    private = PrivateParams(user_vector=np.random.default_rng(0).normal(size=32).astype(np.float32))
    s = split.users[5]
    rank = holdout_rank(shared, private, s.train, s.valid, s.valid_negs, vectors)
    scores = FirstStageScorer(shared, vectors).score_items(s.train, private, np.r_[s.valid, s.valid_negs])
    assert rank == int(np.count_nonzero(scores[1:] >= scores[0]))


def tiny_config(**changes) -> AuditConfig:  # type: ignore[no-untyped-def]
    base = AuditConfig(
        privacy=PRIVACY,
        cohort=20,
        federated=replace(FederatedConfig(), rounds=1),
        attacker=AttackerConfig(folds=2, inner_folds=2, components=(4,), screened=(4,), l2=(10.0,), resamples=50),
        proxy_fraction=0.25,
    )
    return replace(base, **changes)


def test_views_per_setting_on_a_slice(ml100k) -> None:  # type: ignore[no-untyped-def]
    dataset, full, vectors = ml100k
    split = full.subset(sorted(full.users)[:40])
    config = tiny_config()
    users = sorted(split.users)[:12]
    for name in ("clip", "default+objective"):
        proxies = sorted(split.users)[-10:]
        federation = Federation(split, vectors, MECHANISMS[name], config, proxies, attribute_labels(dataset, proxies))
        run = train_setting(federation)
        views = compute_views(federation, run, users)
        size = run.shared.size
        assert views.features["a"].shape == (12, size)
        assert views.features["b"].shape == (12, size + 1)
        assert views.features["c"].shape == (12, 2 * size + 1)
        assert views.features["d"].sum(1).tolist() == [10.0] * 12
        if name == "clip":  # the coordinator sees the clipped contribution itself: (c) starts with (b)
            assert np.array_equal(views.features["c"][:, : size + 1], views.features["b"])
            norms = np.linalg.norm(views.features["b"][:, :-1], axis=1)
            assert norms.max() <= PRIVACY.clip + 1e-5
            assert run.probe is None and np.all(views.factors == 1.0)
        else:  # masked integers, and a noisy difference of sums far from u's own contribution
            b = views.features["b"]
            assert np.all(b == np.round(b)) and b.max() > 2**15
            diff = views.features["c"][:, : size + 1]
            assert diff.std() > 0.5 * PRIVACY.sigma * PRIVACY.clip
            assert run.probe is not None and len(run.probe.names) > 0
            assert np.all((views.factors >= 0) & (views.factors <= 1)) and views.factors.min() < 1


def test_audit_setting_reports_rows_quality_and_epsilon(ml100k) -> None:  # type: ignore[no-untyped-def]
    dataset, full, vectors = ml100k
    split = full.subset(sorted(full.users)[:40])
    result = audit_setting(dataset, split, vectors, "clip+noise", tiny_config())
    assert [(r["view"], r["target"]) for r in result.rows] == [
        (v, t) for v in ("a", "b", "c", "d") for t in ("gender", "age")
    ]
    for row in result.rows:
        assert row["setting"] == "clip+noise"
        assert 0.0 <= row["auc_ci"][0] <= row["auc_ci"][1] <= 1.0
    assert 0.0 < result.quality["HR@10"] <= 1.0
    assert result.epsilon is not None and result.epsilon > 0
    assert result.info["max_rounds_per_agent"] == 1
