"""How a case looks before any model has seen it: the descriptor of the cold start.

On a new studies folder no model can say which cases are worth reading. What is known is what each image looks
like; the ``uncertain`` and ``badge`` strategies then serve typical cases of the kinds not read yet
(:func:`lnnode.selection.representative`), until the first models score the pool.

The appearance of a case is read on its own grid with the intensity normalisation of its modality
(``DEFAULT_INTENSITY``; ``--conf modality`` for volumes, ``modality_2d`` for 2D images), body voxels only: per
channel a histogram of intensity and one of local gradient magnitude (tissue mix and texture: scanner, protocol,
reconstruction, body region). Histograms are stored as square roots, so that the Euclidean distance of two, over
sqrt(2), is their Hellinger distance: 0 for the same distribution, 1 for disjoint ones; two appearances differ by
the mean over their histograms. No model weights go into it, so it is computed once per image; only appearances
made the same way (``preprocessing``) are compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lnnode.transforms import BODY_THRESHOLD, DEFAULT_INTENSITY, LoadVolumed, NormalizeIntensityd

__all__ = [
    "APPEARANCE_KEY",
    "APPEARANCE_VERSION",
    "BINS",
    "appearance",
    "appearance_distance",
    "appearance_of",
    "preprocessing_of",
]

APPEARANCE_KEY = "lymph_node_appearance"
APPEARANCE_VERSION = 2  # bump when the histograms change (bins, ranges, grid): stored ones are then recomputed
BINS = 16
# normalised intensity per voxel: tissue edges reach about 0.3, noise stays below
GRADIENT_RANGE = (0.0, 0.3)


def _root_histogram(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, *value_range), bins=BINS, range=value_range)
    return np.sqrt(counts / max(counts.sum(), 1))


def appearance(image: np.ndarray) -> np.ndarray:
    """(2 C, BINS) root histograms of a (C, X, Y, Z) image normalised to [0, 1]: per channel intensity, then
    gradient magnitude, over the body voxels (all voxels if none)."""
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


def appearance_of(image: str, modality: str) -> dict:
    """What the datastore keeps of one image (a path; a 2D image is a one-slice volume): its appearance, and how
    it was made."""
    if modality not in DEFAULT_INTENSITY:
        raise ValueError(f"no intensity normalisation for modality {modality!r}")
    loaded = LoadVolumed(keys="image", allow_2d=True)({"image": image})
    normalised = NormalizeIntensityd(keys="image", spec=DEFAULT_INTENSITY[modality])(loaded)["image"]
    rows = appearance(np.asarray(normalised))
    return {"histograms": np.round(rows, 4).tolist(), "preprocessing": preprocessing_of(modality)}


def preprocessing_of(modality: str) -> dict:
    """How an appearance of ``modality`` is made (stored with it: only appearances made alike are compared)."""
    return {"version": APPEARANCE_VERSION, "modality": modality, "intensity": DEFAULT_INTENSITY[modality]}
