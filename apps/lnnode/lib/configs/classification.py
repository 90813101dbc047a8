"""TaskConfig of ``lymph_node_classification``: metastasis probability per given box (and its trainer)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from ..infers.classification import NodeClassification
from ..trainers.classification import NodeClassificationTrainer
from .detection import infer_config, model_paths

# --conf options of this model (documented in the README): conf key -> request param
INFER_OPTIONS = {"classification_tta": "tta", "device": "device", "amp": "amp"}


class NodeClassificationConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = model_paths(model_dir, name, kwargs.get("demo_dir"))

    def infer(self) -> NodeClassification:
        return NodeClassification(self.name, self.path, config=infer_config(self.conf, INFER_OPTIONS))

    def trainer(self) -> NodeClassificationTrainer:
        config = {"device": self.conf["device"]} if self.conf.get("device") else {}
        return NodeClassificationTrainer(
            self.name,
            model_dir=self.model_dir,
            publish_path=self.path[-1],
            served_paths=self.path,
            modality=self.conf.get("modality", "ct"),
            config=config,
        )
