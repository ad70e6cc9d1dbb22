"""Prepare every asset once: ``python -m models.prepare`` (run by ``scripts/setup``).

:func:`prepare_all` runs each step in turn: MovieLens-100K from the RecBole wheel (:mod:`models.assets`), the
MiniLM encoder exported to ONNX (:mod:`models.text.export`) and the foundation model's files
(:mod:`models.fm.assets`). :func:`main` shows one progress bar over its steps on stderr (only when stderr is
a terminal); each step's messages are printed above the bar. Steps that are already done say so and return at
once, so running this again is fast. A :class:`~models.errors.PersonaError` (or an ``OSError`` such as an
unwritable folder) ends the run with exit code 1 and its message and hint, without a traceback.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from models.assets import assets_dir, prepare_ml100k
from models.errors import PersonaError
from models.fm.assets import prepare_gemma, prepare_gemma_torch
from models.text.export import prepare_encoder
from models.types import Status

# Steps of ``prepare_all`` in order, named by the prefix of their progress messages ("ml-100k: ...").
STEPS = ("ml-100k", "minilm", "gemma", "gemma-fp32")


def prepare_all(progress: Status = lambda _msg: None) -> None:
    """Prepare every asset the product needs; each step is skipped when already done."""
    prepare_ml100k(progress)
    prepare_encoder(progress)
    prepare_gemma(progress)
    prepare_gemma_torch(progress)


class StepProgress:
    """A ``progress`` callback for :func:`prepare_all` that drives one tqdm bar over the steps.

    A message ``"<step>: <text>"`` is printed with :meth:`tqdm.write`; when a message names a step other than the
    current one, the current step counts as finished. Unknown step names grow the bar's total.
    """

    def __init__(self, steps: tuple[str, ...] = STEPS, *, file: TextIO | None = None) -> None:
        self.file = file if file is not None else sys.stderr
        self.steps = list(steps)
        self.current: str | None = None
        self.done = 0  # finished steps (tqdm stops counting when the bar is disabled)
        self.bar = tqdm(
            total=len(self.steps),
            desc="preparing assets",
            unit="step",
            file=self.file,
            disable=not self.file.isatty(),
            leave=True,
            bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| {elapsed}",
        )

    def __call__(self, message: str) -> None:
        step, sep, _ = message.partition(":")
        step = step.strip() if sep else ""
        if step and step != self.current:
            if self.current is not None:
                self._advance(1)
            if step not in self.steps:
                self.steps.append(step)
                self.bar.total = len(self.steps)
            self.current = step
            self.bar.set_description_str(f"preparing {step}")
        tqdm.write(f"    {message}", file=self.file)

    def _advance(self, steps: int) -> None:
        self.done += steps
        self.bar.update(steps)

    def close(self, *, ok: bool) -> None:
        """Finish the bar: on success every step counts as done."""
        if ok:
            self.bar.set_description_str("assets ready", refresh=False)
            self._advance(len(self.steps) - self.done)
        self.bar.close()


def main() -> int:
    """Prepare all assets; returns the exit code: 0 ok, 1 on a :class:`PersonaError` or ``OSError``, 130 on Ctrl-C."""
    started = time.monotonic()
    folder = assets_dir()
    print(f"    assets folder: {folder}", file=sys.stderr)
    progress = StepProgress()
    try:
        prepare_all(progress)
    except PersonaError as error:
        progress.close(ok=False)
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(error.hint, file=sys.stderr)
        return 1
    except OSError as error:  # e.g. the assets folder cannot be written
        progress.close(ok=False)
        print(f"error: {error}", file=sys.stderr)
        print("Check that the assets folder is writable and the disk is not full.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close(ok=False)
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException:
        progress.close(ok=False)
        raise
    progress.close(ok=True)
    print(f"    assets ready in {folder} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
