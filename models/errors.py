"""Errors raised by the learning core.

PersonaError                 base: carries a message and a hint on what to do
├── AssetError               a prepared model or data file is missing or fails its checksum
├── ImportFormatError        an import file is unreadable, or has bad rows and the user chose to refuse them
└── SplitError               a split file does not match the data set or is malformed
"""

from __future__ import annotations


class PersonaError(Exception):
    """Base error: ``message`` says what went wrong, ``hint`` what to do about it."""

    title = "Error"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class AssetError(PersonaError):
    """A prepared model or data file is missing or corrupt."""

    title = "Missing or corrupt asset"


class ImportFormatError(PersonaError):
    """An import file could not be read, or it had bad rows and refusing them was asked for."""

    title = "Import failed"


class SplitError(PersonaError):
    """A split file is malformed or does not fit the data set."""

    title = "Bad split file"
