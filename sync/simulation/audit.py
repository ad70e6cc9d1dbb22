"""The personality-leakage audit: train a federation under one protection setting, then attack four views of every
user and measure what the protection costs in quality.

Settings (each adds a protection to the previous one):

* ``none`` — agents send their raw shared delta and weight n_u; the aggregator sees each of them;
* ``clip`` — ``w · clip_C(Δ)`` and the weight element ``w · C`` (``sync.protocol.privacy.prepare_contribution``, no noise);
* ``clip+noise`` — plus each agent's Gaussian noise share ``N(0, (σC)²/m)``, still seen one by one;
* ``default`` — plus quantization and secure aggregation's masks (the shipped protocol): only sums are seen;
* ``default+objective`` — plus the leakage-aware local objective (``models.privacy.leakage``, probes fitted each round on
  a consenting proxy group) and the personality-aware weight factor (``sync.protocol.privacy.personality_factor``).

Views of a user u, computed as one more round from the selected (published) model:

* (a) u's raw shared delta Δ_u from local training;
* (b) exactly what u's agent sends: the raw delta and weight, the clipped (noised) joint vector, or — under secure
  aggregation — the real packed masked integers from ``sync.protocol.secagg.AgentSession`` run for a cohort;
* (c) the coordinator's difference attack: the round sum over S ∪ {u} minus the round sum over S (|S| = cohort − 1,
  each sum with its own fresh noise), next to the difference of the two shared vectors it would publish. Without
  secure aggregation the coordinator sees u's contribution itself, so (c) holds (b) instead of the difference.
  The S members' noise is drawn as its exact distribution (a sum of independent Gaussian shares is Gaussian);
  the quantization rounding of their contributions (at most half a step, ~1e-5 per element) is left out;
* (d) u's top-10 suggestion list (multi-hot over items).

Training runs in this process with the same mechanics (the same clipping, weighting, noise share, quantization and
cohort sampling as the protocol; secure aggregation's masks cancel exactly in the sum, which the sync tests prove),
so ``default`` is in-process ``clip+noise`` plus quantization. Quality is LOO-99 on test, the round kept by
validation NDCG@10 only. Proxy users (a seeded fraction) are never among the attacker's users, in any setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.privacy.attackers import AGE_GROUPS, GENDERS, AttackerConfig, attack, attribute_labels, predict
from models.data.catalog import Dataset
from models.evaluation.protocols import FederatedConfig, metrics_for, scorer_model
from models.firststage.federated import FedAdam
from models.privacy.leakage import LeakageObjective, Probe, fit_probe, holdout_rank, local_quality
from models.firststage.scorer import FirstStageScorer, FloatArray, IntArray, PrivateParams, SharedParams
from models.data.split import Split, UserSplit
from sync.protocol import secagg
from sync.coordinator.config import CoordinatorConfig
from sync.protocol.masking import Quantization, unpack
from sync.protocol.privacy import PrivacyParams, epsilon, personality_factor, prepare_contribution, weighted_mean

SETTINGS = ("none", "clip", "clip+noise", "default", "default+objective")
VIEWS = ("a", "b", "c", "d")
TOP_K = 10
Progress = Callable[[str], None]


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
    min_cohort: int = 10
    max_dropout: float = CoordinatorConfig.max_dropout
    holdout_negatives: int = 99  # items the agent's local quality check ranks its held-out item against
    seed: int = 0


def min_survivors(n: int, config: AuditConfig) -> int:
    """The fewest survivors a round of ``n`` is unmasked with (as the coordinator sets it): the noise divisor."""
    threshold = secagg.share_threshold(secagg.graph_degree(n))
    return max(config.min_cohort, threshold, n - math.floor(n * config.max_dropout + 1e-9))


def round_quantization(n: int, privacy: PrivacyParams, survivors: int) -> Quantization:
    """The quantization the coordinator announces for a round of ``n`` (bound with 6 noise deviations of headroom)."""
    return Quantization.for_cohort(n, privacy.clip * (1.0 + 6.0 * privacy.sigma / math.sqrt(survivors)))


def select_cohort(users: Sequence[int], round_id: int, size: int, seed: int) -> list[int]:
    """The round's cohort, sampled as :meth:`sync.simulation.aggregator.SecureAggregator.select` samples it."""
    if len(users) <= size:
        return list(users)
    rng = np.random.default_rng([seed, round_id, 1])
    keep = np.sort(rng.choice(len(users), size=size, replace=False))
    return [users[int(i)] for i in keep]


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
        import torch

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
        from models.firststage.training import local_train

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


def train_setting(federation: Federation, *, progress: Progress | None = None) -> SettingRun:
    """Federated training of every user as an agent under the setting's mechanics; keep the best validation round."""
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
        cohort = select_cohort(users, round_id, config.cohort, config.seed)
        survivors = min_survivors(len(cohort), config)
        quantization = round_quantization(len(cohort), config.privacy, survivors) if mechanism.secure else None
        probe = federation.probe(shared, privates, round_id)
        base = shared.to_vector()
        integer_total = np.zeros(base.size + 1, dtype=np.int64)
        total = np.zeros(base.size + 1, dtype=np.float64)
        for user in cohort:
            private = privates.get(user, PrivateParams.init(shared.dim))
            outcome = federation.local(shared, private, user, round_id, probe)
            privates[user] = outcome.private
            x = contribution(
                mechanism,
                outcome.delta,
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
            shared = shared.with_vector(server.step(base, mean))
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


def masked_uploads(
    vectors: Sequence[NDArray[np.floating]], quantization: Quantization, survivors: int, round_id: int
) -> list[NDArray[np.uint32]]:
    """What each agent of one cohort uploads: the real packed masked vectors of ``secagg.AgentSession``, unpacked.

    Every agent advertises fresh keys under a fresh identity, shares its secrets with its graph neighbours, and
    masks its contribution with its self mask and the pairwise masks of all neighbours (nobody drops out).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    n = len(vectors)
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    ids = [secagg.agent_id_for(secagg.raw_public(k)) for k in keys]
    sessions = {i: secagg.AgentSession(i, k, round_id) for i, k in zip(ids, keys, strict=True)}
    cohort = tuple(sorted(ids))
    degree = secagg.graph_degree(n)
    setup = secagg.RoundSetup(
        round_id=round_id,
        cohort=cohort,
        seed=secagg.new_round_seed(),
        degree=degree,
        threshold=secagg.share_threshold(degree),
        min_survivors=min(survivors, n),
        quantization=quantization,
        vector_size=len(vectors[0]),
    )
    advertised = {}
    for agent_id, session in sessions.items():
        c_pk, s_pk, signature = session.advertise()
        public = secagg.raw_public(session.identity)
        advertised[agent_id] = secagg.PeerKeys(agent_id, public, c_pk, s_pk, signature)
    graph = secagg.neighbours(n, setup.seed, degree)
    inbox: dict[str, dict[str, bytes]] = {agent_id: {} for agent_id in cohort}
    for index, agent_id in enumerate(cohort):
        peers = [advertised[cohort[j]] for j in graph[index]]
        for peer, blob in sessions[agent_id].share_keys(setup, peers).items():
            inbox[peer][agent_id] = blob
    out = []
    for agent_id, vector in zip(ids, vectors, strict=True):
        packed = sessions[agent_id].masked_input(cohort, inbox[agent_id], vector)
        out.append(unpack(packed, quantization.bits, setup.vector_size))
    return out


@dataclass
class Views:
    """The four views of the audited users (rows in ``users`` order) and what the audit learned on the way."""

    users: list[int]
    features: dict[str, NDArray[np.float32]]
    factors: NDArray[np.float64]


def compute_views(
    federation: Federation, run: SettingRun, users: Sequence[int], *, progress: Progress | None = None
) -> Views:
    """Views (a)–(d) of every user in ``users`` as one more round from the kept model (see the module docstring)."""
    config, mechanism = federation.config, run.mechanism
    privacy = config.privacy
    rng = np.random.default_rng([config.seed, 4])
    round_id = config.federated.rounds
    size = run.shared.size
    all_users = sorted(federation.split.users)
    n_round = min(config.cohort, len(all_users))
    survivors = min_survivors(n_round, config)
    quantization = round_quantization(n_round, privacy, survivors)
    scorer = FirstStageScorer(run.shared, federation.text_vectors)

    outcomes: dict[int, LocalOutcome] = {}

    def outcome_of(user: int) -> LocalOutcome:
        if user not in outcomes:
            private = run.privates.get(user, PrivateParams.init(run.shared.dim))
            outcomes[user] = federation.local(run.shared, private, user, round_id, run.probe)
        return outcomes[user]

    def clean(user: int) -> NDArray[np.float64]:
        o = outcome_of(user)
        return contribution(
            mechanism, o.delta, o.n_examples, privacy, survivors=survivors, factor=o.factor, noise=False
        )

    n = len(users)
    raw = np.zeros((n, size), dtype=np.float32)
    sent = np.zeros((n, size + 1), dtype=np.float32)
    coordinator = np.zeros((n, 2 * size + 1), dtype=np.float32)
    suggestions = np.zeros((n, federation.split.n_items), dtype=np.float32)
    factors = np.ones(n)
    noised: list[NDArray[np.float64]] = []
    for row, user in enumerate(users):
        o = outcome_of(user)
        raw[row] = o.delta
        factors[row] = o.factor
        x = contribution(mechanism, o.delta, o.n_examples, privacy, survivors=survivors, factor=o.factor, rng=rng)
        noised.append(x)
        if not mechanism.secure:
            sent[row] = np.concatenate([o.delta, [o.n_examples]]) if not mechanism.clip else x
        private = run.privates.get(user, PrivateParams.init(run.shared.dim))
        suggestions[row, scorer.top_k(federation.split.users[user].train, private, TOP_K)] = 1.0
        if progress is not None and (row + 1) % 200 == 0:
            progress(f"{mechanism.name}: local deltas {row + 1}/{n}")

    if mechanism.secure:
        order = np.random.default_rng([config.seed, 5]).permutation(n)
        for part, chunk in enumerate(np.array_split(order, math.ceil(n / n_round))):
            q = round_quantization(len(chunk), privacy, min_survivors(len(chunk), config))
            uploads = masked_uploads([noised[i] for i in chunk], q, min_survivors(len(chunk), config), round_id + part)
            for i, upload in zip(chunk, uploads, strict=True):
                sent[i] = upload.astype(np.float32)
        if progress is not None:
            progress(f"{mechanism.name}: masked uploads of {n} agents")

    # the difference attack: S has cohort − 1 members, drawn once; u ∈ S is swapped for a fixed outsider
    pick = np.random.default_rng([config.seed, 6]).permutation(all_users)
    members, outsider = [int(u) for u in pick[: n_round - 1]], int(pick[n_round - 1])
    member_set = set(members)
    clean_members = np.sum([clean(u) for u in members], axis=0)
    share = privacy.sigma * privacy.clip / math.sqrt(survivors) if mechanism.noise else 0.0
    base = run.shared.to_vector()
    for row, user in enumerate(users):
        others = clean_members - clean(user) + clean(outsider) if user in member_set else clean_members
        m = len(members)
        own = quantization.to_float(quantization.integers(noised[row])) if mechanism.secure else noised[row]
        with_user = others + own + (rng.normal(0.0, share * math.sqrt(m), size=size + 1) if share else 0.0)
        without = others + (rng.normal(0.0, share * math.sqrt(m), size=size + 1) if share else 0.0)
        published = published_after(run.server, base, mean_delta(mechanism, with_user, privacy)) - published_after(
            run.server, base, mean_delta(mechanism, without, privacy)
        )
        seen = with_user - without if mechanism.secure else sent[row]
        coordinator[row] = np.concatenate([seen, published])
    features = {"a": raw, "b": sent, "c": coordinator, "d": suggestions}
    return Views(list(users), features, factors)


@dataclass
class SettingResult:
    """One setting's rows, quality and ε."""

    rows: list[dict[str, Any]]
    quality: dict[str, float]
    epsilon: float | None
    info: dict[str, Any]


def setting_epsilon(mechanism: Mechanism, privacy: PrivacyParams, rounds: int, survivors: int) -> float | None:
    """ε (δ = 1e-5) against the coordinator for an agent that took part in ``rounds`` rounds; None without noise.

    With secure aggregation the coordinator sees only sums carrying σC: noise multiplier σ/√2 per round. Without
    it, it sees each agent's contribution with only that agent's share σC/√m: noise multiplier σ/√(2m).
    """
    if not mechanism.noise or privacy.sigma <= 0:
        return None
    z = privacy.noise_multiplier if mechanism.secure else privacy.sigma / math.sqrt(2.0 * survivors)
    return epsilon([z] * rounds)


def audit_setting(
    dataset: Dataset,
    split: Split,
    text_vectors: FloatArray,
    name: str,
    config: AuditConfig,
    *,
    progress: Progress | None = None,
) -> SettingResult:
    """Train under one setting, attack its four views on the non-proxy users, and measure LOO-99 test quality."""
    start = time.perf_counter()
    mechanism = MECHANISMS[name]
    users = sorted(split.users)
    proxies = proxy_users(users, config)
    proxy_labels = attribute_labels(dataset, proxies)
    federation = Federation(split, text_vectors, mechanism, config, proxies, proxy_labels)
    run = train_setting(federation, progress=progress)
    quality = metrics_for(scorer_model(run.shared, run.privates, text_vectors), split, "loo99", "test")
    trained = time.perf_counter() - start
    audited = [u for u in users if u not in set(proxies)]
    views = compute_views(federation, run, audited, progress=progress)
    targets = attribute_labels(dataset, audited)
    rows: list[dict[str, Any]] = []
    for view in VIEWS:
        results = attack(views.features[view], targets, config.attacker)
        for target in ("gender", "age"):
            r = results[target]
            rows.append(
                {
                    "setting": name,
                    "target": target,
                    "view": view,
                    "auc": round(r.auc, 4),
                    "auc_ci": [round(r.interval[0], 4), round(r.interval[1], 4)],
                }
            )
            if progress is not None:
                progress(f"{name}: view {view} {target} AUC {r.auc:.3f} [{r.interval[0]:.3f}, {r.interval[1]:.3f}]")
        del results
    survivors = min_survivors(min(config.cohort, len(users)), config)
    most = max(run.rounds_taken.values(), default=0)
    info = {
        "selected_round": run.selected_round,
        "rounds": config.federated.rounds,
        "max_rounds_per_agent": most,
        "train_s": round(trained, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "mean_factor": round(float(views.factors.mean()), 4),
        "probe_directions": 0 if run.probe is None else len(run.probe.names),
    }
    return SettingResult(rows, quality, setting_epsilon(mechanism, config.privacy, most, survivors), info)


def proxy_users(users: Sequence[int], config: AuditConfig) -> list[int]:
    """The consenting proxy group: a seeded ``proxy_fraction`` of the users (never attacked)."""
    count = round(config.proxy_fraction * len(users))
    rng = np.random.default_rng([config.seed, 7])
    return sorted(int(u) for u in rng.choice(np.asarray(users), size=count, replace=False)) if count else []


def run_audit(
    dataset: Dataset,
    split: Split,
    text_vectors: FloatArray,
    config: AuditConfig,
    *,
    settings: Sequence[str] = SETTINGS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The ``scripts/audit.py --json`` body: ``{"rows", "quality", "epsilon"}`` over the settings (run details on
    ``progress``)."""
    unknown = [s for s in settings if s not in MECHANISMS]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    rows: list[dict[str, Any]] = []
    quality: dict[str, dict[str, float]] = {}
    spent: dict[str, float | None] = {}
    for name in settings:
        result = audit_setting(dataset, split, text_vectors, name, config, progress=progress)
        rows += result.rows
        quality[name] = {k: round(result.quality[k], 4) for k in ("HR@10", "NDCG@10")}
        spent[name] = None if result.epsilon is None else round(result.epsilon, 3)
        if progress is not None:
            progress(f"{name}: done {result.info}")
    return {"rows": rows, "quality": quality, "epsilon": spent}


USER_VIEWS = {
    "a": "your raw shared update (before any protection; it never leaves the device)",
    "b": "what your agent sends (clipped, noised, quantized and masked)",
    "c": "what a coordinator can isolate by subtracting two round sums that differ only by you",
    "d": "your top-10 suggestion list",
}


def audit_user(
    dataset: Dataset,
    text_vectors: FloatArray,
    shared: SharedParams,
    private: PrivateParams,
    history: IntArray,
    config: AuditConfig,
    *,
    train: Any = None,
    population: int | None = None,
    exclude: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One person's exposure: attackers trained on ML-100K users as agents at the same settings (``default``:
    clipping, noise, quantization, masks) guess the person's gender and age group from each view of them.

    Every population user computes one local update from ``shared`` on their whole ML-100K history (``train``:
    the person's own local training settings), so the attacker sees the same kind of view it is then shown of the
    person. Returns the population AUC with its interval and the guess for the person, per view and target.
    """
    sequences = dataset.interactions.sequences()
    users = [u for u in range(dataset.interactions.n_users) if u != exclude and len(sequences[u]) >= 2]
    if population is not None and population < len(users):
        rng = np.random.default_rng([config.seed, 8])
        users = sorted(int(u) for u in rng.choice(users, size=population, replace=False))
    me = dataset.interactions.n_users  # a dense id no ML-100K user has
    empty = np.zeros(0, dtype=np.int64)
    entries = {u: UserSplit(sequences[u], -1, -1, empty, empty) for u in users}
    entries[me] = UserSplit(np.asarray(history, dtype=np.int64), -1, -1, empty, empty)
    split = Split(dataset.name, config.seed, len(dataset.catalog), entries)
    federation = Federation(split, text_vectors, MECHANISMS["default"], config, [], {}, train=train)
    run = SettingRun(
        MECHANISMS["default"], shared, {me: private}, FedAdam(lr=config.federated.server_lr), None, 0, {}, []
    )
    views = compute_views(federation, run, [*users, me], progress=progress)
    targets = attribute_labels(dataset, users)
    padded = {name: np.concatenate([labels, [0]]) for name, labels in targets.items()}
    population_rows = np.r_[np.ones(len(users), dtype=bool), False]
    classes = {"gender": GENDERS, "age": AGE_GROUPS}
    rows: list[dict[str, Any]] = []
    for view in VIEWS:
        features = views.features[view]
        results = attack(features[: len(users)], targets, config.attacker)
        guesses = predict(features, population_rows, padded, config.attacker)
        for target in ("gender", "age"):
            p = guesses[target][0]
            probabilities = [1.0 - float(p), float(p)] if np.ndim(p) == 0 else [float(v) for v in p]
            r = results[target]
            rows.append(
                {
                    "view": view,
                    "what": USER_VIEWS[view],
                    "target": target,
                    "population_auc": round(r.auc, 4),
                    "auc_ci": [round(r.interval[0], 4), round(r.interval[1], 4)],
                    "guess": {c: round(v, 4) for c, v in zip(classes[target], probabilities, strict=True)},
                }
            )
        if progress is not None:
            progress(f"view {view}: gender AUC {results['gender'].auc:.3f}, age AUC {results['age'].auc:.3f}")
    return {"population": len(users), "rows": rows}
