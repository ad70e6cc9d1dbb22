"""The second stage of suggestions on the device: the foundation model rescores the first stage's top ``k``.

The quantized Gemma runs in llama.cpp (:class:`models.fm.serving.FoundationModel`), loaded lazily once per process and
kept (:data:`SERVED`), with the profile's LoRA adapters attached: the shared one when a sync has provided it and
the private one the training worker wrote (:mod:`agent.engine.private_lora`). Adapters are reloaded when the store's
record changes, so a retrain in the background shows in the next suggestions. The top ``k`` (at most 20) are scored
by one listwise prompt (:mod:`models.fm.listwise`: the person's recent history, their request when they asked for
something, the candidates lettered in first-stage order; a candidate's score is its letter's logit) — the prompt the
private LoRA and a sync's shared LoRA train for — and the final order of the top ``k`` is
``z(first stage) + weight · z(language model)`` (:func:`models.fm.blend.blend`); the items below keep their order.

The rerank runs only when the blend weight in force is above 0 (:mod:`agent.engine.rerank_weight`: the person's
``[rerank]`` setting, else the measured weight, which is 0 today: the language model adds nothing yet, README), and
only with a trained adapter: the base model alone ranks at noise level (README), so before the
first private LoRA (five liked items and a training run) or a synced shared LoRA, suggestions are the first
stage's. A foundation model or adapter that fails its checksum is reported and the first stage's list is used.

Torch-free: the suggest path and the TUI import this module.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent import paths
from agent.engine.profile import Profile, Suggestion
from agent.engine.rerank_weight import weight_in_force
from agent.settings import RerankSettings
from agent.store.profile_store import ProfileStore
from agent.store.records import PRIVATE_LORA, PRIVATE_LORA_PROMPT, SHARED_LORA
from models.assets import atomic_write_bytes, sha256_file
from models.errors import AssetError, PersonaError
from models.fm.assets import GGUF_SHA256, gguf_path, require_gguf, torch_dir
from models.types import IntArray

# models.fm.{serving,listwise,blend,lora} (and tokenizers) are imported where the rerank runs, not here: with
# the weight in force at 0 the suggest path and the TUI's first paint never need them (issue 15: ~60-130 ms)

FM_VERIFIED_FILE = "foundation-model-verified.json"


@dataclass(frozen=True)
class RerankOutcome:
    """The suggestions to show and what the second stage did."""

    suggestions: list[Suggestion]
    applied: bool
    note: str
    """What happened, in a few words (why the first stage alone was used, or what reranked)."""
    error: PersonaError | None = None
    """A problem to tell the person about (checksum, missing file); the first stage's list is shown."""
    seconds: float = 0.0

    def as_dict(self, settings: RerankSettings) -> dict[str, Any]:
        """The ``rerank`` object of ``agent suggest --json``."""
        return {
            "applied": self.applied,
            "k": settings.k,
            **weight_in_force(settings).as_dict(),
            "note": self.note,
            "error": None if self.error is None else self.error.message,
            "seconds": round(self.seconds, 3),
        }


def verify_foundation_model(path: Path, expected_sha256: str) -> None:
    """Check the GGUF's SHA-256 (once per file version: the result is cached by size and mtime)."""
    stat = path.stat()
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected_sha256}
    cache = paths.cache_dir() / FM_VERIFIED_FILE
    try:
        if json.loads(cache.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    if sha256_file(path) != expected_sha256:
        raise AssetError(
            f"The foundation model {path} fails its checksum.",
            hint="Run `agent prepare` (or scripts/setup) to rebuild it.",
        )
    atomic_write_bytes(cache, json.dumps(stamp).encode())


class ServedModel:
    """The process's foundation model and the adapters attached to it (thread-safe; loaded on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fm: Any = None
        self._builders: dict[str, Any] = {}
        self._loaded: dict[str, str] = {}  # adapter name -> sha256 of the stored record now attached

    def close(self) -> None:
        """Free the native model (the next use loads it again)."""
        with self._lock:
            if self._fm is not None:
                self._fm.close()
            self._fm = None
            self._loaded.clear()

    def _model(self, max_candidates: int) -> Any:
        if self._fm is not None and self._fm.max_candidates >= max_candidates:
            return self._fm
        if self._fm is not None:
            self._fm.close()
            self._loaded.clear()
        from models.fm.serving import FoundationModel

        path = require_gguf()
        verify_foundation_model(path, GGUF_SHA256)
        log = paths.ensure_dir(paths.log_dir()) / "llama.log"
        self._fm = FoundationModel(path, max_candidates=max(max_candidates, 20), native_log=log)
        return self._fm

    def _builder(self, profile: Profile) -> Any:
        name = profile.catalog.name
        if name not in self._builders:
            from models.fm.listwise import ListwisePromptBuilder

            tokenizer = torch_dir() / "tokenizer.json"
            if not tokenizer.is_file():
                raise AssetError(f"The foundation model's tokenizer {tokenizer} is missing.", hint="Run scripts/setup.")
            self._builders[name] = ListwisePromptBuilder(tokenizer, profile.catalog)
        return self._builders[name]

    def _attach(self, fm: Any, store: ProfileStore, name: str, wanted: bool) -> float:
        """Make the attached adapter ``name`` match the store; its scale (0 when there is none to use)."""
        record = store.adapter_record(name) if wanted else None
        if record is None:
            if name in self._loaded:
                fm.set_scales(**{name: 0.0})
            return 0.0
        if self._loaded.get(name) != record.sha256:
            if name == SHARED_LORA:
                self._attach_shared(fm, store)
            else:
                with store.adapter_as_file(name) as path:
                    assert path is not None
                    fm.load_adapter(name, path)
            self._loaded[name] = record.sha256
        return 1.0

    @staticmethod
    def _attach_shared(fm: Any, store: ProfileStore) -> None:
        from models.fm.lora import export_gguf

        stored = store.load_shared_lora()
        assert stored is not None
        with tempfile.TemporaryDirectory(dir=store.folder, prefix=".serve-") as tmp:
            path = Path(tmp) / "shared.gguf"
            export_gguf(stored[0], path)
            fm.load_adapter(SHARED_LORA, path)

    def score(
        self,
        profile: Profile,
        history: IntArray,
        items: list[int],
        *,
        use_private: bool,
        request: str | None = None,
    ) -> np.ndarray:
        """The language model's scores of ``items`` (the first stage's top, best first; at most
        :data:`models.fm.listwise.LIST_SIZE`) from one listwise prompt after ``history`` and the person's
        ``request`` if any, with the profile's adapters."""
        from models.fm.listwise import LIST_SIZE, score_list

        if not 1 <= len(items) <= LIST_SIZE:
            raise PersonaError(
                f"The language model rescores 1 to {LIST_SIZE} candidates at a time, not {len(items)}.",
                hint=f"Set [rerank] k to at most {LIST_SIZE} in config.toml.",
            )
        with self._lock:
            fm = self._model(len(items))
            builder = self._builder(profile)
            scales = {
                SHARED_LORA: self._attach(fm, profile.store, SHARED_LORA, True),
                PRIVATE_LORA: self._attach(fm, profile.store, PRIVATE_LORA, use_private),
            }
            fm.set_scales(**{name: scale for name, scale in scales.items() if name in self._loaded})
            asked = request if request is not None and request.strip() else None  # a blank query asks nothing
            return np.asarray(score_list(fm, builder, history, items, asked), dtype=np.float64)


SERVED = ServedModel()
"""The process-wide foundation model (the CLI uses it once; the TUI keeps it loaded between suggestions)."""


def private_lora_usable(profile: Profile) -> bool:
    """A stored private LoRA for this catalog, trained for the prompt served here (not an earlier pointwise one)."""
    record = profile.store.adapter_record(PRIVATE_LORA)
    return (
        record is not None
        and record.meta.get("catalog") == profile.catalog.name
        and record.meta.get("prompt") == PRIVATE_LORA_PROMPT
    )


def skip_reason(profile: Profile, settings: RerankSettings, *, requested: bool = True) -> str | None:
    """Why the first stage alone is used now, or None when the language model reranks."""
    if not requested:
        return "switched off for this command (--no-rerank)"
    in_force = weight_in_force(settings)
    if not in_force.on:
        return in_force.why
    if not gguf_path().is_file():
        return "the foundation model is not prepared (run scripts/setup)"
    if not private_lora_usable(profile) and profile.store.adapter_record(SHARED_LORA) is None:
        return "no trained LoRA yet: the private one needs 5 liked items and a training run (`agent train`)"
    return None


def _moved(old: int, new: int) -> str:
    if new < old:
        return f"the language model moved it up from #{old}"
    if new > old:
        return f"the language model moved it down from #{old}"
    return f"the language model kept it at #{old}"


def rerank(
    profile: Profile, first: list[Suggestion], n: int, settings: RerankSettings, *, query: str | None = None
) -> RerankOutcome:
    """Rescore the first ``settings.k`` of the first stage's list ``first`` (best first; made for ``query`` if any,
    which the prompt then carries) and blend; the top ``n``.

    On a checksum or file problem, the first stage's list with the problem in ``error``.
    """
    started = time.perf_counter()
    top = first[: settings.k]
    if len(top) < 2:
        return RerankOutcome(first[:n], False, "fewer than two candidates: nothing to reorder")
    liked, _ = profile.feedback()
    try:
        fm_scores = SERVED.score(
            profile, liked, [s.item for s in top], use_private=private_lora_usable(profile), request=query
        )
    except (PersonaError, RuntimeError, OSError) as error:
        problem = error if isinstance(error, PersonaError) else PersonaError(f"The language model failed: {error}")
        return RerankOutcome(first[:n], False, "first stage only: " + problem.message, problem)
    from models.fm.blend import blend

    in_force = weight_in_force(settings)
    final = blend(np.array([s.score for s in top]), fm_scores, in_force.weight)
    order = np.argsort(-final, kind="stable")
    reranked = [
        replace(
            top[j],
            reason=f"{top[j].reason}; {_moved(int(j) + 1, new + 1)}",
            first_stage_rank=int(j) + 1,
            fm_score=float(fm_scores[j]),
        )
        for new, j in enumerate(order)
    ]
    seconds = time.perf_counter() - started
    note = f"the language model rescored the top {len(top)} (weight {in_force.weight:g}, {in_force.source})"
    return RerankOutcome((reranked + first[settings.k :])[:n], True, note, seconds=seconds)


def suggest(
    profile: Profile,
    n: int,
    settings: RerankSettings,
    *,
    query: str | None = None,
    exclude: IntArray | None = None,
    requested: bool = True,
) -> RerankOutcome:
    """Two-stage suggestions: the first stage's list, reranked by the language model when :func:`skip_reason`
    allows."""
    reason = skip_reason(profile, settings, requested=requested)
    if reason is not None:
        return RerankOutcome(profile.suggest(n, query=query, exclude=exclude), False, "first stage only: " + reason)
    first = profile.suggest(max(n, settings.k), query=query, exclude=exclude)
    return rerank(profile, first, n, settings, query=query)
