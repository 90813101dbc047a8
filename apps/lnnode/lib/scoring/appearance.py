"""How a case looks to the detector, and how unlike the labelled cases it is (``novelty``).

Uncertainty alone cannot pick cases while the models are still blind to a kind of case: a detector
trained on a few cases may find nothing anywhere, and then every image scores zero. Novelty breaks
that tie with the one thing known before any model is good: what the image itself looks like.

The appearance of a case is read on the detector's own input (its grid and intensity normalisation,
body voxels only): per channel, a histogram of intensity and one of local gradient magnitude (tissue
mix and texture: scanner, protocol, reconstruction, body region). Histograms are stored as square
roots, so that the Euclidean distance of two, over sqrt(2), is their Hellinger distance: 0 for the same
distribution, 1 for disjoint ones. Two appearances differ by the mean over their histograms; the
novelty of a case is its distance to the nearest reference (the labelled cases and those being
reviewed). The appearance does not depend on the model weights, only on the preprocessing, so it is
computed once per image; only appearances made with the same preprocessing are compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lnnode.transforms import BODY_THRESHOLD

__all__ = [
    "APPEARANCE_KEY",
    "APPEARANCE_VERSION",
    "BINS",
    "appearance",
    "appearance_distance",
    "nearest_distances",
    "novelty",
]

APPEARANCE_KEY = "lymph_node_appearance"
APPEARANCE_VERSION = 1  # bump when the histograms change (bins, ranges): stored ones are then recomputed
BINS = 16
# normalised intensity per voxel of the detector grid: tissue edges reach about 0.3, noise stays below
GRADIENT_RANGE = (0.0, 0.3)


def _root_histogram(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, *value_range), bins=BINS, range=value_range)
    return np.sqrt(counts / max(counts.sum(), 1))


def appearance(image: np.ndarray) -> np.ndarray:
    """(2 C, BINS) root histograms of a (C, X, Y, Z) image normalised to [0, 1] on the detector's grid:
    per channel intensity, then gradient magnitude, over the body voxels (all voxels if none)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f"appearance needs a (C, X, Y, Z) image, got shape {image.shape}")
    rows = []
    for channel in image:
        body = channel > BODY_THRESHOLD
        if not body.any():
            body = np.ones_like(body)
        axes = [a for a in range(channel.ndim) if channel.shape[a] > 1]  # a 2D image is a one-slice volume
        parts = np.gradient(channel, axis=axes) if axes else [np.zeros_like(channel)]
        parts = [parts] if len(axes) == 1 else parts  # numpy returns one array for one axis
        gradient = np.sqrt(sum(np.square(g) for g in parts))
        rows.append(_root_histogram(channel[body], (BODY_THRESHOLD, 1.0)))
        rows.append(_root_histogram(gradient[body], GRADIENT_RANGE))
    return np.stack(rows)


def appearance_distance(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float | None:
    """Mean Hellinger distance of two appearances (0..1); None if they have different channels."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        return None
    return float(np.mean(np.linalg.norm(a - b, axis=1)) / np.sqrt(2.0))


def nearest_distances(candidates: np.ndarray, references: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Distance of each of N appearances (N, R, B) to its nearest of M references (M, R, B), all at once
    (a pool of thousands is ranked under the datastore lock). Inf where there is no reference."""
    candidates, references = np.asarray(candidates, dtype=float), np.asarray(references, dtype=float)
    if not len(references):
        return np.full(len(candidates), np.inf)
    out = np.empty(len(candidates))
    ref_sq = np.einsum("mrb,mrb->mr", references, references)
    for start in range(0, len(candidates), chunk):
        c = candidates[start : start + chunk]
        # |c - f|^2 = |c|^2 + |f|^2 - 2 c.f, per histogram row r
        sq = np.einsum("nrb,nrb->nr", c, c)[:, None, :] + ref_sq[None] - 2 * np.einsum("nrb,mrb->nmr", c, references)
        distances = np.sqrt(np.clip(sq, 0.0, None)).mean(axis=2) / np.sqrt(2.0)
        out[start : start + chunk] = distances.min(axis=1)
    return out


def novelty(candidate: Any, references: Iterable[Any]) -> float:
    """Distance of ``candidate`` to the nearest comparable reference appearance (0 without one)."""
    candidate = np.asarray(candidate, dtype=float)
    comparable = [r for r in references if np.shape(r) == candidate.shape]
    return float(nearest_distances(candidate[None], np.asarray(comparable))[0]) if comparable else 0.0
