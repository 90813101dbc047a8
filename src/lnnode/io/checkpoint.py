"""Checkpoints that carry their metadata, load with ``weights_only=True``, publish atomically and roll back.

A checkpoint is a plain dict ``{"format", "task", "state_dict", "meta"}``: tensors plus JSON-like
metadata (network spec, preprocessing, class names, training summary), so ``torch.load`` never has
to unpickle code. Publishing writes a temp file and renames it over the model path; the model it
replaces is kept as ``<name>.previous.pt`` for rollback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lnnode.io.atomic import atomic_copy, atomic_write

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
    """Write a checkpoint atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": meta,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


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

    Every step is an atomic copy, so a reader always finds a whole model at ``model_path``.
    """
    load_checkpoint(source)  # never publish what cannot be loaded
    target = Path(model_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        atomic_copy(target, previous_path(target))  # a copy: the current model stays served meanwhile
    return atomic_copy(source, target)


def rollback(model_path: str | os.PathLike) -> Path:
    """Serve the previous model again; the rolled-back model becomes the previous (so it can be undone)."""
    target = Path(model_path)
    prev = previous_path(target)
    if not prev.exists():
        raise CheckpointError(f"{target}: no previous model to roll back to")
    load_checkpoint(prev)
    previous = prev.read_bytes()
    if target.exists():
        atomic_copy(target, prev)
    return atomic_write(target, lambda tmp: Path(tmp).write_bytes(previous))
