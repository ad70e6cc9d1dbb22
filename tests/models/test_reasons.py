"""The citation rule of :mod:`models.firststage.reasons` on a small hand-made item space."""

from __future__ import annotations

import numpy as np

from models.firststage.reasons import citations, removal_drop
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams

# History: 0 a long vector near the candidates, 1 and 2 shorter ones a little further away, 3 pointing away.
# Candidates 4-6 sit nearest item 0 in angle; item 0 also has by far the largest pull on each of them.
VECTORS = np.array(
    [[3.0, 0.3], [1.0, 0.0], [0.9, 0.2], [-2.0, 0.0], [1.0, 0.1], [1.0, 0.09], [1.0, 0.11]], dtype=np.float32
)
HISTORY = np.array([0, 1, 2, 3], dtype=np.int64)
CANDIDATES = np.array([4, 5, 6], dtype=np.int64)


def scorer() -> FirstStageScorer:
    shared = SharedParams.init(len(VECTORS), text_dim=4, dim=2)
    shared.text_proj[:] = 0.0
    shared.item_residual[:] = VECTORS
    return FirstStageScorer(shared, np.zeros((len(VECTORS), 4), dtype=np.float32))


def test_the_lead_item_varies_down_the_list_when_another_is_nearly_as_close() -> None:
    leads = [int(c[0]) for c in citations(scorer(), HISTORY, CANDIDATES)]
    assert leads == [0, 1, 2]
    assert [int(c[0]) for c in citations(scorer(), HISTORY, CANDIDATES, margin=0.0)] == [0, 0, 0]


def test_only_items_whose_removal_lowers_the_score_are_cited() -> None:
    model = scorer()
    private = PrivateParams.init(2)
    for item, cited in zip(CANDIDATES, citations(model, HISTORY, CANDIDATES), strict=True):
        assert 3 not in cited.tolist()  # points away: its removal raises every candidate's score
        assert removal_drop(model, HISTORY, private, int(item), 3) < 0
        assert all(removal_drop(model, HISTORY, private, int(item), int(c)) > 0 for c in cited)


def test_an_empty_history_cites_nothing() -> None:
    assert [len(c) for c in citations(scorer(), np.zeros(0, dtype=np.int64), CANDIDATES)] == [0, 0, 0]
