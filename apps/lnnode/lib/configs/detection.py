"""TaskConfigs of ``lymph_node_detection`` and ``lymph_node_detection_2d``: the detector's infer task (and its
trainer), for volumes and for 2D images."""

from __future__ import annotations

from ..infers.detection import NodeDetection
from ..trainers.detection import NodeDetectionTrainer
from .base import CheckpointTaskConfig


class NodeDetectionConfig(CheckpointTaskConfig):
    infer_class = NodeDetection
    trainer_class = NodeDetectionTrainer
    infer_options = {
        "detection_score_thresh": "score_thresh",
        "detection_nms_thresh": "nms_thresh",
        "detection_max_boxes": "max_boxes",
        "device": "device",
        "amp": "amp",
    }


class NodeDetection2dConfig(NodeDetectionConfig):
    planar = True
    infer_options = {
        "detection_2d_score_thresh": "score_thresh",
        "detection_2d_nms_thresh": "nms_thresh",
        "detection_2d_max_boxes": "max_boxes",
        "device": "device",
        "amp": "amp",
    }
