"""The listwise model on the cold-start protocol (models.experiments.listwise_coldstart): warm users' training lists
look like a newcomer's, and a small real run (real first stage, real GGUF model in llama.cpp) reports rows whose
figures agree with one another and with the weight validation picked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.evaluation.protocols import coldstart_users
from models.experiments.listwise_coldstart import (
    ListwiseColdstartConfig,
    coldstart_training_lists,
    run_listwise_coldstart,
)
from models.firststage.fit import popularity_model
from models.fm.listwise import LIST_SIZE, ListwiseConfig
from models.text.encoder import ItemEncoder, embed_catalog


@pytest.mark.parametrize("k", [0, 3])
def test_training_lists_look_like_a_newcomer(k: int) -> None:
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    split = full.subset(sorted(full.users)[:40])
    scores = popularity_model(split).score_all(0, np.zeros(0, dtype=np.int64))
    users = sorted(split.users)
    lists = coldstart_training_lists(split, popularity_model(split).score_all, users, k, ListwiseConfig())
    assert len(lists) == sum(len(split.users[u].train) >= k + 1 for u in users) > 30
    for lst in lists:
        s = split.users[lst.user]
        assert lst.history == s.train[:k].tolist()  # the first k items, as a newcomer arrives
        assert len(lst.items) == LIST_SIZE
        seen = set(s.train.tolist()) | {s.valid, s.test}
        target = int(s.train[-1])
        others = [int(i) for i in lst.items if int(i) != target]
        assert not seen & set(others)  # negatives come from outside the whole history
        assert s.valid not in lst.items and s.test not in lst.items  # held-out items are never in a training list
        if lst.target is not None:
            assert int(lst.items[lst.target]) == target  # the target is the last training item
        else:
            assert target not in lst.items.tolist()
        assert np.all(np.diff(scores[lst.items]) <= 0)  # the first stage's order
        assert np.allclose(lst.first, scores[lst.items])
    # shuffled (--shuffle): the same candidates, each with its own score, the target where its item went
    mixed = coldstart_training_lists(split, popularity_model(split).score_all, users, k, ListwiseConfig(shuffle=True))
    assert len(mixed) == len(lists)
    for a, b in zip(lists, mixed, strict=True):
        assert sorted(a.items.tolist()) == sorted(b.items.tolist()) and np.allclose(b.first, scores[b.items])
        assert (a.target is None and b.target is None) or a.items[a.target] == b.items[b.target]
    assert sum(not np.array_equal(a.items, b.items) for a, b in zip(lists, mixed, strict=True)) == len(lists)


def test_a_small_run_reports_consistent_rows(_catalog_embeddings: Path) -> None:
    dataset = load_ml100k()
    split = make_loo_split(dataset, seed=0)
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), _catalog_embeddings)
    config = ListwiseColdstartConfig(rounds=1, ks=(0, 1), cold_users=3, train_users=0, threads=1)
    out = run_listwise_coldstart(split, vectors, dataset.catalog, config)
    _, cold = coldstart_users(split)
    assert out["cold_users"] == 3 and out["warm_users"] == len(split.users) - len(cold)
    assert out["adapter_training"] is None and set(out["per_k"]) == {"k=0", "k=1"}
    for row in out["per_k"].values():
        base, first = row["base"], row["first_stage"]["test"]
        curve = {float(w): m["NDCG@10"] for w, m in base["valid_curve"].items()}
        assert base["blend_weight"] in curve and curve[base["blend_weight"]] == max(curve.values())
        assert base["valid"]["NDCG@10"] == curve[base["blend_weight"]]
        cmp = base["vs_first_stage"]
        assert cmp["users"] == 3
        assert cmp["delta_hr10"] == pytest.approx(base["test"]["HR@10"] - first["HR@10"])
        assert cmp["delta_ndcg10"] == pytest.approx(base["test"]["NDCG@10"] - first["NDCG@10"])
        if base["blend_weight"] == 0:
            assert base["test"] == first  # weight 0 is the first stage's own order
        for auc in base["auc_in_top_k"].values():
            assert auc is None or 0.0 <= auc <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--coldstart"], "add --listwise"),
        (["--listwise", "--coldstart", "--train-users", "-1"], "0 or more with --coldstart"),
        (["--listwise", "--coldstart", "--cold-users", "0"], "--cold-users a positive one"),
        (["--listwise", "--train-users", "0"], "--train-users takes a positive number"),
        (["--listwise", "--lists-per-user", "0"], "--lists-per-user take positive numbers"),
        (["--shuffle"], "use it with --listwise"),
        (["--listwise", "--coldstart", "--lam", "0"], "use it with --listwise, without --coldstart"),
        (["--listwise", "--lam", "-1"], "--lam takes a distillation weight between 0 and 100"),
    ],
)
def test_the_pilot_script_refuses_bad_sizes_with_a_clear_message(args: list[str], message: str) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "pilot_fm.py"), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
