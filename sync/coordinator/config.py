"""Coordinator settings: one dataclass, filled from command-line flags and ``PERSONA_COORDINATOR_*`` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sync.protocol import rules
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
    server_lr: float = 0.1
    """FedAdam learning rate applied by the coordinator to the unmasked mean delta."""
    max_body_bytes: int = 0
    """Largest request body accepted (0: 4 bytes per vector element + 1 MiB)."""

    @property
    def max_cohort(self) -> int:
        """The most agents one round admits."""
        return rules.max_cohort(self.min_cohort, self.target_cohort, self.over_selection)

    @property
    def privacy(self) -> PrivacyParams:
        """The clipping and noise settings published with every round."""
        return PrivacyParams(clip=self.clip, sigma=self.sigma, weight_cap=self.weight_cap)

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
