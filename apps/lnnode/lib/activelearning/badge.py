"""``badge``: uncertain cases, and cases unlike the others the current models have already sent to a reader.

Uncertainty sampling alone can serve several readers (or one reader between two trainings) near-copies of the same
hard case. ``badge`` (Ash et al. 2020, "Deep batch active learning by diverse, uncertain gradient lower bounds")
compares cases by the gradient the classifier's last layer would get from them, ``(p - round(p)) * [h, 1]``, with
``h`` the case's embedding (:func:`lib.scoring.uncertainty.case_embedding`: its nodes' pooled classifier features,
standardised over the cases) and ``p`` the probability of its most doubtful node: long for a case the model is
unsure of, pointing where the case differs.

The batch is every case served since the models in service scored the pool (they learn nothing from a case before
the next training). The first case of a batch is the one with the longest gradient; every next one is drawn with
probability proportional to its squared gradient distance to the nearest case of the batch (k-means++ seeding), so
a near-copy of a served case is almost never served and a doubtful, unlike one is likely. Cases without an embedding
(no node found, not scored yet) and a pool the current models have not scored go by ``uncertain``'s ranking (on a
cold start: typical cases of the kinds not read yet).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lnnode.selection import badge_embedding

from ..scoring import SCORE_KEY
from .uncertain import IN_REVIEW_SECONDS, Uncertain, served_at, uncertainty_of

__all__ = ["Badge"]


def _embedded(info: dict[str, Any]) -> tuple[np.ndarray, float, Any, float] | None:
    """(embedding, p of its most doubtful node, model versions, when scored), or None where unusable."""
    entry = info.get(SCORE_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        h = np.asarray(entry.get("embedding"), dtype=float)
        p, ts = float(entry.get("p_doubt")), float(entry.get("ts"))
    except (TypeError, ValueError):
        return None
    if h.ndim != 1 or not h.size or not np.isfinite(h).all() or not 0.0 <= p <= 1.0:
        return None
    return h, p, entry.get("models"), ts


class Badge(Uncertain):
    """Doubtful and diverse: see the module doc."""

    def __init__(self, channel_suffixes=None, seed: int | None = None):
        super().__init__(channel_suffixes)
        self.description = (
            "Uncertain and unlike the cases already served since the last training (BADGE: k-means++ on the "
            "classifier's gradient embeddings); several readers get a batch that is not redundant"
        )
        self._rng = np.random.default_rng(seed)

    def pick(self, candidates, labelled, now):
        scored = {i: e for i, info in {**labelled, **candidates}.items() if (e := _embedded(info)) is not None}
        if not scored:
            return super().pick(candidates, labelled, now)
        newest = max(scored.values(), key=lambda e: e[3])[2]  # the models in service: the latest scores
        scored = {i: e for i, e in scored.items() if e[2] == newest}
        began = min(e[3] for i, e in scored.items() if i in candidates) if set(scored) & set(candidates) else now
        infos = {**labelled, **candidates}
        free = [i for i in scored if i in candidates and now - served_at(candidates[i]) >= IN_REVIEW_SECONDS]
        # served since the scores and read or in review (a case left unread for an hour is free again)
        batch = [i for i in scored if served_at(infos[i]) >= began and i not in free]
        if not free:
            return super().pick(candidates, labelled, now)
        ids = free + batch
        h = np.stack([scored[i][0] for i in ids])
        spread = h.std(axis=0)
        h = (h - h.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        g = badge_embedding(h, np.array([scored[i][1] for i in ids]))
        pool, members = g[: len(free)], g[len(free) :]
        if not len(members):
            index = int(np.argmax(np.linalg.norm(pool, axis=1)))
        else:
            d2 = np.min(((pool[:, None] - members[None]) ** 2).sum(-1), axis=1)
            index = int(self._rng.choice(len(free), p=d2 / d2.sum())) if d2.sum() > 0 else int(np.argmax(d2))
        best = free[index]
        gradient = round(float(np.linalg.norm(pool[index])), 4)
        return best, {"score": gradient, "uncertainty": uncertainty_of(candidates[best]), "batch": len(batch)}
