"""Measurements behind ``scripts/bench_fm.py``: rerank latency (idle and beside a busy process), adapter training
time, peak memory of the serving and of the training process, adapter file sizes.

Each part runs in its own process (``python -m models.bench_fm serve|train``) so that its peak RSS is its own.
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_figures(users: int, threads: int | None) -> dict[str, Any]:
    """Rerank 20 and 50 candidates for ``users`` users with the llama.cpp runtime (this process never loads torch)."""
    from models.fm_assets import gguf_path, torch_dir
    from models.llm import FoundationModel
    from models.movielens import load_ml100k
    from models.prompts import PromptBuilder
    from models.split import make_loo_split

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
            model.score(builder.prefix(s.train.tolist()), [builder.suffix(int(c)) for c in candidates], builder.answers)
            times.append(time.perf_counter() - t)
        out[f"rerank{k}_p50_s"] = float(np.percentile(times, 50))
        out[f"rerank{k}_p95_s"] = float(np.percentile(times, 95))
    out["peak_rss_mb"] = _peak_rss_mb()
    out["torch_imported"] = "torch" in sys.modules
    return out


def train_figures(pairs: int) -> dict[str, Any]:
    """Train the private and the shared LoRA on ``pairs`` pairs from one user's history; export both to GGUF."""
    from models.fm_assets import torch_dir
    from models.fm_train import TorchFM
    from models.lora import LoraWeights, default_private_spec, default_shared_spec, export_gguf
    from models.movielens import load_ml100k
    from models.prompts import PromptBuilder
    from models.split import make_loo_split

    dataset = load_ml100k()
    user = make_loo_split(dataset).users[0]
    builder = PromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    model = TorchFM()
    out: dict[str, Any] = {"load_s": time.perf_counter() - start}
    shared = LoraWeights.init(default_shared_spec(), model.shapes())
    private = LoraWeights.init(default_private_spec(), model.shapes())
    train = user.train.tolist()
    outside = np.setdiff1d(np.arange(len(dataset.catalog)), user.train)
    prompts: list[list[int]] = []
    labels: list[int] = []
    for position in range(len(train) - pairs // 2, len(train)):  # history → next liked item vs. a non-train item
        prefix = builder.prefix(train[:position])
        prompts += [prefix + builder.suffix(train[position]), prefix + builder.suffix(int(rng.choice(outside)))]
        labels += [1, 0]
    out["pairs"] = len(prompts)
    for name in ("private", "shared"):
        model.attach("shared", shared, trainable=name == "shared")
        model.attach("private", private, trainable=name == "private")
        t = time.perf_counter()
        model.train_pairs(name, prompts, labels, builder.answers, lr=1e-3)
        out[f"{name}_lora_s"] = time.perf_counter() - t
    folder = Path(tempfile.mkdtemp())
    export_gguf(shared, folder / "shared.gguf")
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
    done = subprocess.run([sys.executable, "-m", "models.bench_fm", *args], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_fm(*, users: int = 10, pairs: int = 32) -> dict[str, Any]:
    """All foundation-model figures as one flat dict."""
    idle = _run("serve", str(users))
    with busy_process():
        busy = _run("serve", str(users))
    training = _run("train", str(pairs))
    return (
        {f"idle_{k}": v for k, v in idle.items()}
        | {f"busy_{k}": v for k, v in busy.items()}
        | {f"train_{k}": v for k, v in training.items()}
    )


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        print(json.dumps(serve_figures(int(sys.argv[2]), None)))
    else:
        print(json.dumps(train_figures(int(sys.argv[2]))))
