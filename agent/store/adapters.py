"""Adapter files with checksums: the private and shared first-stage parameters and the two LoRAs of the
foundation model, each a file ``adapters/NAME.SHA12.bin`` in the data folder that one ``adapters`` row points at.

An adapter is written to a *new* file named after its checksum (temp file, fsync, rename), then the row that
points at it is switched in one transaction, then the old file is zeroed and removed. A crash at any point leaves
the previous row pointing at the previous, intact file; a stray new file is removed the next time the store opens.
Several adapters can be switched together (:meth:`AdapterStore.write_adapters`: all new files first, then every
row in one transaction), which is how a sync applies the shared pair θ_g + φ_g (:meth:`AdapterStore.save_shared_pair`):
a crash at any point leaves both previous rows, never one new and one old. In an encrypted profile the files are
encrypted with the profile's key, each bound to its adapter's name.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AdapterChecksumError
from agent.store.database import Database
from agent.store.files import sha256_hex, shred
from agent.store.records import (
    PRIVATE_FIRST_STAGE,
    PRIVATE_LORA,
    SHARED_FIRST_STAGE,
    SHARED_LORA,
    AdapterRecord,
)
from models.assets import atomic_write_bytes
from models.firststage.scorer import PrivateParams, SharedParams
from models.fm.lora import LoraWeights, default_shared_spec, load_weights, save_weights

ADAPTERS_DIR = "adapters"
SHARED_LORA_SHAPES = {"q_proj": (1024, 640), "v_proj": (256, 640)}
"""(out, in) of the adapted projections of the built-in 270M model: what φ_g's frozen ``A`` factors are drawn for
when a sync brings φ_g before the model was ever loaded (``models.fm.torch_model.TorchFM.shapes``)."""


class AdapterStore(Database):
    """The profile database with its adapter files (see the module docstring)."""

    def _tidy_after_open(self) -> None:
        """Remove adapter files no row points at (left by a crash between file write and row switch)."""
        folder = self.folder / ADAPTERS_DIR
        if not folder.is_dir():
            return
        with self._lock, self._file_lock():
            self._refresh()
            current = {str(r[0]) for r in self._conn.execute("SELECT file FROM adapters")}
            for path in folder.iterdir():
                if str(path.relative_to(self.folder)) not in current and not path.name.startswith("."):
                    shred(path)

    def adapter_record(self, name: str) -> AdapterRecord | None:
        """The current record of adapter ``name``, or None when there is none."""
        rows = self._read("SELECT * FROM adapters WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return AdapterRecord(
            name=str(r["name"]),
            file=self.folder / str(r["file"]),
            sha256=str(r["sha256"]),
            version=int(r["version"]),
            updated_at=int(r["updated_at"]),
            meta=json.loads(r["meta"]),
        )

    def write_adapter(self, name: str, data: bytes, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store a new version of adapter ``name``: new file (atomic), then the row, then the old file goes."""
        return self.write_adapters([(name, data, meta)])[0]

    def write_adapters(self, items: list[tuple[str, bytes, dict[str, Any] | None]]) -> list[AdapterRecord]:
        """Store new versions of several adapters at once: every new file (atomic), then every row in ONE
        transaction, then the old files go. A failure before the commit leaves every previous row and file."""
        if len({name for name, _, _ in items}) != len(items):
            raise ValueError("each adapter may appear once in one write")
        with self._lock:
            staged: list[tuple[str, Path, str, dict[str, Any] | None, AdapterRecord | None]] = []
            try:
                for name, data, meta in items:
                    stored = self._cipher.encrypt(data, name) if self._cipher else data
                    digest = sha256_hex(stored)
                    relative = Path(ADAPTERS_DIR) / f"{name}.{digest[:12]}.bin"
                    previous = self.adapter_record(name)
                    atomic_write_bytes(self.folder / relative, stored)
                    staged.append((name, relative, digest, meta, previous))
                with self._write() as conn:
                    for name, relative, digest, meta, previous in staged:
                        conn.execute(
                            "INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?, ?)",
                            (
                                name,
                                str(relative),
                                digest,
                                (previous.version + 1) if previous else 1,
                                int(time.time()),
                                json.dumps(meta or {}),
                            ),
                        )
            except BaseException:
                for _name, relative, _digest, _meta, previous in staged:
                    if previous is None or previous.file != self.folder / relative:
                        (self.folder / relative).unlink(missing_ok=True)
                raise
            for _name, relative, _digest, _meta, previous in staged:
                if previous is not None and previous.file != self.folder / relative:
                    shred(previous.file)
        records = [self.adapter_record(name) for name, _, _ in items]
        assert all(r is not None for r in records)
        return [r for r in records if r is not None]

    def read_adapter(self, name: str) -> bytes | None:
        """The bytes of adapter ``name`` after checking its checksum (None when there is no such adapter)."""
        record = self.adapter_record(name)
        if record is None:
            return None
        try:
            stored = record.file.read_bytes()
        except FileNotFoundError:
            raise AdapterChecksumError(
                f"The {name} adapter file {record.file} is missing.",
                hint="Run `agent train` to rebuild the private adapter, or `agent reset` to start over.",
            ) from None
        if sha256_hex(stored) != record.sha256:
            raise AdapterChecksumError(
                f"The {name} adapter file {record.file} does not match its recorded checksum.",
                hint="Run `agent train` to rebuild the private adapter, or `agent reset` to start over.",
            )
        return self._cipher.decrypt(stored, name) if self._cipher else stored

    def _read_adapter_with_meta(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        """The checked bytes of adapter ``name`` and its record's meta, or None when there is no such adapter."""
        data = self.read_adapter(name)
        if data is None:
            return None
        record = self.adapter_record(name)
        assert record is not None
        return data, record.meta

    def delete_adapter(self, name: str) -> bool:
        """Remove adapter ``name``: its row, then its file (zeroed first); False when there was none."""
        with self._lock:
            previous = self.adapter_record(name)
            if previous is None:
                return False
            with self._write() as conn:
                conn.execute("DELETE FROM adapters WHERE name = ?", (name,))
            shred(previous.file)
        return True

    @contextmanager
    def adapter_as_file(self, name: str) -> Iterator[Path | None]:
        """Adapter ``name`` as a plain file for a native loader (llama.cpp), with its SHA-256 written beside it as
        ``PATH.sha256``; None when there is no such adapter.

        The bytes are checked against the store's checksum (and decrypted) first; the copy lives in a private
        temporary folder inside the data folder and is zeroed and removed when the block ends.
        """
        data = self.read_adapter(name)
        if data is None:
            yield None
            return
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".serve-") as tmp:
            path = Path(tmp) / f"{name}.gguf"
            sums = path.with_suffix(path.suffix + ".sha256")
            path.write_bytes(data)
            sums.write_text(f"{sha256_hex(data)}  {path.name}\n")
            try:
                yield path
            finally:
                shred(path)
                shred(sums)

    # -- the first stage -------------------------------------------------------------------------------------
    def save_private(self, private: PrivateParams, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store the private first-stage vector (θ_u)."""
        buffer = io.BytesIO()
        np.save(buffer, private.user_vector.astype(np.float32))
        return self.write_adapter(PRIVATE_FIRST_STAGE, buffer.getvalue(), meta=meta)

    def load_private(self) -> PrivateParams | None:
        """The private first-stage vector, or None before the first local training."""
        data = self.read_adapter(PRIVATE_FIRST_STAGE)
        if data is None:
            return None
        return PrivateParams(user_vector=np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))

    def save_shared(self, shared: SharedParams, *, version: str, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store the shared first-stage parameters (θ_g) with the federation's version label."""
        return self.write_adapter(SHARED_FIRST_STAGE, _shared_bytes(shared), meta={"version": version, **(meta or {})})

    def save_shared_pair(
        self,
        shared: SharedParams,
        lora: LoraWeights,
        *,
        version: str,
        meta: dict[str, Any] | None = None,
        lora_meta: dict[str, Any] | None = None,
    ) -> tuple[AdapterRecord, AdapterRecord]:
        """Store θ_g and φ_g of one federation version together, atomically (both rows in one transaction)."""
        meta = {"version": version, **(meta or {})}
        records = self.write_adapters(
            [
                (SHARED_FIRST_STAGE, _shared_bytes(shared), meta),
                (SHARED_LORA, self._lora_bytes(lora), {**meta, **(lora_meta or {})}),
            ]
        )
        return records[0], records[1]

    def load_shared(self) -> tuple[SharedParams, dict[str, Any]] | None:
        """The shared first-stage parameters and their meta (with ``version``), or None when none is stored."""
        stored = self._read_adapter_with_meta(SHARED_FIRST_STAGE)
        if stored is None:
            return None
        data, meta = stored
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            shared = SharedParams(**{name: arrays[name].astype(np.float32) for name in SharedParams.FIELDS})
        return shared, meta

    # -- the foundation model's LoRAs ------------------------------------------------------------------------
    def save_private_lora(self, gguf: bytes, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store a new private LoRA (the GGUF bytes :func:`models.fm.lora.export_gguf` wrote)."""
        return self.write_adapter(PRIVATE_LORA, gguf, meta=meta)

    def save_shared_lora(
        self, weights: LoraWeights, *, version: str, meta: dict[str, Any] | None = None
    ) -> AdapterRecord:
        """Store the shared LoRA's numbers (φ_g, e.g. as a sync applies it) with the federation's version label."""
        return self.write_adapter(SHARED_LORA, self._lora_bytes(weights), meta={"version": version, **(meta or {})})

    def _lora_bytes(self, weights: LoraWeights) -> bytes:
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".lora-") as tmp:
            save_weights(weights, Path(tmp) / "shared.npz")
            return (Path(tmp) / "shared.npz").read_bytes()

    def shared_lora_with(self, vector: np.ndarray[Any, np.dtype[Any]]) -> LoraWeights:
        """φ_g with its trainable values (the FFA ``B`` factors) read from a synced ``vector``: on the stored shared
        LoRA's frozen ``A`` when there is one, else on the public seeded ``A`` of the default spec."""
        stored = self.load_shared_lora()
        template = stored[0] if stored else LoraWeights.init(default_shared_spec(), SHARED_LORA_SHAPES)
        return template.with_trainable_vector(vector)

    def load_shared_lora(self) -> tuple[LoraWeights, dict[str, Any]] | None:
        """The shared LoRA and its meta (with ``version``), or None while no sync has provided one."""
        stored = self._read_adapter_with_meta(SHARED_LORA)
        if stored is None:
            return None
        data, meta = stored
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".lora-") as tmp:
            (Path(tmp) / "shared.npz").write_bytes(data)
            weights = load_weights(Path(tmp) / "shared.npz")
        return weights, meta


def _shared_bytes(shared: SharedParams) -> bytes:
    """The stored form of θ_g (an .npz of its fields)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(shared, name) for name in SharedParams.FIELDS})
    return buffer.getvalue()
