"""The ``agent`` command line. stdout carries data (tables or ``--json``); stderr carries progress and errors.

Exit codes: 0 success; 1 a known problem (a missing asset, a bad file — the message says what to do);
2 a usage error (unknown option or value); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent import paths
from models.errors import PersonaError

app = typer.Typer(
    name="agent",
    help="Persona: an on-device recommendation agent with a private and a federated shared adapter.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)


def _fail(error: PersonaError) -> None:
    err.print(f"[bold red]{escape(error.title)}:[/] {escape(error.message)}")
    if error.hint:
        err.print(escape(error.hint))
    raise typer.Exit(1)


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and bool(os.environ.get("PERSONA_NO_PROGRESS")),
    )


@app.command()
def prepare() -> None:
    """Prepare the model and data files (normally done by scripts/setup); skips what is already done."""
    from models.assets import prepare_all

    try:
        prepare_all(lambda msg: err.print(msg))
    except PersonaError as error:
        _fail(error)


@app.command("paths")
def show_paths(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Print where Persona keeps every file (PERSONA_HOME relocates them all)."""
    found = paths.all_paths()
    if as_json:
        _emit_json(found)
        return
    for name, where in found.items():
        out.print(f"{name:8} {where}")


def _load_ml100k_with_vectors() -> tuple[Any, Any]:
    from models.encoder import ItemEncoder, embed_catalog
    from models.movielens import load_ml100k

    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), paths.cache_dir() / "embeddings")
    return dataset, vectors


@app.command("eval")
def eval_command(
    protocol: Annotated[str, typer.Option(help="loo99 | full | coldstart")] = "loo99",
    model: Annotated[str, typer.Option(help="popularity | central | federated")] = "federated",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    split_file: Annotated[
        Path | None, typer.Option("--split", help="Read the exact split from this JSON file (EVALUATION.md format).")
    ] = None,
    write_split: Annotated[
        Path | None, typer.Option("--write-split", help="Write the split used to this file.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split's negatives and of training.")] = 0,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (default: the tuned value).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Central training epochs (default: the tuned value).")] = None,
) -> None:
    """Measure a model on MovieLens-100K with a leak-free protocol; model selection uses validation only."""
    from dataclasses import replace

    from models.evaluate import MODELS, PROTOCOLS, CentralConfig, FederatedConfig, evaluate
    from models.split import make_loo_split, read_split, split_sha256
    from models.split import write_split as save_split

    if protocol not in PROTOCOLS:
        err.print(f"Unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
        raise typer.Exit(2)
    if model not in MODELS:
        err.print(f"Unknown model {model!r}: choose one of {', '.join(MODELS)}.")
        raise typer.Exit(2)
    try:
        dataset, vectors = _load_ml100k_with_vectors()
        split = read_split(split_file, dataset) if split_file else make_loo_split(dataset, seed=seed)
        if write_split:
            save_split(split, dataset, write_split)
            err.print(f"split written to {write_split}")
        federated = FederatedConfig(seed=seed)
        if rounds is not None:
            federated = replace(federated, rounds=rounds)
        central = CentralConfig(seed=seed)
        if epochs is not None:
            central = replace(central, epochs=epochs)
        total = federated.rounds if model == "federated" else central.epochs if model == "central" else 1
        with _progress() as bar:
            task = bar.add_task(f"{model} on ml-100k", total=total, status="")

            def on_progress(kind: str, info: dict[str, Any]) -> None:
                hr, ndcg = info.get("valid_HR@10", 0.0), info.get("valid_NDCG@10", 0.0)
                bar.update(task, advance=1, status=f"{kind} valid HR@10 {hr:.3f} NDCG@10 {ndcg:.3f}")

            result = evaluate(
                model, protocol, split, vectors, federated=federated, central=central, progress=on_progress
            )
    except PersonaError as error:
        _fail(error)
        return
    body = {"dataset": dataset.name, "protocol": protocol, "model": model, "split_sha256": split_sha256(split, dataset)}
    body |= {k: v for k, v in result.items() if k not in ("protocol", "model")}
    if as_json:
        _emit_json(body)
        return
    table = Table(title=f"{model} · {protocol} · {dataset.name} (split {body['split_sha256'][:12]})")
    table.add_column("metric")
    table.add_column("test", justify="right")
    table.add_column("valid", justify="right")

    def rows(metrics: dict[str, Any], valid: dict[str, Any], prefix: str = "") -> None:
        for key, value in metrics.items():
            if isinstance(value, dict):
                rows(value, valid.get(key, {}), prefix=f"{key} ")
            else:
                table.add_row(prefix + key, f"{value:.4f}", f"{valid.get(key, float('nan')):.4f}")

    rows(body["metrics"], body["valid_metrics"])
    out.print(table)
    err.print(f"wall time {body['wall_s']:.1f} s")


def _model_dir() -> Path:
    return paths.data_dir() / "models"


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Federated rounds to run.")] = 20,
    user: Annotated[str, typer.Option(help="Which ML-100K user to become afterwards.")] = "1",
) -> None:
    """Run a short federation of all ML-100K users as agents, then show one agent's ten suggestions."""
    from dataclasses import replace

    from models.evaluate import FederatedConfig, train_federated
    from models.retrieval import save_params, save_private
    from models.split import make_loo_split

    try:
        dataset, vectors = _load_ml100k_with_vectors()
        split = make_loo_split(dataset, seed=0)
        config = replace(FederatedConfig(), rounds=rounds)
        err.print(f"Federated training: {len(split.users)} agents (ML-100K users), {rounds} rounds")
        with _progress() as bar:
            task = bar.add_task("federated rounds", total=rounds, status="")

            def on_progress(_kind: str, info: dict[str, Any]) -> None:
                status = f"valid HR@10 {info['valid_HR@10']:.3f} NDCG@10 {info['valid_NDCG@10']:.3f}"
                bar.update(task, advance=1, status=status)

            model = train_federated(split, vectors, config=config, progress=on_progress)
        assert model.shared is not None
        user_index = dataset.interactions.user_ids.index(user)
        folder = _model_dir()
        save_params(folder / "shared_first_stage.npz", model.shared, meta={"catalog": dataset.catalog.name})
        private = model.privates.get(user_index) if model.privates else None
        if private is not None:
            save_private(folder / "private_first_stage.npy", private)
        history = [dataset.catalog.item_ids[i] for i in dataset.interactions.sequences()[user_index]]
        from models.assets import atomic_write_bytes

        atomic_write_bytes(folder / "history.json", json.dumps({"user": user, "items": history}).encode())
        err.print(
            f"Selected round {model.selected['round']} by validation NDCG@10 {model.selected['valid_NDCG@10']:.3f}"
        )
    except PersonaError as error:
        _fail(error)
        return
    suggest(n=10, as_json=False)


@app.command()
def suggest(
    n: Annotated[int, typer.Option("-n", help="How many suggestions.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Suggest items for this profile from the first-stage scorer (never imports torch)."""
    from models.encoder import ItemEncoder, embed_catalog
    from models.movielens import load_ml100k
    from models.retrieval import FirstStageScorer, PrivateParams, load_params, load_private

    folder = _model_dir()
    shared_path = folder / "shared_first_stage.npz"
    if not shared_path.is_file():
        _fail(PersonaError("No trained model yet.", hint="Run scripts/demo (or `agent demo`) first."))
    try:
        shared, _meta = load_params(shared_path)
        dataset = load_ml100k()
        catalog = dataset.catalog
        vectors = embed_catalog(catalog, ItemEncoder(), paths.cache_dir() / "embeddings")
        private_path = folder / "private_first_stage.npy"
        private = load_private(private_path) if private_path.is_file() else PrivateParams.init(shared.dim)
        history_doc = json.loads((folder / "history.json").read_text())
    except PersonaError as error:
        _fail(error)
        return
    import numpy as np

    history = np.array([catalog.index[i] for i in history_doc["items"]], dtype=np.int64)
    scorer = FirstStageScorer(shared, vectors)
    top = scorer.top_k(history, private, n)
    scores = scorer.score_items(history, private, top)
    weights = scorer.history_weights(history)
    recent = history[-len(weights) :] if len(weights) else history[:0]
    items = []
    for item, score in zip(top, scores, strict=True):
        # the history item whose vector, weighted by recency, pulls hardest toward this suggestion
        pulls = weights * (scorer.item_vectors[recent] @ scorer.item_vectors[item]) if len(recent) else np.zeros(0)
        because = catalog.label(int(recent[int(np.argmax(pulls))])) if len(pulls) else ""
        shared_tags = [
            t for t in catalog.tags[item] if len(recent) and t in catalog.tags[int(recent[int(np.argmax(pulls))])]
        ]
        reason = f"because you watched {because}" if because else "popular with people like you"
        if shared_tags:
            reason += f" ({', '.join(shared_tags[:2])})"
        items.append(
            {
                "item": catalog.item_ids[item],
                "title": catalog.titles[item],
                "year": catalog.years[item],
                "tags": catalog.tags[item],
                "score": round(float(score), 4),
                "reason": reason,
            }
        )
    if as_json:
        _emit_json({"user": history_doc.get("user"), "suggestions": items})
        return
    table = Table(title=f"Suggestions for user {history_doc.get('user')}")
    for col in ("#", "title", "year", "tags", "score", "why"):
        table.add_column(col)
    for rank, row in enumerate(items, 1):
        table.add_row(
            str(rank),
            row["title"],
            str(row["year"] or ""),
            ", ".join(row["tags"][:3]),
            f"{row['score']:.2f}",
            row["reason"],
        )
    out.print(table)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
