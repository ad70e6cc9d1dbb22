"""Reasons on a real ML-100K profile: they name the liked items closest to each suggestion, vary down the list,
and are faithful (removing the cited item lowers that suggestion's first-stage score more than a random one)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from agent.engine.demo import dataset_user_rows
from agent.engine.profile import Profile
from agent.store.profile_store import ProfileStore
from models.data.movielens import load_ml100k
from models.firststage.reasons import removal_drop
from models.firststage.scorer import history_tail

pytestmark = pytest.mark.usefixtures("warm_embedding_cache")


@pytest.fixture
def profile(request: pytest.FixtureRequest) -> Iterator[Profile]:
    """The profile `agent demo` would store for ML-100K user ``request.param`` (its ratings; no federation)."""
    with ProfileStore.open() as store:
        store.add_interactions(dataset_user_rows(load_ml100k(), request.param))
        yield Profile.load(store)


@pytest.mark.parametrize("profile", ["51"], indirect=True)
def test_lead_reasons_vary_down_the_list(profile: Profile) -> None:
    # User 51's 20 liked items are varied; the largest-pull rule cited one of them for all ten suggestions.
    liked, _ = profile.feedback()
    assert len(liked) >= 5
    suggestions = profile.suggest(10)
    leads = [s.because[0] for s in suggestions if s.because]
    assert len(leads) >= 8
    assert len(set(leads)) >= 5, leads
    for s in suggestions:
        if s.because:
            assert s.reason.startswith("because you liked " + s.because[0])


@pytest.mark.parametrize("profile", ["51", "1"], indirect=True)  # 20 liked items; 219 (beyond the pooled 50)
def test_removing_the_cited_item_lowers_the_score_more_than_a_random_one(profile: Profile) -> None:
    liked, _ = profile.feedback()
    private = profile.private()
    by_label = {profile.catalog.label(int(i)): int(i) for i in liked}
    pooled = history_tail(profile.shared, liked)
    rng = np.random.default_rng(0)
    cited_drops, random_drops = [], []
    for s in profile.suggest(10):
        if not s.because:
            continue
        cited = by_label[s.because[0]]
        other = int(rng.choice(pooled[pooled != cited]))
        cited_drops.append(removal_drop(profile.scorer, liked, private, s.item, cited))
        random_drops.append(removal_drop(profile.scorer, liked, private, s.item, other))
    cited_arr, random_arr = np.array(cited_drops), np.array(random_drops)
    assert len(cited_arr) >= 8
    assert cited_arr.mean() > random_arr.mean()
    assert np.mean(cited_arr > random_arr) >= 0.7
    assert np.all(cited_arr > 0)  # a cited item always supports its suggestion
