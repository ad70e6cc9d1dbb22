"""The LOO-99 split: the exact recipe, determinism, the interchange file, and leak-free training negatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.assets import require_ml100k
from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.data.split import Split, make_loo_split, read_split, split_sha256, write_split
from models.errors import SplitError
from models.firststage.recipe import TrainConfig
from models.firststage.scorer import PrivateParams, SharedParams
from models.firststage.training import local_train


@pytest.fixture(scope="module")
def ml() -> Dataset:
    return load_ml100k()


@pytest.fixture(scope="module")
def split(ml: Dataset) -> Split:
    return make_loo_split(ml, seed=0)


def _reference_split(folder: Path) -> dict[int, dict[str, object]]:
    """EVALUATION.md's recipe written out independently, straight from the raw file's integer ids."""
    rows = np.loadtxt(folder / "ml-100k.inter", skiprows=1, dtype=np.int64)
    all_items = np.unique(np.loadtxt(folder / "ml-100k.item", skiprows=1, usecols=0, dtype=np.int64, delimiter="\t"))
    rng = np.random.default_rng(0)
    out: dict[int, dict[str, object]] = {}
    for user in sorted(set(rows[:, 0].tolist())):
        mine = rows[rows[:, 0] == user]
        mine = mine[np.lexsort((mine[:, 1], mine[:, 3]))]
        cand = np.array(sorted(set(all_items.tolist()) - set(mine[:, 1].tolist())), dtype=np.int64)
        draw = rng.choice(cand, size=198, replace=False)
        out[user] = {
            "test": int(mine[-1, 1]),
            "valid": int(mine[-2, 1]),
            "train": mine[:-2, 1].tolist(),
            "test_negs": draw[:99].tolist(),
            "valid_negs": draw[99:].tolist(),
        }
    return out


def test_split_follows_the_published_recipe(ml: Dataset, split: Split) -> None:
    reference = _reference_split(require_ml100k())
    ids = ml.catalog.item_ids
    assert len(split.users) == len(reference) == 943
    for u, s in split.users.items():
        ref = reference[int(ml.interactions.user_ids[u])]
        assert int(ids[s.test]) == ref["test"]
        assert int(ids[s.valid]) == ref["valid"]
        assert [int(ids[i]) for i in s.train] == ref["train"]
        assert [int(ids[i]) for i in s.test_negs] == ref["test_negs"]
        assert [int(ids[i]) for i in s.valid_negs] == ref["valid_negs"]


def test_negatives_are_never_items_the_user_touched(split: Split) -> None:
    for s in split.users.values():
        touched = set(s.train.tolist()) | {s.valid, s.test}
        assert not touched & set(s.test_negs.tolist())
        assert not touched & set(s.valid_negs.tolist())
        assert len(set(s.test_negs.tolist()) | set(s.valid_negs.tolist())) == 198


def test_split_is_deterministic_and_seeded(ml: Dataset, split: Split) -> None:
    again = make_loo_split(ml, seed=0)
    assert split_sha256(again, ml) == split_sha256(split, ml)
    other = make_loo_split(ml, seed=1)
    assert split_sha256(other, ml) != split_sha256(split, ml)


def test_split_file_round_trip(ml: Dataset, split: Split, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    write_split(split, ml, path)
    raw = json.loads(path.read_text())
    assert raw["protocol"] == "loo99" and raw["seed"] == 0
    first = raw["users"]["1"]
    assert isinstance(first["test"], int) and len(first["test_negs"]) == 99
    back = read_split(path, ml)
    assert split_sha256(back, ml) == split_sha256(split, ml)


def test_split_file_errors_are_clear(ml: Dataset, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SplitError, match="not valid JSON"):
        read_split(bad, ml)
    bad.write_text(json.dumps({"users": {"1": {"train": [99999], "valid": 1, "test": 2}}}))
    with pytest.raises(SplitError, match="99999"):
        read_split(bad, ml)
    with pytest.raises(SplitError, match="does not exist"):
        read_split(tmp_path / "missing.json", ml)


def test_training_negatives_include_held_out_items() -> None:
    """Negatives come from outside the *training* set: a held-out item is pushed down like any non-train item.

    With the leaky rule (negatives only from items never touched) the held-out item would never be a
    negative, its bias would get no gradient and stay exactly 0.
    """
    n_items = 4
    shared = SharedParams.init(n_items, text_dim=8, dim=4, window=3)
    text = torch.zeros(n_items, 8)
    train = np.array([0, 1], dtype=np.int64)  # items 2 (held out) and 3 (never seen) are not in train
    result = local_train(
        shared, PrivateParams.init(4), train, text, TrainConfig(n_negatives=20, epochs=5, lr=0.05), seed=0
    )
    assert result.shared.item_bias[2] < 0
    assert result.shared.item_bias[3] < 0
    assert result.shared.item_bias[0] > 0
