"""TaskConfig of ``lymph_node_detection``: the detector's infer task (and its trainer)."""

from __future__ import annotations

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from ..infers.detection import NodeDetection
from ..trainers.detection import NodeDetectionTrainer

# --conf options of this model (documented in the README): conf key -> request param
INFER_OPTIONS = {
    "detection_score_thresh": "score_thresh",
    "detection_nms_thresh": "nms_thresh",
    "detection_max_boxes": "max_boxes",
    "device": "device",
    "amp": "amp",
}


def model_paths(model_dir: str, name: str, demo_dir: str | None = None) -> list[str]:
    """Where a model's weights are looked for, lowest priority first: shipped demo, then trained."""
    demo = [os.path.join(demo_dir, f"{name}.pt")] if demo_dir else []
    return [*demo, os.path.join(model_dir, f"{name}.pt")]


def infer_config(conf: dict[str, str], options: dict[str, str]) -> dict[str, Any]:
    """Request defaults from ``--conf`` (only the options given)."""
    return {param: conf[key] for key, param in options.items() if conf.get(key) not in (None, "")}


class NodeDetectionConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = model_paths(model_dir, name, kwargs.get("demo_dir"))

    def infer(self) -> NodeDetection:
        return NodeDetection(self.name, self.path, config=infer_config(self.conf, INFER_OPTIONS))

    def trainer(self) -> NodeDetectionTrainer:
        config = {"device": self.conf["device"]} if self.conf.get("device") else {}
        return NodeDetectionTrainer(
            self.name,
            model_dir=self.model_dir,
            publish_path=self.path[-1],
            served_paths=self.path,
            modality=self.conf.get("modality", "ct"),
            config=config,
        )
