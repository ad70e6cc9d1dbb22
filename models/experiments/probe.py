"""The knowledge probe of the base foundation model (``scripts/probe_fm.py``; issue 12, item 2).

Does the base model (llama.cpp, no adapter) know the films it is asked to rank? For the most-rated ML-100K titles it
scores every genre after ``"Movie: Toy Story (1995)\\nGenre:"`` and every decade after
``"Movie: Toy Story\\nDecade:"`` (title without its year) by the log-likelihood of the option's text (" Comedy",
" 1990s"), summed over the option's tokens (and, as a second reading, averaged per token, which does not penalise
multi-token genres such as " Film Noir"). Per title: hit@1 (the best-scored option is a true one) and the 1-based rank
of the best-scored true option (a film has one to six genres, one decade). Against:

* **chance** — a uniformly random order: hit@1 = g / G and expected rank (G + 1) / (g + 1) for g true of G options;
* **the frequency prior** — the options in order of how many catalog items carry them (ties by name), the same
  order for every title: what a model that knows nothing about the film but the catalog would answer.

Means come with percentile-bootstrap 95 % intervals over titles, and the model's differences from the prior and
from chance with paired intervals (:func:`models.evaluation.stats.paired_bootstrap`). Also reported: how often the
model gave each top answer, and the single answer right for the most probe titles (in hindsight) with its hit@1 —
a model that always says the same thing scores no more than that.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from models.data.catalog import Catalog, Dataset
from models.evaluation.stats import RESAMPLES, paired_bootstrap
from models.fm.assets import GGUF_NAME, require_gguf, torch_dir
from models.fm.prompts import BOS
from models.fm.serving import FoundationModel

GENRE_PROMPT = "Movie: {label}\nGenre:"
DECADE_PROMPT = "Movie: {title}\nDecade:"


@dataclass(frozen=True)
class ProbeConfig:
    """How big the probe is."""

    titles: int = 100  # the most-rated titles of the catalog
    threads: int | None = None  # llama.cpp threads (default: the idle cores)
    seed: int = 0  # seed of the bootstrap resamples


def top_titles(dataset: Dataset, n: int) -> list[int]:
    """The ``n`` most-rated items (ties by catalog index), skipping items without a year or genre."""
    counts = np.bincount(dataset.interactions.items, minlength=len(dataset.catalog))
    order = np.argsort(-counts, kind="stable")
    catalog = dataset.catalog
    return [int(i) for i in order if catalog.years[int(i)] is not None and catalog.tags[int(i)]][:n]


def decade(year: int) -> str:
    """A year's decade as the option text reads it: 1995 → ``"1990s"``."""
    return f"{year // 10 * 10}s"


def frequency_order(values: Sequence[str]) -> list[str]:
    """Distinct values, most frequent first, ties by name: the frequency prior's answer for every title."""
    counts = Counter(values)
    return sorted(counts, key=lambda v: (-counts[v], v))


def best_true_rank(scores: NDArray[np.floating], truth: NDArray[np.bool_]) -> int:
    """1-based rank of the best-scored true option: 1 + the false options scored at least as high (ties count
    against the truth, as everywhere in the evaluation)."""
    if not truth.any() or truth.all():
        raise ValueError("a probe question needs at least one true and one false option")
    best = float(np.max(scores[truth]))
    return 1 + int(np.count_nonzero(scores[~truth] >= best))


def chance(n_true: int, n_options: int) -> tuple[float, float]:
    """(hit@1, expected 1-based rank of the best true option) of a uniformly random order."""
    if not 0 < n_true < n_options:
        raise ValueError(f"chance needs 0 < true options < options; got {n_true} of {n_options}")
    return n_true / n_options, (n_options + 1) / (n_true + 1)


def option_logliks(
    fm: FoundationModel, prefix: Sequence[int], options: Sequence[Sequence[int]]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Σ log p(option tokens | prefix) for each option, and each option's token count.

    The prefix and the tokens every option starts with (" 19" of " 1990s") are decoded once, as sequence 0; each
    option's remaining tokens are decoded as their own sequence sharing that cache, with logits kept only where
    a next token is scored: the vocabulary's output row is most of the cost. (Reads the model's llama.cpp handles
    directly, as :meth:`FoundationModel.score` does; the serving API exposes only the Yes/No score.)
    """
    if not options or not all(options) or len(options) > fm.max_candidates:
        raise ValueError(f"{len(options)} options (each non-empty, at most {fm.max_candidates}) are needed")
    common = 0
    while all(len(o) > common + 1 and o[common] == options[0][common] for o in options):
        common += 1
    lib, ctx = fm._lib, fm._ctx
    memory = lib.llama_get_memory(ctx)
    lib.llama_memory_clear(memory, True)

    def log_softmax(index: int) -> NDArray[np.float64]:
        row = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(fm.n_vocab,)).astype(np.float64)
        top = float(row.max())
        return row - top - float(np.log(np.exp(row - top).sum()))

    shared = [*prefix, *options[0][:common]]
    fm._decode([(t, p, 0, p >= len(prefix) - 1) for p, t in enumerate(shared)])
    base = sum(float(log_softmax(len(prefix) - 1 + k)[options[0][k]]) for k in range(common))
    first = log_softmax(len(shared) - 1)
    sums = np.array([base + first[option[common]] for option in options], dtype=np.float64)
    entries: list[tuple[int, int, int, bool]] = []
    wanted: list[tuple[int, int, int]] = []  # (option, batch index, next token)
    for j, option in enumerate(options):
        if len(option) < common + 2:
            continue
        lib.llama_memory_seq_cp(memory, 0, j + 1, -1, -1)
        for k in range(common, len(option) - 1):
            wanted.append((j, len(entries), option[k + 1]))
            entries.append((option[k], len(prefix) + k, j + 1, True))
    if entries:
        fm._decode(entries)
        for j, index, token in wanted:
            sums[j] += log_softmax(index)[token]
    lib.llama_memory_clear(memory, True)
    return sums, np.array([len(o) for o in options], dtype=np.int64)


def _interval(values: NDArray[np.float64], baseline: NDArray[np.float64], seed: int) -> dict[str, Any]:
    mean, ci = paired_bootstrap(values, baseline, seed=seed)
    return {"mean": round(mean, 4), "ci95": [round(ci[0], 4), round(ci[1], 4)]}


def summarize_task(
    hits: dict[str, NDArray[np.float64]], ranks: dict[str, NDArray[np.float64]], n_options: int, *, seed: int = 0
) -> dict[str, Any]:
    """hit@1 and mean rank of each method with bootstrap intervals over titles, and each model reading's
    difference from the prior and from chance (paired intervals)."""
    zero = np.zeros(len(hits["chance"]), dtype=np.float64)
    out: dict[str, Any] = {"options": n_options}
    for name in hits:
        out[name] = {
            "hit@1": _interval(hits[name], zero, seed),
            "mean_rank": _interval(ranks[name], zero, seed),
        }
    for name in [n for n in hits if n.startswith("model")]:
        for base in ("prior", "chance"):
            out[f"{name}_vs_{base}"] = {
                "delta_hit@1": _interval(hits[name], hits[base], seed),
                "delta_mean_rank": _interval(ranks[name], ranks[base], seed),
            }
    return out


def _best_single(truth_counts: Counter[str], n_titles: int) -> dict[str, Any]:
    """The one answer right for the most of these titles, and how often (chosen in hindsight, on the titles)."""
    answer, count = min(truth_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"answer": answer, "hit@1": round(count / n_titles, 4)}


def run_probe(dataset: Dataset, config: ProbeConfig = ProbeConfig()) -> dict[str, Any]:
    """The probe's figures (see the module docstring) as one JSON-ready dict."""
    start = time.perf_counter()
    catalog: Catalog = dataset.catalog
    titles = top_titles(dataset, config.titles)
    genres = frequency_order([t for tags in catalog.tags for t in tags])
    decades = frequency_order([decade(y) for y in catalog.years if y is not None])
    tokenizer = Tokenizer.from_file(str(torch_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def ids(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    tasks: dict[str, tuple[list[str], list[list[int]]]] = {
        "genre": (genres, [ids(" " + g) for g in genres]),
        "decade": (decades, [ids(" " + d) for d in decades]),
    }
    methods = ("model", "model_per_token", "prior", "chance")
    hits = {task: {m: np.zeros(len(titles)) for m in methods} for task in tasks}
    ranks = {task: {m: np.zeros(len(titles)) for m in methods} for task in tasks}
    examples: list[dict[str, Any]] = []
    top_answers: dict[str, Counter[str]] = {task: Counter() for task in tasks}
    truth_counts: dict[str, Counter[str]] = {task: Counter() for task in tasks}
    with FoundationModel(
        require_gguf(), n_threads=config.threads, n_ctx=512, max_candidates=max(len(genres), len(decades))
    ) as fm:
        for t, item in enumerate(titles):
            year = catalog.years[item]
            assert year is not None
            prompts = {
                "genre": GENRE_PROMPT.format(label=catalog.label(item)),
                "decade": DECADE_PROMPT.format(title=catalog.titles[item]),
            }
            truths = {"genre": set(catalog.tags[item]), "decade": {decade(year)}}
            answers: dict[str, str] = {}
            for task, (names, option_ids) in tasks.items():
                truth = np.array([n in truths[task] for n in names], dtype=bool)
                sums, counts = option_logliks(fm, [BOS, *ids(prompts[task])], option_ids)
                readings = {
                    "model": sums,
                    "model_per_token": sums / counts,
                    "prior": -np.arange(len(names), dtype=np.float64),
                }
                for name, scores in readings.items():
                    rank = best_true_rank(scores, truth)
                    hits[task][name][t] = float(rank == 1)
                    ranks[task][name][t] = float(rank)
                hits[task]["chance"][t], ranks[task]["chance"][t] = chance(int(truth.sum()), len(names))
                answers[task] = names[int(np.argmax(sums))]
                top_answers[task][answers[task]] += 1
                truth_counts[task].update(truths[task])
            if len(examples) < 5:
                examples.append({"title": catalog.label(item), "genres": catalog.tags[item], "model": answers})
    return {
        "model": GGUF_NAME,
        "adapters": [],
        "titles": len(titles),
        "prompts": {"genre": GENRE_PROMPT, "decade": DECADE_PROMPT},
        "scoring": "model: summed log-likelihood of the option's tokens; model_per_token: its mean per token",
        "prior": "options by catalog frequency, ties by name",
        **{
            task: {
                **summarize_task(hits[task], ranks[task], len(tasks[task][0]), seed=config.seed),
                "model_top_answers": dict(top_answers[task].most_common()),
                "best_single_answer": _best_single(truth_counts[task], len(titles)),
            }
            for task in tasks
        },
        "examples": examples,
        "resamples": RESAMPLES,
        "config": asdict(config),
        "wall_s": round(time.perf_counter() - start, 2),
    }
