"""Reading a typed request for the catalog's tags and a decade, and ranking what satisfies it first."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.catalog import Catalog
from models.data.movielens import load_ml100k_catalog
from models.data.request import Request, filter_scores, parse_request
from models.evaluation.protocols import request_for


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_ml100k_catalog()


@pytest.mark.parametrize(
    ("text", "tags", "decade"),
    [
        ("a 1990s comedy", ("Comedy",), 1990),
        ("science fiction in outer space", ("Sci Fi",), None),
        ("Sci-Fi from the '80s", ("Sci Fi",), 1980),
        ("an animated film for the kids", ("Animation", "Children's"), None),
        ("something romantic and funny", ("Comedy", "Romance"), None),
        ("a film noir", ("Film Noir",), None),
        ("a good movie for tonight", (), None),
        ("1950s westerns", ("Western",), 1950),
    ],
)
def test_requests_are_read_for_tags_and_decades(
    catalog: Catalog, text: str, tags: tuple[str, ...], decade: int | None
) -> None:
    assert parse_request(text, catalog) == Request(tags, decade)


def test_words_only_match_whole_words(catalog: Catalog) -> None:
    # "war" inside "award" and "drama" inside "melodramatic" are not the tags War and Drama.
    assert parse_request("an award-winning melodramatic story", catalog) == Request()
    assert not Request()


def test_every_protocol_request_reads_back_as_itself(catalog: Catalog) -> None:
    """The query protocol writes requests from metadata; the agent reads them back from the words alone."""
    rng = np.random.default_rng(0)
    for item in range(len(catalog.item_ids)):
        written = request_for(catalog, item, rng)
        assert parse_request(written.text, catalog) == written.checked(), written.text
        assert written.checked().satisfied_by(catalog, item)


def test_filter_puts_what_satisfies_first_in_the_given_order() -> None:
    scores = np.array([3.0, 5.0, -np.inf, 1.0, 4.0])
    satisfied = np.array([True, False, True, True, False])
    out = filter_scores(scores, satisfied)
    assert list(np.argsort(-out, kind="stable")) == [0, 3, 1, 4, 2]
    assert out[2] == -np.inf
