"""Infer tasks (BasicInferTask subclasses) and the result writer."""

from .base import CheckpointInferTask
from .detection import NodeDetection

__all__ = ["CheckpointInferTask", "NodeDetection"]
