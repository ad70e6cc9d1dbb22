"""Measurements behind ``scripts/bench_fm.py``: the product's rerank latency (one listwise prompt of 20,
:mod:`models.fm.listwise`; idle and beside a busy process, one llama.cpp thread), adapter training time (the
pointwise recipe the persona evaluation measures, and the product's listwise private LoRA), peak memory of the
serving and of the training process, adapter file sizes, and the listwise rerank against the pointwise one in one
process: latency with one and two llama.cpp threads, prompt length, and the torch cost of one training list.

Each part runs in its own process (``python -m models.experiments.bench_fm serve|train|listwise-serve|
listwise-train``) so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.data.catalog import Dataset
from models.data.movielens import load_ml100k
from models.data.split import Split, make_loo_split
from models.fm.adapter_training import AdapterConfig, agent_pairs, pair_prompts, train_private_adapter
from models.fm.assets import gguf_path, torch_dir
from models.fm.listwise import (
    PRIVATE_MAX_EPOCHS,
    PRIVATE_SECONDS,
    ListwiseConfig,
    ListwisePromptBuilder,
    cache_lists,
    score_list,
    train_on_own_lists,
    training_lists,
)
from models.fm.lora import LoraWeights, default_private_spec, default_shared_spec, export_gguf
from models.fm.prompts import PromptBuilder
from models.fm.scoring import score_items
from models.fm.serving import FoundationModel
from models.types import FloatArray, IntArray


def _popularity_world() -> tuple[Dataset, Split, Callable[[int, IntArray], FloatArray]]:
    """ML-100K, its LOO split, and a first stage that scores every item by its training count (the benches' cost
    is the same as with the real first stage)."""
    dataset = load_ml100k()
    split = make_loo_split(dataset)
    counts = np.zeros(split.n_items, dtype=np.float32)
    for s in split.users.values():
        np.add.at(counts, s.train, 1.0)

    def score_all(_u: int, _h: IntArray) -> FloatArray:
        return counts

    return dataset, split, score_all


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve_figures(users: int, threads: int | None) -> dict[str, Any]:
    """The product's rerank (one listwise prompt for the top 20, :func:`models.fm.listwise.score_list`) for
    ``users`` users with the llama.cpp runtime as ``agent suggest`` loads it; this process never loads torch, so its
    peak RSS is the suggest path's."""
    dataset = load_ml100k()
    split = make_loo_split(dataset)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    start = time.perf_counter()
    model = FoundationModel(gguf_path(), n_threads=threads)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "threads": model.n_threads}
    times = []
    for u in sorted(split.users)[:users]:
        s = split.users[u]
        candidates = [s.test, *s.test_negs[:19].tolist()]
        t = time.perf_counter()
        score_list(model, builder, s.train, candidates)
        times.append(time.perf_counter() - t)
    out["rerank20_p50_s"] = float(np.percentile(times, 50))
    out["rerank20_p95_s"] = float(np.percentile(times, 95))
    out["peak_rss_mb"] = _peak_rss_mb()
    out["torch_imported"] = "torch" in sys.modules
    return out


def train_figures() -> dict[str, Any]:
    """Train the private LoRA on one user's history and run one agent's local round of the shared LoRA, with the
    pointwise recipe ``agent eval --model persona`` measures (:class:`models.fm.adapter_training.AdapterConfig`);
    export both to GGUF. Then the private LoRA as the product trains it (``private_listwise_*``: the person's own
    listwise lists, :func:`models.fm.listwise.train_on_own_lists`, under its budget).

    Negatives come from the training counts' top items outside the user's history (the real system uses the first
    stage's; the cost is the same)."""
    # torch: only this training process loads it (the serving figures must stay torch-free)
    import torch

    from models.fm.torch_model import TorchFM

    config = AdapterConfig()
    dataset, split, score_all = _popularity_world()

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
    # the product's private LoRA (agent train): listwise, on the person's own lists, under its budget
    model.attach("shared", shared)
    lists_builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    start_weights = LoraWeights.init(default_private_spec(), model.shapes())
    t = time.perf_counter()
    own = train_on_own_lists(
        model,
        lists_builder,
        "private_listwise",
        start_weights,
        user.train,
        split.n_items,
        score_all,
        deadline=time.monotonic() + PRIVATE_SECONDS,
        max_epochs=PRIVATE_MAX_EPOCHS,
    )
    out["private_listwise_s"] = time.perf_counter() - t
    out["private_listwise_cache_s"] = own.cache_s
    out["private_listwise_lists"] = own.lists
    out["private_listwise_epochs"] = own.training.epochs
    out["private_listwise_loss"] = [own.training.loss_before, own.training.loss_after]
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def listwise_serve_figures(users: int, threads: int) -> dict[str, Any]:
    """Listwise rerank of 20 candidates for ``users`` users with ``threads`` llama.cpp threads: wall and CPU
    seconds per list and prompt tokens, beside the pointwise rerank of the same 20 candidates in the same process
    (on a shared machine the ratio of the two, times the pointwise idle figure, estimates the idle listwise one)."""
    dataset = load_ml100k()
    split = make_loo_split(dataset)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    pointwise = PromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    model = FoundationModel(gguf_path(), n_threads=threads)
    walls, cpus, tokens, point_walls, point_cpus, point_tokens = [], [], [], [], [], []
    for u in sorted(split.users)[:users]:
        s = split.users[u]
        candidates = [s.test, *s.test_negs[:19].tolist()]
        tokens.append(len(builder.prompt(s.train.tolist(), candidates)))
        wall, cpu = time.perf_counter(), time.process_time()
        score_list(model, builder, s.train, candidates)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        prefix = pointwise.prefix(s.train.tolist())
        point_tokens.append(len(prefix) + sum(len(pointwise.suffix(int(c))) for c in candidates))
        wall, cpu = time.perf_counter(), time.process_time()
        score_items(model, pointwise, s.train, candidates)
        point_walls.append(time.perf_counter() - wall)
        point_cpus.append(time.process_time() - cpu)
    model.close()
    return {
        "threads": threads,
        "p50_s": float(np.percentile(walls, 50)),
        "p90_s": float(np.percentile(walls, 90)),
        "cpu_p50_s": float(np.percentile(cpus, 50)),
        "prompt_tokens_mean": float(np.mean(tokens)),
        "prompt_tokens_max": int(np.max(tokens)),
        "pointwise_p50_s": float(np.percentile(point_walls, 50)),
        "pointwise_cpu_p50_s": float(np.percentile(point_cpus, 50)),
        "pointwise_tokens_mean": float(np.mean(point_tokens)),
        "lists": len(walls),
        "loadavg_1min": os.getloadavg()[0],
        "torch_imported": "torch" in sys.modules,
    }


def listwise_train_figures(lists: int) -> dict[str, Any]:
    """Torch seconds per listwise training list for the shared adapter (FFA, top six layers): the one full forward
    that caches the adapted layers' inputs, and one epoch (forward and backward through those layers only)."""
    # torch: only this training process loads it (the serving figures must stay torch-free)
    import torch

    from models.fm.torch_model import TorchFM

    dataset, split, score_all = _popularity_world()

    config = ListwiseConfig(epochs=1)
    builder = ListwisePromptBuilder(torch_dir() / "tokenizer.json", dataset.catalog)
    examples = training_lists(split, score_all, sorted(split.users)[:lists], config)
    model = TorchFM()
    weights = LoraWeights.init(default_shared_spec(), model.shapes())
    model.attach("shared", weights, trainable=True)
    t = time.perf_counter()
    cached = cache_lists(model, builder, examples, weights.spec.layers[0], config)
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    model.train_listwise_cached(
        "shared", cached.caches, cached.targets, cached.teachers, cached.letters, lr=config.lr, lam=config.lam
    )
    epoch_s = time.perf_counter() - t
    n = len(examples)
    return {
        "lists": n,
        "threads": torch.get_num_threads(),
        "cache_s_per_list": cache_s / n,
        "epoch_s_per_list": epoch_s / n,
        "s_per_list": (cache_s + epoch_s) / n,
        "loadavg_1min": os.getloadavg()[0],
    }


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


def bench_listwise(*, users: int = 10, train_lists: int = 8) -> dict[str, Any]:
    """The listwise figures: serving with one and with two threads, and torch training cost per list."""
    out: dict[str, Any] = {}
    for threads in (1, 2):
        figures = _run("listwise-serve", str(users), str(threads))
        out |= {f"listwise_t{threads}_{k}": v for k, v in figures.items()}
    out |= {f"listwise_train_{k}": v for k, v in _run("listwise-train", str(train_lists)).items()}
    return out


def bench_fm(*, users: int = 10, listwise_only: bool = False) -> dict[str, Any]:
    """All foundation-model figures as one flat dict (only the listwise ones with ``listwise_only``)."""
    listwise = bench_listwise(users=users)
    if listwise_only:
        return listwise
    idle = _run("serve", str(users))
    with busy_process():
        busy = _run("serve", str(users))
    training = _run("train")
    return (
        {f"idle_{k}": v for k, v in idle.items()}
        | {f"busy_{k}": v for k, v in busy.items()}
        | {f"train_{k}": v for k, v in training.items()}
        | listwise
    )


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        print(json.dumps(serve_figures(int(sys.argv[2]), None)))
    elif sys.argv[1] == "listwise-serve":
        print(json.dumps(listwise_serve_figures(int(sys.argv[2]), int(sys.argv[3]))))
    elif sys.argv[1] == "listwise-train":
        print(json.dumps(listwise_train_figures(int(sys.argv[2]))))
    else:
        print(json.dumps(train_figures()))
