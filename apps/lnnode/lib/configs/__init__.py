"""One TaskConfig per model, as in MONAI Label's sample apps; main.py picks them by name."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from .detection import NodeDetectionConfig


def task_configs() -> dict[str, type[TaskConfig]]:
    """The app's models by name (``--conf models`` selects among them)."""
    return {"lymph_node_detection": NodeDetectionConfig}
