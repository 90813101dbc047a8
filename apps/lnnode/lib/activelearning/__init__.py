"""Active-learning strategies: which unlabelled case a radiologist should review next."""

from .badge import Badge
from .uncertain import DEFAULT_NOVELTY_WEIGHT, SERVED_KEY, Uncertain

__all__ = ["DEFAULT_NOVELTY_WEIGHT", "SERVED_KEY", "Badge", "Uncertain"]
