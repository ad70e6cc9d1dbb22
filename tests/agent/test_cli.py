"""The ``agent`` command line, driven through its real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.settings import config_path
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_LORA_PROMPT
from models.data.movielens import load_ml100k
from models.evaluation.metrics import summarize
from models.firststage.scorer import SharedParams

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")


def test_eval_popularity_json_and_split_round_trip(tmp_path: Path) -> None:
    split_file = tmp_path / "split.json"
    first = runner.invoke(app, ["eval", "--model", "popularity", "--json", "--write-split", str(split_file)])
    assert first.exit_code == 0, first.output
    body = json.loads(first.stdout)
    assert set(body) >= {"dataset", "protocol", "model", "split_sha256", "metrics", "valid_metrics", "wall_s"}
    assert body["dataset"] == "ml-100k" and body["protocol"] == "loo99" and body["model"] == "popularity"
    assert 0.25 < body["metrics"]["HR@10"] < 0.40  # EVALUATION.md: popularity 0.313 on this split
    again = runner.invoke(app, ["eval", "--model", "popularity", "--json", "--split", str(split_file)])
    assert again.exit_code == 0, again.output
    body2 = json.loads(again.stdout)
    assert body2["split_sha256"] == body["split_sha256"]
    assert body2["metrics"] == body["metrics"]


def test_eval_writes_per_user_ranks_that_compare_runs_pairs(tmp_path: Path) -> None:
    ranks_file = tmp_path / "popularity.json"
    result = runner.invoke(app, ["eval", "--model", "popularity", "--json", "--ranks", str(ranks_file)])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert "test_ranks" not in body["selected"]  # in the file, not in the printed body
    record = json.loads(ranks_file.read_text())
    assert record["split_sha256"] == body["split_sha256"] and record["via_sync"] is False
    ranks = record["ranks"]["first_stage"]
    assert len(ranks) == 943
    assert summarize(list(ranks.values())) == pytest.approx(body["metrics"])  # the ranks behind the metrics
    script = [sys.executable, "scripts/compare_runs.py"]
    same = subprocess.run([*script, str(ranks_file), str(ranks_file), "--json"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    row = json.loads(same.stdout)["rows"]["first_stage"]
    assert row["users"] == 943 and row["relative_ndcg10"] == 0.0 and row["relative_ndcg10_ci95"] == [0.0, 0.0]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**record, "split_sha256": "0" * 64}))
    refused = subprocess.run([*script, str(ranks_file), str(other)], capture_output=True, text=True)
    assert refused.returncode == 2 and "differ in split_sha256" in refused.stderr and "Traceback" not in refused.stderr
    missing = runner.invoke(app, ["eval", "--model", "popularity", "--ranks", str(tmp_path / "no" / "r.json")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_eval_full_ranking_reports_recall(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "popularity", "--protocol", "full", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert set(metrics) == {"HR@10", "NDCG@10", "Recall@20"}
    assert metrics["Recall@20"] >= metrics["HR@10"]


def test_eval_rejects_unknown_protocol_with_usage_exit_code() -> None:
    result = runner.invoke(app, ["eval", "--protocol", "nope"])
    assert result.exit_code == 2
    assert "loo99" in result.output


def test_eval_bad_split_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    result = runner.invoke(app, ["eval", "--model", "popularity", "--split", str(bad)])
    assert result.exit_code == 1
    assert "not valid JSON" in result.output
    assert "Traceback" not in result.output


def test_paths_json_honours_persona_home(isolated_persona_home: Path) -> None:
    result = runner.invoke(app, ["paths", "--json"])
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    assert found["data"].startswith(str(isolated_persona_home))


def test_suggest_without_feedback_says_what_to_do() -> None:
    result = runner.invoke(app, ["suggest"])
    assert result.exit_code == 1
    assert "agent rate" in result.output
    assert "Traceback" not in result.output


def _random_private_lora(tmp_path: Path) -> bytes:
    """A private LoRA with random (non-zero) B factors, as GGUF bytes (numpy only: no training needed here)."""
    from models.fm.lora import LoraWeights, default_private_spec, export_gguf

    weights = LoraWeights.init(default_private_spec(), {"q_proj": (1024, 640), "v_proj": (256, 640)})
    rng = np.random.default_rng(0)
    weights.b = {k: rng.normal(0.0, 0.05, size=b.shape).astype(np.float32) for k, b in weights.b.items()}
    export_gguf(weights, tmp_path / "private.gguf")
    return (tmp_path / "private.gguf").read_bytes()


def test_suggest_path_never_imports_torch(tmp_path: Path) -> None:
    """Neither the first stage nor the language model's rerank (llama.cpp with a private LoRA) loads torch."""
    dataset = load_ml100k()
    history = [dataset.catalog.item_ids[i] for i in dataset.interactions.sequences()[0]]
    with ProfileStore.open() as store:
        store.save_shared(SharedParams.init(len(dataset.catalog)), version="test", meta={"catalog": "ml-100k"})
        store.add_interactions([("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(history)])
        store.save_private_lora(
            _random_private_lora(tmp_path), meta={"catalog": "ml-100k", "prompt": PRIVATE_LORA_PROMPT}
        )
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text("[rerank]\nweight = 0.5\n")  # the measured default, 0, would switch it off
    code = (
        "import sys, json\n"
        "from agent.cli.main import app\n"
        "try:\n    app(['suggest', '--json', '-n', '5'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    body = json.loads(proc.stdout)
    assert body["rerank"]["applied"] and body["rerank"]["source"] == "your setting", body["rerank"]
    assert "(weight 0.5, your setting)" in body["rerank"]["note"]
    suggestions = body["suggestions"]
    assert len(suggestions) == 5 and all(s["fm_score"] is not None for s in suggestions)
    assert all(s["title"] and s["reason"] for s in suggestions)
    assert not set(s["item"] for s in suggestions) & set(history)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"torch": False}
    assert np.isfinite([s["score"] for s in suggestions]).all()


def test_eval_coldstart_reports_each_k() -> None:
    result = runner.invoke(app, ["eval", "--model", "central", "--protocol", "coldstart", "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert set(body["metrics"]) == {"k=0", "k=1", "k=3", "k=5"}
    assert body["selected"]["cold_users"] == 189 and body["selected"]["warm_users"] == 754
    k0, k5 = body["metrics"]["k=0"], body["metrics"]["k=5"]
    assert 0.0 < k0["HR@10"] <= 1.0
    # five items of history tell the model more than none
    assert k5["NDCG@10"] > k0["NDCG@10"]


def test_eval_persona_base_outside_loo99_is_a_clear_error() -> None:
    result = runner.invoke(app, ["eval", "--model", "persona-base", "--protocol", "full"])
    assert result.exit_code == 1
    assert "loo99" in result.output and "Traceback" not in result.output


def test_eval_options_that_do_not_apply_are_usage_errors() -> None:
    via_sync = runner.invoke(app, ["eval", "--model", "central", "--via-sync"])
    assert via_sync.exit_code == 2 and "--model federated" in via_sync.output
    sample = runner.invoke(app, ["eval", "--model", "central", "--test-users", "10"])
    assert sample.exit_code == 2 and "persona models only" in sample.output
    zero = runner.invoke(app, ["eval", "--model", "persona", "--test-users", "0"])
    assert zero.exit_code == 2 and "Traceback" not in zero.output
