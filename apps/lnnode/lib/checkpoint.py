"""Checkpoints that carry their metadata, load with ``weights_only=True``, publish atomically and roll back.

A checkpoint is a plain dict ``{"format", "task", "state_dict", "meta"}``: tensors plus JSON-like
metadata (network spec, preprocessing, class names, training summary), so ``torch.load`` never has
to unpickle code. Publishing writes a temp file and renames it over the model path; the model it
replaces is kept as ``<name>.previous.pt`` for rollback.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "Checkpoint",
    "previous_path",
    "save_checkpoint",
    "load_checkpoint",
    "publish",
    "rollback",
]

CHECKPOINT_FORMAT = "lnnode.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, wrong task, refused by the safe loader)."""


@dataclass
class Checkpoint:
    task: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: str = ""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the model replaced by the last publish is kept: ``<stem>.previous.pt``."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".pt") + ".previous.pt")


def save_checkpoint(path: str | os.PathLike, task: str, state_dict: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "task": task,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "meta": meta,
        }
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load_checkpoint(path: str | os.PathLike, task: str | None = None) -> Checkpoint:
    """Load a checkpoint with the safe loader; CheckpointError says why one cannot be used."""
    p = str(path)
    if not os.path.isfile(p):
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler, zip and EOF errors all come here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a loadable lnnode checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{p}: not an lnnode checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    if task is not None and payload.get("task") != task:
        raise CheckpointError(f"{p}: a {payload.get('task')!r} checkpoint, expected {task!r}")
    state, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{p}: checkpoint lacks its state_dict or meta")
    return Checkpoint(task=payload["task"], state_dict=state, meta=meta, path=p)


def publish(source: str | os.PathLike, model_path: str | os.PathLike) -> Path:
    """Make ``source`` (a checkpoint file) the served model; the current one becomes the previous.

    Each step is a rename, so a reader always finds a whole model at ``model_path``.
    """
    load_checkpoint(source)  # never publish what cannot be loaded
    target = Path(model_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.staged")
    with open(source, "rb") as src, open(staged, "wb") as dst:
        dst.write(src.read())
        dst.flush()
        os.fsync(dst.fileno())
    if target.exists():
        _copy_over(target, previous_path(target))  # a copy: the current model stays served meanwhile
    os.replace(staged, target)
    return target


def _copy_over(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically (the source stays served until it is replaced)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(src, "rb") as s, open(tmp, "wb") as d:
        d.write(s.read())
        d.flush()
        os.fsync(d.fileno())
    os.replace(tmp, dest)


def rollback(model_path: str | os.PathLike) -> Path:
    """Serve the previous model again; the rolled-back model becomes the previous (so it can be undone)."""
    target = Path(model_path)
    prev = previous_path(target)
    if not prev.exists():
        raise CheckpointError(f"{target}: no previous model to roll back to")
    load_checkpoint(prev)
    swap = target.with_name(f".{target.name}.swap")
    _copy_over(prev, swap)
    if target.exists():
        _copy_over(target, prev)
    os.replace(swap, target)
    return target
