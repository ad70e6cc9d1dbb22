"""The federation an audit trains: every user as an agent, under one protection setting, in this process.

Settings (each adds a protection to the previous one):

* ``none`` — agents send their raw shared delta and weight n_u; the aggregator sees each of them;
* ``clip`` — ``w · clip_C(Δ)`` and the weight element ``w · C`` (``sync.protocol.privacy.prepare_contribution``, no
  noise);
* ``clip+noise`` — plus each agent's Gaussian noise share ``N(0, (σC)²/m)``, still seen one by one;
* ``default`` — plus quantization and secure aggregation's masks (the shipped protocol): only sums are seen;
* ``default+objective`` — plus the leakage-aware local objective (``models.privacy.leakage``, probes fitted each
  round on a consenting proxy group) and the personality-aware weight factor
  (``sync.protocol.privacy.personality_factor``).

Training runs with the protocol's mechanics (the same clipping, weighting, noise share, quantization and cohort
sampling, from :mod:`sync.protocol.rules`; secure aggregation's masks cancel exactly in the sum, which the sync
tests prove), so ``default`` is in-process ``clip+noise`` plus quantization. The round kept is chosen by validation
NDCG@10 only. Proxy users (a seeded fraction) are never among the attacker's users, in any setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from models.data.split import Split
from models.evaluation.protocols import metrics_for
from models.federation import FedAdam
from models.firststage.fit import scorer_model
from models.firststage.recipe import FederatedConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.firststage.training import local_train
from models.privacy.attackers import AttackerConfig
from models.privacy.leakage import LeakageObjective, Probe, fit_probe, holdout_rank, local_quality
from models.types import FloatArray, IntArray, Status
from sync.protocol import rules
from sync.protocol.masking import Quantization, rotation_seed
from sync.protocol.privacy import PrivacyParams, personality_factor, prepare_contribution, weighted_mean

SETTINGS = ("none", "clip", "clip+noise", "default", "default+objective")


@dataclass(frozen=True)
class Mechanism:
    """Which protections a setting turns on."""

    name: str
    clip: bool = False
    noise: bool = False
    secure: bool = False  # quantization + masks: only sums are seen
    objective: bool = False  # leakage-aware local objective + personality-aware weight factor


MECHANISMS = {
    "none": Mechanism("none"),
    "clip": Mechanism("clip", clip=True),
    "clip+noise": Mechanism("clip+noise", clip=True, noise=True),
    "default": Mechanism("default", clip=True, noise=True, secure=True),
    "default+objective": Mechanism("default+objective", clip=True, noise=True, secure=True, objective=True),
}


@dataclass(frozen=True)
class AuditConfig:
    """What the audit runs: the sync settings (pass the shipped defaults), training and the attacker."""

    privacy: PrivacyParams
    cohort: int  # agents per round
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    objective: LeakageObjective = field(default_factory=LeakageObjective)
    attacker: AttackerConfig = field(default_factory=AttackerConfig)
    proxy_fraction: float = 0.1  # consenting users whose raw deltas and attributes the coordinator's probe uses
    min_cohort: int = rules.MIN_COHORT
    max_dropout: float = rules.COORDINATOR_MAX_DROPOUT
    holdout_negatives: int = 99  # items the agent's local quality check ranks its held-out item against
    seed: int = 0
    phi_size: int = 0  # φ_g values carried after θ_g (zero deltas: simulated agents train no φ_g); needs privacy.parts
    rotate: bool = False  # quantize as the coordinator does: rotated, within the upload budget (rules)
    max_input_bytes: int = rules.SYNC_INPUT_BYTES  # that budget for one packed masked vector (with ``rotate``)

    def min_survivors(self, n: int) -> int:
        """The fewest survivors a round of ``n`` is unmasked with (as the coordinator sets it): the noise divisor."""
        return rules.min_survivors(n, min_cohort=self.min_cohort, max_dropout=self.max_dropout)

    def quantization(self, n: int, vector_size: int | None = None, round_id: int = 0) -> Quantization:
        """The quantization the coordinator announces for a round of ``n`` (with ``rotate``: rotated by a seed of
        the round, for a joint vector of ``vector_size`` values, within the upload budget)."""
        clip, sigma = self.privacy.clip, self.privacy.sigma
        if not self.rotate or vector_size is None:
            return rules.round_quantization(n, clip=clip, sigma=sigma, survivors=self.min_survivors(n))
        seed = rotation_seed(f"simulation|{self.seed}|{round_id}".encode())
        return rules.round_quantization(
            n,
            clip=clip,
            sigma=sigma,
            survivors=self.min_survivors(n),
            vector_size=vector_size,
            rotation=seed,
            max_bytes=self.max_input_bytes,
        )


def contribution(
    mechanism: Mechanism,
    delta: NDArray[np.floating],
    n_examples: float,
    privacy: PrivacyParams,
    *,
    survivors: int,
    factor: float = 1.0,
    noise: bool = True,
    rng: np.random.Generator | None = None,
) -> NDArray[np.float64]:
    """The joint vector an agent adds to the round sum: ``(n·Δ, n)`` unprotected, else ``prepare_contribution``'s
    ``(w·f·clip_C(Δ), w·f·C)`` with the noise share when the setting has noise and ``noise`` is true."""
    if not mechanism.clip:
        return np.concatenate([float(n_examples) * np.asarray(delta, dtype=np.float64), [float(n_examples)]])
    params = privacy if (mechanism.noise and noise) else replace(privacy, sigma=0.0)
    return prepare_contribution(delta, n_examples, params, noise_divisor=survivors, factor=factor, rng=rng).vector


def mean_delta(mechanism: Mechanism, joint_sum: NDArray[np.floating], privacy: PrivacyParams) -> FloatArray | None:
    """The weighted mean delta from a round's joint sum (None when the total weight is not positive)."""
    if not mechanism.clip:
        total = float(joint_sum[-1])
        return None if total <= 0 else (np.asarray(joint_sum[:-1]) / total).astype(np.float32)
    return weighted_mean(joint_sum, privacy.clip)


def server_copy(server: FedAdam) -> FedAdam:
    """A FedAdam with copies of the moment estimates."""
    return replace(
        server, m=None if server.m is None else server.m.copy(), v=None if server.v is None else server.v.copy()
    )


def published_after(server: FedAdam, base: FloatArray, mean: FloatArray | None) -> FloatArray:
    """The shared vector the server would publish after this mean delta, without touching its state."""
    return base.copy() if mean is None else server_copy(server).step(base, mean)


@dataclass
class LocalOutcome:
    """One agent's local training in a round: its delta, new private vector and weight factor."""

    delta: FloatArray
    private: PrivateParams
    n_examples: int
    factor: float = 1.0


@dataclass
class Federation:
    """The population and how one agent trains locally under a setting."""

    split: Split
    text_vectors: FloatArray
    mechanism: Mechanism
    config: AuditConfig
    proxies: list[int]
    proxy_labels: dict[str, NDArray[np.int64]]
    train: Any = None  # a models.firststage.training.TrainConfig replacing the one derived from config.federated
    text_tensor: Any = None
    _holdout_negatives: dict[int, IntArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.text_tensor = torch.from_numpy(np.ascontiguousarray(self.text_vectors, dtype=np.float32))

    def train_config(self) -> Any:
        return self.train if self.train is not None else self.config.federated.train_config()

    def holdout_negatives(self, user: int) -> IntArray:
        """Items outside the user's training set that its local quality check ranks against (seeded per user)."""
        if user not in self._holdout_negatives:
            train = self.split.users[user].train
            allowed = np.setdiff1d(np.arange(self.split.n_items), train)
            rng = np.random.default_rng([self.config.seed, user, 2])
            size = min(self.config.holdout_negatives, len(allowed))
            self._holdout_negatives[user] = rng.choice(allowed, size=size, replace=False).astype(np.int64)
        return self._holdout_negatives[user]

    def local(
        self, shared: SharedParams, private: PrivateParams, user: int, round_id: int, probe: Probe | None
    ) -> LocalOutcome:
        """Train on the user's own sequence (with the leakage penalty when the setting has the objective)."""
        seq = self.split.users[user].train
        proximal = None
        if probe is not None and self.mechanism.objective and self.config.objective.weight > 0:
            proximal = probe.proximal(self.config.objective.weight)
        seed = self.config.federated.seed * 7919 + round_id
        config = self.train_config()
        result = local_train(shared, private, seq, self.text_tensor, config, seed=seed, proximal=proximal)
        delta = (result.shared.to_vector() - shared.to_vector()).astype(np.float32)
        factor = 1.0
        if self.mechanism.objective and probe is not None and len(seq) >= 2:
            negatives = self.holdout_negatives(user)
            before = holdout_rank(shared, private, seq[:-1], int(seq[-1]), negatives, self.text_vectors)
            after = holdout_rank(result.shared, result.private, seq[:-1], int(seq[-1]), negatives, self.text_vectors)
            factor = personality_factor(probe.leakage(delta), local_quality(before, after))
        return LocalOutcome(delta, result.private, result.n_examples, factor)

    def probe(self, shared: SharedParams, privates: dict[int, PrivateParams], round_id: int) -> Probe | None:
        """The coordinator's probe for this round, fitted on the proxy users' raw deltas (objective only)."""
        if not self.mechanism.objective or not self.proxies:
            return None
        deltas = np.stack(
            [
                self.local(shared, privates.get(u, PrivateParams.init(shared.dim)), u, round_id, None).delta
                for u in self.proxies
            ]
        )
        return fit_probe(deltas, self.proxy_labels, self.config.objective)


@dataclass
class SettingRun:
    """A trained federation under one setting: the kept round's state and what the run spent."""

    mechanism: Mechanism
    shared: SharedParams
    privates: dict[int, PrivateParams]
    server: FedAdam
    probe: Probe | None
    selected_round: int
    rounds_taken: dict[int, int]
    history: list[dict[str, float]]


def train_setting(federation: Federation, *, progress: Status | None = None) -> SettingRun:
    """The audit's federated round loop: every user trains as an agent under the setting's mechanics, each round
    is summed as the protocol sums it, and the best validation round is kept."""
    config, mechanism, split = federation.config, federation.mechanism, federation.split
    users = sorted(split.users)
    shared = SharedParams.init(split.n_items, seed=config.federated.seed)
    privates: dict[int, PrivateParams] = {}
    server = FedAdam(lr=config.federated.server_lr)
    rng = np.random.default_rng([config.seed, 3])
    rounds_taken: dict[int, int] = {}
    best: tuple[float, SettingRun] | None = None
    history: list[dict[str, float]] = []
    for round_id in range(config.federated.rounds):
        cohort = rules.select_cohort(users, round_id, config.cohort, config.seed)
        survivors = config.min_survivors(len(cohort))
        base = shared.to_vector()
        size = base.size + config.phi_size + 1
        quantization = config.quantization(len(cohort), size, round_id) if mechanism.secure else None
        probe = federation.probe(shared, privates, round_id)
        integer_total = np.zeros(size, dtype=np.int64)
        total = np.zeros(size, dtype=np.float64)
        for user in cohort:
            private = privates.get(user, PrivateParams.init(shared.dim))
            outcome = federation.local(shared, private, user, round_id, probe)
            privates[user] = outcome.private
            delta = outcome.delta
            if config.phi_size:
                delta = np.concatenate([delta, np.zeros(config.phi_size, dtype=delta.dtype)])
            x = contribution(
                mechanism,
                delta,
                outcome.n_examples,
                config.privacy,
                survivors=survivors,
                factor=outcome.factor,
                rng=rng,
            )
            if quantization is not None:
                integer_total += quantization.integers(x)
            else:
                total += x
            rounds_taken[user] = rounds_taken.get(user, 0) + 1
        joint = quantization.to_float(integer_total) if quantization is not None else total
        mean = mean_delta(mechanism, joint, config.privacy)
        if mean is not None:
            shared = shared.with_vector(server.step(base, mean[: base.size]))
        valid = metrics_for(scorer_model(shared, privates, federation.text_vectors), split, "loo99", "valid")
        history.append({"round": round_id + 1, **{f"valid_{k}": v for k, v in valid.items()}})
        if best is None or valid["NDCG@10"] > best[0]:
            kept = SettingRun(
                mechanism,
                shared.copy(),
                {u: p.copy() for u, p in privates.items()},
                server_copy(server),
                probe,
                round_id + 1,
                rounds_taken,
                history,
            )
            best = (valid["NDCG@10"], kept)
        if progress is not None:
            done = f"round {round_id + 1}/{config.federated.rounds}"
            progress(f"{mechanism.name}: {done} valid NDCG@10 {valid['NDCG@10']:.3f} HR@10 {valid['HR@10']:.3f}")
    assert best is not None
    run = best[1]
    run.rounds_taken = rounds_taken
    run.history = history
    if mechanism.objective:  # the probe published with the kept model, for the next round (the views')
        run.probe = federation.probe(run.shared, run.privates, config.federated.rounds)
    return run


def proxy_users(users: Sequence[int], config: AuditConfig) -> list[int]:
    """The consenting proxy group: a seeded ``proxy_fraction`` of the users (never attacked)."""
    count = round(config.proxy_fraction * len(users))
    rng = np.random.default_rng([config.seed, 7])
    return sorted(int(u) for u in rng.choice(np.asarray(users), size=count, replace=False)) if count else []
