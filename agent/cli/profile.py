"""The profile and where it lives: ``agent paths``, ``init``, ``inspect``, ``catalogs``, ``use`` and ``reset``."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agent import paths
from agent.cli.console import emit_json, err, fail, out
from agent.cli.plot import PLOT_HELP, drawn_instead
from agent.cli.session import ask_passphrase, open_profile, open_store, settings_or_fail
from agent.engine.budget import privacy_budget
from agent.engine.personality import private_lora_examples
from agent.engine.rerank_weight import weight_in_force
from agent.errors import ProfileError
from agent.settings import PASSPHRASE_ENV
from agent.store.egress import epsilon_points
from agent.store.files import profile_files, reset_profile
from agent.store.profile_store import ProfileStore
from models.errors import PersonaError


def show_paths(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Print where Persona keeps every file (PERSONA_HOME relocates the person's files)."""
    found = paths.all_paths()
    if as_json:
        emit_json(found)
        return
    for name, where in found.items():
        out.print(escape(f"{name:8} {where}"))


def init(
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Encrypt the profile at rest with a passphrase.")] = False,
) -> None:
    """Create the profile (optionally encrypted: scrypt + AES-GCM; passphrase from a prompt or PERSONA_PASSPHRASE)."""
    if ProfileStore.exists() or ProfileStore.is_encrypted_at():
        fail(ProfileError(f"A profile already exists in {paths.data_dir()}.", hint="`agent reset` deletes it."))
    try:
        if encrypt:
            passphrase = ask_passphrase(confirm=True)
            if not passphrase:
                raise ProfileError(
                    "A passphrase is needed to encrypt the profile.",
                    hint=f"Run in a terminal to be asked, or set {PASSPHRASE_ENV}.",
                )
            store = ProfileStore.create_encrypted(None, passphrase)
        else:
            store = ProfileStore.open()
    except PersonaError as error:
        fail(error)
        return
    with store:
        err.print(f"profile created in {store.folder}" + (" (encrypted)" if store.encrypted else ""))


def inspect(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[str | None, typer.Option("--plot", metavar="[FILE]", help=PLOT_HELP)] = None,
) -> None:
    """Your personality profile: affinities and aversions from the private adapter, what was shared, where it lives."""
    with open_store() as store:
        profile = open_profile(store)
        in_force = weight_in_force(settings_or_fail().rerank)
        body = profile.inspect() | {"privacy_budget": privacy_budget(store).as_dict(), "rerank": in_force.as_dict()}
        body["epsilon_history"] = [{"time": t, "epsilon": e} for t, e in epsilon_points(store.egress_entries())]
    if drawn_instead(body, plot):
        return
    if as_json:
        emit_json(body)
        return
    counts = body["interactions"]
    adapter = body["private_adapter"]
    out.print(f"[bold]Profile[/] on {escape(body['catalog'])}" + (" (encrypted)" if body["encrypted"] else ""))
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
                escape(r["tag"]),
                f"{r['lift']:+.2f}",
                str(r["liked"]),
                str(r["disliked"]),
                escape("; ".join(r["examples"])),
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
        f"private LoRA (language model): {private_lora_examples(lora)}, loss {lora['loss']:.3f}, "
        f"|ΔW| {lora['delta_norm']:.3f}, {lora['bytes'] or 0:,} bytes, revision {lora['revision']}"
        if lora["stored"]
        else "private LoRA (language model): not trained (needs 5 liked items, then `agent train`)"
    )
    shared_lora = body["shared_lora"]
    out.print(f"shared LoRA: {shared_lora['version']}" if shared_lora["stored"] else "shared LoRA: zero until a sync")
    out.print(escape(in_force.line()))
    egress = body["egress"]
    out.print(
        f"shared so far: {egress['rounds']} sync rounds, {egress['bytes_sent']:,} bytes sent, "
        f"{egress['bytes_received']:,} received"
    )
    out.print(escape(body["privacy_budget"]["explanation"]))
    out.print(f"data: {body['paths']['data']}   config: {body['paths']['config']}   cache: {body['paths']['cache']}")


def catalogs(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the catalogs (the built-in MovieLens-100K and imported ones) and which one is active."""
    with open_store() as store:
        found = store.catalogs()
        active = store.active_catalog
    if as_json:
        emit_json({"active": active, "catalogs": found})
        return
    for entry in found:
        mark = "*" if entry["name"] == active else " "
        out.print(escape(f"{mark} {entry['name']:20} {entry['kind']:9} {entry['n_items']:>6} items"))


def use(catalog: Annotated[str, typer.Argument(help="A name from `agent catalogs`.")]) -> None:
    """Make a catalog the active one: suggestions, search and ratings use it from now on."""
    with open_store() as store:
        names = [c["name"] for c in store.catalogs()]
        if catalog not in names:
            fail(ProfileError(f"There is no catalog named {catalog!r}.", hint=f"Catalogs: {', '.join(names)}."))
        store.set_meta("active_catalog", catalog)
    err.print(escape(f"active catalog: {catalog}"))


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
            fail(ProfileError("Not deleting without confirmation.", hint="Run `agent reset --yes` to confirm."))
        if not typer.confirm("Delete them?", default=False, err=True):
            err.print("nothing deleted")
            raise typer.Exit(1)
    deleted = reset_profile(folder)
    err.print(f"deleted {len(deleted)} file(s); the profile is gone")
