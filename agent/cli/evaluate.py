"""Models and their files: ``agent prepare`` (the assets) and ``agent eval`` (a model measured on MovieLens-100K)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from agent.cli.console import emit_json, err, fail, out, progress_bar, usage_error
from agent.cli.plot import PLOT_HELP, check_plot_option, drawn_instead
from agent.engine.catalogs import ml100k_with_vectors
from agent.engine.sync import sync_aggregator, sync_summary
from models.assets import atomic_write_bytes
from models.data.split import make_loo_split, read_split, split_sha256
from models.data.split import write_split as save_split
from models.errors import PersonaError
from models.evaluation.protocols import MODELS, PROTOCOLS
from models.firststage.recipe import CentralConfig, FederatedConfig
from models.prepare import prepare_all
from sync.protocol.rules import SYNC_CLIP_PHI, SYNC_PHI_SIZE

VIA_SYNC_MODELS = ("federated", "persona-shared", "persona")
"""The models ``--via-sync`` trains through local coordinators: the first stage, and the persona models' shared
language-model adapter too."""


def prepare() -> None:
    """Prepare the model and data files (normally done by scripts/setup); skips what is already done."""
    try:
        prepare_all(lambda msg: err.print(msg))
    except PersonaError as error:
        fail(error)


def eval_command(
    protocol: Annotated[str, typer.Option(help="loo99 | full | coldstart | query")] = "loo99",
    model: Annotated[
        str, typer.Option(help="popularity | central | federated | persona-base | persona-shared | persona")
    ] = "federated",
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
    via_sync: Annotated[
        bool, typer.Option("--via-sync", help="Train federated through a local coordinator and the real protocol.")
    ] = False,
    test_users: Annotated[
        int | None,
        typer.Option(
            help="persona models, or --with-fm: rescore a seeded sample of this many users' lists (default: all)."
        ),
    ] = None,
    with_fm: Annotated[
        bool,
        typer.Option(
            "--with-fm",
            help="--protocol query: add the row product_query_fm (the language model rescores the product's top 20 "
            "with the request in its prompt; about 1 s per list, validation and test).",
        ),
    ] = False,
    plot: Annotated[str | None, typer.Option("--plot", metavar="[FILE]", help=PLOT_HELP)] = None,
    ranks_file: Annotated[
        Path | None,
        typer.Option(
            "--ranks",
            help="Write each user's test rank per row (first stage, and the persona model) to this JSON file, to "
            "compare two runs on the same split with a paired interval: scripts/compare_runs.py A B.",
        ),
    ] = None,
) -> None:
    """Measure a model on MovieLens-100K with a leak-free protocol; model selection uses validation only."""
    # torch: the evaluation trains models; only `agent eval` pays for importing it
    from models.experiments.evaluate import evaluate
    from models.experiments.persona import PersonaConfig

    check_plot_option(plot)
    if ranks_file is not None and not ranks_file.parent.is_dir():
        usage_error(f"--ranks {ranks_file}: the folder {ranks_file.parent} does not exist; create it or pick another.")
    if protocol not in PROTOCOLS:
        usage_error(f"Unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
    if model not in MODELS:
        usage_error(f"Unknown model {model!r}: choose one of {', '.join(MODELS)}.")
    if protocol == "query" and model not in ("central", "federated"):
        usage_error("--protocol query measures the first stage: use it with --model federated or --model central.")
    if via_sync and model not in VIA_SYNC_MODELS:
        usage_error(
            f"--via-sync trains through the real protocol the models that federate: use it with --model "
            f"{' or '.join(VIA_SYNC_MODELS)}."
        )
    if via_sync and model != "federated" and protocol not in ("loo99", "full"):
        usage_error("--via-sync with a persona model measures --protocol loo99 or full.")
    if with_fm and protocol != "query":
        usage_error("--with-fm adds the language-model row of the query protocol: use it with --protocol query.")
    if test_users is not None and (test_users < 1 or not (model.startswith("persona") or with_fm)):
        usage_error("--test-users takes a positive number and applies to the persona models only (or --with-fm).")
    try:
        dataset, vectors = ml100k_with_vectors()
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
        rounds_or_epochs = {"federated": federated.rounds, "central": central.epochs}
        for name in ("persona-base", "persona-shared", "persona"):
            rounds_or_epochs[name] = federated.rounds
        total = rounds_or_epochs.get(model, 1)
        persona = PersonaConfig(test_users=test_users)
        fm_via_sync = via_sync and model != "federated"
        with (
            progress_bar() as bar,
            sync_aggregator(via_sync, split, seed, federated.server_lr) as aggregator,
            sync_aggregator(  # the shared LoRA's rounds: a coordinator of their own (see train_stages)
                fm_via_sync,
                split,
                seed,
                persona.server_lr,
                cohort=persona.cohort,
                initial=np.zeros(SYNC_PHI_SIZE, dtype=np.float32),
                clip=SYNC_CLIP_PHI,
            ) as fm_aggregator,
        ):
            task = bar.add_task(f"{model} on ml-100k", total=total, status="")
            bar.update(task, status="training" + (" through a coordinator on 127.0.0.1" if via_sync else ""))

            phase = [""]

            def on_progress(kind: str, info: dict[str, Any]) -> None:
                # each phase (first-stage rounds or epochs, the adapter's rounds, the reranks) counts on its own bar
                if kind in ("round", "epoch"):
                    hr, ndcg = info.get("valid_HR@10", 0.0), info.get("valid_NDCG@10", 0.0)
                    bar.update(task, advance=1, status=f"{kind} valid HR@10 {hr:.3f} NDCG@10 {ndcg:.3f}")
                    return
                if kind != phase[0]:
                    phase[0] = kind
                    total = info.get("rounds") or info.get("of")
                    bar.reset(task, total=float(total) if total else None, description=f"{model}: {kind}")
                done = info.get("users", info.get("lists"))
                if isinstance(done, int):
                    bar.update(task, completed=done, status="")
                else:
                    bar.update(
                        task, advance=1, status=f"loss {info['train_loss']:.3f}" if info.get("train_loss") else ""
                    )

            result = evaluate(
                model,
                protocol,
                split,
                vectors,
                federated=federated,
                central=central,
                aggregator=aggregator,
                fm_aggregator=fm_aggregator,
                catalog=dataset.catalog,
                persona=persona,
                query_fm=with_fm,
                query_fm_users=test_users,
                progress=on_progress,
            )
            if aggregator is not None:
                result["sync"] = sync_summary(aggregator)
            if fm_aggregator is not None:
                result["sync_fm"] = sync_summary(fm_aggregator) | {"clip": SYNC_CLIP_PHI}
    except PersonaError as error:
        fail(error)
        return
    body: dict[str, Any] = {
        "dataset": dataset.name,
        "protocol": protocol,
        "model": model,
        "split_sha256": split_sha256(split, dataset),
    }
    body |= {k: v for k, v in result.items() if k not in ("protocol", "model")}
    test_ranks = body.get("selected", {}).pop("test_ranks", None)
    if ranks_file is not None:
        if test_ranks is None:
            err.print(f"--ranks: this protocol reports no per-user ranks; {ranks_file} not written")
        else:
            keep = ("dataset", "protocol", "model", "split_sha256")
            record = {**{k: body[k] for k in keep}, "via_sync": via_sync, "ranks": test_ranks}
            atomic_write_bytes(ranks_file, json.dumps(record).encode())
            err.print(f"per-user test ranks written to {ranks_file}")
    if drawn_instead(body, plot):
        return
    if as_json:
        emit_json(body)
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
