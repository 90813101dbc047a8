"""Train tasks (BasicTrainTask subclasses) and their shared ignite handlers."""

from .detection import NodeDetectionTrainer

__all__ = ["NodeDetectionTrainer"]
