"""``--conf auto_train_every K``: after every K new ``final`` labels, queue a training of the chosen models.

With ``model_dir`` the count lives in ``<model_dir>/auto_train.json`` (read and written under a file lock): server
replicas that share one model dir count the labels saved through any of them together, and a restart keeps
the count. Without it each process counts its own labels in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from typing import Any

from filelock import FileLock

from lnnode.io.atomic import atomic_write_text

from .handlers import training_in_progress

__all__ = ["AUTO_TRAIN_FILE", "AutoTrain"]

AUTO_TRAIN_FILE = "auto_train.json"


class AutoTrain:
    """Counts new final labels; every ``every`` of them, asks ``start`` to queue the training.

    ``start(models, params)`` is the app's ``async_training``; ``models`` empty means every trainer. With
    ``planar`` (the kind of the labelled image) only the models of that kind train: a 2D label starts the ``_2d``
    models, a volume's label the others. With ``model_dir`` (shared by the replicas) the count is shared, and
    while one of the chosen models is training (its lock is held, by any replica) none is started: the count
    stays due and the next label after that training starts the next one.
    """

    def __init__(self, every: int, models: Collection[str], params: dict[str, Any], model_dir: str | None = None):
        self.every = every
        self.models = list(models)
        self.params = dict(params)
        self.model_dir = model_dir
        self._count = 0  # without a model dir

    @property
    def _state_path(self) -> str | None:
        return os.path.join(self.model_dir, AUTO_TRAIN_FILE) if self.model_dir else None

    @property
    def labels_since_training(self) -> int:
        path = self._state_path
        return self._count if path is None else self._read(path)

    @staticmethod
    def _read(path: str) -> int:
        try:
            with open(path) as f:
                return int(json.load(f).get("labels_since_training", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0  # none yet, or unreadable: counting starts again

    def _count_label(self, due: Callable[[int], bool]) -> bool:
        """Add one label to the count; when ``due(count)``, reset it and return True (one step, under the lock)."""
        path = self._state_path
        if path is None:
            self._count += 1
            fire = due(self._count)
            self._count = 0 if fire else self._count
            return fire
        with FileLock(path + ".lock"):
            count = self._read(path) + 1
            fire = due(count)
            atomic_write_text(path, json.dumps({"labels_since_training": 0 if fire else count}))
        return fire

    def _busy(self, models: list[str]) -> bool:
        """Whether one of ``models`` is training now (only known with a shared model dir)."""
        if not self.model_dir:
            return False
        return any(training_in_progress(os.path.join(self.model_dir, f"{m}.pt")) for m in models)

    def on_final_label(
        self, trainers: Collection[str], start: Callable[..., Any], planar: bool | None = None
    ) -> Any | None:
        """Count one final label; the training answer when it started one, else None."""
        models = [m for m in (self.models or list(trainers)) if m in trainers]
        if planar is not None:
            models = [m for m in models if m.endswith("_2d") == planar]
        if not self._count_label(lambda n: bool(self.every) and n >= self.every and not self._busy(models)):
            return None
        if not models:  # MONAI Label reads no models as every model
            return None
        return start(models, params={m: dict(self.params) for m in models}, enqueue=True)

    def info(self, trainers: Collection[str]) -> dict[str, Any]:
        return {
            "every": self.every,
            "models": self.models or list(trainers),
            "params": self.params,
            "labels_since_training": self.labels_since_training,
            "shared": self.model_dir is not None,
        }
