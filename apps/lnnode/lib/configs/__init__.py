"""One TaskConfig per model, as in MONAI Label's sample apps; main.py picks them by name."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from lnnode.contracts import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D

from .base import infer_config, modality_of
from .classification import NodeClassification2dConfig, NodeClassificationConfig
from .detection import NodeDetection2dConfig, NodeDetectionConfig

# --conf options of the pipeline (documented in docs/reference.md): conf key -> request param
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

# ... and of the 2D pipeline (its models' own keys: a volume model's thresholds are no 2D model's)
PIPELINE_2D_OPTIONS = {
    "detection_2d_score_thresh": "score_thresh",
    "detection_2d_nms_thresh": "nms_thresh",
    "detection_2d_max_boxes": "max_boxes",
    "classification_2d_tta": "tta",
    "pipeline_p_thresh": "p_thresh",
    "pipeline_suspicious_by": "suspicious_by",
    "device": "device",
    "amp": "amp",
}

__all__ = [
    "PIPELINE_OPTIONS",
    "PIPELINE_2D_OPTIONS",
    "infer_config",
    "init_task_configs",
    "modality_of",
    "task_configs",
]


def task_configs() -> dict[str, type[TaskConfig]]:
    """The app's models by name (``--conf models`` selects among them)."""
    return {
        DETECTION: NodeDetectionConfig,
        CLASSIFICATION: NodeClassificationConfig,
        DETECTION_2D: NodeDetection2dConfig,
        CLASSIFICATION_2D: NodeClassification2dConfig,
    }


def init_task_configs(
    names: list[str] | None, model_dir: str, conf: dict[str, str], demo_dir: str | None
) -> dict[str, TaskConfig]:
    """The TaskConfigs of the models ``names`` (None: all), initialised; unknown names stop the server."""
    available = task_configs()
    names = list(available) if names is None else names
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--conf models: unknown model(s) {unknown}; available: {', '.join(available)}")
    configs = {name: available[name]() for name in names}
    for name, config in configs.items():
        config.init(name, model_dir, conf, None, demo_dir=demo_dir)
    return configs
