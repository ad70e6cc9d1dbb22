"""``agent demo``: a short federation of all ML-100K users as agents, then the profile becomes one of them."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from agent.cli.console import err, fail, progress_bar
from agent.cli.feedback import suggest
from agent.cli.session import open_store, retrain, run_tui
from models.errors import PersonaError


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
    from agent.engine.demo import become_user, federate, prepare_demo  # torch: the federation trains in-process

    with open_store() as store:
        try:
            run = prepare_demo(store, user=user, rounds=rounds)
            how = f"a coordinator on 127.0.0.1, cohorts of {cohort}" if via_coordinator else "in-process averaging"
            err.print(f"Federated training: {len(run.split.users)} agents (ML-100K users), {rounds} rounds, {how}")
            with progress_bar() as bar:
                task = bar.add_task("federated rounds", total=rounds, status="")

                def on_progress(_kind: str, info: dict[str, Any]) -> None:
                    status = f"valid HR@10 {info['valid_HR@10']:.3f} NDCG@10 {info['valid_NDCG@10']:.3f}"
                    bar.update(task, advance=1, status=status)

                model, summary = federate(run, via_coordinator=via_coordinator, cohort=cohort, progress=on_progress)
                if summary is not None:
                    err.print(
                        f"Secure aggregation: {summary['rounds_done']} rounds, "
                        f"{summary['bytes_up_per_agent_round']:,} bytes up per agent and round, "
                        f"ε = {summary['epsilon']:.1f} (δ = {summary['delta']:g}) for the busiest agent"
                    )
            n_ratings, has_private = become_user(store, run, model, user)
            if not has_private:  # never drawn into a cohort: train its private adapter on its own history now
                retrain(store)
            selected = model.selected
            err.print(f"Selected round {selected['round']} by validation NDCG@10 {selected['valid_NDCG@10']:.3f}")
            err.print(f"You are now ML-100K user {user} ({n_ratings} ratings) in {store.folder}")
        except PersonaError as error:
            fail(error)
    if sys.stdout.isatty() and sys.stdin.isatty():
        run_tui()
    else:
        suggest(n=10, query=None, as_json=False)
