"""The nodes of a reviewed label or of a model result as findings to report: a mask on the image grid, the axes,
the probability, the class and the rules, one per node, in the order of the document.

A label node is delineated in its box on the image (the delineation the pipeline uses,
:func:`lnnode.measure.delineation.measure_node`), so a reviewed box is measured as the reader drew it; its
probability is that of the model node it came from (``from_node`` in the ``original`` result), none for a node
the reader added. Where no node-like blob is found in a box, the segment is the ellipsoid inscribed in the box and
the axes are not reported (the rules say ``indeterminate``), as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnnode.geometry import ImageGeometry
from lnnode.measure.delineation import NodeMeasurement, measure_node
from lnnode.measure.rules import node_rules

__all__ = ["Finding", "findings_from_label", "findings_from_result", "box_ellipsoid"]


@dataclass
class Finding:
    """One node to report. ``mask``: bool on the image grid (i, j, k); ``delineated``: False when the mask is the
    box's inscribed ellipsoid; ``node_class``: the reader's class (None: not given or not reviewed);
    ``suspicious``: the model's call (probability >= its threshold) when there is a probability."""

    id: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    mask: np.ndarray
    delineated: bool
    short_axis_mm: float | None = None
    long_axis_mm: float | None = None
    p_metastasis: float | None = None
    node_class: str | None = None
    suspicious: bool | None = None
    rules: dict[str, str] = field(default_factory=dict)


def box_ellipsoid(geometry: ImageGeometry, center: Sequence[float], size: Sequence[float]) -> np.ndarray:
    """The voxels of the image grid whose centres lie in the ellipsoid inscribed in the world box (at least the
    voxel nearest the centre)."""
    half = np.maximum(np.asarray(size, dtype=float) / 2, 1e-6)
    lo, hi = np.asarray(center) - half, np.asarray(center) + half
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    idx = geometry.world_to_index(corners)
    first = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, np.array(geometry.shape) - 1)
    last = np.clip(np.ceil(idx.max(axis=0)).astype(int), 0, np.array(geometry.shape) - 1)
    grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(first, last, strict=True)], indexing="ij"), -1)
    rel = (geometry.index_to_world(grid.reshape(-1, 3).astype(float)) - np.asarray(center)) / half
    inside = np.sum(rel**2, axis=1) <= 1.0
    mask = np.zeros(geometry.shape, bool)
    mask[tuple(grid.reshape(-1, 3)[inside].T)] = True
    if not mask.any():
        nearest = np.clip(np.round(geometry.world_to_index(center)).astype(int), 0, np.array(geometry.shape) - 1)
        mask[tuple(nearest)] = True
    return mask


def _mask_on_image(m: NodeMeasurement, geometry: ImageGeometry) -> np.ndarray:
    """The delineation (occupancy >= 0.5 on a block of the image grid) placed on the whole grid."""
    start = np.round(geometry.world_to_index(m.geometry.origin)).astype(int)
    mask = np.zeros(geometry.shape, bool)
    window = tuple(slice(s, s + n) for s, n in zip(start, m.occupancy.shape, strict=True))
    mask[window] = m.occupancy >= 0.5
    return mask


def _measured(
    node_id: str, node: dict[str, Any], volume: np.ndarray, geometry: ImageGeometry, modality: str
) -> Finding:
    center = tuple(float(v) for v in node["center"])
    size = tuple(float(v) for v in node["size"])
    m = measure_node(volume, geometry, center, size, modality)
    if m is None:
        return Finding(node_id, center, size, box_ellipsoid(geometry, center, size), False, rules=node_rules(None))
    return Finding(
        node_id,
        center,
        size,
        _mask_on_image(m, geometry),
        True,
        short_axis_mm=round(float(m.short_axis_mm), 1),
        long_axis_mm=round(float(max(m.long_axis_mm, m.short_axis_mm)), 1),
        rules=node_rules(m),
    )


def findings_from_label(
    label: dict[str, Any],
    original: dict[str, Any] | None,
    volume: np.ndarray,
    geometry: ImageGeometry,
    modality: str = "ct",
    p_thresh: float = 0.5,
) -> list[Finding]:
    """The findings of a reviewed label (``lnnode.label/1``); ``original``: the model's result the review
    started from (its probabilities), or None. ``volume``: the image, index-ordered, in its own units."""
    model_nodes = {n.get("id"): n for n in (original or {}).get("nodes", [])}
    findings = []
    for i, node in enumerate(label["nodes"], start=1):
        finding = _measured(f"n{i}", node, volume, geometry, modality)
        finding.node_class = node.get("class")
        p = model_nodes.get(node.get("from_node"), {}).get("p_metastasis")
        if p is not None:
            finding.p_metastasis = float(p)
            finding.suspicious = float(p) >= p_thresh
        findings.append(finding)
    return findings


def findings_from_result(
    result: dict[str, Any], volume: np.ndarray, geometry: ImageGeometry, modality: str = "ct", p_thresh: float = 0.5
) -> list[Finding]:
    """The findings of a model result (``lnnode.result/1``): its nodes, delineated again for their masks; the
    axes and rules are the result's own where it has them."""
    findings = []
    for i, node in enumerate(result["nodes"], start=1):
        finding = _measured(str(node.get("id") or f"n{i}"), node, volume, geometry, modality)
        finding.short_axis_mm = node.get("short_axis_mm", finding.short_axis_mm)
        finding.long_axis_mm = node.get("long_axis_mm", finding.long_axis_mm)
        finding.rules = dict(node.get("rules") or finding.rules)
        if node.get("p_metastasis") is not None:
            finding.p_metastasis = float(node["p_metastasis"])
            finding.suspicious = finding.p_metastasis >= p_thresh
        findings.append(finding)
    return findings
