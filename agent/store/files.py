"""The profile's files on disk: what ``agent reset`` deletes, how a file is deleted so nothing readable stays
behind, and the checksum every stored file is recorded with."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent import paths


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the checksum the store records for each file it writes)."""
    return hashlib.sha256(data).hexdigest()


def shred(path: Path) -> None:
    """Overwrite a file with zeros, fsync, then unlink it (best effort: SSDs and copy-on-write file systems
    may keep old blocks; the point is that nothing readable stays behind in the file system's view)."""
    try:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return
    except OSError:
        pass
    path.unlink(missing_ok=True)


def profile_files(folder: Path | None = None) -> list[Path]:
    """Every file of the profile in ``folder`` (default: the data folder), including SQLite's -wal/-shm files."""
    folder = folder or paths.data_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def reset_profile(folder: Path | None = None) -> list[Path]:
    """Delete the whole profile: database (+ WAL/SHM), adapters, imported catalogs, ledger, key file.

    Each file is overwritten with zeros before it is unlinked; then the emptied folders are removed. Returns the
    files that were deleted. The caller must have closed any open profile store on the folder.
    """
    folder = folder or paths.data_dir()
    deleted = profile_files(folder)
    for path in deleted:
        shred(path)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    if folder.is_dir():
        folder.rmdir()
    return deleted
