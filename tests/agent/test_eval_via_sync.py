"""``agent eval --model persona --via-sync``: the language model's shared adapter trains through a real coordinator."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.engine.sync import sync_aggregator
from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.fm.assets import torch_dir
from models.fm.federated_listwise import SharedListwiseConfig, train_shared_listwise
from models.fm.listwise import ListwisePromptBuilder
from models.fm.torch_model import TorchFM
from sync.protocol.rules import SYNC_PHI_SIZE

runner = CliRunner()


def test_the_shared_adapter_rounds_go_through_a_coordinator_and_give_the_in_process_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = load_ml100k()
    full = make_loo_split(dataset, seed=0)
    split = full.subset(sorted(full.users)[:3])
    popularity = np.bincount(np.concatenate([s.train for s in full.users.values()]), minlength=full.n_items)

    def score_all(_user: int, _history: np.ndarray) -> np.ndarray:
        return popularity.astype(np.float64)

    config = SharedListwiseConfig(rounds=1, cohort=3, lists_per_agent=1)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    fm = TorchFM(threads=1)
    in_process, _ = train_shared_listwise(split, score_all, fm, builder, config)
    # no noise and a bound no delta reaches (one Adam step of 1e-3 moves the 61,440 values by a norm of about 0.25):
    # what secure aggregation adds is then only its fixed-point rounding, about 1e-4 of the bound per value; the bound
    # is 0.4, not 1, because an Adam step moves every value by about the same 1e-3, so the mean of three is ≈ 3e-4
    # per value and a rounding of 1e-4 (bound 1) would be a third of it
    monkeypatch.setenv("PERSONA_SYNC_SIGMA", "0")
    initial = np.zeros(SYNC_PHI_SIZE, dtype=np.float32)
    with sync_aggregator(True, split, 0, config.server_lr, cohort=3, initial=initial, clip=0.4) as aggregator:
        assert aggregator is not None
        secure, log = train_shared_listwise(split, score_all, fm, builder, config, aggregator=aggregator)
    (round_,) = aggregator.stats
    assert round_.status == "done" and round_.survivors == 3 and round_.bytes_up_per_agent > 0
    assert log[0]["agents"] == 3
    expected, got = in_process.trainable_vector(), secure.trainable_vector()
    assert got.shape == (SYNC_PHI_SIZE,) and np.abs(expected).max() > 0  # the round moved the adapter
    np.testing.assert_allclose(got, expected, atol=0.1 * float(np.abs(expected).max()))
    assert np.corrcoef(got, expected)[0, 1] > 0.99


def test_via_sync_takes_the_models_that_federate_and_the_protocols_they_train_on() -> None:
    base = runner.invoke(app, ["eval", "--model", "persona-base", "--via-sync"])
    assert base.exit_code == 2 and "--model federated or persona-shared or persona" in base.output
    cold = runner.invoke(app, ["eval", "--model", "persona", "--via-sync", "--protocol", "coldstart"])
    assert cold.exit_code == 2 and "loo99 or full" in cold.output and "Traceback" not in cold.output
