"""How the foundation model scores candidates: the user's history as the prompt's prefix, each candidate as a
suffix, and logit(" Yes") − logit(" No") as the score — the same in llama.cpp (serving) and torch (training).

Torch-free: the suggest path imports this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from models.fm.prompts import AnswerTokens, PromptBuilder


class AnswerScorer(Protocol):
    """A runtime of the foundation model (:class:`~models.fm.serving.FoundationModel` or
    :class:`~models.fm.torch_model.TorchFM`) with its adapters attached."""

    def score(
        self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], answers: AnswerTokens
    ) -> NDArray[np.float32]:
        """logit(" Yes") − logit(" No") after ``prefix + suffix`` for each suffix."""
        ...


def score_items(
    model: AnswerScorer, builder: PromptBuilder, history: Iterable[int], items: Iterable[int]
) -> NDArray[np.float32]:
    """The foundation model's score of each of ``items`` for a user whose history (oldest first) is ``history``."""
    prefix = builder.prefix([int(i) for i in history])
    return model.score(prefix, [builder.suffix(int(i)) for i in items], builder.answers)
