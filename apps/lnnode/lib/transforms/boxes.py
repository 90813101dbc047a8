"""Node boxes between world LPS (the contracts) and the detector's voxel boxes on a model grid.

MONAI's detection code (anchors, crops, flips, rotations) puts voxel ``i`` on ``[i, i + 1)``; our
index boxes (geometry.py) put it on ``[i - 0.5, i + 0.5]``. The half-voxel shift lives here only.
Boxes are ``xyzxyz`` (MONAI's StandardMode): ``[i0, j0, k0, i1, j1, k1]``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..contracts import index_box_to_node, label_from_instance_mask, parse_label
from ..geometry import ImageGeometry, box_world_to_index
from ..imageio import read_image

__all__ = [
    "DETECTOR_OFFSET",
    "load_label",
    "nodes_to_boxes",
    "boxes_to_nodes",
    "LabelToBoxesd",
    "suppress_nested",
]

DETECTOR_OFFSET = 0.5


def load_label(path: str | os.PathLike, image_id: str = "") -> dict:
    """A label document from a label JSON or an instance mask (NIfTI/NRRD, one integer per node)."""
    p = str(path)
    if p.lower().endswith(".json"):
        with open(p, "rb") as f:
            return parse_label(f.read())
    mask, geometry = read_image(p)
    image_id = image_id or os.path.basename(p).split(".")[0]
    return label_from_instance_mask(mask.astype(np.int64), geometry, image_id)


def nodes_to_boxes(nodes: Sequence[Mapping[str, Any]], grid: ImageGeometry) -> np.ndarray:
    """World boxes (``center`` + ``size``) to detector boxes (N, 6) on ``grid``."""
    boxes = np.zeros((len(nodes), 6), dtype=np.float32)
    for n, node in enumerate(nodes):
        lo, hi = box_world_to_index(node["center"], node["size"], grid)
        boxes[n] = np.concatenate([lo, hi]) + DETECTOR_OFFSET
    return boxes


def boxes_to_nodes(boxes: np.ndarray, grid: ImageGeometry) -> list[dict]:
    """Detector boxes (N, 6) on ``grid`` to world boxes ``{"center", "size"}`` (LPS mm)."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 6) - DETECTOR_OFFSET
    return [index_box_to_node(row[:3], row[3:], grid) for row in b]


def suppress_nested(nodes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop a box whose centre lies inside a higher-scoring box (nodes sorted by score, best first).

    IoU-based NMS keeps a small box inside a large one (their IoU is low), so one node can come out
    as several boxes; a radiologist would have to dismiss each. Two real nodes rarely hold each
    other's centre.
    """
    kept: list[Mapping[str, Any]] = []
    for node in nodes:
        c = np.asarray(node["center"], dtype=float)
        if not any(np.all(np.abs(c - np.asarray(k["center"])) <= np.asarray(k["size"]) / 2) for k in kept):
            kept.append(node)
    return kept


class LabelToBoxesd(MapTransform):
    """Turn the label under ``keys`` (path or parsed document) into detector boxes on the grid.

    Writes ``boxes`` (N, 6) float32, ``box_labels`` (N,) int64 (one class: lymph node),
    ``box_weights`` (N,) float32 and ``rejected_boxes`` (M, 6) float32 (the reader's rejected false
    positives, hard negatives for training). A node the reader added, moved or relabelled gets
    ``changed_weight``; other nodes 1.
    """

    def __init__(
        self,
        keys: KeysCollection,
        grid_key: str = "grid",
        changed_weight: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.grid_key = grid_key
        self.changed_weight = float(changed_weight)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: ImageGeometry = d[self.grid_key]
        for key in self.key_iterator(d):
            label = d[key] if isinstance(d[key], dict) else load_label(d[key])
            nodes = label["nodes"]
            d["boxes"] = nodes_to_boxes(nodes, grid)
            d["box_labels"] = np.zeros(len(nodes), dtype=np.int64)
            d["box_weights"] = np.asarray(
                [self.changed_weight if n.get("origin") == "added" or n.get("edited") else 1.0 for n in nodes],
                dtype=np.float32,
            )
            d["rejected_boxes"] = nodes_to_boxes(label.get("rejected", []), grid)
            d[key] = label
        return d
