"""What the commands that touch the profile share: the passphrase, opening the store and the profile (a problem
exits 1 with a message), retraining the private adapter in the worker process, and opening the TUI."""

from __future__ import annotations

import sys

import typer

from agent.cli.console import err, fail
from agent.engine.jobs import run_training
from agent.engine.profile import Profile
from agent.settings import Settings, load_settings, passphrase_from_env
from agent.store.profile_store import ProfileStore
from models.errors import PersonaError


def ask_passphrase(*, confirm: bool = False) -> str | None:
    """PERSONA_PASSPHRASE, else a hidden prompt when a terminal is attached, else None."""
    from_env = passphrase_from_env()
    if from_env:
        return from_env
    if sys.stdin.isatty():
        value: str = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
        return value
    return None


def open_store() -> ProfileStore:
    """The profile store (asking for the passphrase of an encrypted one); a problem exits 1 with a message."""
    try:
        passphrase = ask_passphrase() if ProfileStore.is_encrypted_at() else None
        return ProfileStore.open(passphrase=passphrase)
    except PersonaError as error:
        fail(error)


def open_profile(store: ProfileStore) -> Profile:
    """The profile over the store's active catalog; a problem exits 1 with a message."""
    try:
        return Profile.load(store)
    except PersonaError as error:
        fail(error)


def settings_or_fail() -> Settings:
    """The settings from config.toml; a bad file exits 1 with a message."""
    try:
        return load_settings()
    except PersonaError as error:
        fail(error)


def retrain(store: ProfileStore) -> None:
    """Retrain the private adapter in the worker process, reporting on stderr."""
    passphrase = passphrase_from_env() if store.encrypted else None
    with err.status("training the private adapter (worker process)"):
        result = run_training(passphrase=passphrase)
    err.print(f"private adapter retrained on {result['n_examples']} examples in {result['seconds']:.1f} s")
    lora = result.get("private_lora") or {}
    if lora.get("trained"):
        err.print(f"private LoRA retrained on {lora['lists']} lists in {lora['seconds']:.1f} s ({lora['bytes']:,} B)")
    elif lora:
        removed = " (the previous one was removed)" if lora.get("removed_previous") else ""
        err.print(f"private LoRA not trained: {lora['skipped']}{removed}")


def run_tui() -> None:
    """Open the TUI (onboarding on the first run), asking for the passphrase of an encrypted profile first."""
    from agent.tui.app import PersonaApp  # textual: only the TUI needs it, not every command's start-up

    settings = settings_or_fail()
    passphrase = None
    if ProfileStore.is_encrypted_at():
        passphrase = ask_passphrase()
    PersonaApp(settings=settings, passphrase=passphrase).run()
