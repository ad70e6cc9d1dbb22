"""Measurements behind ``scripts/bench_fm.py``: rerank latency (idle and beside a busy process), adapter training
time, peak memory of the serving and of the training process, adapter file sizes.

Each part runs in its own process (``python -m models.experiments.bench_fm serve|train``) so that its peak RSS is
its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.fm.adapter_training import AdapterConfig, agent_pairs, pair_prompts, train_private_adapter
from models.fm.assets import gguf_path, torch_dir
from models.fm.lora import LoraWeights, default_shared_spec, export_gguf
from models.fm.prompts import PromptBuilder
from models.fm.scoring import score_items
from models.fm.serving import FoundationModel
from models.types import FloatArray, IntArray


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_figures(users: int, threads: int | None) -> dict[str, Any]:
    """Rerank 20 and 50 candidates for ``users`` users with the llama.cpp runtime (this process never loads torch)."""
    dataset = load_ml100k()
    split = make_loo_split(dataset)
    builder = PromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    start = time.perf_counter()
    model = FoundationModel(gguf_path(), n_threads=threads)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "threads": model.n_threads}
    for k in (20, 50):
        times = []
        for u in sorted(split.users)[:users]:
            s = split.users[u]
            candidates = [s.test, *s.test_negs[: k - 1].tolist()]
            t = time.perf_counter()
            score_items(model, builder, s.train, candidates)
            times.append(time.perf_counter() - t)
        out[f"rerank{k}_p50_s"] = float(np.percentile(times, 50))
        out[f"rerank{k}_p95_s"] = float(np.percentile(times, 95))
    out["peak_rss_mb"] = _peak_rss_mb()
    out["torch_imported"] = "torch" in sys.modules
    return out


def train_figures() -> dict[str, Any]:
    """Train the private LoRA on one user's history and run one agent's local round of the shared LoRA, with the
    recipe every agent runs and ``agent eval --model persona`` measures
    (:class:`models.fm.adapter_training.AdapterConfig`); export both to GGUF.

    Negatives come from the training counts' top items outside the user's history (the real system uses the first
    stage's; the cost is the same)."""
    # torch: only this training process loads it (the serving figures must stay torch-free)
    import torch

    from models.fm.torch_model import TorchFM

    config = AdapterConfig()
    dataset = load_ml100k()
    split = make_loo_split(dataset)
    counts = np.zeros(split.n_items, dtype=np.float32)
    for s in split.users.values():
        np.add.at(counts, s.train, 1.0)

    def score_all(_u: int, _h: IntArray) -> FloatArray:
        return counts

    user = split.users[0]
    builder = PromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    start = time.perf_counter()
    model = TorchFM()
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "threads": torch.get_num_threads()}
    shared = LoraWeights.init(default_shared_spec(), model.shapes())
    model.attach("shared", shared)
    t = time.perf_counter()
    private, _, n_pairs = train_private_adapter(0, user.train, score_all, model, builder, config)
    out["private_lora_s"] = time.perf_counter() - t
    out["private_pairs"] = n_pairs
    out["private_epochs"] = config.private_epochs
    pairs = agent_pairs(0, user.train, score_all, config.pairs_per_agent, np.random.default_rng(0))
    model.attach("shared", shared, trainable=True)
    t = time.perf_counter()
    prompts, labels = pair_prompts(builder, pairs)
    model.train_pairs("shared", prompts, labels, builder.answers, lr=config.local_lr, steps_batch=len(pairs))
    out["shared_local_round_s"] = time.perf_counter() - t
    out["shared_pairs"] = len(pairs)
    folder = Path(tempfile.mkdtemp())
    export_gguf(model.read("shared", shared), folder / "shared.gguf")
    export_gguf(private, folder / "private.gguf")
    out["shared_gguf_bytes"] = (folder / "shared.gguf").stat().st_size
    out["private_gguf_bytes"] = (folder / "private.gguf").stat().st_size
    out["shared_upload_floats"] = int(shared.trainable_vector().size)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


@contextmanager
def busy_process() -> Iterator[None]:
    """One competing CPU-bound process for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _run(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "models.experiments.bench_fm", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_fm(*, users: int = 10) -> dict[str, Any]:
    """All foundation-model figures as one flat dict."""
    idle = _run("serve", str(users))
    with busy_process():
        busy = _run("serve", str(users))
    training = _run("train")
    return (
        {f"idle_{k}": v for k, v in idle.items()}
        | {f"busy_{k}": v for k, v in busy.items()}
        | {f"train_{k}": v for k, v in training.items()}
    )


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        print(json.dumps(serve_figures(int(sys.argv[2]), None)))
    else:
        print(json.dumps(train_figures()))
