"""The round rules and the sync defaults: the one owner that the coordinator, the client, the simulation and the
audit all import.

The sync defaults were measured on ML-100K (README, "Privacy"): every agent in every round (a cohort of up to
1,000 — all 943 ML-100K users), C 0.5, σ 0.4, weights capped at 32 examples, noise calibrated for at most 10 %
dropouts. The agent's ``PERSONA_SYNC_*`` overrides are read by :mod:`agent.settings`, not here.
"""

from __future__ import annotations

SYNC_COHORT = 1000
SYNC_CLIP = 0.5
SYNC_SIGMA = 0.4
SYNC_WEIGHT_CAP = 32.0
SYNC_MAX_DROPOUT = 0.1
