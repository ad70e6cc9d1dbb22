"""The item text encoder: MiniLM (all-MiniLM-L6-v2) run with onnxruntime, and a per-catalog embedding cache.

Torch-free at run time: importing this module loads only numpy and the standard library; ``onnxruntime`` and
``tokenizers`` are imported the first time an :class:`ItemEncoder` really has to encode something, so a fully
cached catalog never loads them. It never imports torch, transformers or sentence-transformers.

The ONNX graph and tokenizer are produced once by :func:`models.text.export.prepare_encoder` (run by
``scripts/setup``) under ``assets_dir()/"minilm"``. Encoding reproduces sentence-transformers' pipeline for
all-MiniLM-L6-v2: WordPiece tokenisation truncated to 256 tokens, BERT, mean pooling over the attention mask,
then L2 normalisation.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from models.assets import assets_dir, atomic_write_bytes, sha256_file
from models.data.catalog import Catalog
from models.errors import AssetError

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

ENCODER_DIRNAME = "minilm"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POOLING_FILE = "pooling_config.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
EMBEDDING_DIM = 384
MAX_SEQ_LENGTH = 256
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"

_SETUP_HINT = "Run scripts/setup (or `agent prepare`) once; it exports the MiniLM encoder to ONNX."


def encoder_dir() -> Path:
    """Folder holding the exported encoder: ``assets_dir()/"minilm"``."""
    return assets_dir() / ENCODER_DIRNAME


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The encoder manifest in ``folder`` as a dict, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def encoder_ready(folder: Path | None = None, *, verify: bool = True) -> bool:
    """True when ``folder`` (default :func:`encoder_dir`) holds a complete export.

    With ``verify`` every file listed in the manifest is re-hashed and compared with its recorded SHA-256;
    without it only presence is checked.
    """
    folder = folder if folder is not None else encoder_dir()
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    files: dict[str, Any] = manifest["files"]
    if not {MODEL_FILE, TOKENIZER_FILE, POOLING_FILE} <= files.keys():
        return False
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return False
        if verify and sha256_file(path) != digest:
            return False
    return True


def default_threads() -> int:
    """Default intra-op thread count for the encoder: ``min(2, os.cpu_count())``."""
    return max(1, min(2, os.cpu_count() or 1))


class TextEncoder(Protocol):
    """Anything that turns texts into unit-norm float32 vectors (what :func:`embed_catalog` needs)."""

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    @property
    def model_id(self) -> str:
        """Identifies the model; cached vectors made with another ``model_id`` are not reused."""
        ...

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> NDArray[np.float32]:
        """Vectors for ``texts``, shape ``(len(texts), dim)``, in input order."""
        ...


class ItemEncoder:
    """MiniLM sentence embeddings with onnxruntime on the CPU.

    Construction is cheap and touches no file: the ONNX session and the tokenizer are loaded on the first
    call to :meth:`encode` (or :meth:`load`). A missing or incomplete export raises :class:`AssetError`.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        intra_op_threads: int | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        self.folder = folder if folder is not None else encoder_dir()
        self.intra_op_threads = intra_op_threads if intra_op_threads is not None else default_threads()
        self._max_seq_length = max_seq_length
        self._manifest: dict[str, Any] | None = None
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._input_names: tuple[str, ...] = ()
        self._pad_id = 0

    # -- metadata (reads only the manifest, never onnxruntime) ------------------------------------------
    def _require_manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            manifest = read_manifest(self.folder)
            missing = [n for n in (MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE) if not (self.folder / n).is_file()]
            if manifest is None or missing:
                what = ", ".join(missing) if missing else MANIFEST_FILE + " (unreadable)"
                raise AssetError(
                    f"The MiniLM text encoder is not prepared (missing {what} in {self.folder}).",
                    hint=_SETUP_HINT,
                )
            self._manifest = manifest
        return self._manifest

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return EMBEDDING_DIM

    @property
    def max_seq_length(self) -> int:
        """Token limit per text (including [CLS] and [SEP]); longer texts are truncated."""
        if self._max_seq_length is not None:
            return self._max_seq_length
        return int(self._require_manifest().get("max_seq_length", MAX_SEQ_LENGTH))

    @property
    def model_id(self) -> str:
        """Source weights, tokenizer and token limit, from the manifest: the embedding cache's model key."""
        manifest = self._require_manifest()
        source = manifest.get("source", {})
        weights = str(source.get("model.safetensors", manifest["files"].get(MODEL_FILE, "")))[:16]
        tokenizer = str(manifest["files"].get(TOKENIZER_FILE, ""))[:16]
        return f"all-MiniLM-L6-v2:{weights}:{tokenizer}:{self.max_seq_length}"

    @property
    def loaded(self) -> bool:
        """True once the onnxruntime session exists."""
        return self._session is not None

    # -- loading ---------------------------------------------------------------------------------------
    def load(self) -> None:
        """Create the onnxruntime session and the tokenizer now (otherwise done on first :meth:`encode`)."""
        if self._session is not None:
            return
        self._require_manifest()
        pooling = self._read_pooling()
        if not pooling.get("pooling_mode_mean_tokens", False):
            raise AssetError(f"{self.folder / POOLING_FILE} does not ask for mean pooling; only that is supported.")

        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort  # native runtime boundary: loaded on first encode, after the variable above
        from tokenizers import Tokenizer  # loaded with the session: importing this module stays cheap

        ort.set_default_logger_severity(3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.log_verbosity_level = 0
        try:
            session = ort.InferenceSession(
                str(self.folder / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise AssetError(
                f"The MiniLM text encoder in {self.folder} could not be loaded: {exc}", hint=_SETUP_HINT
            ) from exc

        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self._input_names = tuple(i.name for i in session.get_inputs())
        unknown = set(self._input_names) - set(INPUT_NAMES)
        if unknown:
            raise AssetError(f"Unexpected encoder inputs {sorted(unknown)} in {self.folder / MODEL_FILE}.")
        self._tokenizer = tokenizer
        self._session = session

    def _read_pooling(self) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / POOLING_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AssetError(f"Cannot read {self.folder / POOLING_FILE}: {exc}", hint=_SETUP_HINT) from exc
        if not isinstance(data, dict):
            raise AssetError(f"{self.folder / POOLING_FILE} is not a JSON object.", hint=_SETUP_HINT)
        return data

    # -- encoding --------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> NDArray[np.float32]:
        """Unit-norm embeddings of ``texts``, float32, shape ``(len(texts), 384)``, in input order.

        Texts are tokenised once, grouped by token length into batches of ``batch_size`` (each padded only to
        its own longest text), and the results are put back in input order.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self.load()
        assert self._session is not None and self._tokenizer is not None
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            type_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                enc = encodings[int(row)]
                n = len(enc.ids)
                input_ids[r, :n] = enc.ids
                type_ids[r, :n] = enc.type_ids
                mask[r, :n] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
            (hidden,) = self._session.run([OUTPUT_NAME], {k: feeds[k] for k in self._input_names})
            out[rows] = mean_pool_normalize(np.asarray(hidden, dtype=np.float32), mask)
        return out


def mean_pool_normalize(hidden: NDArray[np.float32], mask: NDArray[np.int64]) -> NDArray[np.float32]:
    """Mean of ``hidden`` (batch, seq, dim) over positions where ``mask`` is 1, then L2-normalised.

    Same arithmetic as sentence-transformers' Pooling(mean) followed by Normalize.
    """
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    pooled = summed / counts
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    result: NDArray[np.float32] = (pooled / norms).astype(np.float32, copy=False)
    return result


# -- embedding cache -------------------------------------------------------------------------------------

_CACHE_FORMAT = 1
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class EmbeddingCache:
    """One catalog's item vectors keyed by content hash, stored as a single ``.npz`` file.

    The file holds ``hashes`` (unicode), ``vectors`` (float32, one row per hash), ``model_id`` and ``format``.
    A file written for another model or dimension, or one that cannot be read, is treated as empty.
    """

    def __init__(self, path: Path, model_id: str, dim: int) -> None:
        self.path = path
        self.model_id = model_id
        self.dim = dim

    @classmethod
    def for_catalog(cls, cache_dir: Path, catalog_name: str, model_id: str, dim: int) -> EmbeddingCache:
        """The cache file of catalog ``catalog_name`` under ``cache_dir``."""
        safe = _UNSAFE_NAME.sub("_", catalog_name).strip("._") or "catalog"
        return cls(Path(cache_dir) / f"{safe}.embeddings.npz", model_id, dim)

    def load(self) -> dict[str, NDArray[np.float32]]:
        """Stored vectors by content hash (empty when there is no usable file)."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if int(data["format"]) != _CACHE_FORMAT or str(data["model_id"]) != self.model_id:
                    return {}
                hashes = [str(h) for h in data["hashes"]]
                vectors = np.asarray(data["vectors"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return {}
        if vectors.ndim != 2 or vectors.shape != (len(hashes), self.dim):
            return {}
        return {h: vectors[i] for i, h in enumerate(hashes)}

    def save(self, hashes: Sequence[str], vectors: NDArray[np.float32]) -> None:
        """Replace the file atomically with ``vectors`` keyed by ``hashes``."""
        if vectors.shape != (len(hashes), self.dim):
            raise ValueError(f"expected vectors of shape {(len(hashes), self.dim)}, got {vectors.shape}")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.int64(_CACHE_FORMAT),
            model_id=np.str_(self.model_id),
            hashes=np.array(list(hashes), dtype="<U64"),
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        )
        atomic_write_bytes(self.path, buffer.getvalue())


def embed_catalog(
    catalog: Catalog, encoder: TextEncoder, cache_dir: Path, *, batch_size: int = 64
) -> NDArray[np.float32]:
    """Vectors for every catalog item, shape ``(len(catalog), dim)``, in catalog order.

    Each item's vector is keyed by :meth:`Catalog.content_hash`; only texts whose hash is not already in the
    catalog's cache file are encoded (each distinct text once). The cache file is rewritten atomically, and
    only when something changed, keeping exactly the current catalog's texts. When nothing needs encoding,
    ``encoder.encode`` is not called, so a lazy :class:`ItemEncoder` never loads onnxruntime.
    """
    cache = EmbeddingCache.for_catalog(cache_dir, catalog.name, encoder.model_id, encoder.dim)
    stored = cache.load()
    hashes = [catalog.content_hash(i) for i in range(len(catalog))]

    first_index: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first_index.setdefault(h, i)
    missing = [h for h in first_index if h not in stored]

    vectors_by_hash: dict[str, NDArray[np.float32]] = {h: stored[h] for h in first_index if h in stored}
    if missing:
        new = encoder.encode([catalog.item_text(first_index[h]) for h in missing], batch_size=batch_size)
        if new.shape != (len(missing), encoder.dim):
            raise ValueError(f"encoder returned shape {new.shape}, expected {(len(missing), encoder.dim)}")
        for h, vector in zip(missing, new, strict=True):
            vectors_by_hash[h] = np.asarray(vector, dtype=np.float32)

    out = np.empty((len(catalog), encoder.dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = vectors_by_hash[h]

    if missing or stored.keys() != vectors_by_hash.keys():
        keys = list(first_index)
        matrix = np.stack([vectors_by_hash[h] for h in keys]) if keys else np.zeros((0, encoder.dim), np.float32)
        cache.save(keys, matrix)
    return out
