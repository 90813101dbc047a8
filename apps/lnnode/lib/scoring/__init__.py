"""Per-image scores the active-learning strategies rank by."""

from .uncertainty import SCORE_KEY, NodeUncertaintyScoring

__all__ = ["SCORE_KEY", "NodeUncertaintyScoring"]
