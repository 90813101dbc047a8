"""Train tasks (BasicTrainTask subclasses) and their shared ignite handlers."""

from .classification import NodeClassificationTrainer
from .detection import NodeDetectionTrainer

__all__ = ["NodeClassificationTrainer", "NodeDetectionTrainer"]
