"""Training of the first-stage scorer in torch: one user's local step, and the centralized baseline.

The objective is next-item prediction over the user's own training sequence: for each position ``t`` the history
is the items before ``t`` (the last ``window`` of them) and the target is item ``t``, scored against negatives
with a sampled softmax. **Negatives come from items outside the user's training set** — never "items the user
never touched", which would hide the held-out items and leak them into the score (EVALUATION.md).

Only the training worker, the simulation and evaluation import this module; the suggest path does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from models.firststage.recipe import TrainConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.types import FloatArray, IntArray


@dataclass(frozen=True)
class LocalResult:
    """What one local training run produced: the new parameters and how much data it saw."""

    shared: SharedParams
    private: PrivateParams
    n_examples: int
    mean_loss: float


def sequence_examples(train_seq: IntArray, window: int, pad: int) -> tuple[IntArray, IntArray]:
    """Next-item examples from one sequence: (histories (n, window) left-padded with ``pad``, targets (n,))."""
    seq = np.asarray(train_seq, dtype=np.int64)
    padded = np.concatenate([np.full(window, pad, dtype=np.int64), seq])
    # row t holds padded[t : t + window], i.e. the (up to) ``window`` items before position t
    hist = np.lib.stride_tricks.sliding_window_view(padded, window)[: len(seq)].copy()
    return hist, seq.copy()


class _FirstStageModule(torch.nn.Module):
    """Torch twin of :class:`models.firststage.scorer.FirstStageScorer`, with a table of private user vectors.

    It mirrors the numpy score formula because training must differentiate it (tests check that the two agree).
    """

    def __init__(self, shared: SharedParams, privates: NDArray[np.float32], text_vectors: torch.Tensor) -> None:
        super().__init__()
        self.text_vectors = text_vectors
        self.text_proj = torch.nn.Parameter(torch.from_numpy(shared.text_proj.copy()))
        self.item_residual = torch.nn.Parameter(torch.from_numpy(shared.item_residual.copy()))
        self.item_bias = torch.nn.Parameter(torch.from_numpy(shared.item_bias.copy()))
        self.position_logits = torch.nn.Parameter(torch.from_numpy(shared.position_logits.copy()))
        self.user_vectors = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(privates, dtype=np.float32)))

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return [self.text_proj, self.item_residual, self.item_bias, self.position_logits]

    def forward(self, rows: torch.Tensor, hist: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        n_items = self.item_residual.shape[0]
        table = self.text_vectors @ self.text_proj + self.item_residual
        padded = torch.cat([table, torch.zeros(1, table.shape[1])])
        mask = (hist < n_items).float()
        weights = torch.exp(self.position_logits - self.position_logits.max())[None, :] * mask
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-9)
        state = (weights[..., None] * padded[hist]).sum(1) + self.user_vectors[rows]
        return (state[:, None, :] * table[cand]).sum(-1) + self.item_bias[cand]

    def export(self) -> tuple[SharedParams, NDArray[np.float32]]:
        def arr(p: torch.Tensor) -> FloatArray:
            return p.detach().numpy().astype(np.float32, copy=True)

        shared = SharedParams(
            text_proj=arr(self.text_proj),
            item_residual=arr(self.item_residual),
            item_bias=arr(self.item_bias),
            position_logits=arr(self.position_logits),
        )
        return shared, arr(self.user_vectors)


def _sampled_softmax_loss(
    module: _FirstStageModule,
    rows: torch.Tensor,
    hist: torch.Tensor,
    targets: torch.Tensor,
    in_train: torch.Tensor,
    n_negatives: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cross-entropy of the target against uniform negatives; negatives inside the user's train set are masked."""
    n_items = module.item_residual.shape[0]
    negs = torch.randint(0, n_items, (len(rows), n_negatives), generator=generator)
    cand = torch.cat([targets[:, None], negs], 1)
    scores = module(rows, hist, cand)
    masked = in_train[rows[:, None], negs]
    scores = torch.cat([scores[:, :1], scores[:, 1:].masked_fill(masked, -1e9)], 1)
    return torch.nn.functional.cross_entropy(scores, torch.zeros(len(rows), dtype=torch.long))


def _apply_proximal(
    params: list[torch.nn.Parameter],
    start: torch.Tensor,
    proximal: Callable[[torch.Tensor, float], torch.Tensor],
    lr: float,
) -> None:
    """Replace the shared parameters by ``start + proximal(current − start, lr)`` (flat, in field order)."""
    with torch.no_grad():
        corrected = proximal(torch.cat([p.reshape(-1) for p in params]) - start, lr) + start
        offset = 0
        for p in params:
            p.copy_(corrected[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def local_train(
    shared: SharedParams,
    private: PrivateParams,
    train_seq: IntArray,
    text_vectors: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    proximal: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
) -> LocalResult:
    """Train shared and private parameters on one user's own training sequence only.

    ``proximal``, if given, is a penalty on the shared delta applied as a proximal step after every optimizer
    step: it maps (the flat shared delta so far, in :meth:`SharedParams.to_vector` order; the learning rate) to
    the corrected delta (the leakage-aware objective of ``models.privacy.leakage``).
    """
    torch.set_num_threads(config.torch_threads)
    n_items = shared.n_items
    hist, targets = sequence_examples(train_seq, shared.window, n_items)
    in_train = torch.zeros(1, n_items, dtype=torch.bool)
    in_train[0, torch.from_numpy(np.asarray(train_seq, dtype=np.int64))] = True
    module = _FirstStageModule(shared, private.user_vector[None, :], text_vectors)
    shared_opt: torch.optim.Optimizer = (
        torch.optim.SGD(module.shared_parameters(), lr=config.lr)
        if config.optimizer == "sgd"
        else torch.optim.Adam(module.shared_parameters(), lr=config.lr)
    )
    private_opt = torch.optim.Adam([module.user_vectors], lr=config.private_lr)
    generator = torch.Generator().manual_seed(seed)
    hist_t, targets_t = torch.from_numpy(hist), torch.from_numpy(targets)
    start_vector = torch.from_numpy(shared.to_vector())
    n = len(targets)
    losses: list[float] = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            rows = torch.zeros(len(batch), dtype=torch.long)
            loss = _sampled_softmax_loss(
                module, rows, hist_t[batch], targets_t[batch], in_train, config.n_negatives, generator
            )
            shared_opt.zero_grad()
            private_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            shared_opt.step()
            private_opt.step()
            if proximal is not None:
                _apply_proximal(module.shared_parameters(), start_vector, proximal, config.lr)
            losses.append(float(loss.detach()))
    new_shared, new_private = module.export()
    return LocalResult(
        shared=new_shared,
        private=PrivateParams(user_vector=new_private[0]),
        n_examples=n,
        mean_loss=float(np.mean(losses)) if losses else 0.0,
    )


def central_train(
    shared: SharedParams,
    train_seqs: Sequence[IntArray],
    text_vectors: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, SharedParams, NDArray[np.float32]], None] | None = None,
) -> tuple[SharedParams, NDArray[np.float32]]:
    """The centralized baseline: the same model and objective trained on all users' data pooled on one machine."""
    torch.set_num_threads(config.torch_threads)
    n_items = shared.n_items
    n_users = len(train_seqs)
    privates = np.zeros((n_users, shared.dim), dtype=np.float32)
    module = _FirstStageModule(shared, privates, text_vectors)
    in_train = torch.zeros(n_users, n_items, dtype=torch.bool)
    hists, targets, rows = [], [], []
    for u, seq in enumerate(train_seqs):
        in_train[u, torch.from_numpy(np.asarray(seq, dtype=np.int64))] = True
        h, t = sequence_examples(seq, shared.window, n_items)
        hists.append(h)
        targets.append(t)
        rows.append(np.full(len(t), u, dtype=np.int64))
    hist_t = torch.from_numpy(np.concatenate(hists))
    targets_t = torch.from_numpy(np.concatenate(targets))
    rows_t = torch.from_numpy(np.concatenate(rows))
    opt = torch.optim.Adam(module.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(targets_t)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = _sampled_softmax_loss(
                module, rows_t[batch], hist_t[batch], targets_t[batch], in_train, config.n_negatives, generator
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        if on_epoch is not None:
            s, p = module.export()
            on_epoch(epoch, s, p)
    return module.export()
