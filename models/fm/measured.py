"""The measured blend weight of the language model's rerank, with where it came from.

The agent's default ``[rerank] weight`` is a measurement, not a constant: :data:`MEASURED_BLEND` is the weight
validation picked in the full-scale evaluation of the whole system (README, "Foundation model (second stage):
measured"). A weight of 0 means the language model adds nothing, so the agent skips the rerank by default.

A federation that evaluates publishes its own weight with the shared adapter (``sync.protocol.evaluation``), and
``agent sync`` records it as a :class:`BlendMeasurement`; the agent then prefers it to this shipped one
(:func:`agent.engine.rerank_weight.weight_in_force`).
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
    adapters="shared + private listwise",
    command="agent eval --protocol loo99 --model persona",
    dataset="ML-100K, 943 users' test lists, split sha256 8268aa5a",
    date="2026-12-02",
    evidence=(
        "the listwise prompt the rerank serves, with a federated shared adapter and 80 users' private adapters; "
        "their best validation weight gained +0.013 NDCG@10 with a 95 % interval across zero [-0.003, +0.033], "
        "and the shared adapter's +0.001 [-0.002, +0.005], so neither is supported and test NDCG@10 is the first "
        "stage's (0.3795); the model's own AUC within the first stage's top 20 is 0.72 test, but only because "
        "it reads the first stage's order from the letters (0.50-0.51 with them shuffled, scripts/pilot_fm.py)"
    ),
)
"""The weight the agent uses when ``[rerank] weight`` is not set (README, "Foundation model": validation picks 0)."""
