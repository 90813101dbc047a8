"""Infer tasks (BasicInferTask subclasses) and the result writer."""

from .base import CheckpointInferTask
from .classification import NodeClassification
from .detection import NodeDetection

__all__ = ["CheckpointInferTask", "NodeClassification", "NodeDetection"]
