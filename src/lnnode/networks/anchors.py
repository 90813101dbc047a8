"""Anchor shapes designed from the node-size distribution (the idea of Wang et al. for thyroid CT).

RetinaNet places ``len(base) x len(scales)`` anchor shapes at every location: each base shape
(voxels, on the finest feature map) times each feature-map scale. We pick the base shapes that
best cover the training nodes: a Lloyd iteration that assigns every node to its best anchor
(by IoU of centred boxes) and moves each base shape to the geometric mean of its nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["centred_iou", "anchor_coverage", "design_anchor_shapes"]


def centred_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of centred boxes given by sizes: a (N, D) vs b (M, D) -> (N, M)."""
    a = np.asarray(a, dtype=float)[:, None, :]
    b = np.asarray(b, dtype=float)[None, :, :]
    inter = np.prod(np.minimum(a, b), axis=-1)
    return inter / (np.prod(a, axis=-1) + np.prod(b, axis=-1) - inter)


def _all_anchors(base: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    return np.concatenate([base * s for s in scales])


def anchor_coverage(sizes: np.ndarray, base: np.ndarray, scales: Sequence[float]) -> dict[str, float]:
    """How well anchors cover node sizes: mean best IoU, and the share of nodes with best IoU >= 0.5/0.3."""
    best = centred_iou(sizes, _all_anchors(np.asarray(base, dtype=float), scales)).max(axis=1)
    return {
        "mean_best_iou": float(best.mean()),
        "iou_ge_0.5": float((best >= 0.5).mean()),
        "iou_ge_0.3": float((best >= 0.3).mean()),
    }


def design_anchor_shapes(
    sizes: np.ndarray, n_shapes: int = 3, scales: Sequence[float] = (1, 2, 4), iterations: int = 100
) -> list[list[int]]:
    """Base anchor shapes (integer voxels, ``n_shapes`` x D) for node box ``sizes`` (N, D) in voxels (D = 3, or 2 for
    a 2D detector).

    Deterministic: initialised from volume quantiles of the nodes.
    """
    s = np.atleast_2d(np.asarray(sizes, dtype=float))
    s = s[np.all(s > 0, axis=1)]
    if len(s) < n_shapes:
        raise ValueError(f"need at least {n_shapes} node sizes to design anchors, got {len(s)}")
    scales = np.asarray(scales, dtype=float)
    # start: nodes spread over the volume range; the first assignment moves each to its octave
    order = np.argsort(np.prod(s, axis=1), kind="stable")
    picks = order[np.linspace(0, len(s) - 1, n_shapes).round().astype(int)]
    base = s[picks] / scales[0]
    for _ in range(iterations):
        anchors = _all_anchors(base, scales)
        best = centred_iou(s, anchors).argmax(axis=1)
        shape_of, scale_of = best % n_shapes, scales[best // n_shapes]
        new = base.copy()
        for a in range(n_shapes):
            members = shape_of == a
            if members.any():
                new[a] = np.exp(np.mean(np.log(s[members] / scale_of[members, None]), axis=0))
        if np.allclose(new, base, rtol=1e-4):
            break
        base = new
    base = base[np.argsort(np.prod(base, axis=1))]
    return [[max(int(round(v)), 1) for v in row] for row in base]
