"""The first stage's training recipes: what every agent runs locally, and the settings of the simulated runs.

:class:`FederatedConfig` is the recipe measured on ML-100K (see README); the simulation, the audit and
``agent sync`` all train with :meth:`FederatedConfig.train_config`, so what a real agent sends matches what was
measured. Importing this module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of local (and central) training."""

    n_negatives: int = 100
    batch_size: int = 64
    lr: float = 0.01
    epochs: int = 1
    private_lr: float = 0.05
    torch_threads: int = 1
    optimizer: str = "adam"  # "adam" or "sgd" for the shared part of local training


@dataclass(frozen=True)
class FederatedConfig:
    """Settings of the federated simulation (defaults measured on ML-100K; see README)."""

    rounds: int = 40
    server_lr: float = 0.1
    local_optimizer: str = "sgd"
    local_lr: float = 1.0
    private_lr: float = 0.05
    local_epochs: int = 1
    batch_size: int = 64
    n_negatives: int = 100
    seed: int = 0

    def train_config(self) -> TrainConfig:
        """The local training recipe every agent runs (the simulation, the audit and ``agent sync``)."""
        return TrainConfig(
            n_negatives=self.n_negatives,
            batch_size=self.batch_size,
            lr=self.local_lr,
            epochs=self.local_epochs,
            private_lr=self.private_lr,
            optimizer=self.local_optimizer,
        )


@dataclass(frozen=True)
class CentralConfig:
    """Settings of the centralized baseline."""

    epochs: int = 10
    lr: float = 0.003
    batch_size: int = 512
    n_negatives: int = 100
    seed: int = 0

    def train_config(self) -> TrainConfig:
        """The pooled-data training recipe of the baseline."""
        return TrainConfig(n_negatives=self.n_negatives, batch_size=self.batch_size, lr=self.lr, epochs=self.epochs)
