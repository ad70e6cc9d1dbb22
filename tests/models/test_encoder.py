"""Tests for the MiniLM item encoder (models.text.encoder) and its ONNX export (models.text.export).

The export is prepared once per session under ``assets_dir()`` (``PERSONA_ASSETS``), a no-op when it is
already there. Agreement with sentence-transformers is checked on every ML-100K item text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.data.catalog import Catalog
from models.errors import AssetError
from models.text.encoder import (
    EMBEDDING_DIM,
    MANIFEST_FILE,
    MODEL_FILE,
    POOLING_FILE,
    TOKENIZER_FILE,
    EmbeddingCache,
    ItemEncoder,
    embed_catalog,
    encoder_ready,
)
from models.text.export import find_model_folder, prepare_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def encoder_folder() -> Path:
    """The exported encoder (exported now if it is not prepared yet)."""
    return prepare_encoder()


@pytest.fixture(scope="session")
def encoder(encoder_folder: Path) -> ItemEncoder:
    return ItemEncoder(encoder_folder)


class CountingEncoder:
    """Wraps the real encoder and records every text it is asked to encode."""

    def __init__(self, inner: ItemEncoder, model_id: str | None = None) -> None:
        self.inner = inner
        self._model_id = model_id
        self.calls = 0
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self._model_id if self._model_id is not None else self.inner.model_id

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> NDArray[np.float32]:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.encode(texts, batch_size=batch_size)


def small_catalog() -> Catalog:
    titles = [f"Film number {i}" for i in range(12)] + ["Film number 3"]  # last one repeats item 3's text
    tags = [["Drama"] if i % 2 else ["Comedy", "Romance"] for i in range(12)] + [["Drama"]]
    years: list[int | None] = [*range(1990, 2002), 1993]
    return Catalog(name="tiny films", item_ids=[str(i) for i in range(13)], titles=titles, tags=tags, years=years)


# ---------------------------------------------------------------------------------- export


def test_prepare_is_idempotent(encoder_folder: Path) -> None:
    messages: list[str] = []
    assert prepare_encoder(messages.append) == encoder_folder
    assert messages == ["minilm: already prepared"]
    manifest = json.loads((encoder_folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert set(manifest["files"]) == {MODEL_FILE, TOKENIZER_FILE, POOLING_FILE}
    assert manifest["max_seq_length"] == 256 and manifest["dim"] == EMBEDDING_DIM


def test_tampered_export_is_not_ready(encoder_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "minilm"
    copy.mkdir()
    (copy / MODEL_FILE).symlink_to(encoder_folder / MODEL_FILE)
    for name in (TOKENIZER_FILE, POOLING_FILE, MANIFEST_FILE):
        shutil.copyfile(encoder_folder / name, copy / name)
    assert encoder_ready(copy)
    (copy / POOLING_FILE).write_text("{}", encoding="utf-8")
    assert not encoder_ready(copy)
    assert encoder_ready(copy, verify=False)
    (copy / MANIFEST_FILE).unlink()
    assert not encoder_ready(copy, verify=False)


def test_missing_export_raises_asset_error(tmp_path: Path) -> None:
    lazy = ItemEncoder(tmp_path / "nothing here")  # constructing touches no file
    with pytest.raises(AssetError) as info:
        lazy.encode(["hello"])
    assert "scripts/setup" in info.value.hint


# ---------------------------------------------------------------------------------- encoding


def test_agrees_with_sentence_transformers_on_ml100k(encoder: ItemEncoder) -> None:
    from models.data.movielens import load_ml100k

    try:
        catalog = load_ml100k().catalog
    except AssetError:
        pytest.skip("MovieLens-100K assets are not prepared")
    texts = [catalog.item_text(i) for i in range(len(catalog))]
    assert len(texts) == 1682

    ours = encoder.encode(texts)

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(find_model_folder()), device="cpu")
    assert reference.max_seq_length == encoder.max_seq_length == 256
    theirs = np.asarray(reference.encode(texts, batch_size=64, convert_to_numpy=True), dtype=np.float64)

    assert ours.shape == (1682, EMBEDDING_DIM) and ours.dtype == np.float32
    norms = np.linalg.norm(ours.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.999, f"worst item {int(cosine.argmin())}: {texts[int(cosine.argmin())]!r}"


def test_order_and_batching_do_not_change_vectors(encoder: ItemEncoder) -> None:
    texts = [
        "A rather long text about a film, its director, and the many actors who appear in it, at length.",
        "Short",
        "",
        "word " * 400,  # longer than 256 tokens: truncated, like sentence-transformers
        "Medium length title (1994)",
    ]
    together = encoder.encode(texts, batch_size=2)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts[::-1], batch_size=64)[::-1], together, atol=1e-5)
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)


# ---------------------------------------------------------------------------------- cache


def test_cache_encodes_only_new_texts(encoder: ItemEncoder, tmp_path: Path) -> None:
    catalog = small_catalog()
    counting = CountingEncoder(encoder)

    first = embed_catalog(catalog, counting, tmp_path)
    assert first.shape == (13, EMBEDDING_DIM) and first.dtype == np.float32
    assert counting.calls == 1 and len(counting.texts) == 12  # the repeated text is encoded once
    np.testing.assert_array_equal(first[12], first[3])
    np.testing.assert_allclose(first, encoder.encode([catalog.item_text(i) for i in range(13)]), atol=1e-5)

    second = embed_catalog(catalog, counting, tmp_path)
    assert counting.calls == 1 and len(counting.texts) == 12
    np.testing.assert_array_equal(second, first)

    catalog.texts[5] = "Now with a plot summary about a lighthouse keeper."
    counting.texts.clear()
    third = embed_catalog(catalog, counting, tmp_path)
    assert counting.texts == [catalog.item_text(5)]
    others = [i for i in range(13) if i != 5]
    np.testing.assert_array_equal(third[others], first[others])
    np.testing.assert_allclose(third[5], encoder.encode([catalog.item_text(5)])[0], atol=1e-5)
    assert float(third[5] @ first[5]) < 0.999


def test_cache_file_survives_reload(encoder: ItemEncoder, tmp_path: Path) -> None:
    catalog = small_catalog()
    first = embed_catalog(catalog, CountingEncoder(encoder), tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["tiny_films.embeddings.npz"]

    reloaded = EmbeddingCache.for_catalog(tmp_path, catalog.name, encoder.model_id, EMBEDDING_DIM).load()
    assert set(reloaded) == {catalog.content_hash(i) for i in range(13)}
    np.testing.assert_array_equal(reloaded[catalog.content_hash(7)], first[7])

    fresh_encoder = ItemEncoder(encoder.folder)  # a new process would start like this
    fresh = CountingEncoder(fresh_encoder)
    np.testing.assert_array_equal(embed_catalog(catalog, fresh, tmp_path), first)
    assert fresh.calls == 0
    assert not fresh_encoder.loaded  # a fully cached catalog never starts onnxruntime


def test_cache_is_dropped_for_another_model_or_a_corrupt_file(encoder: ItemEncoder, tmp_path: Path) -> None:
    catalog = small_catalog()
    embed_catalog(catalog, CountingEncoder(encoder), tmp_path)

    other_model = CountingEncoder(encoder, model_id="some-other-model")
    embed_catalog(catalog, other_model, tmp_path)
    assert len(other_model.texts) == 12

    (tmp_path / "tiny_films.embeddings.npz").write_bytes(b"not a zip file")
    after_corruption = CountingEncoder(encoder)
    vectors = embed_catalog(catalog, after_corruption, tmp_path)
    assert len(after_corruption.texts) == 12
    assert vectors.shape == (13, EMBEDDING_DIM)


# ---------------------------------------------------------------------------------- no torch at run time


def test_runtime_never_imports_torch(encoder: ItemEncoder, tmp_path: Path) -> None:
    embed_catalog(small_catalog(), encoder, tmp_path)  # fill the cache the child process will read
    heavy = ("torch", "transformers", "sentence_transformers")
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import models.text.encoder
        heavy = {heavy!r}
        assert not [m for m in heavy if m in sys.modules], sorted(m for m in heavy if m in sys.modules)
        assert "onnxruntime" not in sys.modules and "tokenizers" not in sys.modules

        sys.path.insert(0, {str(REPO_ROOT / "tests" / "models")!r})
        from test_encoder import small_catalog
        encoder = models.text.encoder.ItemEncoder(Path({str(encoder.folder)!r}))
        vectors = models.text.encoder.embed_catalog(small_catalog(), encoder, Path({str(tmp_path)!r}))
        assert vectors.shape == (13, 384)
        assert not encoder.loaded and "onnxruntime" not in sys.modules  # everything came from the cache

        encoder.encode(["a film"])
        assert "onnxruntime" in sys.modules
        assert not [m for m in heavy if m in sys.modules], sorted(m for m in heavy if m in sys.modules)
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr == ""  # onnxruntime prints nothing
