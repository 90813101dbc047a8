"""Batch selection for active learning: which K unlabelled cases to read next, given what the models say.

Every function takes per-case arrays over the whole pool (N cases) and a boolean ``labelled`` mask (N,), and
returns the indices of K unlabelled cases, in the order chosen (the first is the most wanted):

* :func:`top_uncertain` — the K highest scores (uncertainty sampling: a batch may be K near-copies);
* :func:`k_center` — core-set (greedy k-centre): each pick the case farthest from every labelled or picked
  case in an embedding (N, D): a batch that covers the pool;
* :func:`badge` — BADGE (Ash et al. 2020): k-means++ seeding on the gradient embedding of the classifier's
  last layer, ``(p - round(p)) * [h, 1]``, so that a case is likelier the less sure the model is (the
  embedding's length) and the more unlike the cases already picked (its direction);
* :func:`representative` — for a cold start (no model yet): k-means of the model-free descriptors into K
  clusters, per cluster the case nearest its centre (typical cases first, not outliers).

Embeddings are compared by Euclidean distance after each column is standardised over the pool.
"""

from __future__ import annotations

import numpy as np

__all__ = ["badge", "badge_embedding", "binary_entropy", "k_center", "representative", "top_uncertain"]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits (0..1) of Bernoulli probabilities."""
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _standardised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    spread = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _unlabelled(labelled: np.ndarray, k: int) -> np.ndarray:
    free = np.flatnonzero(~np.asarray(labelled, dtype=bool))
    if k < 0:
        raise ValueError(f"batch size must be >= 0, got {k}")
    return free


def top_uncertain(scores: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    """The K unlabelled cases with the highest ``scores`` (ties by index)."""
    free = _unlabelled(labelled, k)
    order = np.argsort(-np.asarray(scores, dtype=float)[free], kind="stable")
    return [int(i) for i in free[order[:k]]]


def k_center(embeddings: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    """Greedy k-centre: each pick maximises its distance to the nearest labelled or already picked case.
    Without any labelled case the first pick is the case nearest the pool's mean."""
    x = _standardised(embeddings)
    free = _unlabelled(labelled, k)
    centres = np.flatnonzero(np.asarray(labelled, dtype=bool))
    if len(centres):
        nearest = np.min([np.linalg.norm(x - x[c], axis=1) for c in centres], axis=0)
    else:
        nearest = np.full(len(x), np.inf)
    chosen: list[int] = []
    available = np.zeros(len(x), dtype=bool)
    available[free] = True
    while len(chosen) < min(k, len(free)):
        if np.isinf(nearest[available]).all():
            pick = int(free[np.argmin(np.linalg.norm(x[free] - x.mean(axis=0), axis=1))])
        else:
            pick = int(np.flatnonzero(available)[np.argmax(nearest[available])])
        chosen.append(pick)
        available[pick] = False
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return chosen


def badge_embedding(features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(N, D + 1) gradient of the binary cross-entropy at the predicted class with respect to a logistic last
    layer on ``features`` (N, D) (weights and bias): ``(p - round(p)) * [h, 1]``."""
    h = np.asarray(features, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    return (p - np.round(p))[:, None] * np.hstack([h, np.ones((len(h), 1))])


def badge(
    features: np.ndarray, probabilities: np.ndarray, labelled: np.ndarray, k: int, rng: np.random.Generator
) -> list[int]:
    """k-means++ seeding over the unlabelled cases' gradient embeddings (features are standardised first, so the
    gradient's length is the model's doubt, not the feature scale)."""
    g = badge_embedding(_standardised(features), probabilities)
    free = _unlabelled(labelled, k)
    chosen: list[int] = []
    if not len(free) or not k:
        return chosen
    norms = np.linalg.norm(g[free], axis=1)
    first = int(free[np.argmax(norms)])  # the longest gradient: the case the model is least sure of
    chosen.append(first)
    nearest = np.linalg.norm(g[free] - g[first], axis=1)
    while len(chosen) < min(k, len(free)):
        weights = np.square(nearest)
        weights[np.isin(free, chosen)] = 0.0
        if weights.sum() <= 0:  # every remaining case has the same embedding as a chosen one
            rest = [int(i) for i in free if int(i) not in chosen]
            pick = rest[int(rng.integers(len(rest)))]
        else:
            pick = int(free[rng.choice(len(free), p=weights / weights.sum())])
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(g[free] - g[pick], axis=1))
    return chosen


def representative(descriptors: np.ndarray, labelled: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """K typical unlabelled cases: k-means (K clusters, k-means++ start, 20 Lloyd steps) over the unlabelled
    cases' descriptors; per cluster the case nearest its centre, larger clusters first."""
    x = _standardised(descriptors)
    free = _unlabelled(labelled, k)
    k = min(k, len(free))
    if not k:
        return []
    pts = x[free]
    centres = pts[[int(rng.integers(len(pts)))]]
    while len(centres) < k:
        d2 = np.min(((pts[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        pick = rng.choice(len(pts), p=d2 / d2.sum()) if d2.sum() > 0 else int(rng.integers(len(pts)))
        centres = np.vstack([centres, pts[pick]])
    for _ in range(20):
        assign = np.argmin(((pts[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.stack([pts[assign == c].mean(0) if (assign == c).any() else centres[c] for c in range(k)])
    assign = np.argmin(((pts[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    chosen: list[int] = []
    for c in np.argsort(-np.bincount(assign, minlength=k), kind="stable"):
        members = np.flatnonzero(assign == c)
        members = [m for m in members if int(free[m]) not in chosen]
        if members:
            best = members[int(np.argmin(np.linalg.norm(pts[members] - centres[c], axis=1)))]
            chosen.append(int(free[best]))
    rest = [int(i) for i in free if int(i) not in chosen]  # empty clusters: fill at random
    while len(chosen) < k:
        chosen.append(rest.pop(int(rng.integers(len(rest)))))
    return chosen
