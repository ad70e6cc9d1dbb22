"""The measured blend weight of the language model's rerank, with where it came from.

The agent's default ``[rerank] weight`` is a measurement, not a constant: :data:`MEASURED_BLEND` is the weight
validation picked in the full-scale evaluation of the whole system (README, "Foundation model (second stage):
measured"). A weight of 0 means the language model adds nothing, so the agent skips the rerank by default.

The live federation will publish its own :class:`BlendMeasurement` with the shared adapter (issue 13); the agent
then prefers it to this shipped one (:func:`agent.engine.rerank_weight.weight_in_force`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlendMeasurement:
    """A blend weight picked on validation users, and how it was measured."""

    weight: float
    """The weight of ``z(language model)`` in ``z(first stage) + weight · z(language model)``; 0 turns it off."""
    adapters: str
    """Which LoRA adapters the language model carried when the weight was picked."""
    command: str
    """The command that measured it."""
    dataset: str
    """The data set and split (with the split's sha256 prefix)."""
    date: str
    """When it was measured (UTC, ISO date)."""
    evidence: str
    """What the measurement showed, in one clause (the test figures beside the validation pick)."""

    def explanation(self) -> str:
        """One sentence: what validation picked, on what, with which command and when."""
        return (
            f"validation picked blend weight {self.weight:g} for the {self.adapters} adapters "
            f"(`{self.command}`, {self.dataset}, {self.date}): {self.evidence}"
        )


MEASURED_BLEND = BlendMeasurement(
    weight=0.0,
    adapters="shared + private",
    command="agent eval --protocol loo99 --model persona",
    dataset="ML-100K, 943 users' test lists, split sha256 8268aa5a",
    date="2026-11-27",
    evidence=(
        "test NDCG@10 0.3795, equal to the first stage alone; the language model's own AUC within the first "
        "stage's top 20 is 0.49 (chance 0.5): it adds nothing yet. The listwise prompt the rerank serves since "
        "2026-12-02 was also given weight 0 by validation (scripts/pilot_fm.py --listwise, 943 users, shared "
        "listwise adapter: ΔNDCG@10 0.000)"
    ),
)
"""The weight the agent uses when ``[rerank] weight`` is not set (README, "Foundation model": validation picks 0)."""
