"""Torch side of the foundation model: the fp32 Gemma with shared and private LoRA, scoring and training.

Runs only in the training worker and the evaluation harness (it imports torch and transformers). The loss uses
only the " Yes"/" No" rows of the tied embedding matrix at the answer position, so a step never computes the
262k-token softmax; lower layers carry no trainable parameters, so backward stops at the first adapted layer.
The listwise head (:mod:`models.fm.listwise`) likewise uses only the 20 letter rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from models.fm.assets import require_torch_copy
from models.fm.lora import TARGETS, LoraWeights
from models.fm.pace import Pace
from models.fm.prompts import AnswerTokens
from models.types import Progress


def listwise_loss(logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean over lists of [target known]·CE(letter logits, target letter) + ``lam``·KL(softmax(teacher) ‖
    softmax(letter logits)); ``targets`` holds −1 where the target is not in the list (distillation only)."""
    log_q = torch.log_softmax(logits, dim=1)
    has = targets >= 0
    ce = -log_q.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1) * has.to(logits.dtype)
    log_p = torch.log_softmax(teacher, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return (ce + lam * kl).mean()


class _LoraLinear(torch.nn.Module):
    """A frozen linear layer plus any number of named low-rank updates, each with its own scale."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        self.scales: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)  # type: ignore[no-any-return]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled sum of the attached low-rank updates (0 when none is on)."""
        out: torch.Tensor | float = 0.0
        for name, scale in self.scales.items():
            if scale != 0.0:
                out = out + scale * ((x @ self.a[name].T) @ self.b[name].T)
        return out if isinstance(out, torch.Tensor) else torch.zeros(())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's half swap (Gemma's ``rotate_half``): (x1, x2) → (−x2, x1) over the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _plain(projection: torch.nn.Module) -> torch.nn.Module:
    """The frozen linear layer under any LoRA wrapper."""
    return projection.base if isinstance(projection, _LoraLinear) else projection


@dataclass
class Adapters:
    """Which adapters are attached and with what user-facing scale (1.0 = as trained)."""

    shared: LoraWeights | None = None
    private: LoraWeights | None = None
    shared_scale: float = 1.0
    private_scale: float = 1.0


@dataclass
class TopCache:
    """The input of layer ``first`` for a batch of prompts, and what every layer from there on needs to run.

    Lower layers carry no adapter being trained, so their output is fixed: computing it once lets an adapter on
    the top layers train for several epochs at the cost of those layers only (see :meth:`TorchFM.cache_top`).
    """

    first: int
    hidden: torch.Tensor  # (n, length, d) input of layer ``first``
    layer_kwargs: list[dict[str, object]]  # per layer from ``first``: mask, position embeddings, ...
    last: torch.Tensor  # (n,) index of each prompt's last token
    fixed: LastLayerInputs | None = None  # filled on first use when ``first`` is the last layer


@dataclass(frozen=True)
class ListwiseRun:
    """What :meth:`TorchFM.train_listwise_cached` did: the mean loss of each epoch it began (each loss taken before
    its step; under a deadline the last epoch may be partial) and how many optimizer steps it took."""

    epoch_losses: tuple[float, ...]
    steps: int

    @property
    def epochs(self) -> int:
        """How many epochs began (the last one may be partial)."""
        return len(self.epoch_losses)


@dataclass
class LastLayerInputs:
    """What an adapter on the **last** layer cannot change, computed once per cached batch.

    Only the last position's output of the last layer reaches the answer, so with the adapter there (``q_proj`` and
    ``v_proj``, :data:`~models.fm.lora.TARGETS`) a training step needs the query of one position per prompt, the
    low-rank update of the values, and one attention row: the normed input, the rotated keys and the plain values
    over all positions are fixed. A step then costs a few milliseconds instead of a full layer over every token
    (:meth:`TorchFM.cache_top`; a test checks it equals the full model's logits).
    """

    normed: torch.Tensor  # (n, length, d) the layer's input after its input norm
    keys: torch.Tensor  # (n, kv heads, length, head dim) after k_norm and the rotary embedding
    values: torch.Tensor  # (n, kv heads, length, head dim) the plain v_proj, no adapter
    cos: torch.Tensor  # (n, head dim) rotary embedding at each prompt's last position
    sin: torch.Tensor
    allowed: torch.Tensor  # (n, length) positions the last token may attend to (causal, padding, sliding window)


class TorchFM:
    """The dequantized base model with LoRA hooks on ``q_proj``/``v_proj`` of chosen layers."""

    def __init__(self, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # transformers: imported only once the environment above keeps it offline
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        # its "Loading weights" bar would otherwise print on the terminal
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
        self.model = AutoModelForCausalLM.from_pretrained(str(require_torch_copy()), dtype=torch.float32)
        self.model.eval()  # type: ignore[no-untyped-call]
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = self.model.model.layers
        self.embed = self.model.model.embed_tokens.weight
        self._wrapped: dict[str, _LoraLinear] = {}

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each adaptable projection."""
        attn = self.layers[0].self_attn
        return {t: tuple(getattr(attn, t).weight.shape) for t in TARGETS}  # type: ignore[misc]

    def _slot(self, key: str) -> _LoraLinear:
        if key not in self._wrapped:
            layer, target = key.split(".")
            attn = self.layers[int(layer)].self_attn
            wrapper = _LoraLinear(getattr(attn, target))
            setattr(attn, target, wrapper)
            self._wrapped[key] = wrapper
        return self._wrapped[key]

    def attach(self, name: str, weights: LoraWeights | None, scale: float = 1.0, *, trainable: bool = False) -> None:
        """Attach (or replace, or with ``None`` detach) the adapter ``name``; its factors become torch parameters."""
        for slot in self._wrapped.values():
            slot.scales.pop(name, None)
        if weights is None:
            return
        for key in weights.a:
            slot = self._slot(key)
            a = torch.nn.Parameter(torch.from_numpy(weights.a[key].copy()))
            b = torch.nn.Parameter(torch.from_numpy(weights.b[key].copy()))
            a.requires_grad_(trainable and not weights.spec.frozen_a)
            b.requires_grad_(trainable)
            slot.a[name] = a
            slot.b[name] = b
            slot.scales[name] = scale * weights.spec.alpha / weights.spec.rank

    def read(self, name: str, like: LoraWeights) -> LoraWeights:
        """The current numbers of an attached adapter."""
        out = LoraWeights(spec=like.spec)
        for key in like.a:
            out.a[key] = self._wrapped[key].a[name].detach().numpy().copy()
            out.b[key] = self._wrapped[key].b[name].detach().numpy().copy()
        return out

    def trainable(self, name: str) -> list[torch.nn.Parameter]:
        """Parameters of adapter ``name`` that train."""
        params = []
        for slot in self._wrapped.values():
            if name in slot.a:
                params += [p for p in (slot.a[name], slot.b[name]) if p.requires_grad]
        return params

    @staticmethod
    def _batch(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(prompts)
        length = max(len(p) for p in prompts)
        ids = torch.zeros((n, length), dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        return ids, mask

    def cache_top(self, prompts: Sequence[Sequence[int]], first: int) -> TopCache:
        """Run the whole model once without gradients and keep the input of layer ``first`` (plus the masks and
        position embeddings each later layer receives), so :meth:`top_answer_logits` can rerun only the top."""
        ids, mask = self._batch(prompts)
        captured: dict[int, dict[str, object]] = {}
        hidden: list[torch.Tensor] = []

        def grab(index: int) -> object:
            def hook(_module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
                captured[index] = {k: v for k, v in kwargs.items() if k != "cache"}
                if index == first:
                    hidden.append(args[0] if args else kwargs["hidden_states"])  # type: ignore[arg-type]

            return hook

        handles = [
            self.layers[i].register_forward_pre_hook(grab(i), with_kwargs=True)  # type: ignore[arg-type]
            for i in range(first, len(self.layers))
        ]
        try:
            with torch.no_grad():
                self.model.model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        kwargs = [captured[i] for i in range(first, len(self.layers))]
        return TopCache(first, hidden[0].detach(), kwargs, mask.sum(1) - 1)

    def top_answer_logits(self, cache: TopCache, answers: AnswerTokens) -> torch.Tensor:
        """(n, 2) answer logits computed from a :class:`TopCache` through the top layers only."""
        return self._answer_head(self._top_last_hidden(cache), answers)

    def _top_last_hidden(self, cache: TopCache) -> torch.Tensor:
        """(n, d) final (normed) hidden state at each prompt's last token, through the top layers only."""
        if cache.first == len(self.layers) - 1:
            return self.model.model.norm(self._last_layer_at_last(cache))  # type: ignore[no-any-return]
        h = cache.hidden
        for offset, layer in enumerate(self.layers[cache.first :]):
            h = layer(h, **cache.layer_kwargs[offset])
            if isinstance(h, tuple):
                h = h[0]
        h = self.model.model.norm(h)
        return h[torch.arange(h.shape[0]), cache.last]  # type: ignore[no-any-return]

    def _last_layer_at_last(self, cache: TopCache) -> torch.Tensor:
        """(n, d) output of the last layer at each prompt's last token only (:class:`LastLayerInputs`)."""
        layer = self.layers[cache.first]
        attn = layer.self_attn
        n, length, _ = cache.hidden.shape
        rows = torch.arange(n)
        head = attn.head_dim
        if isinstance(attn.k_proj, _LoraLinear):
            raise ValueError("the last-layer path assumes no adapter on k_proj")
        if cache.fixed is None:
            with torch.no_grad():
                normed = layer.input_layernorm(cache.hidden)
                keys = attn.k_norm(attn.k_proj(normed).view(n, length, -1, head).transpose(1, 2))
                rotary = cache.layer_kwargs[0]["position_embeddings"]
                assert isinstance(rotary, tuple)
                cos_all: torch.Tensor = rotary[0].expand(n, -1, -1)  # (1 or n, length, head dim) → n
                sin_all: torch.Tensor = rotary[1].expand(n, -1, -1)
                keys = keys * cos_all.unsqueeze(1) + _rotate_half(keys) * sin_all.unsqueeze(1)
                values = _plain(attn.v_proj)(normed).view(n, length, -1, head).transpose(1, 2)
                positions = torch.arange(length)[None, :]
                allowed = positions <= cache.last[:, None]
                if attn.sliding_window is not None:
                    allowed &= positions > cache.last[:, None] - attn.sliding_window
                cache.fixed = LastLayerInputs(
                    normed, keys, values, cos_all[rows, cache.last], sin_all[rows, cache.last], allowed
                )
        fixed = cache.fixed
        x = fixed.normed[rows, cache.last]  # (n, d)
        query = attn.q_norm(attn.q_proj(x).view(n, -1, 1, head))  # (n, heads, 1, head dim)
        cos, sin = fixed.cos[:, None, None, :], fixed.sin[:, None, None, :]
        query = query * cos + _rotate_half(query) * sin
        values = fixed.values
        if isinstance(attn.v_proj, _LoraLinear):
            update = attn.v_proj.delta(fixed.normed)
            if update.dim() == 3:
                values = values + update.view(n, length, -1, head).transpose(1, 2)
        groups = attn.num_key_value_groups
        keys = fixed.keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        weights = (query @ keys.transpose(2, 3)) * attn.scaling  # (n, heads, 1, length)
        if attn.attn_logit_softcapping is not None:
            weights = torch.tanh(weights / attn.attn_logit_softcapping) * attn.attn_logit_softcapping
        weights = weights.masked_fill(~fixed.allowed[:, None, None, :], float("-inf"))
        weights = torch.softmax(weights.float(), dim=-1).to(query.dtype)
        out = attn.o_proj((weights @ values).reshape(n, -1))
        h = cache.hidden[rows, cache.last] + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))  # type: ignore[no-any-return]

    def train_cached(
        self,
        name: str,
        caches: Sequence[TopCache],
        labels: Sequence[Sequence[int]],
        answers: AnswerTokens,
        *,
        lr: float,
        epochs: int = 1,
    ) -> float:
        """Train adapter ``name`` (which must sit at or above each cache's first layer) on cached batches."""
        opt = self._optimizer(name, lr)
        losses = []
        for _ in range(epochs):
            for cache, batch_labels in zip(caches, labels, strict=True):
                target = torch.tensor(list(batch_labels), dtype=torch.float32)
                losses.append(self._step(opt, self.top_answer_logits(cache, answers), target))
        return float(np.mean(losses)) if losses else 0.0

    def answer_logits(self, prompts: Sequence[Sequence[int]], answers: AnswerTokens) -> torch.Tensor:
        """(n, 2) logits of " Yes" and " No" at the end of each prompt (right-padded batch)."""
        n = len(prompts)
        ids, mask = self._batch(prompts)
        hidden = self.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self._answer_head(hidden[torch.arange(n), mask.sum(1) - 1], answers)

    def score(
        self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], answers: AnswerTokens, *, batch: int = 8
    ) -> NDArray[np.float32]:
        """logit(" Yes") − logit(" No") after ``prefix + suffix`` for each suffix, as the llama.cpp runtime scores."""
        prompts = [[*prefix, *suffix] for suffix in suffixes]
        out = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch):
                logits = self.answer_logits(prompts[start : start + batch], answers)
                out.append((logits[:, 0] - logits[:, 1]).numpy())
        return np.concatenate(out).astype(np.float32)

    def train_pairs(
        self,
        name: str,
        prompts: Sequence[Sequence[int]],
        labels: Sequence[int],
        answers: AnswerTokens,
        *,
        lr: float,
        steps_batch: int = 8,
        epochs: int = 1,
        seed: int = 0,
    ) -> float:
        """Train adapter ``name`` on (prompt, label) pairs, label 1 = " Yes"; returns the mean loss."""
        opt = self._optimizer(name, lr)
        generator = torch.Generator().manual_seed(seed)
        target = torch.tensor(labels, dtype=torch.float32)
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(prompts), generator=generator).tolist()
            for start in range(0, len(order), steps_batch):
                idx = order[start : start + steps_batch]
                losses.append(self._step(opt, self.answer_logits([prompts[i] for i in idx], answers), target[idx]))
        return float(np.mean(losses)) if losses else 0.0

    def letter_logits(self, prompts: Sequence[Sequence[int]], letters: Sequence[int]) -> torch.Tensor:
        """(n, len(letters)) logits of the letter tokens at the end of each prompt, from those rows of the tied
        embedding matrix only (right-padded batch)."""
        n = len(prompts)
        ids, mask = self._batch(prompts)
        hidden = self.model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden[torch.arange(n), mask.sum(1) - 1] @ self.embed[list(letters)].T  # type: ignore[no-any-return]

    def top_letter_logits(self, cache: TopCache, letters: Sequence[int]) -> torch.Tensor:
        """(n, len(letters)) letter logits computed from a :class:`TopCache` through the top layers only."""
        return self._top_last_hidden(cache) @ self.embed[list(letters)].T  # type: ignore[no-any-return]

    def letter_scores(self, prompt: Sequence[int], letters: Sequence[int]) -> NDArray[np.float32]:
        """The logits of ``letters`` after ``prompt``, as the llama.cpp runtime scores a list."""
        with torch.no_grad():
            return self.letter_logits([prompt], letters)[0].numpy().astype(np.float32)

    def train_listwise_cached(
        self,
        name: str,
        caches: Sequence[TopCache],
        targets: Sequence[Sequence[int]],
        teachers: Sequence[NDArray[np.floating]],
        letters: Sequence[int],
        *,
        lr: float,
        epochs: int = 1,
        lam: float = 0.5,
        progress: Progress | None = None,
        deadline: float | None = None,
    ) -> ListwiseRun:
        """Train adapter ``name`` on cached listwise batches for ``epochs`` epochs, one Adam step per cache in the
        given order: :func:`listwise_loss` with the target letter per list (−1: none) and the teacher's logits.

        With a ``deadline`` (a :func:`time.monotonic` time), no step after the first starts unless it would end
        before the deadline at the pace of the step before, and the run ends there (at least one step runs)."""
        if not caches:
            raise ValueError("no cached batches to train on")
        opt = self._optimizer(name, lr)
        data = [
            (cache, torch.tensor(list(t), dtype=torch.long), torch.as_tensor(np.asarray(p), dtype=torch.float32))
            for cache, t, p in zip(caches, targets, teachers, strict=True)
        ]
        out: list[float] = []
        pace = Pace(deadline)
        for epoch in range(epochs):
            losses = []
            for cache, target, teacher in data:
                if not pace.allows():
                    break
                with pace.unit():
                    loss = listwise_loss(self.top_letter_logits(cache, letters), target, teacher, lam)
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    losses.append(float(loss.detach()))
            if not losses:
                break
            out.append(float(np.mean(losses)))
            if progress is not None:
                progress("listwise_epoch", {"epoch": epoch + 1, "loss": out[-1]})
            if len(losses) < len(data):
                break
        return ListwiseRun(tuple(out), pace.done)

    def _answer_head(self, last: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
        """(n, 2) logits of the two answers from the final hidden state at each prompt's last token."""
        return last @ self.embed[[answers.yes, answers.no]].T  # type: ignore[no-any-return]

    def _optimizer(self, name: str, lr: float) -> torch.optim.Optimizer:
        params = self.trainable(name)
        if not params:
            raise ValueError(f"adapter {name!r} has nothing trainable attached")
        return torch.optim.Adam(params, lr=lr)

    @staticmethod
    def _step(opt: torch.optim.Optimizer, logits: torch.Tensor, target: torch.Tensor) -> float:
        """One step on the binary cross-entropy of the Yes−No margin; the loss before the step."""
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], target)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return float(loss.detach())
