"""Atomic file writes: a temp file beside the target, fsync, rename. Readers see all or nothing.

The temp file lives in a hidden ``.lnnode-tmp`` folder beside the target: on the same file system
(so the rename is atomic) and out of sight of folder scans (the MONAI Label datastore lists the
files of a folder, not its sub-folders), so a half-written file is never taken for an image or label.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_DIR_NAME", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_copy"]

TEMP_DIR_NAME = ".lnnode-tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = "") -> Path:
    """Call ``write(temp_path)`` and move the result to ``path`` atomically.

    ``suffix`` keeps the extension of the target where the writer picks its format from it.
    """
    target = Path(path)
    tmp_dir = target.parent / TEMP_DIR_NAME
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=suffix, dir=tmp_dir)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a published file is for every reader of the folder
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dest`` atomically (``dest`` keeps serving its old content until the rename)."""
    return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
