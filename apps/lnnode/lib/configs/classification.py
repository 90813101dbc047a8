"""TaskConfigs of ``lymph_node_classification`` and ``lymph_node_classification_2d``: metastasis probability per
given box (and its trainer), on volumes and on 2D images."""

from __future__ import annotations

from ..infers.classification import NodeClassification
from ..trainers.classification import NodeClassificationTrainer
from .base import CheckpointTaskConfig


class NodeClassificationConfig(CheckpointTaskConfig):
    infer_class = NodeClassification
    trainer_class = NodeClassificationTrainer
    infer_options = {"classification_tta": "tta", "device": "device", "amp": "amp"}


class NodeClassification2dConfig(NodeClassificationConfig):
    planar = True
    infer_options = {"classification_2d_tta": "tta", "device": "device", "amp": "amp"}
