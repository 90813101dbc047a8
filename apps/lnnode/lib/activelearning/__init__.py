"""Active-learning strategies: which unlabelled case a radiologist should review next."""

from .uncertain import SERVED_KEY, Uncertain

__all__ = ["SERVED_KEY", "Uncertain"]
