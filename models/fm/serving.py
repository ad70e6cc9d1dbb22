"""The foundation model at serving time: one quiet llama.cpp base model, LoRA adapters attached by scale,
and a candidate scorer that decodes a user's history prefix once and all candidates' suffixes in one batch.

Quiet: llama.cpp's log goes through ``llama_log_set`` to Python's ``logging`` (never the terminal), and the
native stderr is pointed at a log file while the library loads. Torch-free: the suggest path imports this.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.errors import AssetError
from models.fm.lora import verify_gguf
from models.fm.prompts import AnswerTokens

log = logging.getLogger("persona.llm")
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_native_lock = threading.Lock()
_log_callback: object = None  # kept alive for as long as the library may call it


def pick_threads() -> int:
    """Threads for llama.cpp: the cores not already busy, at least 1.

    With every core in use llama.cpp's spin barriers collapse throughput under competing load (measured: two
    threads beside one busy process fell to ~300 tok/s while one thread held ~500), so it never takes them all
    unless the machine is idle.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


@contextlib.contextmanager
def _native_stderr_to(path: Path | None) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` (or /dev/null) while native code may print."""
    target = os.open(str(path) if path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(2)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def _install_log_callback() -> None:
    global _log_callback
    import llama_cpp  # llama.cpp: the native library loads only when a model is opened

    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback


class FoundationModel:
    """One loaded base model and one context; adapters are attached and scaled at run time."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        max_candidates: int = 50,
        native_log: Path | None = None,
    ) -> None:
        import llama_cpp  # llama.cpp: the native library loads only when a model is opened

        if not gguf_path.is_file():
            raise AssetError(f"Foundation model file {gguf_path} is missing.", hint="Run scripts/setup.")
        self._lib = llama_cpp
        self.max_candidates = max_candidates
        self.n_threads = n_threads or pick_threads()
        self.native_log = native_log
        with _native_lock, _native_stderr_to(native_log):
            _install_log_callback()
            llama_cpp.llama_backend_init()
            mparams = llama_cpp.llama_model_default_params()
            self._model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
            if not self._model:
                raise AssetError(f"llama.cpp could not load {gguf_path}.", hint="Run scripts/setup to rebuild it.")
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_ctx
            cparams.n_batch = n_ctx
            cparams.n_ubatch = 512
            cparams.n_seq_max = max_candidates + 1
            cparams.kv_unified = True
            cparams.n_threads = self.n_threads
            cparams.n_threads_batch = self.n_threads
            cparams.no_perf = True
            self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not self._ctx:
                raise AssetError("llama.cpp could not create a context for the foundation model.")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._adapters: dict[str, object] = {}
        self._scales: dict[str, float] = {}
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, max_candidates + 1)
        self._n_ctx = n_ctx

    def close(self) -> None:
        """Free the native model, context, batch and adapters."""
        lib = self._lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        for handle in self._adapters.values():
            lib.llama_adapter_lora_free(handle)
        self._adapters.clear()
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> FoundationModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def load_adapter(self, name: str, path: Path) -> None:
        """Load a GGUF LoRA (its checksum must match the file beside it); it starts with scale 0."""
        if not verify_gguf(path):
            raise AssetError(f"Adapter {path} is missing or fails its checksum.", hint="Retrain or resync it.")
        with _native_lock, _native_stderr_to(self.native_log):
            handle = self._lib.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:
            raise AssetError(f"llama.cpp could not load the adapter {path}.")
        if name in self._adapters:
            self._lib.llama_adapter_lora_free(self._adapters[name])
        self._adapters[name] = handle
        self._scales.setdefault(name, 0.0)
        self._apply_scales()

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters."""
        return tuple(self._adapters)

    def set_scales(self, **scales: float) -> None:
        """Set adapter scales by name (0 switches one off); the next scoring recomputes the KV cache."""
        for name, scale in scales.items():
            if name not in self._adapters:
                raise KeyError(f"no adapter {name!r} loaded")
            self._scales[name] = float(scale)
        self._apply_scales()

    def _apply_scales(self) -> None:
        active = [(self._adapters[n], s) for n, s in self._scales.items() if s != 0.0]
        kind = self._lib.llama_adapter_lora_p_ctypes * max(1, len(active))
        handles = kind(*[h for h, _ in active])  # type: ignore[misc]
        scales = (ctypes.c_float * max(1, len(active)))(*[s for _, s in active])
        self._lib.llama_set_adapters_lora(self._ctx, handles if active else None, len(active), scales)

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants_logits) entries as one batch."""
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        if self._lib.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (context too small for this prompt?)")

    def letter_scores(self, prompt: Sequence[int], letters: Sequence[int]) -> NDArray[np.float32]:
        """The logits of ``letters`` after ``prompt``: one decode with an output at the last position only.

        llama.cpp then computes that one position's output row (640 × 262k, about the cost of two prompt tokens)
        and this reads the ``letters`` entries of it. Its embeddings mode would hand back the hidden state for a
        20-row product instead, but it marks every position as an output (measured: 2.4× the time of the decode).
        """
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) > self._n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the context of {self._n_ctx}")
        if any(not 0 <= int(i) < self.n_vocab for i in letters):
            raise ValueError(f"letter token ids must lie in [0, {self.n_vocab}): {list(letters)}")
        lib = self._lib
        memory = lib.llama_get_memory(self._ctx)
        lib.llama_memory_clear(memory, True)
        last = len(prompt) - 1
        self._decode([(t, p, 0, p == last) for p, t in enumerate(prompt)])
        logits = lib.llama_get_logits_ith(self._ctx, last)
        out = np.array([logits[i] for i in letters], dtype=np.float32)
        lib.llama_memory_clear(memory, True)
        return out

    def score(
        self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], answers: AnswerTokens
    ) -> NDArray[np.float32]:
        """logit(" Yes") − logit(" No") after ``prefix + suffix`` for each suffix, sharing the prefix's KV cache."""
        lib = self._lib
        memory = lib.llama_get_memory(self._ctx)
        out = np.empty(len(suffixes), dtype=np.float32)
        for start in range(0, len(suffixes), self.max_candidates):
            chunk = suffixes[start : start + self.max_candidates]
            lib.llama_memory_clear(memory, True)
            self._decode([(t, p, 0, False) for p, t in enumerate(prefix)])
            entries: list[tuple[int, int, int, bool]] = []
            last: list[int] = []
            for j, suffix in enumerate(chunk, start=1):
                lib.llama_memory_seq_cp(memory, 0, j, -1, -1)
                for k, token in enumerate(suffix):
                    entries.append((token, len(prefix) + k, j, k == len(suffix) - 1))
                last.append(len(entries) - 1)
            self._decode(entries)
            for j, index in enumerate(last):
                logits = lib.llama_get_logits_ith(self._ctx, index)
                out[start + j] = logits[answers.yes] - logits[answers.no]
        lib.llama_memory_clear(memory, True)
        return out
