"""Coordinator settings: one dataclass, filled from command-line flags and ``PERSONA_COORDINATOR_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sync.errors import ProtocolError
from sync.protocol import rules
from sync.protocol.evaluation import EVAL_CLIP, EVAL_MIN_AGENTS, EvalPlan, parse_weights
from sync.protocol.privacy import PrivacyParams

ENV_PREFIX = "PERSONA_COORDINATOR_"


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator can be told; each field is also the variable PERSONA_COORDINATOR_<NAME>."""

    db: str | Path = Path("coordinator.sqlite3")
    """Where all state lives: a SQLite file path (or sqlite:///PATH), or a postgresql://USER@HOST:PORT/DB URL."""
    vector_size: int = 0
    """When nothing is published yet: publish this many zeros as version 0 instead of the catalog's bootstrap vector."""
    catalog: str = "ml-100k"
    """When nothing is published yet (and no initial vector or vector size is given): the built-in catalog whose
    bootstrap shared vector (seeded: the same for every operator) becomes version 0."""
    min_cohort: int = rules.MIN_COHORT
    """A round is never unmasked with fewer survivors than this."""
    target_cohort: int = 100
    """Agents wanted per round; the advertise stage takes up to target × (1 + over_selection)."""
    over_selection: float = 0.3
    """Extra fraction admitted at advertise time to absorb dropouts."""
    max_dropout: float = rules.COORDINATOR_MAX_DROPOUT
    """Fraction of the cohort that may drop; agents' noise is calibrated for the resulting minimum survivors."""
    advertise_s: float = 20.0
    """Deadline of the advertise stage (seconds), if the cohort does not fill up first."""
    share_keys_s: float = 30.0
    """Deadline of the share-keys stage (seconds)."""
    masked_input_s: float = 60.0
    """Deadline of the masked-input stage (seconds)."""
    unmask_s: float = 30.0
    """Deadline of the unmask stage (seconds)."""
    round_interval_s: float = 300.0
    """Rounds open on this schedule, when agents are waiting: a slot this many seconds after the previous round
    opened (or when it ended, if later), the next slot an interval later if nobody came; the first round opens at the
    first check-in. 0: back to back, as soon as an agent checks in (development coordinators, benches)."""
    max_base_lag: int = 2
    """An agent whose delta is based on a version at most this many versions behind the newest may check in."""
    checkpoint_s: float = 30.0
    """Each coordinator process writes its partial sum of masked inputs this often while it holds new ones (0: only
    when the stage closes): a process that dies loses at most this many seconds of inputs, as dropouts. Each write is
    one vector-sized row, so in a 60 s stage a process writes at most three (two of them periodic)."""
    checkpoint_grace_s: float = 5.0
    """When the masked-input stage closes, how long the leader waits for every process holding inputs to write its
    partial sum; one that has not by then (it died) leaves its inputs since its last checkpoint as dropouts."""
    clip: float = PrivacyParams.clip
    """C: L2 bound of each agent's shared delta (of its θ_g part when the federation also carries φ_g)."""
    phi_size: int = 0
    """When nothing is published yet: append this many zeros as the language model's shared adapter φ_g (the FFA B
    factors, 61440 for the built-in model) to version 0, so every round carries θ_g and φ_g; 0: θ_g only."""
    clip_phi: float = rules.SYNC_CLIP_PHI
    """C_φ: L2 bound of the φ_g part of each agent's delta (the noise covers the joint bound √(C² + C_φ²))."""
    sigma: float = PrivacyParams.sigma
    """σ: the unmasked sum carries Gaussian noise of standard deviation σ·C per element."""
    weight_cap: float = PrivacyParams.weight_cap
    """n_u at or above this gets the full weight 1."""
    server_lr: float = 0.03
    """FedAdam learning rate applied by the coordinator to the unmasked mean delta. 0.03, not the first stage's
    full-cohort 0.1 (``FederatedConfig.server_lr``, which the first-stage runs and ``--via-sync`` pass explicitly): with
    the small, partly stale cohorts of laptops online part of the day, 0.1 peaks early and then drifts with the noise
    (README, "Laptops online part of the day, simulated")."""
    max_body_bytes: int = 0
    """Largest request body accepted (0: 4 bytes per vector element + 1 MiB)."""
    eval_weights: str = ""
    """Federated evaluation: the candidate rerank blend weights every round asks its agents to score on a held-out
    item, comma-separated (e.g. "0,0.25,0.5,1"; ``sync.protocol.evaluation``); "": rounds evaluate nothing."""
    eval_clip: float = EVAL_CLIP
    """C_e: the L2 bound of one agent's eval part (it joins the joint bound the noise is calibrated to)."""
    eval_min_agents: int = EVAL_MIN_AGENTS
    """The fewest agents that scored every blend weight for the coordinator to publish a new weight."""
    eval_rerank_k: int = 20
    """How many of the first stage's best candidates an evaluating agent rescores with the language model (the
    product's ``[rerank] k``; each costs the agent one language-model scoring)."""

    @property
    def max_cohort(self) -> int:
        """The most agents one round admits."""
        return rules.max_cohort(self.min_cohort, self.target_cohort, self.over_selection)

    @property
    def privacy(self) -> PrivacyParams:
        """The clipping and noise settings published with every round."""
        return PrivacyParams(clip=self.clip, sigma=self.sigma, weight_cap=self.weight_cap)

    @property
    def eval_plan(self) -> EvalPlan | None:
        """What every round asks its agents to evaluate, or None when :attr:`eval_weights` is empty.
        ValueError (via ProtocolError's message) for an unusable list."""
        try:
            weights = parse_weights(self.eval_weights)
            if not weights:
                return None
            return EvalPlan(weights, clip=self.eval_clip, rerank_k=self.eval_rerank_k, min_agents=self.eval_min_agents)
        except (ProtocolError, ValueError) as error:
            raise ValueError(f"eval_weights={self.eval_weights!r}: {error}") from error

    def body_limit(self, vector_size: int) -> int:
        """The effective request body limit."""
        return self.max_body_bytes or 4 * (vector_size + 1) + (1 << 20)

    @classmethod
    def from_env(cls, **overrides: object) -> CoordinatorConfig:
        """Defaults, then PERSONA_COORDINATOR_* variables, then non-None ``overrides`` (command-line flags)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                kind = type(getattr(cls, f.name)) if f.name != "db" else str
                try:
                    values[f.name] = kind(raw)
                except ValueError as error:
                    raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from error
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
