"""Batch selection for active learning: which K unlabelled cases to read next, given what the models say.

Every function takes per-case arrays over the whole pool (N cases) and a boolean ``labelled`` mask (N,), and
returns the indices of K unlabelled cases, in the order chosen (the first is the most wanted):

* :func:`top_uncertain` — the K highest scores (uncertainty sampling: a batch may be K near-copies);
* :func:`k_center` — core-set (greedy k-centre): each pick the case farthest from every labelled or picked
  case in an embedding (N, D): a batch that covers the pool;
* :func:`badge` — BADGE (Ash et al. 2020): k-means++ seeding on the gradient embedding of the classifier's
  last layer, ``(p - round(p)) * [h, 1]``, so that a case is likelier the less sure the model is (the
  embedding's length) and the more unlike the cases already picked (its direction);
* :func:`representative` — for a cold start (no model yet): typical cases of the kinds not read yet, by k-means
  of model-free descriptors (not outliers).

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


MAX_CLUSTERS = 64  # representative(): clusters at most (a cold start past 64 cases read is rare)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, steps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centres (K, D), assignment (N,)): k-means++ start, then ``steps`` Lloyd steps."""
    centres = x[[int(rng.integers(len(x)))]]
    while len(centres) < k:
        d2 = _squared_distances(x, centres).min(axis=1)
        pick = rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else int(rng.integers(len(x)))
        centres = np.vstack([centres, x[pick]])
    for _ in range(steps):
        assign = np.argmin(_squared_distances(x, centres), axis=1)
        centres = np.stack([x[assign == c].mean(0) if (assign == c).any() else centres[c] for c in range(k)])
    return centres, np.argmin(_squared_distances(x, centres), axis=1)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0, None)


def representative(descriptors: np.ndarray, labelled: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """K typical cases, one at a time (for a cold start: no model yet). Each pick clusters the whole pool
    (k-means of the standardised descriptors) into one cluster more than there are labelled and picked cases,
    and takes, of the largest cluster that holds none of them, the case nearest its centre: typical cases of
    the kinds not read yet, not outliers. The clustering is seeded by ``seed`` and the number of cases taken, so
    one case per call, with the cases read and in review as ``labelled``, gives the same sequence as one call
    for K. With ``MAX_CLUSTERS`` or more cases taken, each pick is the free case farthest from every taken one."""
    x = _standardised(descriptors)
    taken = np.asarray(labelled, dtype=bool).copy()
    free = _unlabelled(taken, k)
    chosen: list[int] = []
    while len(chosen) < min(k, len(free)):
        n = int(taken.sum())
        open_clusters = []
        if n < MAX_CLUSTERS:  # beyond, k-means under a server's lock would take seconds: the farthest case instead
            centres, assign = _kmeans(x, n + 1, np.random.default_rng([seed, n]))
            sizes = np.bincount(assign, minlength=len(centres))
            covered = set(assign[taken].tolist())
            open_clusters = [c for c in np.argsort(-sizes, kind="stable") if c not in covered and sizes[c]]
        if open_clusters:
            members = np.flatnonzero((assign == open_clusters[0]) & ~taken)
            pick = int(members[np.argmin(np.linalg.norm(x[members] - centres[open_clusters[0]], axis=1))])
        else:  # every cluster holds a taken case (or too many are taken): the free case farthest from them
            members = np.flatnonzero(~taken)
            pick = int(members[np.argmax(_squared_distances(x[members], x[taken]).min(axis=1))])
        chosen.append(pick)
        taken[pick] = True
    return chosen
