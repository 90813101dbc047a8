"""Per-image scores the active-learning strategies rank by."""

from .appearance import APPEARANCE_KEY, appearance, appearance_distance, appearance_of
from .uncertainty import SCORE_KEY, NodeUncertaintyScoring

__all__ = [
    "APPEARANCE_KEY",
    "SCORE_KEY",
    "NodeUncertaintyScoring",
    "appearance",
    "appearance_distance",
    "appearance_of",
]
