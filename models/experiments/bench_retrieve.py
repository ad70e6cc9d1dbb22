"""Measurements behind ``scripts/bench_retrieve.py``: catalog scoring latency, encoder throughput, suggest RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.data.movielens import load_ml100k
from models.data.split import make_loo_split
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams
from models.text.encoder import ItemEncoder, embed_catalog

# A process that only suggests: load catalog, cached embeddings and parameters, score, take the top 10.
_SUGGEST_ONLY = """
import json, resource, sys, time
t0 = time.perf_counter()
from pathlib import Path
import numpy as np
from models.text.encoder import ItemEncoder, embed_catalog
from models.data.movielens import load_ml100k
from models.firststage.scorer import FirstStageScorer, PrivateParams, SharedParams
dataset = load_ml100k()
vectors = embed_catalog(dataset.catalog, ItemEncoder(), Path(sys.argv[1]))
scorer = FirstStageScorer(SharedParams.init(len(dataset.catalog)), vectors)
history = dataset.interactions.sequences()[0]
top = scorer.top_k(history, PrivateParams.init(), 10)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_imported": "torch" in sys.modules, "onnxruntime_imported": "onnxruntime" in sys.modules,
                  "wall_s": time.perf_counter() - t0, "top": len(top)}))
"""


def bench_retrieve(cache_dir: Path, *, users: int = 500, repeats: int = 3) -> dict[str, Any]:
    """Score the whole catalog for many users; encode the catalog from scratch; measure a suggest-only process."""
    dataset = load_ml100k()
    catalog = dataset.catalog
    texts = [catalog.item_text(i) for i in range(len(catalog))]
    encoder = ItemEncoder()
    encoder.load()
    encoder.encode(texts[:64])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
    vectors = embed_catalog(catalog, encoder, cache_dir)

    split = make_loo_split(dataset, seed=0)
    scorer = FirstStageScorer(SharedParams.init(len(catalog)), vectors)
    private = PrivateParams.init()
    timings = []
    for u in sorted(split.users)[:users]:
        history = split.users[u].train
        start = time.perf_counter()
        scorer.top_k(history, private, 50)
        timings.append((time.perf_counter() - start) * 1000)
    proc = subprocess.run(
        [sys.executable, "-c", _SUGGEST_ONLY, str(cache_dir)], capture_output=True, text=True, check=True
    )
    suggest_only = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "catalog_items": len(catalog),
        "score_catalog_p50_ms": round(float(np.percentile(timings, 50)), 3),
        "score_catalog_p95_ms": round(float(np.percentile(timings, 95)), 3),
        "users_timed": len(timings),
        "encode_items_per_s": round(float(np.median(rates)), 1),
        "encoder_threads": encoder.intra_op_threads,
        "suggest_only_peak_rss_mb": round(suggest_only["peak_rss_mb"], 1),
        "suggest_only_torch_imported": suggest_only["torch_imported"],
        "suggest_only_wall_s": round(suggest_only["wall_s"], 3),
    }
