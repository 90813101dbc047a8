"""One TaskConfig per model, as in MONAI Label's sample apps; main.py picks them by name."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from ..names import CLASSIFICATION, DETECTION, PIPELINE
from .base import infer_config
from .classification import NodeClassificationConfig
from .detection import NodeDetectionConfig

# --conf options of the pipeline (documented in the README): conf key -> request param
PIPELINE_OPTIONS = {
    "detection_score_thresh": "score_thresh",
    "detection_nms_thresh": "nms_thresh",
    "detection_max_boxes": "max_boxes",
    "classification_tta": "tta",
    "pipeline_p_thresh": "p_thresh",
    "pipeline_suspicious_by": "suspicious_by",
    "device": "device",
    "amp": "amp",
}

__all__ = ["CLASSIFICATION", "DETECTION", "PIPELINE", "PIPELINE_OPTIONS", "infer_config", "task_configs"]


def task_configs() -> dict[str, type[TaskConfig]]:
    """The app's models by name (``--conf models`` selects among them)."""
    return {
        DETECTION: NodeDetectionConfig,
        CLASSIFICATION: NodeClassificationConfig,
    }
