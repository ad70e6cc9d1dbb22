"""Suggestions and feedback: ``agent suggest``, ``rate``, ``train``, ``history``, ``search`` and ``forget``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.console import emit_json, err, fail, out, usage_error
from agent.cli.session import open_profile, open_store, retrain, settings_or_fail
from agent.engine import rerank
from agent.engine.rerank_weight import weight_in_force
from agent.errors import ProfileError
from agent.store.records import feedback_to_row
from models.errors import PersonaError


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
    with open_store() as store:
        profile = open_profile(store)
        settings = settings_or_fail()
        profile.query_weight = settings.query_weight
        liked, _disliked = profile.feedback()
        if not len(liked) and not query:
            fail(
                ProfileError(
                    "No liked items yet, so there is nothing to suggest from.",
                    hint="Run `agent` to pick a few favourites, `agent rate ITEM like`, `agent import FILE`, "
                    "or give --query TEXT.",
                )
            )
        try:
            outcome = rerank.suggest(profile, n, settings.rerank, query=query, requested=use_rerank)
        except PersonaError as error:
            fail(error)
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
        emit_json(body)
        return
    in_force = weight_in_force(settings.rerank)
    err.print(escape(in_force.line()))
    caption = body["rerank"]["note"]
    if not outcome.applied and outcome.error is None and not in_force.on:
        caption = f"first stage only: {in_force.summary()}; why: see above or agent inspect"  # once is enough
    table = Table(
        title=escape(f"Suggestions from {body['catalog']}" + (f' for "{query}"' if query else "")),
        caption=escape(caption),
    )
    for col in ("#", "title", "year", "tags", "score", "why"):
        table.add_column(col)
    for rank, row in enumerate(items, 1):
        table.add_row(
            str(rank),
            escape(row["title"]),
            str(row["year"] or ""),
            escape(", ".join(row["tags"][:3])),
            f"{row['score']:.2f}",
            escape(row["reason"]),
        )
    out.print(table)


def rate(
    item: Annotated[str, typer.Argument(help="Item id, title, or 'title (year)'.")],
    feedback: Annotated[str, typer.Argument(help="like | dislike | a rating from 1 to 5.")],
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter now.")] = True,
) -> None:
    """Record feedback on an item (and retrain the private adapter in a worker process)."""
    try:
        kind, rating = feedback_to_row(feedback)
    except ValueError as exc:
        usage_error(f"Invalid feedback: {exc}.")
    with open_store() as store:
        profile = open_profile(store)
        try:
            index = profile.resolve(item)
            store.add_interaction(
                profile.catalog.name, profile.catalog.item_ids[index], kind=kind, rating=rating, source="cli"
            )
            err.print(escape(f"recorded: {profile.catalog.label(index)} → {feedback}"))
            if train:
                retrain(store)
        except PersonaError as error:
            fail(error)


def train() -> None:
    """Retrain the private adapter now, from all your feedback (in a worker process)."""
    with open_store() as store:
        try:
            retrain(store)
        except PersonaError as error:
            fail(error)


def history(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List your feedback, oldest first."""
    with open_store() as store:
        rows = store.interactions()
        labels: dict[str, str] = {}
        if rows:
            profile = open_profile(store)
            labels = {profile.catalog.item_ids[i]: profile.catalog.label(i) for i in range(len(profile.catalog))}
    entries = [{**r.as_dict(), "label": labels.get(r.item_id, r.item_id)} for r in rows]
    if as_json:
        emit_json({"interactions": entries})
        return
    table = Table(title=f"History ({len(entries)} interactions)")
    for col in ("when", "item", "feedback", "source"):
        table.add_column(col)
    for e in entries:
        when = time.strftime("%Y-%m-%d", time.gmtime(e["ts"]))
        what = e["kind"] if e["kind"] != "rating" else f"{e['rating']:g}/5"
        table.add_row(when, escape(e["label"]), what, escape(e["source"]))
    out.print(table)


def search(
    text: Annotated[str, typer.Argument(help="Part of a title, or a tag.")],
    n: Annotated[int, typer.Option("-n", help="How many results.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Search the active catalog by title (prefix, substring, close spelling) and tag."""
    with open_store() as store:
        profile = open_profile(store)
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
        emit_json({"catalog": cat.name, "query": text, "results": results})
        return
    table = Table(title=escape(f'"{text}" in {cat.name}'))
    for col in ("id", "title", "year", "tags", "rated"):
        table.add_column(col)
    for i, r in zip(found, results, strict=True):
        table.add_row(
            escape(cat.item_ids[i]),
            escape(cat.titles[i]),
            str(cat.years[i] or ""),
            escape(", ".join(cat.tags[i][:3])),
            str(r["rated"] or ""),
        )
    out.print(table)


def forget(
    item: Annotated[str, typer.Argument(help="Item id, title, or 'title (year)'.")],
    train: Annotated[bool, typer.Option("--train/--no-train", help="Retrain the private adapter now.")] = True,
) -> None:
    """Drop every interaction with an item, then retrain the private adapter from scratch without it."""
    with open_store() as store:
        profile = open_profile(store)
        try:
            index = profile.resolve(item)
            removed = store.forget(profile.catalog.name, profile.catalog.item_ids[index])
            if not removed:
                raise ProfileError(f"You have no interaction with {profile.catalog.label(index)}.")
            err.print(escape(f"forgot {removed} interaction(s) with {profile.catalog.label(index)}"))
            if train:
                retrain(store)
        except PersonaError as error:
            fail(error)
