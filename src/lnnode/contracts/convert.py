"""Converters between the contracts' world boxes and voxel boxes of an image, and instance masks to labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..geometry import ImageGeometry, box_index_to_world, box_world_to_index
from .schema import NODE_CLASSES, ContractError, check_one_of, make_label

__all__ = [
    "label_from_instance_mask",
    "instance_boxes",
    "label_to_index_boxes",
    "index_box_to_node",
    "planar_box_to_node",
    "label_to_planar_boxes",
    "check_label_in_image",
]


def _rounded(v: Sequence[float], ndigits: int = 3) -> list[float]:
    return [round(float(a), ndigits) for a in v]


def index_box_to_node(lo: Sequence[float], hi: Sequence[float], geometry: ImageGeometry) -> dict:
    """A continuous index box to a node ``{"center", "size"}`` in world LPS mm."""
    center, size = box_index_to_world(lo, hi, geometry)
    return {"center": _rounded(center), "size": _rounded(size)}


def label_to_index_boxes(label: dict, geometry: ImageGeometry, key: str = "nodes") -> np.ndarray:
    """Boxes of ``label[key]`` as continuous index boxes, array (N, 2, 3) of (lo, hi) in (i, j, k).

    Exact inverse of :func:`index_box_to_node` for axis-aligned direction matrices; for an oblique
    image the index box encloses the world box (centres stay exact).
    """
    boxes = [box_world_to_index(n["center"], n["size"], geometry) for n in label.get(key, [])]
    return np.asarray(boxes, dtype=float).reshape(-1, 2, 3)


def _axis_aligned_plane(geometry: ImageGeometry) -> None:
    if not geometry.is_axis_aligned(tol=1e-4):
        raise ContractError("geometry", "an oblique 2D image: its pixel boxes are not world boxes (LPS-aligned)")


def planar_box_to_node(lo: Sequence[float], hi: Sequence[float], geometry: ImageGeometry) -> dict:
    """A pixel box (lo, hi) in (i, j) of a 2D image (a one-slice volume) to a node: the world box of the pixels,
    one slice thick (the contracts' z is the slice). Exact for planes along world axes; an oblique plane is
    refused (a world-aligned box of a rotated pixel box would grow on every round trip)."""
    _axis_aligned_plane(geometry)
    return index_box_to_node([lo[0], lo[1], -0.5], [hi[0], hi[1], 0.5], geometry)


def label_to_planar_boxes(label: dict, geometry: ImageGeometry, key: str = "nodes") -> np.ndarray:
    """Boxes of ``label[key]`` on a 2D image as pixel boxes, array (N, 2, 2) of (lo, hi) in (i, j); the plane must
    lie along world axes, as for :func:`planar_box_to_node`."""
    _axis_aligned_plane(geometry)
    return label_to_index_boxes(label, geometry, key)[:, :, :2]


def instance_boxes(mask: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per instance value > 0 of an index-ordered mask, its continuous index box (lo, hi)."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ContractError("mask", f"an instance mask must be 3D, got {m.ndim}D")
    if not np.issubdtype(m.dtype, np.integer):
        if not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
            raise ContractError("mask", "an instance mask must hold integers (one per node)")
        m = m.astype(np.int64)
    idx = np.nonzero(m > 0)
    if idx[0].size == 0:
        return {}
    values = m[idx]
    order = np.argsort(values, kind="stable")
    values = values[order]
    coords = np.stack(idx, axis=1)[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    mins = np.minimum.reduceat(coords, starts, axis=0)
    maxs = np.maximum.reduceat(coords, starts, axis=0)
    return {int(values[s]): (mins[n] - 0.5, maxs[n] + 0.5) for n, s in enumerate(starts)}


def label_from_instance_mask(
    mask: np.ndarray,
    geometry: ImageGeometry,
    image: str,
    classes: Mapping[int, str] | None = None,
    reviewer: str | None = None,
) -> dict:
    """A label from an instance mask (index order (i, j, k), one integer per node, 0 = background).

    ``classes`` maps instance value to ``benign``/``metastatic``; instances missing from it get no
    class (detection-only). Nodes come out in instance order.
    """
    m = np.asarray(mask)
    if tuple(m.shape) != tuple(geometry.shape):
        raise ContractError("mask", f"mask shape {tuple(m.shape)} differs from image shape {geometry.shape}")
    classes = dict(classes or {})
    boxes = instance_boxes(m)
    unknown = sorted(set(classes) - set(boxes))
    if unknown:
        raise ContractError("classes", f"instances {unknown} are in the class table but not in the mask")
    nodes = []
    for value, (lo, hi) in boxes.items():
        node = index_box_to_node(lo, hi, geometry)
        if value in classes:
            check_one_of(classes[value], NODE_CLASSES, f"classes[{value}]")
            node["class"] = classes[value]
        nodes.append(node)
    return make_label(image, nodes, reviewer=reviewer)


def check_label_in_image(label: dict, geometry: ImageGeometry) -> None:
    """Raise ContractError for a box whose centre lies outside the image."""
    for key in ("nodes", "rejected"):
        for i, n in enumerate(label.get(key, [])):
            if not geometry.contains_index(geometry.world_to_index(n["center"])):
                lo, hi = geometry.world_bounds()
                raise ContractError(
                    f"{key}[{i}].center",
                    f"{_rounded(n['center'], 1)} lies outside the image "
                    f"(world LPS bounds {_rounded(lo, 1)} to {_rounded(hi, 1)})",
                )
