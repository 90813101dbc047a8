"""Infer tasks (BasicInferTask subclasses), the pipeline that chains them, and the result writer."""

from .base import CheckpointInferTask
from .classification import NodeClassification
from .detection import NodeDetection
from .pipeline import NodePipeline

__all__ = ["CheckpointInferTask", "NodeClassification", "NodeDetection", "NodePipeline"]
