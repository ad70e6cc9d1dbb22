"""The ``agent`` command line. stdout carries data (tables or ``--json``); stderr carries progress and errors.

``agent`` with no command opens the TUI (onboarding on the first run). Every read command (``suggest``,
``history``, ``search``, ``inspect``, ``paths``, ``import``, ``catalogs``) takes ``--json`` and then prints exactly
one JSON object.
``NO_COLOR`` turns colour off. ``PERSONA_HOME`` relocates every file; ``PERSONA_PASSPHRASE`` unlocks an encrypted
profile without a prompt.

Exit codes:
    0    success
    1    a known problem: a missing asset, a bad file, a wrong passphrase, an unknown item, a refused reset —
         the message on stderr says what went wrong and what to do
    2    a usage error: unknown command, option or value (e.g. ``agent rate X maybe``)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent import paths
from agent.errors import ProfileError
from agent.engine.profile import Profile
from agent.settings import load_settings
from agent.store.database import ProfileStore, feedback_to_row, profile_files, reset_profile
from models.errors import PersonaError

PASSPHRASE_ENV = "PERSONA_PASSPHRASE"

app = typer.Typer(
    name="agent",
    help="Persona: an on-device recommendation agent with a private and a federated shared adapter.",
    no_args_is_help=False,
    add_completion=True,
    pretty_exceptions_enable=False,
)
out = Console(no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)


def _fail(error: PersonaError) -> NoReturn:
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
    from models.text.encoder import ItemEncoder, embed_catalog
    from models.data.movielens import load_ml100k

    dataset = load_ml100k()
    vectors = embed_catalog(dataset.catalog, ItemEncoder(), paths.cache_dir() / "embeddings")
    return dataset, vectors


@app.command("eval")
def eval_command(
    protocol: Annotated[str, typer.Option(help="loo99 | full | coldstart")] = "loo99",
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
        typer.Option(help="persona models: rescore a seeded sample of this many users' test lists (default: all)."),
    ] = None,
) -> None:
    """Measure a model on MovieLens-100K with a leak-free protocol; model selection uses validation only."""
    from dataclasses import replace

    from models.evaluation.protocols import MODELS, PROTOCOLS, CentralConfig, FederatedConfig, evaluate
    from models.experiments.persona import PersonaConfig
    from models.data.split import make_loo_split, read_split, split_sha256
    from models.data.split import write_split as save_split

    if protocol not in PROTOCOLS:
        err.print(f"Unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}.")
        raise typer.Exit(2)
    if model not in MODELS:
        err.print(f"Unknown model {model!r}: choose one of {', '.join(MODELS)}.")
        raise typer.Exit(2)
    if via_sync and model != "federated":
        err.print(
            "--via-sync measures the federated first stage through the real protocol; use it with --model federated "
            "(the persona models train their shared LoRA with the in-process aggregator)."
        )
        raise typer.Exit(2)
    if test_users is not None and (test_users < 1 or not model.startswith("persona")):
        err.print("--test-users takes a positive number and applies to the persona models only.")
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
        rounds_or_epochs = {"federated": federated.rounds, "central": central.epochs}
        for name in ("persona-base", "persona-shared", "persona"):
            rounds_or_epochs[name] = federated.rounds
        total = rounds_or_epochs.get(model, 1)
        from agent.engine.sync import sync_aggregator, sync_summary

        with _progress() as bar, sync_aggregator(via_sync, split, seed, federated.server_lr) as aggregator:
            task = bar.add_task(f"{model} on ml-100k", total=total, status="")

            def on_progress(kind: str, info: dict[str, Any]) -> None:
                hr, ndcg = info.get("valid_HR@10", 0.0), info.get("valid_NDCG@10", 0.0)
                bar.update(task, advance=1, status=f"{kind} valid HR@10 {hr:.3f} NDCG@10 {ndcg:.3f}")

            result = evaluate(
                model,
                protocol,
                split,
                vectors,
                federated=federated,
                central=central,
                aggregator=aggregator,
                catalog=dataset.catalog,
                persona=PersonaConfig(test_users=test_users),
                progress=on_progress,
            )
            if aggregator is not None:
                result["sync"] = sync_summary(aggregator)
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


# --------------------------------------------------------------------------------------------- the profile


def _passphrase(*, confirm: bool = False) -> str | None:
    """PERSONA_PASSPHRASE, else a hidden prompt when a terminal is attached, else None."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env
    if sys.stdin.isatty():
        value: str = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        return value
    return None


def _open_store() -> ProfileStore:
    """The profile store (asking for the passphrase of an encrypted one); a problem exits 1 with a message."""
    try:
        passphrase = _passphrase() if ProfileStore.is_encrypted_at() else None
        return ProfileStore.open(passphrase=passphrase)
    except PersonaError as error:
        _fail(error)


def _open_profile(store: ProfileStore) -> Profile:
    try:
        return Profile.load(store)
    except PersonaError as error:
        _fail(error)


def _retrain(store: ProfileStore) -> None:
    """Retrain the private adapter in the worker process, reporting on stderr."""
    from agent.engine.jobs import run_training

    passphrase = os.environ.get(PASSPHRASE_ENV) if store.encrypted else None
    with err.status("training the private adapter (worker process)"):
        result = run_training(passphrase=passphrase)
    err.print(f"private adapter retrained on {result['n_examples']} examples in {result['seconds']:.1f} s")
    lora = result.get("private_lora") or {}
    if lora.get("trained"):
        err.print(f"private LoRA retrained on {lora['pairs']} pairs in {lora['seconds']:.1f} s ({lora['bytes']:,} B)")
    elif lora:
        removed = " (the previous one was removed)" if lora.get("removed_previous") else ""
        err.print(f"private LoRA not trained: {lora['skipped']}{removed}")


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context) -> None:
    """Persona: with no command, opens the TUI (onboarding on the first run)."""
    if ctx.invoked_subcommand is not None:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        out.print(ctx.get_help())
        return
    _run_tui()


def _run_tui() -> None:
    from agent.tui.app import PersonaApp

    try:
        settings = load_settings()
    except PersonaError as error:
        _fail(error)
        return
    passphrase = None
    if ProfileStore.is_encrypted_at():
        passphrase = _passphrase()
    PersonaApp(settings=settings, passphrase=passphrase).run()


@app.command()
def init(
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Encrypt the profile at rest with a passphrase.")] = False,
) -> None:
    """Create the profile (optionally encrypted: scrypt + AES-GCM; passphrase from a prompt or PERSONA_PASSPHRASE)."""
    if ProfileStore.exists() or ProfileStore.is_encrypted_at():
        _fail(ProfileError(f"A profile already exists in {paths.data_dir()}.", hint="`agent reset` deletes it."))
    try:
        if encrypt:
            passphrase = _passphrase(confirm=True)
            if not passphrase:
                raise ProfileError(
                    "A passphrase is needed to encrypt the profile.",
                    hint=f"Run in a terminal to be asked, or set {PASSPHRASE_ENV}.",
                )
            store = ProfileStore.create_encrypted(None, passphrase)
        else:
            store = ProfileStore.open()
    except PersonaError as error:
        _fail(error)
        return
    with store:
        err.print(f"profile created in {store.folder}" + (" (encrypted)" if store.encrypted else ""))


@app.command()
def suggest(
    n: Annotated[int, typer.Option("-n", help="How many suggestions.", min=1)] = 10,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Blend this text into your taste.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    use_rerank: Annotated[
        bool, typer.Option("--rerank/--no-rerank", help="Let the language model rerank the top k ([rerank] k).")
    ] = True,
) -> None:
    """Suggest items (first stage, then the language model's rerank of its top k), each with a one-line reason.

    Never imports torch. A foundation model or adapter that fails its checksum is reported on stderr and the first
    stage's suggestions are shown (exit 0)."""
    from agent.engine import rerank

    with _open_store() as store:
        profile = _open_profile(store)
        try:
            settings = load_settings()
        except PersonaError as error:
            _fail(error)
        profile.query_weight = settings.query_weight
        liked, _disliked = profile.feedback()
        if not len(liked) and not query:
            _fail(
                ProfileError(
                    "No liked items yet, so there is nothing to suggest from.",
                    hint="Run `agent` to pick a few favourites, `agent rate ITEM like`, `agent import FILE`, "
                    "or give --query TEXT.",
                )
            )
        try:
            outcome = rerank.suggest(profile, n, settings.rerank, query=query, requested=use_rerank)
        except PersonaError as error:
            _fail(error)
            return
        if outcome.error is not None:
            err.print(f"[bold yellow]{escape(outcome.error.title)}:[/] {escape(outcome.error.message)}")
            err.print("Showing the first stage's suggestions without the language model's rerank.")
            if outcome.error.hint:
                err.print(escape(outcome.error.hint))
        items = [s.as_dict() for s in outcome.suggestions]
        body: dict[str, Any] = {
            "catalog": profile.catalog.name,
            "query": query,
            "suggestions": items,
            "rerank": outcome.as_dict(settings.rerank),
        }
    if as_json:
        _emit_json(body)
        return
    table = Table(
        title=f"Suggestions from {body['catalog']}" + (f' for "{query}"' if query else ""),
        caption=body["rerank"]["note"],
    )
    for col in ("#", "title", "year", "tags", "score", "why"):
        table.add_column(col)
    for rank, row in enumerate(items, 1):
        table.add_row(
            str(rank),
            escape(row["title"]),
            str(row["year"] or ""),
            ", ".join(row["tags"][:3]),
            f"{row['score']:.2f}",
            escape(row["reason"]),
        )
    out.print(table)


@app.command()
def rate(
    item: Annotated[str, typer.Argument(help="Item id, title, or 'title (year)'.")],
    feedback: Annotated[str, typer.Argument(help="like | dislike | a rating from 1 to 5.")],
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter now.")] = True,
) -> None:
    """Record feedback on an item (and retrain the private adapter in a worker process)."""
    try:
        kind, rating = feedback_to_row(feedback)
    except ValueError as exc:
        err.print(f"Invalid feedback: {exc}.")
        raise typer.Exit(2) from None
    with _open_store() as store:
        profile = _open_profile(store)
        try:
            index = profile.resolve(item)
            store.add_interaction(
                profile.catalog.name, profile.catalog.item_ids[index], kind=kind, rating=rating, source="cli"
            )
            err.print(f"recorded: {profile.catalog.label(index)} → {feedback}")
            if train:
                _retrain(store)
        except PersonaError as error:
            _fail(error)


@app.command()
def train() -> None:
    """Retrain the private adapter now, from all your feedback (in a worker process)."""
    with _open_store() as store:
        try:
            _retrain(store)
        except PersonaError as error:
            _fail(error)


@app.command()
def history(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List your feedback, oldest first."""
    with _open_store() as store:
        rows = store.interactions()
        labels: dict[str, str] = {}
        if rows:
            profile = _open_profile(store)
            labels = {profile.catalog.item_ids[i]: profile.catalog.label(i) for i in range(len(profile.catalog))}
    entries = [{**r.as_dict(), "label": labels.get(r.item_id, r.item_id)} for r in rows]
    if as_json:
        _emit_json({"interactions": entries})
        return
    table = Table(title=f"History ({len(entries)} interactions)")
    for col in ("when", "item", "feedback", "source"):
        table.add_column(col)
    for e in entries:
        when = time.strftime("%Y-%m-%d", time.gmtime(e["ts"]))
        what = e["kind"] if e["kind"] != "rating" else f"{e['rating']:g}/5"
        table.add_row(when, escape(e["label"]), what, e["source"])
    out.print(table)


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="Part of a title, or a tag.")],
    n: Annotated[int, typer.Option("-n", help="How many results.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Search the active catalog by title (prefix, substring, close spelling) and tag."""
    with _open_store() as store:
        profile = _open_profile(store)
        found = profile.search(text, limit=n)
        rated = store.latest_feedback(profile.catalog.name)
        cat = profile.catalog
        results = [
            {
                "item": cat.item_ids[i],
                "title": cat.titles[i],
                "year": cat.years[i],
                "tags": cat.tags[i],
                "rated": rated[cat.item_ids[i]].kind if cat.item_ids[i] in rated else None,
            }
            for i in found
        ]
    if as_json:
        _emit_json({"catalog": cat.name, "query": text, "results": results})
        return
    table = Table(title=f'"{text}" in {cat.name}')
    for col in ("id", "title", "year", "tags", "rated"):
        table.add_column(col)
    for i, r in zip(found, results, strict=True):
        table.add_row(
            cat.item_ids[i],
            escape(cat.titles[i]),
            str(cat.years[i] or ""),
            ", ".join(cat.tags[i][:3]),
            str(r["rated"] or ""),
        )
    out.print(table)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="CSV, TSV, JSONL, RecBole .inter, or a Letterboxd export CSV.")],
    catalog: Annotated[
        str | None, typer.Option("--catalog", help="The catalog this file is (a catalog file) or refers to (history).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Whose rows to take from a multi-user log.")] = None,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter afterwards.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Import your history (log, .inter, Letterboxd CSV) or a catalog; lists bad rows by line and unmatched titles."""
    from agent.engine.importing import import_file

    with _open_store() as store:
        try:
            report = import_file(store, file, catalog=catalog, user=user)
        except PersonaError as error:
            problems = getattr(error, "problems", [])
            for problem in problems[:20]:
                err.print(f"  {escape(str(problem))}")
            _fail(error)
            return
        for problem in report["problems"]:
            err.print(f"skipped line {problem['line']}: {escape(problem['message'])}")
        for title in report["unmatched"]:
            err.print(f"no match in {report['catalog']}: {escape(title)}")
        if train and report["kind"] != "catalog" and report["imported"]:
            try:
                _retrain(store)
            except PersonaError as error:
                _fail(error)
    if as_json:
        _emit_json(report)
        return
    out.print(
        f"imported {report['imported']} {'items' if report['kind'] == 'catalog' else 'interactions'} "
        f"({report['kind']}) into {report['catalog']}; {len(report['problems'])} bad rows, "
        f"{len(report['unmatched'])} unmatched"
    )


@app.command()
def inspect(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Your personality profile: affinities and aversions from the private adapter, what was shared, where it lives."""
    with _open_store() as store:
        profile = _open_profile(store)
        body = profile.inspect()
    if as_json:
        _emit_json(body)
        return
    counts = body["interactions"]
    adapter = body["private_adapter"]
    out.print(f"[bold]Profile[/] on {body['catalog']}" + (" (encrypted)" if body["encrypted"] else ""))
    out.print(
        f"  {counts['total']} interactions: {counts['liked_items']} liked items, {counts['disliked_items']} disliked"
    )
    out.print(f"  traits derived from: {body['derived_from']}")
    for heading, rows in (("Affinities", body["affinities"]), ("Aversions", body["aversions"])):
        table = Table(title=heading)
        for col in ("tag", "lift (σ)", "liked", "disliked", "examples"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["tag"], f"{r['lift']:+.2f}", str(r["liked"]), str(r["disliked"]), escape("; ".join(r["examples"]))
            )
        out.print(table)
    shift = adapter["relative_shift"]
    out.print(
        f"private adapter: |θ_u| = {adapter['norm']:.3f}"
        + (f", {shift:.2f}× the history state" if shift is not None else "")
        + f"; changes {adapter['top20_changed_by_private']} of your top 20"
        + (f"; version {adapter['version']}" if adapter["version"] else " (not trained yet)")
    )
    last = body["last_training"]
    out.print(
        "last local training: "
        + (
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(last['finished_at']))} "
            f"({last['n_examples']} examples, {last['seconds']:.1f} s)"
            if last
            else "never"
        )
    )
    out.print(f"shared adapter: {body['shared_adapter']['version']}")
    lora = body["private_lora"]
    out.print(
        f"private LoRA (language model): {lora['pairs']} pairs, loss {lora['loss']:.3f}, "
        f"|ΔW| {lora['delta_norm']:.3f}, {lora['bytes'] or 0:,} bytes, revision {lora['revision']}"
        if lora["stored"]
        else "private LoRA (language model): not trained (needs 5 liked items, then `agent train`)"
    )
    shared_lora = body["shared_lora"]
    out.print(f"shared LoRA: {shared_lora['version']}" if shared_lora["stored"] else "shared LoRA: zero until a sync")
    egress = body["egress"]
    out.print(
        f"shared so far: {egress['rounds']} sync rounds, {egress['bytes_sent']:,} bytes sent, "
        f"{egress['bytes_received']:,} received, ε = {egress['epsilon']:.3g}"
    )
    out.print(f"data: {body['paths']['data']}   config: {body['paths']['config']}   cache: {body['paths']['cache']}")


@app.command()
def catalogs(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the catalogs (the built-in MovieLens-100K and imported ones) and which one is active."""
    with _open_store() as store:
        found = store.catalogs()
        active = store.active_catalog
    if as_json:
        _emit_json({"active": active, "catalogs": found})
        return
    for entry in found:
        mark = "*" if entry["name"] == active else " "
        out.print(f"{mark} {entry['name']:20} {entry['kind']:9} {entry['n_items']:>6} items")


@app.command()
def use(catalog: Annotated[str, typer.Argument(help="A name from `agent catalogs`.")]) -> None:
    """Make a catalog the active one: suggestions, search and ratings use it from now on."""
    with _open_store() as store:
        names = [c["name"] for c in store.catalogs()]
        if catalog not in names:
            _fail(ProfileError(f"There is no catalog named {catalog!r}.", hint=f"Catalogs: {', '.join(names)}."))
        store.set_meta("active_catalog", catalog)
    err.print(f"active catalog: {catalog}")


@app.command()
def forget(
    item: Annotated[str, typer.Argument(help="Item id, title, or 'title (year)'.")],
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter now.")] = True,
) -> None:
    """Drop every interaction with an item, then retrain the private adapter from scratch without it."""
    with _open_store() as store:
        profile = _open_profile(store)
        try:
            index = profile.resolve(item)
            removed = store.forget(profile.catalog.name, profile.catalog.item_ids[index])
            if not removed:
                raise ProfileError(f"You have no interaction with {profile.catalog.label(index)}.")
            err.print(f"forgot {removed} interaction(s) with {profile.catalog.label(index)}")
            if train:
                _retrain(store)
        except PersonaError as error:
            _fail(error)


@app.command()
def reset(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the whole profile (interactions, adapters, ledger, catalogs, SQLite WAL/SHM); nothing is kept."""
    folder = paths.data_dir()
    files = profile_files(folder)
    if not files:
        err.print(f"nothing to delete: no profile in {folder}")
        return
    err.print(f"This deletes {len(files)} file(s) in {folder}:")
    for path in files:
        err.print(f"  {path.relative_to(folder)}")
    if not yes:
        if not sys.stdin.isatty():
            _fail(ProfileError("Not deleting without confirmation.", hint="Run `agent reset --yes` to confirm."))
        if not typer.confirm("Delete them?", default=False, err=True):
            err.print("nothing deleted")
            raise typer.Exit(1)
    deleted = reset_profile(folder)
    err.print(f"deleted {len(deleted)} file(s); the profile is gone")


@app.command()
def completion(
    shell: Annotated[str, typer.Argument(help="bash | zsh | fish")],
) -> None:
    """Print the shell completion script, e.g. `agent completion bash >> ~/.bashrc`."""
    # typer vendors its own click; its completion scripts match the `_AGENT_COMPLETE` protocol its runtime answers
    from typer._completion_shared import get_completion_script

    if shell not in ("bash", "zsh", "fish"):
        err.print(f"Unknown shell {shell!r}: choose bash, zsh or fish.")
        raise typer.Exit(2)
    sys.stdout.write(get_completion_script(prog_name="agent", complete_var="_AGENT_COMPLETE", shell=shell) + "\n")


def dataset_user_rows(dataset: Any, user: str) -> list[tuple[str, str, str, float, int, str]]:
    """One data-set user's ratings as profile-store interaction rows (source "demo"): what `agent demo` stores."""
    mine = dataset.interactions.users == dataset.interactions.user_ids.index(user)
    return [
        (dataset.catalog.name, dataset.catalog.item_ids[int(i)], "rating", float(r), int(t), "demo")
        for i, r, t in zip(
            dataset.interactions.items[mine],
            dataset.interactions.ratings[mine],
            dataset.interactions.timestamps[mine],
            strict=True,
        )
    ]


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Federated rounds to run.")] = 20,
    user: Annotated[str, typer.Option(help="Which ML-100K user to become afterwards.")] = "1",
    via_coordinator: Annotated[
        bool,
        typer.Option(
            "--via-coordinator/--in-process",
            help="Federate through a real coordinator on 127.0.0.1 (secure aggregation, clipping, noise) "
            "or average in this process.",
        ),
    ] = True,
    cohort: Annotated[int, typer.Option(help="Agents per round when federating through the coordinator.")] = 100,
) -> None:
    """Run a short federation of all ML-100K users as agents, then become one of them (TUI, or print suggestions)."""
    from dataclasses import replace

    from models.evaluation.protocols import FederatedConfig, train_federated
    from models.data.split import make_loo_split

    with _open_store() as store:
        own = [i for i in store.interactions() if i.source != "demo"]
        if own:
            _fail(
                ProfileError(
                    f"This profile has {len(own)} interactions of your own; the demo would mix its user into them.",
                    hint="Run the demo with another PERSONA_HOME, e.g. `PERSONA_HOME=/tmp/persona-demo agent demo`.",
                )
            )
        try:
            dataset, vectors = _load_ml100k_with_vectors()
            if user not in dataset.interactions.user_ids:
                raise ProfileError(f"ML-100K has no user {user!r}.", hint="Users are numbered 1 to 943.")
            split = make_loo_split(dataset, seed=0)
            config = replace(FederatedConfig(), rounds=rounds)
            how = f"a coordinator on 127.0.0.1, cohorts of {cohort}" if via_coordinator else "in-process averaging"
            err.print(f"Federated training: {len(split.users)} agents (ML-100K users), {rounds} rounds, {how}")
            from agent.engine.sync import sync_aggregator, sync_summary

            with (
                _progress() as bar,
                sync_aggregator(via_coordinator, split, 0, config.server_lr, cohort=cohort) as aggregator,
            ):
                task = bar.add_task("federated rounds", total=rounds, status="")

                def on_progress(_kind: str, info: dict[str, Any]) -> None:
                    status = f"valid HR@10 {info['valid_HR@10']:.3f} NDCG@10 {info['valid_NDCG@10']:.3f}"
                    bar.update(task, advance=1, status=status)

                model = train_federated(split, vectors, config=config, aggregator=aggregator, progress=on_progress)
                if aggregator is not None:
                    summary = sync_summary(aggregator)
                    err.print(
                        f"Secure aggregation: {summary['rounds_done']} rounds, "
                        f"{summary['bytes_up_per_agent_round']:,} bytes up per agent and round, "
                        f"ε = {summary['epsilon']:.1f} (δ = {summary['delta']:g}) for the busiest agent"
                    )
            assert model.shared is not None
            selected = model.selected["round"]
            store.save_shared(
                model.shared, version=f"demo-federated-r{selected}", meta={"catalog": dataset.catalog.name}
            )
            user_index = dataset.interactions.user_ids.index(user)
            store.delete_interactions_from("demo")
            rows = dataset_user_rows(dataset, user)
            store.add_interactions(rows)
            private = model.privates.get(user_index) if model.privates else None
            store.set_meta("demo_user", user)
            if private is not None:
                store.save_private(private, meta={"catalog": dataset.catalog.name, "source": "demo federation"})
            else:  # this agent was never drawn into a cohort: train its private adapter on its own history now
                _retrain(store)
            err.print(f"Selected round {selected} by validation NDCG@10 {model.selected['valid_NDCG@10']:.3f}")
            err.print(f"You are now ML-100K user {user} ({len(rows)} ratings) in {store.folder}")
        except PersonaError as error:
            _fail(error)
            return
    if sys.stdout.isatty() and sys.stdin.isatty():
        _run_tui()
    else:
        suggest(n=10, query=None, as_json=False)


from agent.engine.sync import sync_command  # noqa: E402  (it uses this module's helpers at call time)

app.command(name="sync")(sync_command)

from agent.cli.audit import audit_command  # noqa: E402  (it uses this module's helpers at call time)

app.command(name="audit")(audit_command)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
