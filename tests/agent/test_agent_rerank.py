"""Two-stage suggestions on the device: the worker's private LoRA, the language model's rerank, reasons, fallbacks.

One profile with seven liked animated films is trained once by the real worker process (first-stage vector and
private LoRA on the real fp32 Gemma); each test works on its own copy of that profile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static
from typer.testing import CliRunner

from agent.cli.main import app
from agent.engine.private_lora import train_private_lora
from agent.engine.profile import Profile
from agent.engine.rerank import SERVED, private_lora_usable
from agent.settings import RerankSettings, Settings
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_LORA
from agent.tui.app import PersonaApp
from agent.tui.screens.suggestions import SuggestionsScreen
from agent.tui.screens.why import WhyScreen
from models.errors import PersonaError
from models.fm.assets import gguf_path, torch_dir
from models.fm.listwise import OWN_LISTS, ListwisePromptBuilder, score_list
from models.fm.lora import verify_gguf
from models.fm.serving import FoundationModel

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("warm_embedding_cache")
LIKED = ["1", "95", "71", "588", "99", "596", "418"]  # Toy Story, Aladdin, Lion King, Beauty and the Beast, ...
RERANK_ON = "[rerank]\nweight = 0.5\n"  # the measured default weight, 0, switches the rerank off


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def seed(*likes: str) -> None:
    with ProfileStore.open() as store:
        store.add_interactions([("ml-100k", item, "like", 5.0, t, "test") for t, item in enumerate(likes)])


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory, _catalog_embeddings: Path) -> tuple[Path, str]:
    """A PERSONA_HOME with seven likes, trained by ``agent train`` (the worker process); and its stderr."""
    home = tmp_path_factory.mktemp("trained-home")
    shutil.copytree(_catalog_embeddings, home / "cache" / "embeddings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERSONA_HOME", str(home))
        write_config(home, RERANK_ON)  # with the measured weight, 0, no private LoRA is trained
        seed(*LIKED)
        code, _, stderr = invoke("train")
    assert code == 0, stderr
    return home, stderr


@pytest.fixture
def trained(trained_home: tuple[Path, str], isolated_persona_home: Path) -> Path:
    """This test's PERSONA_HOME is a copy of the trained profile."""
    shutil.copytree(trained_home[0], isolated_persona_home, dirs_exist_ok=True)
    return isolated_persona_home


@pytest.fixture(autouse=True)
def _unload_the_served_model() -> Iterator[None]:
    """Each test loads the process's foundation model itself (and checks its file) if it needs it."""
    SERVED.close()
    yield
    SERVED.close()


async def wait_for(pilot: Pilot[None], condition: Callable[[], bool], steps: int = 2400) -> None:
    """Let the app run until ``condition`` holds (bounded by steps, as in test_tui)."""
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.025)
    raise AssertionError(f"condition never became true; screen {pilot.app.screen!r}")


def write_config(home: Path, text: str) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(text)


def test_worker_trains_a_private_lora_that_verifies_and_changes_served_scores(
    trained_home: tuple[Path, str], trained: Path
) -> None:
    lists = min(OWN_LISTS, len(LIKED) - 1)  # each liked item after the ones before it, the latest first
    assert f"private LoRA retrained on {lists} lists" in trained_home[1]
    with ProfileStore.open() as store:
        record = store.adapter_record(PRIVATE_LORA)
        assert record is not None and record.file.parent.name == "adapters" and record.file.is_file()
        meta = record.meta
        assert meta["catalog"] == "ml-100k" and meta["prompt"] == "listwise" and meta["lists"] == lists
        assert meta["epochs"] >= 1 and meta["delta_norm"] > 0 and meta["loss"] < meta["loss_before"], meta
        assert "zero default" in meta["shared_lora"]
        profile = Profile.load(store)
        liked, _ = profile.feedback()
        candidates = [s.item for s in profile.suggest(10)]
        builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", profile.catalog)
        with store.adapter_as_file(PRIVATE_LORA) as path, FoundationModel(gguf_path()) as fm:
            assert path is not None and verify_gguf(path) and path.read_bytes()[:4] == b"GGUF"
            base = score_list(fm, builder, liked, candidates)
            fm.load_adapter("private", path)
            fm.set_scales(private=1.0)
            adapted = score_list(fm, builder, liked, candidates)
        assert not path.parent.exists()  # the plain copy for llama.cpp is gone once loaded
        # what the rerank serves is that listwise score with the stored adapter, and a request changes it
        served = SERVED.score(profile, liked, candidates, use_private=True)
        asked = SERVED.score(profile, liked, candidates, use_private=True, request="a 1990s comedy")
        blank = SERVED.score(profile, liked, candidates, use_private=True, request="  ")
    assert np.abs(adapted - base).max() > 0.05, (base, adapted)
    assert np.allclose(served, adapted, atol=1e-3) and np.abs(asked - served).max() > 0.05
    assert np.allclose(blank, served, atol=1e-3)  # a blank query is no request, not an error
    code, stdout, _ = invoke("inspect", "--json")
    body = json.loads(stdout)
    assert code == 0 and body["private_lora"]["stored"] and body["private_lora"]["lists"] == lists
    assert body["private_lora"]["bytes"] == record.file.stat().st_size and not body["shared_lora"]["stored"]
    assert f"private LoRA (language model): {lists} lists, loss" in invoke("inspect")[1]


def test_an_earlier_pointwise_private_lora_is_not_served_and_a_list_too_long_is_refused(trained: Path) -> None:
    write_config(trained, RERANK_ON)
    with ProfileStore.open() as store:
        record = store.adapter_record(PRIVATE_LORA)
        assert record is not None
        store.save_private_lora(
            record.file.read_bytes(), meta={"catalog": "ml-100k", "pairs": 8, "loss": 0.6, "delta_norm": 0.2}
        )
        profile = Profile.load(store)
        assert not private_lora_usable(profile)
        with pytest.raises(PersonaError, match="at most 20"):
            SERVED.score(profile, profile.feedback()[0], list(range(21)), use_private=False)
    code, stdout, _ = invoke("suggest", "--json", "-n", "5")
    body = json.loads(stdout)
    assert code == 0 and not body["rerank"]["applied"] and "no trained LoRA yet" in body["rerank"]["note"]
    assert "8 pointwise pairs (an earlier version's: not served" in invoke("inspect")[1]


def test_too_little_history_trains_no_lora_and_removes_a_stale_one() -> None:
    seed(*LIKED[:4])
    with ProfileStore.open() as store:
        stale = store.save_private_lora(b"GGUF stale", meta={"catalog": "ml-100k"})
        profile = Profile.load(store)
        liked, _ = profile.feedback()
        result = train_private_lora(store, profile, liked, profile.private(), RerankSettings())
        assert result["skipped"] == "needs at least 5 liked items (you have 4)" and result["removed_previous"]
        assert not result["trained"]
        assert store.adapter_record(PRIVATE_LORA) is None and not stale.file.exists()


def test_suggest_reranks_only_within_the_top_k_never_imports_torch_and_grounds_reasons(trained: Path) -> None:
    write_config(trained, "[rerank]\nk = 8\nweight = 2.0\n")
    code = (
        "import sys, json\n"
        "from agent.cli.main import app\n"
        "try:\n    app(['suggest', '--json', '-n', '14'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"torch": False}
    reranked = json.loads(proc.stdout)
    assert reranked["rerank"]["applied"] and reranked["rerank"]["k"] == 8 and reranked["rerank"]["error"] is None
    status, stdout, _ = invoke("suggest", "--json", "-n", "14", "--no-rerank")
    assert status == 0
    plain = json.loads(stdout)
    assert not plain["rerank"]["applied"] and "--no-rerank" in plain["rerank"]["note"]
    first, second = [s["item"] for s in plain["suggestions"]], [s["item"] for s in reranked["suggestions"]]
    assert set(second[:8]) == set(first[:8]) and second[:8] != first[:8]  # reordered, within the top k only
    assert second[8:] == first[8:]
    history = {f"{t} ({y})" for t, y in _labels(LIKED)}
    for rank, row in enumerate(reranked["suggestions"][:8], 1):
        assert row["first_stage_rank"] == first.index(row["item"]) + 1 and row["fm_score"] is not None
        assert row["because"] and set(row["because"]) <= history, row
        assert all(label in row["reason"] for label in row["because"])
        old = row["first_stage_rank"]
        moved = "moved it up from" if rank < old else "moved it down from" if rank > old else "kept it at"
        assert row["reason"].endswith(f"; the language model {moved} #{old}"), row["reason"]
    assert all(row["first_stage_rank"] is None for row in reranked["suggestions"][8:])


def _labels(items: list[str]) -> list[tuple[str, int | None]]:
    from models.data.movielens import load_ml100k_catalog

    catalog = load_ml100k_catalog()
    return [(catalog.titles[catalog.index[i]], catalog.years[catalog.index[i]]) for i in items]


def test_a_corrupt_private_lora_falls_back_to_the_first_stage_with_a_message(trained: Path) -> None:
    write_config(trained, RERANK_ON)
    with ProfileStore.open() as store:
        record = store.adapter_record(PRIVATE_LORA)
    assert record is not None
    data = bytearray(record.file.read_bytes())
    data[-1] ^= 0xFF
    record.file.write_bytes(bytes(data))
    code, stdout, stderr = invoke("suggest", "--json", "-n", "10")
    assert code == 0
    assert "does not match its recorded checksum" in stderr and "first stage" in stderr
    body = json.loads(stdout)
    assert not body["rerank"]["applied"] and "checksum" in body["rerank"]["error"]
    plain = json.loads(invoke("suggest", "--json", "-n", "10", "--no-rerank")[1])
    assert [s["item"] for s in body["suggestions"]] == [s["item"] for s in plain["suggestions"]]


def test_a_foundation_model_that_fails_its_checksum_falls_back_with_a_message(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gguf_path().parent.parent
    fake = tmp_path / "assets"
    (fake / "gemma").mkdir(parents=True)
    for name in ("minilm", "ml-100k"):
        (fake / name).symlink_to(real / name)
    (fake / "gemma" / "fp32").symlink_to(real / "gemma" / "fp32")
    with gguf_path().open("rb") as source:
        (fake / "gemma" / gguf_path().name).write_bytes(source.read(1 << 20))  # a truncated copy
    monkeypatch.setenv("PERSONA_ASSETS", str(fake))
    write_config(trained, RERANK_ON)
    code, stdout, stderr = invoke("suggest", "--json", "-n", "5")
    assert code == 0 and "fails its checksum" in stderr and "agent prepare" in stderr
    body = json.loads(stdout)
    assert len(body["suggestions"]) == 5 and not body["rerank"]["applied"]


def test_reset_deletes_the_private_lora_files(trained: Path) -> None:
    with ProfileStore.open() as store:
        record = store.adapter_record(PRIVATE_LORA)
    assert record is not None and record.file.is_file()
    code, _, stderr = invoke("reset", "--yes")
    assert code == 0 and f"adapters/{record.file.name}" in stderr
    assert not record.file.exists() and not (trained / "data").exists()


@pytest.mark.asyncio
async def test_tui_suggestions_are_reranked_in_a_worker_and_why_shows_it(trained: Path) -> None:
    app = PersonaApp(settings=Settings(retrain_after_feedback=False, rerank=RerankSettings(k=8, weight=2.0)))
    async with app.run_test(size=(100, 30)) as pilot:

        def reranked() -> bool:
            screen = app.screen
            return isinstance(screen, SuggestionsScreen) and any(s.fm_score is not None for s in screen.suggestions)

        await wait_for(pilot, reranked)
        screen = app.screen
        assert isinstance(screen, SuggestionsScreen)
        assert "language model rescored the top 8" in str(screen.query_one("#status", Static).render())
        assert "the language model" in screen.suggestions[0].reason
        screen.query_one("#suggestions", DataTable).move_cursor(row=0)
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyScreen) and bool(app.screen.query("#why-rerank")))
        assert "reranked by the language model" in str(app.screen.query_one("#why-rerank", Static).render())
