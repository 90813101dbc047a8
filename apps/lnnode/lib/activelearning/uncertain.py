"""``uncertain``: serve the unlabelled case the current models are least sure about.

Ranks the images without a ``final`` label by ``lymph_node_uncertainty.score`` in their info (written
by :class:`lib.scoring.NodeUncertaintyScoring`).

A case served in the last ``IN_REVIEW_SECONDS`` and not labelled yet is being reviewed: it is served
again only when every other case is too. Otherwise highest score first; images not scored yet rank
after every scored one; equal scores go to the least recently served first. The choice and the
"served" stamp are one step under the datastore's lock, so two radiologists asking at the same time
get different cases while there are two to give.

**Cold start**: while no unlabelled case has a score above 0 (no model yet, or a detector that finds nothing
anywhere), the case served is the typical case of a kind not read yet (:func:`lnnode.selection.representative`
on the cases' appearances, :mod:`lib.scoring.appearance`; the cases read and those in review count as read),
where id order would serve a folder imported class by class one class first. Cases without an appearance go by
id. On the real-ultrasound pool its first batch is as good as a random one on the mean (docs/loop.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy

from lnnode.selection import representative

from ..scoring import APPEARANCE_KEY, SCORE_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "IN_REVIEW_SECONDS",
    "SERVED_KEY",
    "Uncertain",
    "cold_start",
    "rank_key",
    "served_at",
    "uncertainty_of",
]

SERVED_KEY = "lnnode_served_ts"
IN_REVIEW_SECONDS = 3600.0  # a case served this recently and not labelled yet counts as being reviewed


def _field(info: dict[str, Any], key: str, field: str) -> Any:
    entry = info.get(key)
    return entry.get(field) if isinstance(entry, dict) else None


def uncertainty_of(info: dict[str, Any]) -> float | None:
    """The stored uncertainty score; None if there is none (or it is not a finite number: info is writable)."""
    score = _field(info, SCORE_KEY, "score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not np.isfinite(score):
        return None
    return float(score)


def rank_key(image_id: str, info: dict[str, Any], now: float | None = None) -> tuple:
    """Sort key: not in review before in review, scored before unscored, higher score first, least recently
    served, then id."""
    score = uncertainty_of(info)
    served = served_at(info)
    in_review = (time.time() if now is None else now) - served < IN_REVIEW_SECONDS
    return (in_review, score is None, -(score or 0.0), served, image_id)


def served_at(info: dict[str, Any]) -> float:
    """When the case was last served (0: never)."""
    try:
        return float(info.get(SERVED_KEY) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _appearance(info: dict[str, Any]) -> tuple[str, np.ndarray] | None:
    """(preprocessing it was made with, histograms), or None where there is none usable."""
    entry = info.get(APPEARANCE_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        look = np.asarray(entry.get("histograms"), dtype=float)
    except (TypeError, ValueError):
        return None
    if look.ndim != 2 or not look.size or not np.isfinite(look).all():
        return None
    return json.dumps(entry.get("preprocessing"), sort_keys=True), look


def cold_start(candidates: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], now: float) -> str | None:
    """The typical case of a kind not read yet (see the module doc), among the candidates of the most common
    appearance kind; None when no candidate has an appearance."""
    looks = {i: a for i, info in {**labelled, **candidates}.items() if (a := _appearance(info)) is not None}
    kinds = [(looks[i][0], looks[i][1].shape) for i in candidates if i in looks]
    if not kinds:
        return None
    kind = max(set(kinds), key=kinds.count)
    ids = sorted(i for i, a in looks.items() if (a[0], a[1].shape) == kind)
    read = np.array([i not in candidates or now - served_at(candidates[i]) < IN_REVIEW_SECONDS for i in ids])
    if read.all():
        return None
    (pick,) = representative(np.stack([looks[i][1].ravel() for i in ids]), read, 1)
    return ids[pick]


class Uncertain(Strategy):
    """The most uncertain unlabelled image; typical cases of unread kinds on a cold start (see the module doc)."""

    def __init__(self, channel_suffixes: Callable[[], Sequence[str]] | None = None):
        super().__init__(
            "Most uncertain unlabelled case first (the lymph_node_uncertainty scores); before any model, "
            "typical cases of the kinds not read yet"
        )
        self.channel_suffixes = channel_suffixes  # a case's other sequences are not cases of their own

    def _suffixes(self) -> tuple[str, ...]:
        try:
            return tuple(self.channel_suffixes()) if self.channel_suffixes else ()
        except Exception:  # no model weights yet: one sequence per case
            return ()

    def pick(
        self, candidates: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], now: float
    ) -> tuple[str, dict[str, Any]]:
        """The case to serve of ``candidates`` (unlabelled cases, with their info), and what the answer says of it."""
        if not any(uncertainty_of(info) for info in candidates.values()):  # None or 0: the models know nothing
            typical = cold_start(candidates, labelled, now)
            if typical is not None:
                return typical, {"score": None, "uncertainty": None, "cold_start": True}
        best = min(candidates, key=lambda i: rank_key(i, candidates[i], now))
        return best, {"score": uncertainty_of(candidates[best]), "uncertainty": uncertainty_of(candidates[best])}

    def __call__(self, request, datastore: Datastore):
        suffixes = self._suffixes()
        chosen: dict[str, Any] = {}

        def case(i: str) -> bool:
            return not (suffixes and i.endswith(suffixes))

        def choose(unlabelled: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]]) -> str | None:
            candidates = {i: info for i, info in unlabelled.items() if case(i)}
            if not candidates:
                return None
            best, said = self.pick(candidates, {i: info for i, info in labelled.items() if case(i)}, time.time())
            chosen.update(said)
            return best

        if hasattr(datastore, "claim_image"):
            image_id = datastore.claim_image(choose, SERVED_KEY)
        else:  # a datastore without lnnode's claim (e.g. DICOMweb): rank, no served stamp
            final = DefaultLabelTag.FINAL.value
            unlabelled = {i: datastore.get_image_info(i) for i in datastore.get_unlabeled_images(final)}
            labelled = {i: datastore.get_image_info(i) for i in datastore.get_labeled_images(final)}
            image_id = choose(unlabelled, labelled)
        if image_id is None:
            return {}
        logger.info(f"{type(self).__name__.lower()}: serving {image_id} ({chosen})")
        return {"id": image_id, **chosen}
