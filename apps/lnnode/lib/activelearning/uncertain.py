"""``uncertain``: serve the unlabelled case the current models are least sure about.

Ranks the images without a ``final`` label by ``lymph_node_uncertainty.score`` in their info
(written by :class:`lnnode.lib.scoring.NodeUncertaintyScoring`), highest first. Equal scores, and
images not scored yet (ranked after every scored one), go to the least recently served first. The
choice and the "served" stamp are one step under the datastore's lock, so two radiologists asking
at the same time get different cases while there are two to give.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..scoring import SCORE_KEY

logger = logging.getLogger(__name__)

__all__ = ["Uncertain", "SERVED_KEY", "rank_key"]

SERVED_KEY = "lnnode_served_ts"


def rank_key(image_id: str, info: dict[str, Any]) -> tuple:
    """Sort key: scored before unscored, higher score first, then least recently served, then id."""
    score = (info.get(SCORE_KEY) or {}).get("score")
    return (score is None, -(score or 0.0), float(info.get(SERVED_KEY) or 0.0), image_id)


class Uncertain(Strategy):
    """The most uncertain unlabelled image (see the module doc)."""

    def __init__(self, channel_suffixes: Callable[[], Sequence[str]] | None = None):
        super().__init__("Most uncertain unlabelled case first (needs the lymph_node_uncertainty scores)")
        self.channel_suffixes = channel_suffixes  # a case's other sequences are not cases of their own

    def _suffixes(self) -> tuple[str, ...]:
        try:
            return tuple(self.channel_suffixes()) if self.channel_suffixes else ()
        except Exception:  # no model weights yet: one sequence per case
            return ()

    def __call__(self, request, datastore: Datastore):
        suffixes = self._suffixes()

        def choose(infos: dict[str, dict[str, Any]]) -> str | None:
            ids = [i for i in infos if not (suffixes and i.endswith(suffixes))]
            return min(ids, key=lambda i: rank_key(i, infos[i])) if ids else None

        if hasattr(datastore, "claim_image"):
            image_id = datastore.claim_image(choose, SERVED_KEY)
        else:  # a datastore without lnnode's claim (e.g. DICOMweb): rank, no served stamp
            infos = {i: datastore.get_image_info(i) for i in datastore.get_unlabeled_images()}
            image_id = choose(infos)
        if image_id is None:
            return {}
        score = (datastore.get_image_info(image_id).get(SCORE_KEY) or {}).get("score")
        logger.info(f"uncertain: serving {image_id} (score {score})")
        return {"id": image_id, "score": score}
