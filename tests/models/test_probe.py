"""The knowledge probe of the base foundation model (models.experiments.probe): the chance and prior figures are
computed correctly, and a real run of the base model over 5 titles has the documented shape (no quality bar)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.experiments.probe import (
    ProbeConfig,
    best_true_rank,
    chance,
    decade,
    frequency_order,
    run_probe,
    top_titles,
)

TITLES = 5


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_ml100k()


@pytest.fixture(scope="module")
def figures(dataset: Dataset) -> dict[str, Any]:
    return run_probe(dataset, ProbeConfig(titles=TITLES))


def test_chance_is_the_expectation_of_a_random_order() -> None:
    assert chance(1, 8) == (1 / 8, 4.5)
    assert chance(3, 18) == (3 / 18, 19 / 4)
    # the expected best rank of g true among G, by enumeration over every placement (G = 5, g = 2)
    positions = [(a, b) for a in range(1, 6) for b in range(1, 6) if a < b]
    assert chance(2, 5)[1] == pytest.approx(np.mean([min(p) for p in positions]))
    with pytest.raises(ValueError):
        chance(0, 5)


def test_best_true_rank_counts_ties_against_the_truth() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.5])
    assert best_true_rank(scores, np.array([False, True, False, False])) == 1
    assert best_true_rank(scores, np.array([False, False, True, False])) == 3  # 0.9 above, the tied 0.5 too
    assert best_true_rank(scores, np.array([True, False, True, False])) == 3  # the best of the true ones counts
    with pytest.raises(ValueError):
        best_true_rank(scores, np.zeros(4, dtype=bool))


def test_frequency_order_breaks_ties_by_name() -> None:
    assert frequency_order(["b", "a", "c", "c", "b"]) == ["b", "c", "a"]
    assert decade(1995) == "1990s" and decade(1930) == "1930s"


def test_the_probe_reports_model_prior_and_chance_with_intervals(dataset: Dataset, figures: dict[str, Any]) -> None:
    catalog = dataset.catalog
    titles = top_titles(dataset, TITLES)
    assert figures["titles"] == TITLES and figures["adapters"] == []
    genres = frequency_order([t for tags in catalog.tags for t in tags])
    decades = frequency_order([decade(y) for y in catalog.years if y is not None])
    assert figures["genre"]["options"] == len(genres) == 18
    assert figures["decade"]["options"] == len(decades)
    # the prior and chance rows, recomputed by hand from the catalog
    truths = {
        "genre": [set(catalog.tags[i]) for i in titles],
        "decade": [{decade(catalog.years[i] or 0)} for i in titles],
    }
    for task, options in (("genre", genres), ("decade", decades)):
        prior_ranks = [1 + min(options.index(t) for t in truth) for truth in truths[task]]
        odds = [chance(len(truth), len(options)) for truth in truths[task]]
        row = figures[task]
        assert row["prior"]["mean_rank"]["mean"] == pytest.approx(np.mean(prior_ranks), abs=1e-4)
        assert row["prior"]["hit@1"]["mean"] == pytest.approx(np.mean([r == 1 for r in prior_ranks]), abs=1e-4)
        assert row["chance"]["hit@1"]["mean"] == pytest.approx(np.mean([h for h, _ in odds]), abs=1e-4)
        assert row["chance"]["mean_rank"]["mean"] == pytest.approx(np.mean([r for _, r in odds]), abs=1e-4)
        for method in ("model", "model_per_token", "prior", "chance"):
            hit, rank = row[method]["hit@1"], row[method]["mean_rank"]
            assert 0.0 <= hit["ci95"][0] <= hit["mean"] <= hit["ci95"][1] <= 1.0
            assert 1.0 <= rank["ci95"][0] <= rank["mean"] <= rank["ci95"][1] <= len(options)
        for versus in ("model_vs_prior", "model_vs_chance", "model_per_token_vs_prior"):
            delta = row[versus]["delta_mean_rank"]
            assert delta["ci95"][0] <= delta["mean"] <= delta["ci95"][1]
        assert sum(row["model_top_answers"].values()) == TITLES
        best = row["best_single_answer"]
        assert best["hit@1"] == max(sum(t in truth for truth in truths[task]) for t in options) / TITLES
        assert sum(best["answer"] in truth for truth in truths[task]) / TITLES == best["hit@1"]
        mine = row["model_vs_prior"]["delta_hit@1"]["mean"]
        assert mine == pytest.approx(row["model"]["hit@1"]["mean"] - row["prior"]["hit@1"]["mean"], abs=1e-3)
    assert [e["title"] for e in figures["examples"]] == [catalog.label(i) for i in titles]
    assert all(e["model"]["genre"] in genres and e["model"]["decade"] in decades for e in figures["examples"])
