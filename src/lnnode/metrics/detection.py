"""Detection metrics: FROC, CPM, average precision, per-size sensitivity.

The hit criterion is explicit everywhere (``criterion`` in every output):

* ``iou``: a prediction hits a ground-truth node when their 3D IoU >= ``iou_thresh`` (0.1 by
  default, as MONAI's LUNA16 detection evaluation uses);
* ``center``: a prediction hits when its centre lies inside the ground-truth box.

Matching is greedy by descending score within each volume; each node is hit at most once, and a
second prediction on an already-hit node counts as a false positive (a duplicate box is a box the
radiologist has to dismiss). Boxes are world LPS (``center`` + ``size``, mm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FP_RATES",
    "SIZE_BINS",
    "box_iou",
    "center_hits",
    "match_volume",
    "VolumeMatch",
    "froc",
    "cpm",
    "average_precision",
    "evaluate_detection",
]

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SIZE_BINS = (("<5mm", 0.0, 5.0), ("5-10mm", 5.0, 10.0), (">=10mm", 10.0, np.inf))


def _as_boxes(nodes: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray([n["center"] for n in nodes], dtype=float).reshape(-1, 3)
    s = np.asarray([n["size"] for n in nodes], dtype=float).reshape(-1, 3)
    return c - s / 2.0, c + s / 2.0


def box_iou(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """3D IoU (len(a), len(b)) of world boxes given as ``{"center", "size"}``."""
    alo, ahi = _as_boxes(a)
    blo, bhi = _as_boxes(b)
    inter = np.prod(np.clip(np.minimum(ahi[:, None], bhi[None]) - np.maximum(alo[:, None], blo[None]), 0, None), -1)
    va = np.prod(ahi - alo, axis=-1)[:, None]
    vb = np.prod(bhi - blo, axis=-1)[None]
    return inter / np.maximum(va + vb - inter, 1e-12)


def center_hits(pred: Sequence[Mapping[str, Any]], gt: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(len(pred), len(gt)) 1.0 where the predicted centre lies inside the ground-truth box."""
    pc = np.asarray([n["center"] for n in pred], dtype=float).reshape(-1, 3)
    glo, ghi = _as_boxes(gt)
    inside = np.all((pc[:, None] >= glo[None]) & (pc[:, None] <= ghi[None]), axis=-1)
    return inside.astype(float)


@dataclass
class VolumeMatch:
    """Per prediction (in input order): score and hit ground-truth index (-1 = false positive)."""

    scores: np.ndarray
    hit: np.ndarray
    n_gt: int


def match_volume(
    pred: Sequence[Mapping[str, Any]],
    gt: Sequence[Mapping[str, Any]],
    criterion: str = "iou",
    iou_thresh: float = 0.1,
) -> VolumeMatch:
    """Greedy matching by descending ``detection_score`` (or ``score``) within one volume."""
    scores = np.asarray([p.get("detection_score", p.get("score", 1.0)) for p in pred], dtype=float)
    hit = np.full(len(pred), -1, dtype=int)
    if len(pred) and len(gt):
        if criterion == "iou":
            quality = box_iou(pred, gt)
            ok = quality >= iou_thresh
        elif criterion == "center":
            quality = center_hits(pred, gt) - 1e-3 * _center_distance(pred, gt)
            ok = center_hits(pred, gt) > 0
        else:
            raise ValueError(f"unknown hit criterion {criterion!r} (use 'iou' or 'center')")
        taken = np.zeros(len(gt), dtype=bool)
        for i in np.argsort(-scores, kind="stable"):
            candidates = np.flatnonzero(ok[i] & ~taken)
            if candidates.size:
                j = candidates[np.argmax(quality[i, candidates])]
                hit[i] = j
                taken[j] = True
    return VolumeMatch(scores=scores, hit=hit, n_gt=len(gt))


def _center_distance(pred, gt) -> np.ndarray:
    pc = np.asarray([n["center"] for n in pred], dtype=float).reshape(-1, 3)
    gc = np.asarray([n["center"] for n in gt], dtype=float).reshape(-1, 3)
    return np.linalg.norm(pc[:, None] - gc[None], axis=-1)


def froc(matches: Sequence[VolumeMatch]) -> dict[str, np.ndarray]:
    """FROC curve over volumes: at each score threshold, sensitivity and false positives per volume."""
    n_volumes = max(len(matches), 1)
    n_gt = sum(m.n_gt for m in matches)
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    tp = np.concatenate([m.hit >= 0 for m in matches]) if matches else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    # one point per distinct threshold: the last prediction of each run of equal scores
    last = np.r_[scores[1:] != scores[:-1], True] if scores.size else np.zeros(0, bool)
    sens = np.cumsum(tp)[last] / max(n_gt, 1)
    fps = np.cumsum(~tp)[last] / n_volumes
    return {
        "thresholds": np.r_[np.inf, scores[last]],
        "sensitivity": np.r_[0.0, sens],
        "fp_per_volume": np.r_[0.0, fps],
    }


def sensitivity_at(curve: Mapping[str, np.ndarray], fp_rate: float) -> float:
    """Highest sensitivity reached with at most ``fp_rate`` false positives per volume."""
    ok = curve["fp_per_volume"] <= fp_rate + 1e-12
    return float(curve["sensitivity"][ok].max()) if ok.any() else 0.0


def cpm(curve: Mapping[str, np.ndarray], fp_rates: Sequence[float] = FP_RATES) -> tuple[float, dict[str, float]]:
    """Competition performance metric: mean sensitivity at the given FP rates (LUNA16's 1/8 ... 8)."""
    at = {f"{r:g}": sensitivity_at(curve, r) for r in fp_rates}
    return float(np.mean(list(at.values()))), at


def average_precision(matches: Sequence[VolumeMatch]) -> float:
    """Area under the precision-recall curve (all-point interpolation, as in PASCAL VOC 2010+)."""
    n_gt = sum(m.n_gt for m in matches)
    if n_gt == 0:
        return float("nan")
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    tp = (np.concatenate([m.hit >= 0 for m in matches]) if matches else np.zeros(0, bool)).astype(float)
    if tp.size == 0:
        return 0.0
    tp = tp[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(tp)
    recall = np.r_[0.0, hits / n_gt, 1.0]
    precision = np.r_[0.0, hits / np.arange(1, tp.size + 1), 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    step = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))


def evaluate_detection(
    predictions: Sequence[Sequence[Mapping[str, Any]]],
    ground_truth: Sequence[Sequence[Mapping[str, Any]]],
    short_axes: Sequence[Sequence[float]] | None = None,
    criterion: str = "iou",
    iou_thresh: float = 0.1,
) -> dict[str, Any]:
    """All detection figures for a set of volumes (lists of nodes per volume, world LPS).

    ``short_axes`` gives each ground-truth node's short axis (mm) for the per-size sensitivity;
    without it the smallest in-plane box extent stands in (said in the output).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(ground_truth)} volumes")
    matches = [match_volume(p, g, criterion, iou_thresh) for p, g in zip(predictions, ground_truth, strict=True)]
    curve = froc(matches)
    score, at = cpm(curve)
    ap = {
        f"ap@{t:g}": average_precision(
            [match_volume(p, g, "iou", t) for p, g in zip(predictions, ground_truth, strict=True)]
        )
        for t in (0.1, 0.5)
    }
    # per-size sensitivity at the operating point with at most 1 false positive per volume
    ok = curve["fp_per_volume"] <= 1.0
    best = int(np.flatnonzero(ok)[np.argmax(curve["sensitivity"][ok])])
    threshold = float(curve["thresholds"][best])
    size_source = "given short axes" if short_axes is not None else "smallest in-plane box extent"
    sizes, found = [], []
    for v, (m, g) in enumerate(zip(matches, ground_truth, strict=True)):
        hit_gt = set(m.hit[(m.hit >= 0) & (m.scores >= threshold)].tolist())
        for j, node in enumerate(g):
            sizes.append(short_axes[v][j] if short_axes is not None else float(min(node["size"][:2])))
            found.append(j in hit_gt)
    sizes_arr, found_arr = np.asarray(sizes, dtype=float), np.asarray(found, dtype=bool)
    per_size = {}
    for name, lo, hi in SIZE_BINS:
        sel = (sizes_arr >= lo) & (sizes_arr < hi)
        per_size[name] = {"n": int(sel.sum()), "sensitivity": float(found_arr[sel].mean()) if sel.any() else None}
    return {
        "criterion": f"IoU >= {iou_thresh:g}" if criterion == "iou" else "predicted centre inside the ground-truth box",
        "matching": "greedy by score per volume; duplicates on a hit node are false positives",
        "n_volumes": len(matches),
        "n_nodes": int(sum(m.n_gt for m in matches)),
        "n_predictions": int(sum(m.scores.size for m in matches)),
        "cpm": score,
        "sensitivity_at_fp": at,
        **ap,
        "per_size_sensitivity": {
            "operating_point": {"max_fp_per_volume": 1.0, "score_threshold": threshold},
            "size": size_source,
            "bins": per_size,
        },
        "froc": {k: [float(x) if np.isfinite(x) else None for x in v] for k, v in curve.items()},
    }
