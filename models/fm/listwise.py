"""Listwise scoring by the foundation model: one prompt holds the user's recent history and the first stage's top 20
candidates lettered A..T **in first-stage order**; the scores are the logits of the 20 letter tokens at the last
position, so one forward pass scores the whole list. (``ListwiseConfig.shuffle`` letters them in a seeded random
order instead, so that a letter does not tell the model the first stage's rank: :func:`shuffled`,
:func:`score_list_in`.)

The prompt (token ids, pieces tokenized separately as in :mod:`models.fm.prompts`)::

    <bos>Movies I watched, most recent last: Fargo '96; Scream '96; ...
    Looking for: a 1990s comedy          (only when the person asked for something: ``request``)
    Options:
    A. Toy Story '95
    ...
    T. Heat '95
    I watch next:
    <answer: one of the letter tokens "A".."T", exactly the tokens that open the option lines>

Years are written short (``'95``): Gemma's tokenizer spends a token per digit, and "(1995)" would cost 6 tokens per
title, 180 per prompt; the short form keeps a full prompt near 300 tokens (serving cost is linear in it).

Training (torch, :meth:`TorchFM.train_listwise_cached`) takes one forward per list through the adapted top layers
only (:class:`~models.fm.torch_model.TopCache`; with the adapter on the last layer alone, one attention row per list:
:class:`~models.fm.torch_model.LastLayerInputs`); the loss is the cross-entropy of the 20 letter logits towards the
held-out item's letter plus ``lam`` · KL(softmax(z(first-stage scores)/tau) ‖ softmax(letter logits)), so the
adapter learns a correction of the first stage rather than taste from scratch. Training lists mirror the test
protocol (LOO-99) on training items only: target = a training item held out of the prefix, candidates = target + 99
negatives from items outside the user's **training** set (EVALUATION.md's leak warning), the first stage's top 20
kept in its order. A list whose target is not in that top 20 is kept **distillation-only** (its cross-entropy term
is off): it costs the same forward pass, still teaches the adapter to stay close to the first stage on the lists it
will meet (about half of them), and dropping it would train only on lists where the first stage already did well.

Serving (llama.cpp, :meth:`FoundationModel.letter_scores`) decodes the prompt once with an output at the last
position only and reads the 20 letter values of that row. Torch-free at import: the suggest path imports this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.data.split import Split
from models.fm.blend import zscore
from models.fm.lora import LoraWeights
from models.fm.pace import Pace
from models.fm.prompts import BOS, TokenPrompts
from models.types import FloatArray, IntArray, Progress, ScoreAllFn

if TYPE_CHECKING:
    from models.fm.torch_model import ListwiseRun, TopCache, TorchFM

LETTERS = "ABCDEFGHIJKLMNOPQRST"
LIST_SIZE = len(LETTERS)
HISTORY_ITEMS = 10


class ListwisePromptBuilder(TokenPrompts):
    """Builds the listwise prompt (token ids) and knows the 20 answer tokens."""

    def __init__(self, tokenizer_file: Path, catalog: Catalog, *, history_items: int = HISTORY_ITEMS) -> None:
        if history_items < 0:
            raise ValueError(f"history_items must be ≥ 0, got {history_items}")
        super().__init__(tokenizer_file, catalog, history_items=history_items)
        self.newline = self._single("\n")
        self.letters: tuple[int, ...] = tuple(self._single(letter) for letter in LETTERS)
        if len(set(self.letters)) != LIST_SIZE:
            raise ValueError(f"the letter tokens are not distinct for this tokenizer: {self.letters}")
        self._head = self._ids("Movies I watched, most recent last:")
        self._options = self._ids("\nOptions:")
        self._looking = self._ids("\nLooking for:")
        self._dot = self._ids(".")
        self._cue = [*self._ids("\nI watch next:"), self.newline]
        self._history_piece = lru_cache(maxsize=None)(self._history_piece_uncached)
        self._title_piece = lru_cache(maxsize=None)(self._title_piece_uncached)

    def short_label(self, item: int) -> str:
        """Title and two-digit year, e.g. ``Toy Story '95`` (the year costs 3 tokens instead of 6)."""
        year = self.catalog.years[item]
        title = self.catalog.titles[item]
        return f"{title} '{year % 100:02d}" if year is not None else title

    def _history_piece_uncached(self, item: int) -> tuple[int, ...]:
        return tuple(self._ids(" " + self.short_label(item) + ";"))

    def _title_piece_uncached(self, item: int) -> tuple[int, ...]:
        return tuple(self._ids(" " + self.short_label(item)))

    def prompt(self, history: Sequence[int], candidates: Sequence[int], request: str | None = None) -> list[int]:
        """BOS, the last ``history_items`` of ``history`` (oldest first), the person's request if any ("Looking
        for: a 1990s comedy"), the candidates lettered A.. in the given order, and the cue; the next token answers
        with a letter."""
        if not 1 <= len(candidates) <= LIST_SIZE:
            raise ValueError(f"a listwise prompt holds 1 to {LIST_SIZE} candidates, got {len(candidates)}")
        ids = [BOS, *self._head]
        recent = list(history)[-self.history_items :] if self.history_items else []
        for item in recent:
            ids.extend(self._history_piece(int(item)))
        if request is not None:
            text = " ".join(request.split())
            if not text:
                raise ValueError("an empty request: pass None for a prompt without one")
            ids.extend((*self._looking, *self._ids(" " + text)))
        ids.extend(self._options)
        for letter, item in zip(self.letters, candidates, strict=False):
            ids.extend((self.newline, letter, *self._dot, *self._title_piece(int(item))))
        ids.extend(self._cue)
        return ids

    def letter_positions(self, prompt: Sequence[int]) -> list[int]:
        """Positions of the option letters in a prompt made by :meth:`prompt` (a letter right after a newline)."""
        options = len(prompt) - len(self._cue)
        return [
            i
            for i in range(1, options)
            if prompt[i - 1] == self.newline and prompt[i] in self.letters and prompt[i + 1] == self._dot[0]
        ]


class LetterScorer(Protocol):
    """A runtime of the foundation model (:class:`~models.fm.serving.FoundationModel` or
    :class:`~models.fm.torch_model.TorchFM`) with its adapters attached."""

    def letter_scores(self, prompt: Sequence[int], letters: Sequence[int]) -> NDArray[np.float32]:
        """The logits of ``letters`` after ``prompt`` (one forward pass, last position)."""
        ...


def score_list(
    model: LetterScorer,
    builder: ListwisePromptBuilder,
    history: Iterable[int],
    candidates: Sequence[int],
    request: str | None = None,
) -> NDArray[np.float32]:
    """The foundation model's listwise score of each candidate (given in first-stage order) after ``history`` and,
    if given, the person's ``request``."""
    prompt = builder.prompt([int(i) for i in history], [int(i) for i in candidates], request)
    return model.letter_scores(prompt, builder.letters[: len(candidates)])


@dataclass(frozen=True)
class ListExample:
    """One training list: the history before the target, the first stage's top candidates in its order, their
    first-stage scores and where the target stands among them (None: not in the top, distillation only)."""

    user: int
    history: list[int]
    items: IntArray
    first: FloatArray
    target: int | None


@dataclass(frozen=True)
class ListwiseConfig:
    """How listwise training lists are built and how the adapter trains on them."""

    k: int = LIST_SIZE  # candidates per list (the first stage's top k)
    negatives: int = 99  # sampled negatives per list before the first stage ranks them (LOO-99)
    lists_per_user: int = 1  # targets per user: the last training items, each held out of the prefix
    lam: float = 0.5  # weight of the distillation term
    tau: float = 0.5  # temperature on the first stage's within-list z-scores
    lr: float = 1e-3
    epochs: int = 2
    batch: int = 8  # lists per cached batch and per optimizer step
    skip_missing: bool = False  # drop lists whose target is not in the top k (default: distillation only)
    shuffle: bool = False  # letter the candidates in a seeded random order instead of first-stage order
    seed: int = 0


def training_lists(
    split: Split, score_all: ScoreAllFn, users: Iterable[int], config: ListwiseConfig
) -> list[ListExample]:
    """Training lists built like the test protocol from each user's training items only (module docstring)."""
    if not 1 <= config.k <= LIST_SIZE:
        raise ValueError(f"a list holds 1 to {LIST_SIZE} candidates, got k={config.k}")
    out: list[ListExample] = []
    for user in users:
        out.extend(sequence_lists(int(user), split.users[user].train, split.n_items, score_all, config))
    return out


def sequence_lists(
    user: int, train: IntArray, n_items: int, score_all: ScoreAllFn, config: ListwiseConfig
) -> list[ListExample]:
    """One user's training lists from their own training sequence (oldest first; an agent's liked items in time
    order): the last ``config.lists_per_user`` items, each after the items before it, latest first. Nothing else
    about the user is read. Fewer than two items give no list."""
    if not 1 <= config.k <= LIST_SIZE:
        raise ValueError(f"a list holds 1 to {LIST_SIZE} candidates, got k={config.k}")
    train = np.asarray(train, dtype=np.int64)
    out: list[ListExample] = []
    if len(train) < 2:
        return out
    rng = np.random.default_rng([config.seed, int(user), 23])
    outside = np.setdiff1d(np.arange(n_items), train)
    for back in range(1, min(config.lists_per_user, len(train) - 1) + 1):
        history = train[: len(train) - back]
        target = int(train[len(train) - back])
        negatives = rng.choice(outside, size=min(config.negatives, len(outside)), replace=False)
        # the letters' order, when shuffled, is drawn after this list's negatives
        example = ranked_list(user, history, target, negatives, score_all, config.k, rng if config.shuffle else None)
        if example.target is None and config.skip_missing:
            continue
        out.append(example)
    return out


def ranked_list(
    user: int,
    history: IntArray,
    target: int,
    negatives: IntArray,
    score_all: ScoreAllFn,
    k: int,
    shuffle_rng: np.random.Generator | None = None,
) -> ListExample:
    """The training list of ``target`` against ``negatives`` after ``history``: the first stage's top ``k`` of them
    in its order, their scores, and the target's slot (None when it is not in the top ``k``). With ``shuffle_rng``
    the top ``k`` are put in an order it draws (:func:`shuffled`) instead."""
    candidates = np.concatenate([[target], negatives]).astype(np.int64)
    scores = np.asarray(score_all(int(user), history), dtype=np.float64)[candidates]
    top = np.argsort(-scores, kind="stable")[:k]
    where = np.flatnonzero(top == 0)
    slot = int(where[0]) if len(where) else None
    example = ListExample(int(user), history.tolist(), candidates[top], scores[top].astype(np.float32), slot)
    return example if shuffle_rng is None else shuffled(example, shuffle_rng.permutation(len(top)))


def shuffled(example: ListExample, order: IntArray) -> ListExample:
    """``example`` with its candidates (and their first-stage scores and the target's slot) in ``order``: the
    prompt then letters them in that order, so a letter no longer says where the first stage put the candidate."""
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(len(example.items))):
        raise ValueError(f"order must be a permutation of 0..{len(example.items) - 1}, got {order.tolist()}")
    target = None if example.target is None else int(np.flatnonzero(order == example.target)[0])
    return ListExample(example.user, example.history, example.items[order], example.first[order], target)


def score_list_in(
    model: LetterScorer,
    builder: ListwisePromptBuilder,
    history: Iterable[int],
    candidates: Sequence[int],
    order: IntArray,
    request: str | None = None,
) -> NDArray[np.float32]:
    """:func:`score_list` with the candidates lettered in ``order`` (a permutation of their positions); the scores
    come back in the given candidates' order."""
    order = np.asarray(order, dtype=np.int64)
    shown = [int(candidates[i]) for i in order]
    out = np.empty(len(candidates), dtype=np.float32)
    out[order] = score_list(model, builder, history, shown, request)
    return out


def score_list_shuffled(
    model: LetterScorer,
    builder: ListwisePromptBuilder,
    history: Iterable[int],
    candidates: Sequence[int],
    seed: Sequence[int] | None,
    request: str | None = None,
) -> NDArray[np.float32]:
    """:func:`score_list` (``seed`` None), or :func:`score_list_in` with the order
    ``np.random.default_rng(seed)`` draws; the scores come back in the given candidates' order."""
    if seed is None:
        return score_list(model, builder, history, candidates, request)
    order = np.random.default_rng(list(seed)).permutation(len(candidates))
    return score_list_in(model, builder, history, candidates, order, request)


def teacher_logits(first: NDArray[np.floating], tau: float) -> NDArray[np.float64]:
    """The distillation target's logits: the first stage's within-list z-scores over ``tau``."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return zscore(first) / tau


@dataclass
class CachedLists:
    """Training lists ready for the adapted layers: the cached inputs of the first adapted layer (one
    :class:`~models.fm.torch_model.TopCache` per batch), each list's target letter (−1: distillation only) and the
    teacher's logits, and the letter tokens."""

    caches: list[TopCache]
    targets: list[list[int]]
    teachers: list[NDArray[np.float64]]
    letters: tuple[int, ...]
    first_layer: int

    def __len__(self) -> int:
        return sum(len(t) for t in self.targets)


def cache_lists(
    fm: TorchFM,
    builder: ListwisePromptBuilder,
    lists: Sequence[ListExample],
    first_layer: int,
    config: ListwiseConfig,
    *,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> CachedLists:
    """Run the model once over the lists' prompts (adapters attached now are baked into the cached inputs of
    ``first_layer``; those on ``first_layer`` and above are not) and keep what training and scoring need.

    With a ``deadline`` (a :func:`time.monotonic` time), no batch after the first starts unless it would end before
    the deadline at the pace of the one before: the lists are cached in the given order, so the first ones are
    kept."""
    if not lists:
        raise ValueError("no training lists")
    sizes = {len(lst.items) for lst in lists}
    if len(sizes) != 1:
        raise ValueError(f"training lists must all hold the same number of candidates, got sizes {sorted(sizes)}")
    out = CachedLists([], [], [], builder.letters[: sizes.pop()], first_layer)
    pace = Pace(deadline)
    for start in range(0, len(lists), config.batch):
        if not pace.allows():
            break
        chunk = lists[start : start + config.batch]
        with pace.unit():
            prompts = [builder.prompt(lst.history, lst.items.tolist()) for lst in chunk]
            out.caches.append(fm.cache_top(prompts, first_layer))
            out.targets.append([-1 if lst.target is None else lst.target for lst in chunk])
            out.teachers.append(np.stack([teacher_logits(lst.first, config.tau) for lst in chunk]))
        if progress is not None:
            progress("listwise_cache", {"lists": min(start + config.batch, len(lists)), "of": len(lists)})
    return out


def train_listwise_adapter(
    fm: TorchFM,
    name: str,
    weights: LoraWeights,
    cached: CachedLists,
    config: ListwiseConfig,
    *,
    progress: Progress | None = None,
) -> tuple[LoraWeights, list[float]]:
    """Train adapter ``name`` (starting from ``weights``, which must sit at or above the cache's first layer) on
    cached listwise batches, one optimizer step per batch; the trained adapter (left attached, trainable) and the
    mean loss of each epoch. Other attached adapters stay frozen."""
    _attach_trainable(fm, name, weights, cached)
    run = _train_cached(fm, name, cached, config, epochs=config.epochs, progress=progress)
    return fm.read(name, weights), list(run.epoch_losses)


def _attach_trainable(fm: TorchFM, name: str, weights: LoraWeights, cached: CachedLists) -> None:
    """Attach adapter ``name`` as trainable, once it is known to sit at or above the cache's first layer."""
    if weights.spec.layers[0] < cached.first_layer:
        raise ValueError(f"adapter starts at layer {weights.spec.layers[0]}, below the cache's {cached.first_layer}")
    fm.attach(name, weights, trainable=True)


def _train_cached(
    fm: TorchFM,
    name: str,
    cached: CachedLists,
    config: ListwiseConfig,
    *,
    epochs: int,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> ListwiseRun:
    """The one training loop (:meth:`~models.fm.torch_model.TorchFM.train_listwise_cached`) over the cached lists,
    with the config's learning rate and distillation weight."""
    return fm.train_listwise_cached(
        name,
        cached.caches,
        cached.targets,
        cached.teachers,
        cached.letters,
        lr=config.lr,
        epochs=epochs,
        lam=config.lam,
        progress=progress,
        deadline=deadline,
    )


def cached_scores(fm: TorchFM, cached: CachedLists) -> NDArray[np.float32]:
    """(lists, letters) torch letter logits of the cached lists with the adapters attached now (top layers only)."""
    # torch: the caller already runs the torch model
    import torch

    with torch.no_grad():
        parts = [fm.top_letter_logits(cache, cached.letters).numpy() for cache in cached.caches]
    return np.concatenate(parts).astype(np.float32)


def cached_loss(fm: TorchFM, cached: CachedLists, lam: float) -> float:
    """The mean listwise loss (:func:`~models.fm.torch_model.listwise_loss`: CE + ``lam`` · KL) of the cached lists
    with the adapters attached now, without gradients."""
    # torch: the caller already runs the torch model
    import torch

    from models.fm.torch_model import listwise_loss

    total = 0.0
    with torch.no_grad():
        for cache, targets, teacher in zip(cached.caches, cached.targets, cached.teachers, strict=True):
            logits = fm.top_letter_logits(cache, cached.letters)
            target = torch.tensor(targets, dtype=torch.long)
            loss = listwise_loss(logits, target, torch.as_tensor(teacher, dtype=torch.float32), lam)
            total += float(loss) * len(targets)
    return total / len(cached)


@dataclass(frozen=True)
class BudgetedTraining:
    """What :func:`train_listwise_for` did: the trained adapter, the mean loss of the cached lists before and after
    (:func:`cached_loss`), and how many epochs (the last one may be partial) and optimizer steps it ran."""

    weights: LoraWeights
    loss_before: float
    loss_after: float
    epochs: int
    steps: int


def train_listwise_for(
    fm: TorchFM,
    name: str,
    weights: LoraWeights,
    cached: CachedLists,
    config: ListwiseConfig,
    *,
    deadline: float,
    max_epochs: int,
) -> BudgetedTraining:
    """Train adapter ``name`` from ``weights`` on cached lists like :func:`train_listwise_adapter`, for at most
    ``max_epochs`` epochs, under the ``deadline`` (:func:`time.monotonic`) rule of
    :meth:`~models.fm.torch_model.TorchFM.train_listwise_cached`: no step that would not end before it at the pace of
    the one before — but at least one step. The adapter is left attached (trainable); other attached adapters stay
    frozen."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be ≥ 1, got {max_epochs}")
    _attach_trainable(fm, name, weights, cached)
    before = cached_loss(fm, cached, config.lam)
    run = _train_cached(fm, name, cached, config, epochs=max_epochs, deadline=deadline)
    after = cached_loss(fm, cached, config.lam)
    return BudgetedTraining(fm.read(name, weights), before, after, run.epochs, run.steps)


OWN_LISTS = 8
"""An agent's lists per training run at most: its latest liked items, each after the items before it."""
OWN_LIST_CONFIG = ListwiseConfig(lists_per_user=OWN_LISTS, batch=4)
"""How an agent builds and trains on its own lists (shared φ_g in a sync, private φ_u in the worker): λ 0.5, τ 0.5,
Adam at 1e-3, four lists per cached batch and per step (the budget's granularity)."""


PRIVATE_SECONDS = 40.0
"""The private LoRA's training budget on the device after the model is loaded (caching the lists takes at most half
of it): issue 12 asks for the private adapter within 60 s on the 2-core laptop."""
PRIVATE_MAX_EPOCHS = 4
"""Epochs over the person's own lists at most for the private LoRA (8 lists, four per step: 8 Adam steps)."""


@dataclass(frozen=True)
class OwnListsRun:
    """What :func:`train_on_own_lists` did: the budgeted training, how many lists were cached and how many of them
    hold their target in the top 20 (the rest train the distillation term only), and the seconds spent caching."""

    training: BudgetedTraining
    lists: int
    lists_with_target: int
    cache_s: float


def train_on_own_lists(
    fm: TorchFM,
    builder: ListwisePromptBuilder,
    name: str,
    weights: LoraWeights,
    liked: IntArray,
    n_items: int,
    score_all: ScoreAllFn,
    *,
    deadline: float,
    max_epochs: int,
    config: ListwiseConfig = OWN_LIST_CONFIG,
) -> OwnListsRun:
    """Train adapter ``name`` (from ``weights``) on one agent's own lists (:func:`sequence_lists` of ``liked``, in
    time order, ranked by ``score_all``) by ``deadline`` (:func:`time.monotonic`): the most recent lists are cached
    while the first half of the time left lasts, then :func:`train_listwise_for` uses the rest. Adapters attached now
    other than ``name`` stay frozen; ``name`` is left attached. Fewer than two liked items form no list
    (``ValueError``)."""
    lists = sequence_lists(0, np.asarray(liked, dtype=np.int64), n_items, score_all, config)
    started = time.monotonic()
    cached = cache_lists(
        fm, builder, lists, weights.spec.layers[0], config, deadline=started + (deadline - started) / 2
    )
    cache_s = time.monotonic() - started
    run = train_listwise_for(fm, name, weights, cached, config, deadline=deadline, max_epochs=max_epochs)
    with_target = sum(t >= 0 for batch in cached.targets for t in batch)
    return OwnListsRun(run, len(cached), with_target, cache_s)
