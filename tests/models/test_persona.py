"""The whole system on a slice of real users: federated shared LoRA, private LoRAs, rerank, and its bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from agent.paths import cache_dir
from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.data.split import Split, make_loo_split
from models.evaluation.metrics import summarize
from models.evaluation.protocols import COLDSTART_KS, metrics_for, user_ranks
from models.experiments.evaluate import evaluate_coldstart
from models.experiments.persona import (
    PersonaConfig,
    evaluate_persona,
    rerank_job,
    shared_adapter_folder,
    train_stages,
)
from models.experiments.persona_coldstart import evaluate_persona_coldstart
from models.experiments.persona_rerank import candidates_for, rerank_all
from models.firststage.fit import train_federated
from models.firststage.recipe import FederatedConfig
from models.fm.adapter_training import agent_pairs
from models.fm.blend import BLEND_WEIGHTS
from models.fm.federated_listwise import SharedListwiseConfig
from models.fm.listwise import OWN_LIST_CONFIG
from models.text.encoder import ItemEncoder, embed_catalog


def test_agent_pairs_come_from_the_agents_own_training_items() -> None:
    train = np.array([5, 9, 2, 7, 11, 3], dtype=np.int64)
    scores = np.arange(20, dtype=np.float64)[::-1].copy()  # item 0 best, then 1, 2, ...

    def score_all(_u: int, _h: np.ndarray) -> np.ndarray:
        return scores

    pairs = agent_pairs(0, train, score_all, 4, np.random.default_rng(0), pool=3)
    positives = [(h, i) for h, i, y in pairs if y == 1]
    negatives = [i for _, i, y in pairs if y == 0]
    assert [i for _, i in positives] == [11, 3]  # the latest items, each after the history before it
    assert positives[0][0] == [5, 9, 2, 7]
    # negatives: the first stage's best items outside the training set (0, 1, 4 here), never a training item
    assert set(negatives) <= {0, 1, 4}


def test_the_evaluation_measures_the_recipe_every_agent_runs() -> None:
    assert PersonaConfig().shared_rounds() == SharedListwiseConfig()
    assert PersonaConfig(rounds=3, seed=3).shared_rounds() == SharedListwiseConfig(rounds=3, seed=3)
    # an agent's lists train with the sync's loss, λ, τ and learning rate; only how many lists it brings differs
    own = SharedListwiseConfig(lists_per_agent=3).own_lists()
    assert (own.lam, own.tau, own.lr, own.k, own.negatives) == (
        OWN_LIST_CONFIG.lam,
        OWN_LIST_CONFIG.tau,
        OWN_LIST_CONFIG.lr,
        OWN_LIST_CONFIG.k,
        OWN_LIST_CONFIG.negatives,
    )
    assert own.lists_per_user == own.batch == 3 and not own.shuffle


def test_the_evaluation_refuses_lists_the_prompt_cannot_letter() -> None:
    with pytest.raises(ValueError, match="1 to 20 candidates"):
        PersonaConfig(rerank_k=21)
    with pytest.raises(ValueError, match="private_users"):
        PersonaConfig(private_users=0)


def test_full_protocol_candidates_exclude_training_and_valid_items() -> None:
    dataset = load_ml100k()
    split = make_loo_split(dataset, seed=0)
    u = sorted(split.users)[0]
    s = split.users[u]

    def score_all(_u: int, _h: np.ndarray) -> np.ndarray:
        return np.zeros(split.n_items)

    c = candidates_for(split, u, "test", "full", score_all, 20)
    assert c.items[0] == s.test
    assert not set(c.items[1:].tolist()) & (set(s.train.tolist()) | {s.valid, s.test})
    assert len(c.items) == split.n_items - len(set(s.train.tolist())) - 1
    assert c.positive_first_rank == len(c.items) - 1  # all tied: ties count against the positive


def first_users(n: int) -> tuple[Dataset, Split, np.ndarray]:
    """ML-100K, its seed-0 split cut to the first ``n`` users, and the catalog's text vectors."""
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), cache_dir() / "embeddings")
    return dataset, full.subset(sorted(full.users)[:n]), vectors


@pytest.mark.usefixtures("warm_embedding_cache")
def test_persona_on_a_slice_reports_every_stage() -> None:
    dataset, split, vectors = first_users(4)
    federated = FederatedConfig(rounds=1)
    config = PersonaConfig(
        rounds=1,
        cohort=2,
        lists_per_agent=1,
        rerank_k=5,
        valid_users=2,
        private_users=1,
        private_seconds=8.0,
        threads=1,
        workers=2,  # the real process pool, as `agent eval` runs it
    )
    test, valid, selected = evaluate_persona(
        split, vectors, dataset.catalog, federated=federated, config=config, private=True
    )
    assert set(test) == {"HR@10", "NDCG@10"} and set(valid) == {"HR@10", "NDCG@10"}
    assert selected["blend_weight"] in BLEND_WEIGHTS
    assert selected["shared_only"]["blend_weight"] in BLEND_WEIGHTS
    assert selected["base_fm"]["blend_weight"] in BLEND_WEIGHTS
    auc = selected["shared_only"]["fm_auc_in_top_k"]["test"]
    assert auc is None or 0.0 <= auc <= 1.0
    assert set(selected["base_fm"]["valid_NDCG@10_by_weight"]) == {str(w) for w in BLEND_WEIGHTS}
    assert selected["valid_users"] == 2 and selected["test_users"] == 4 and selected["workers"] == 2
    # the shared adapter trained through one federated round of two agents (a list each), and one private adapter
    assert selected["fm_rounds"][0]["agents"] == 2 and selected["fm_rounds"][0]["lists_trained"] == 2
    assert np.isfinite(selected["fm_rounds"][0]["train_loss"])
    assert np.isfinite(selected["private_train_loss_mean"])
    assert selected["private_users"] == 1
    # weight 0 keeps the first stage's order: its metrics equal the first stage measured on its own
    first = train_federated(split, vectors, config=federated)
    assert selected["first_stage_metrics"] == metrics_for(first, split, "loo99", "test")
    # the persona row (both adapters) is the private sample's: one user, whose first-stage row is on the same list
    ranks = selected["test_ranks"]
    (sampled,) = ranks["persona"]
    first_ranks = user_ranks(first, split, "loo99", "test")
    assert selected["first_stage_on_private_users"] == summarize([first_ranks[sampled]])
    # reranking only reorders the top 5, so HR@10 cannot change
    assert test["HR@10"] == selected["first_stage_on_private_users"]["HR@10"]
    assert selected["shared_only"]["test"]["HR@10"] == selected["first_stage_metrics"]["HR@10"]
    # the per-user ranks (agent eval --ranks) are the ones behind the reported metrics
    assert ranks["first_stage"] == first_ranks
    assert summarize(list(ranks["persona"].values())) == pytest.approx(test)
    assert selected["vs_first_stage"]["persona"]["users"] == 1
    assert selected["vs_first_stage"]["shared_only"]["users"] == 4


@pytest.mark.usefixtures("warm_embedding_cache")
def test_persona_cold_start_trains_on_warm_users_and_rescores_each_k() -> None:
    dataset, split, vectors = first_users(10)
    federated = FederatedConfig(rounds=1)
    config = PersonaConfig(
        rounds=1, cohort=8, lists_per_agent=1, rerank_k=5, private_users=1, private_seconds=4.0, threads=1, workers=1
    )
    test, _valid, selected = evaluate_persona_coldstart(
        split, vectors, dataset.catalog, federated=federated, config=config
    )
    assert set(test) == {f"k={k}" for k in COLDSTART_KS}
    assert selected["cold_users"] == 2 and selected["warm_users"] == 8 and selected["both_users"] == 1
    assert selected["fm_rounds"][0]["agents"] == 8  # the shared adapter saw the warm users only
    # the first-stage row is exactly the first stage's own cold-start measurement
    first, _, _ = evaluate_coldstart("federated", split, vectors, federated=federated)
    assert selected["first_stage_metrics"] == first
    for k in COLDSTART_KS:  # reranking the top 5 reorders within the top 10
        assert test[f"k={k}"]["HR@10"] == selected["first_stage_on_both_users"][f"k={k}"]["HR@10"]
        assert selected["shared_only"][f"k={k}"]["HR@10"] == first[f"k={k}"]["HR@10"]
        assert selected["blend_weight"][f"k={k}"] in BLEND_WEIGHTS
        # each row against the first stage on its own users, at the weight used and at validation's best
        versus, weights = selected["vs_first_stage"][f"k={k}"], selected["weights"][f"k={k}"]
        assert {row: versus[row]["users"] for row in versus} == {"base_fm": 2, "shared_only": 2, "persona": 1}
        assert versus["persona"]["hr10"] == [test[f"k={k}"]["HR@10"], test[f"k={k}"]["HR@10"]]
        for row, variant in (("base_fm", "base"), ("shared_only", "shared"), ("persona", "both")):
            if weights[variant]["blend_weight"] == 0:  # the first stage itself: no difference at all
                assert versus[row]["delta_ndcg10"] == 0 and versus[row]["ci95"] == [0, 0]
            at_best = selected["at_best_valid_weight"][f"k={k}"][row]
            assert at_best["users"] == versus[row]["users"] and weights[variant]["best_valid_weight"] in BLEND_WEIGHTS


@pytest.mark.usefixtures("warm_embedding_cache")
def test_a_user_too_new_for_a_private_adapter_is_not_scored_with_the_previous_users() -> None:
    dataset, split, vectors = first_users(2)
    trained_user, new_user = sorted(split.users)
    s = split.users[new_user]
    split.users[new_user] = type(s)(s.train[:1], s.valid, s.test, s.valid_negs, s.test_negs)  # one item: no list
    config = PersonaConfig(
        rounds=1, cohort=2, lists_per_agent=1, rerank_k=5, private_users=2, private_seconds=4.0, threads=1, workers=1
    )
    first, shared, _log, _timings = train_stages(split, vectors, dataset.catalog, config, FederatedConfig(rounds=1))
    assert first.shared is not None
    with shared_adapter_folder(shared, "persona-order-") as folder:
        job = rerank_job(
            split,
            vectors,
            dataset.catalog,
            (first.shared, first.privates),
            config,
            folder,
            protocol="loo99",
            private=True,
            valid_users=set(),
            test_users=set(split.users),
            private_users=set(split.users),
            shared=shared,
        )
        # one process, in this order: the first user's private adapter is still loaded when the second is scored
        done, new = rerank_all(job, [trained_user, new_user], workers=1, progress=None)
    assert done.private_loss is not None and new.private_loss is None
    # the trained adapter moves its own user's scores (so the check below could fail) ...
    assert not np.array_equal(done.lists[("both", "test")].fm, done.lists[("shared", "test")].fm)
    # ... but scores nothing of the next user's: with no adapter of their own they are served the shared one
    np.testing.assert_array_equal(new.lists[("both", "test")].fm, new.lists[("shared", "test")].fm)
