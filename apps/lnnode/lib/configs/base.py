"""What the models' TaskConfigs share: weights paths (shipped demo, then trained), ``--conf`` request
defaults, and building the infer task and trainer from their classes."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from monailabel.interfaces.config import TaskConfig

__all__ = ["CheckpointTaskConfig", "model_paths", "infer_config"]


def model_paths(model_dir: str, name: str, demo_dir: str | None = None) -> list[str]:
    """Where a model's weights are looked for, lowest priority first: shipped demo, then trained."""
    demo = [os.path.join(demo_dir, f"{name}.pt")] if demo_dir else []
    return [*demo, os.path.join(model_dir, f"{name}.pt")]


def modality_of(conf: dict[str, str], planar: bool) -> str:
    """The modality of new models and appearances of one kind of image: ``--conf modality`` (volumes, default
    ``ct``) or ``modality_2d`` (2D images, default ``us``)."""
    return conf.get("modality_2d", "us") if planar else conf.get("modality", "ct")


def infer_config(conf: dict[str, str], options: dict[str, str]) -> dict[str, Any]:
    """Request defaults from ``--conf`` (only the options given)."""
    return {param: conf[key] for key, param in options.items() if conf.get(key) not in (None, "")}


class CheckpointTaskConfig(TaskConfig):
    """A model served from an lnnode checkpoint and trained by an lnnode train task."""

    infer_class: ClassVar[type]
    trainer_class: ClassVar[type]
    infer_options: ClassVar[dict[str, str]]  # --conf key -> request param (documented in docs/reference.md)
    planar: ClassVar[bool] = False  # a model of 2D images (``*_2d``)

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = model_paths(model_dir, name, kwargs.get("demo_dir"))

    def infer(self):
        config = infer_config(self.conf, self.infer_options)
        return self.infer_class(self.name, self.path, config=config, planar=self.planar)

    def trainer(self):
        config = {"device": self.conf["device"]} if self.conf.get("device") else {}
        modality = modality_of(self.conf, self.planar)
        return self.trainer_class(
            self.name,
            model_dir=self.model_dir,
            publish_path=self.path[-1],
            served_paths=self.path,
            modality=modality,
            planar=self.planar,
            config=config,
        )
