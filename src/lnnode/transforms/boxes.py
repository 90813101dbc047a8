"""Node boxes between world LPS (the contracts) and the detector's voxel boxes on a model grid.

MONAI's detection code (anchors, crops, flips, rotations) puts voxel ``i`` on ``[i, i + 1)``; our
index boxes (geometry.py) put it on ``[i - 0.5, i + 0.5]``. The half-voxel shift lives here only.
Boxes are ``xyzxyz`` (MONAI's StandardMode): ``[i0, j0, k0, i1, j1, k1]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.box_utils import spatial_crop_boxes
from monai.transforms import MapTransform, Randomizable

from lnnode.contracts import index_box_to_node, label_from_instance_mask, parse_label
from lnnode.geometry import ImageGeometry, box_world_to_index
from lnnode.io.image import read_image

__all__ = [
    "DETECTOR_OFFSET",
    "load_label",
    "nodes_to_boxes",
    "boxes_to_nodes",
    "LabelToBoxesd",
    "RandFocusCropd",
    "suppress_nested",
]

DETECTOR_OFFSET = 0.5
PLANE_COLUMNS = [
    0,
    1,
    3,
    4,
]  # a 2D model's box of a one-slice volume's box: (i0, j0, k0, i1, j1, k1) -> (i0, j0, i1, j1)


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
    ``changed_weight``; other nodes 1. ``planar``: a 2D model's boxes, (N, 4) and (M, 4).
    """

    def __init__(
        self,
        keys: KeysCollection,
        grid_key: str = "grid",
        changed_weight: float = 1.0,
        planar: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.grid_key = grid_key
        self.changed_weight = float(changed_weight)
        self.columns = PLANE_COLUMNS if planar else list(range(6))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: ImageGeometry = d[self.grid_key]
        for key in self.key_iterator(d):
            label = d[key] if isinstance(d[key], dict) else load_label(d[key])
            nodes = label["nodes"]
            d["boxes"] = nodes_to_boxes(nodes, grid)[:, self.columns]
            d["box_labels"] = np.zeros(len(nodes), dtype=np.int64)
            d["box_weights"] = np.asarray(
                [self.changed_weight if n.get("origin") == "added" or n.get("edited") else 1.0 for n in nodes],
                dtype=np.float32,
            )
            d["rejected_boxes"] = nodes_to_boxes(label.get("rejected", []), grid)[:, self.columns]
            d[key] = label
        return d


class RandFocusCropd(Randomizable, MapTransform):
    """Training patches centred on what the reader corrected, else ``fallback``'s patches.

    With probability ``prob``, and only for an image that has any, ``num_samples`` patches of
    ``spatial_size`` are centred (jittered by up to ``jitter`` of the patch) on a rejected false
    positive (``rejected_boxes``: the patch holds no node there, so the detector learns it as a hard
    negative) or on a node the reader added, moved or relabelled (``box_weights`` > 1), drawn in
    proportion to their weights (rejected boxes weigh ``rejected_weight``). Node boxes are clipped
    to the patch; empty ones are dropped. Otherwise ``fallback`` (e.g. MONAI's
    ``RandCropBoxByPosNegLabeld``) crops. ``rejected_boxes`` and ``box_weights`` are consumed.
    """

    def __init__(
        self,
        fallback: Callable,
        spatial_size: Sequence[int],
        num_samples: int,
        prob: float = 0.5,
        jitter: float = 0.25,
        rejected_weight: float = 1.0,
        image_key: str = "image",
        box_key: str = "boxes",
        label_key: str = "box_labels",
        weight_key: str = "box_weights",
        rejected_key: str = "rejected_boxes",
    ):
        MapTransform.__init__(self, keys=[image_key])
        self.fallback = fallback
        self.spatial_size = np.asarray(spatial_size, dtype=int)
        self.num_samples = int(num_samples)
        self.prob, self.jitter, self.rejected_weight = float(prob), float(jitter), float(rejected_weight)
        self.image_key, self.box_key, self.label_key = image_key, box_key, label_key
        self.weight_key, self.rejected_key = weight_key, rejected_key

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        if isinstance(self.fallback, Randomizable):
            self.fallback.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def _targets(self, d: Mapping[Hashable, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Centres (K, 3) in voxels (K, 2 on a 2D image) and their sampling weights (K,)."""
        n = 2 * (np.ndim(d[self.image_key]) - 1)  # box columns: 6 on a volume, 4 on a 2D image
        rejected = np.asarray(d.get(self.rejected_key, np.zeros((0, n))), dtype=float).reshape(-1, n)
        boxes = np.asarray(d[self.box_key], dtype=float).reshape(-1, n)
        weights = np.asarray(d.get(self.weight_key, np.ones(len(boxes))), dtype=float).reshape(-1)
        changed = weights > 1.0
        focus = np.concatenate([rejected, boxes[changed]])
        centres = (focus[:, : n // 2] + focus[:, n // 2 :]) / 2
        w = np.concatenate([np.full(len(rejected), self.rejected_weight), weights[changed]])
        return centres, w

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        centres, weights = self._targets(d)
        d.pop(self.rejected_key, None)
        d.pop(self.weight_key, None)
        if len(centres) == 0 or weights.sum() <= 0 or self.R.rand() >= self.prob:
            return self.fallback(d)
        image = d[self.image_key]
        shape = np.asarray(image.shape[1:], dtype=int)
        size = np.minimum(self.spatial_size, shape)
        out = []
        for _ in range(self.num_samples):
            centre = centres[self.R.choice(len(centres), p=weights / weights.sum())]
            centre = centre + self.R.uniform(-self.jitter, self.jitter, len(size)) * size
            start = np.clip(np.round(centre - size / 2).astype(int), 0, shape - size)
            end = start + size
            sample = dict(d)
            sample[self.image_key] = image[(slice(None), *(slice(a, b) for a, b in zip(start, end, strict=True)))]
            boxes, keep = spatial_crop_boxes(np.asarray(d[self.box_key]), start, end, remove_empty=True)
            sample[self.box_key] = boxes
            sample[self.label_key] = np.asarray(d[self.label_key])[np.asarray(keep, dtype=bool)]
            out.append(sample)
        return out
