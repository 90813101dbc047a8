"""Active-learning strategies: which unlabelled case a radiologist should review next."""

from .badge import Badge
from .uncertain import SERVED_KEY, Uncertain

__all__ = ["DEFAULT_STRATEGY", "SERVED_KEY", "Badge", "Uncertain"]

# listed first in /info and preselected by the Slicer module: the best on the benchmark's mean over repeats, by a
# margin within its noise (docs/loop.md, section 6)
DEFAULT_STRATEGY = "badge"
