"""``uncertain``: serve the unlabelled case the current models are least sure about.

Ranks the images without a ``final`` label by ``lymph_node_uncertainty.score`` in their info (written
by :class:`lib.scoring.NodeUncertaintyScoring`) plus ``novelty_weight`` times their novelty: how
unlike every reference case they look (:mod:`lib.scoring.appearance`; references are the
labelled cases and those being reviewed). Uncertainty says where the models go wrong; novelty above 0
pushes the choice towards kinds of case not labelled yet, below 0 towards familiar ones (a curriculum
for a cold start). ``novelty_weight`` 0, the default, ranks by uncertainty alone: on the benchmark
neither sign helped (docs/loop.md).

A case served in the last ``IN_REVIEW_SECONDS`` and not labelled yet is being reviewed: it is served
again only when every other case is too. Otherwise highest priority first; images not scored yet rank
after every scored one; equal priorities go to the least recently served first. The choice and the
"served" stamp are one step under the datastore's lock, so two radiologists asking at the same time
get different cases while there are two to give.
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

from ..scoring import APPEARANCE_KEY, SCORE_KEY
from ..scoring.appearance import nearest_distances

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NOVELTY_WEIGHT",
    "IN_REVIEW_SECONDS",
    "SERVED_KEY",
    "Uncertain",
    "novelties",
    "rank_key",
    "served_at",
    "uncertainty_of",
]

SERVED_KEY = "lnnode_served_ts"
IN_REVIEW_SECONDS = 3600.0  # a case served this recently and not labelled yet counts as being reviewed
DEFAULT_NOVELTY_WEIGHT = 0.0  # off: on the benchmark's pool novelty served atypical cases first (docs/loop.md)


def _field(info: dict[str, Any], key: str, field: str) -> Any:
    entry = info.get(key)
    return entry.get(field) if isinstance(entry, dict) else None


def uncertainty_of(info: dict[str, Any]) -> float | None:
    """The stored uncertainty score; None if there is none (or it is not a finite number: info is writable)."""
    score = _field(info, SCORE_KEY, "score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not np.isfinite(score):
        return None
    return float(score)


def rank_key(image_id: str, info: dict[str, Any], bonus: float = 0.0, now: float | None = None) -> tuple:
    """Sort key: not in review before in review, scored before unscored, higher score + ``bonus`` first,
    least recently served, then id."""
    score = uncertainty_of(info)
    served = served_at(info)
    in_review = (time.time() if now is None else now) - served < IN_REVIEW_SECONDS
    return (in_review, score is None, -((score or 0.0) + bonus), served, image_id)


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


def novelties(
    candidates: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], now: float | None = None
) -> dict[str, float]:
    """Novelty of each candidate against the labelled cases and the candidates served in the last
    ``IN_REVIEW_SECONDS`` (a case being reviewed is itself a reference: its own novelty is 0). A case
    without an appearance, or with nothing comparable (other sequences) to compare to, has novelty 0."""
    now = time.time() if now is None else now
    in_review = [i for i, info in candidates.items() if now - served_at(info) < IN_REVIEW_SECONDS]
    looks = {i: a for i, info in candidates.items() if (a := _appearance(info)) is not None}
    # only appearances made the same way (preprocessing, sequences) are compared
    references: dict[tuple, list[np.ndarray]] = {}
    for a in [_appearance(info) for info in labelled.values()] + [looks.get(i) for i in in_review]:
        if a is not None:
            references.setdefault((a[0], a[1].shape), []).append(a[1])
    out = dict.fromkeys(candidates, 0.0)
    for kind in {(a[0], a[1].shape) for a in looks.values()}:
        ids = [i for i, a in looks.items() if (a[0], a[1].shape) == kind]
        nearest = nearest_distances(np.stack([looks[i][1] for i in ids]), np.asarray(references.get(kind, [])))
        out.update({i: float(d) for i, d in zip(ids, nearest, strict=True) if np.isfinite(d)})
    return out


class Uncertain(Strategy):
    """The most uncertain unlabelled image, novelty weighed in (see the module doc)."""

    def __init__(
        self,
        channel_suffixes: Callable[[], Sequence[str]] | None = None,
        novelty_weight: float = DEFAULT_NOVELTY_WEIGHT,
    ):
        super().__init__(
            "Most uncertain unlabelled case first (needs the lymph_node_uncertainty scores; "
            "--conf al_novelty_weight adds how unlike the labelled cases it looks)"
        )
        self.channel_suffixes = channel_suffixes  # a case's other sequences are not cases of their own
        self.novelty_weight = float(novelty_weight)

    def _suffixes(self) -> tuple[str, ...]:
        try:
            return tuple(self.channel_suffixes()) if self.channel_suffixes else ()
        except Exception:  # no model weights yet: one sequence per case
            return ()

    def pick(
        self, candidates: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], now: float
    ) -> tuple[str, dict[str, Any]]:
        """The case to serve of ``candidates`` (unlabelled cases, with their info), and what the answer says of it."""
        novel = dict.fromkeys(candidates, 0.0)
        if self.novelty_weight:
            novel = novelties(candidates, labelled, now)
        best = min(candidates, key=lambda i: rank_key(i, candidates[i], self.novelty_weight * novel[i], now))
        uncertainty = uncertainty_of(candidates[best])
        priority = None if uncertainty is None else round(uncertainty + self.novelty_weight * novel[best], 4)
        return best, {"score": priority, "uncertainty": uncertainty, "novelty": round(novel[best], 4)}

    def reads_labelled(self) -> bool:
        """Whether :meth:`pick` looks at the labelled cases (a PACS is not asked for their info otherwise)."""
        return bool(self.novelty_weight)

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
            labelled_ids = datastore.get_labeled_images(final) if self.reads_labelled() else []
            labelled = {i: datastore.get_image_info(i) for i in labelled_ids}
            image_id = choose(unlabelled, labelled)
        if image_id is None:
            return {}
        logger.info(f"{type(self).__name__.lower()}: serving {image_id} ({chosen})")
        return {"id": image_id, **chosen}
