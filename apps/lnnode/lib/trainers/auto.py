"""``--conf auto_train_every K``: after every K new ``final`` labels, queue a training of the chosen models."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

__all__ = ["AutoTrain"]


class AutoTrain:
    """Counts new final labels; every ``every`` of them, asks ``start`` to queue the training.

    ``start(models, params)`` is the app's ``async_training``; ``models`` empty means every trainer. With
    ``planar`` (the kind of the labelled image) only the models of that kind train: a 2D label starts the ``_2d``
    models, a volume's label the others.
    """

    def __init__(self, every: int, models: Collection[str], params: dict[str, Any]):
        self.every = every
        self.models = list(models)
        self.params = dict(params)
        self.labels_since_training = 0

    def on_final_label(
        self, trainers: Collection[str], start: Callable[..., Any], planar: bool | None = None
    ) -> Any | None:
        """Count one final label; the training answer when it started one, else None."""
        self.labels_since_training += 1
        if not self.every or self.labels_since_training < self.every:
            return None
        self.labels_since_training = 0
        models = [m for m in (self.models or list(trainers)) if m in trainers]
        if planar is not None:
            models = [m for m in models if m.endswith("_2d") == planar]
            if not models:  # MONAI Label reads no models as every model
                return None
        return start(models, params={m: dict(self.params) for m in models}, enqueue=True)

    def info(self, trainers: Collection[str]) -> dict[str, Any]:
        return {
            "every": self.every,
            "models": self.models or list(trainers),
            "params": self.params,
            "labels_since_training": self.labels_since_training,
        }
