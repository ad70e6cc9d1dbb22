"""Errors raised by the agent application, on top of :class:`models.errors.PersonaError`.

PersonaError (models.errors)      base: a message and a hint; the CLI prints both to stderr and exits 1,
│                                 the TUI shows them in a notification or a modal
├── ProfileError                  the profile store cannot be opened or is in a state that forbids the action
│   ├── WrongPassphraseError      the passphrase does not unlock an encrypted profile (nothing is changed)
│   └── AdapterChecksumError      an adapter file does not match the checksum recorded in the store
├── ItemNotFoundError             no catalog item matches what the user typed (carries close matches)
│   └── AmbiguousItemError        several items match equally well (carries them)
└── TrainingError                 the training worker process failed
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import PersonaError


class ProfileError(PersonaError):
    """The profile store cannot be opened, or the action does not fit its state."""

    title = "Profile"


class WrongPassphraseError(ProfileError):
    """The passphrase does not unlock this encrypted profile."""

    title = "Wrong passphrase"


class AdapterChecksumError(ProfileError):
    """An adapter file's bytes do not match the checksum the store recorded when it was written."""

    title = "Corrupt adapter file"


class ItemNotFoundError(PersonaError):
    """No catalog item matches; ``candidates`` are the closest labels, best first."""

    title = "No such item"

    def __init__(self, message: str, *, hint: str = "", candidates: Sequence[str] = ()) -> None:
        super().__init__(message, hint=hint)
        self.candidates = list(candidates)


class AmbiguousItemError(ItemNotFoundError):
    """Several catalog items match equally well; ``candidates`` lists them."""

    title = "Ambiguous item"


class TrainingError(PersonaError):
    """The local training worker failed; the previous private adapter is kept."""

    title = "Training failed"
