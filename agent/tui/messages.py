"""The messages screens post to the app (screens never import the app; the app handles these and wires the engine)."""

from __future__ import annotations

from textual.message import Message
from textual.widgets import ProgressBar


class FeedbackRecorded(Message):
    """A screen wrote feedback to the store: the app retrains when the settings say so, or always when asked."""

    def __init__(self, *, always_retrain: bool = False) -> None:
        super().__init__()
        self.always_retrain = always_retrain


class OnboardingDone(Message):
    """Onboarding has its first likes: go to the suggestions (retraining first when the settings say so)."""


class ResetRequested(Message):
    """The user asked to delete the whole profile (the app asks for confirmation)."""


class SyncRequested(Message):
    """The user asked for one sync round now; ``bar`` shows its progress."""

    def __init__(self, bar: ProgressBar) -> None:
        super().__init__()
        self.bar = bar


class ErrorRaised(Message):
    """Something failed in a screen: the app shows it (a known error as a modal, anything else as a notification)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
