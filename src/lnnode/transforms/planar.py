"""2D images (ultrasound, key slices) on the grid a 2D model works on, and their boxes.

A 2D image is a one-slice volume (C, i, j, 1). A 2D model does not resample it onto world axes, as the 3D
models do: it works on the image's own pixel grid, coarsened by the model's ``spacing``, which counts *image
pixels* per model pixel (``(2, 2)``: half the resolution), whatever the pixel spacing says. Ultrasound images
of one data set differ in depth setting, so in millimetres per pixel, and pictures (PNG, JPEG) have none; a
lesion's size in pixels is what such models are trained on. The grid keeps the image's orientation, so a pixel
box converts to a world box exactly for planes along world axes (the contracts' boxes: one slice thick).

Boxes of a 2D model are ``[i0, j0, i1, j1]`` on that grid (MONAI's StandardMode for 2 dimensions).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import is_planar

from .boxes import PLANE_COLUMNS, boxes_to_nodes, nodes_to_boxes

__all__ = ["plane_grid", "resample_plane", "PlaneGridd", "planar_boxes_to_nodes", "nodes_to_planar_boxes"]


def plane_grid(geometry: ImageGeometry, factor: Sequence[float]) -> ImageGeometry:
    """The grid of a 2D model on a one-slice image: ``factor`` image pixels per grid pixel along i and j, the
    image's orientation, the grid's pixel centres where the image pixels they average are centred."""
    if not is_planar(geometry):
        raise ValueError(f"a 2D model's grid needs a one-slice image, got shape {geometry.shape}")
    f = np.asarray(factor, dtype=float)
    if f.shape != (2,) or np.any(f <= 0):
        raise ValueError(f"factor must be two positive numbers, got {list(factor)}")
    shape = np.maximum(np.round(np.asarray(geometry.shape[:2]) / f).astype(int), 1)
    spacing = (geometry.spacing[0] * f[0], geometry.spacing[1] * f[1], geometry.spacing[2])
    origin = geometry.index_to_world([(f[0] - 1) / 2, (f[1] - 1) / 2, 0.0])
    return ImageGeometry((int(shape[0]), int(shape[1]), 1), spacing, tuple(origin), geometry.direction)


def resample_plane(image: np.ndarray, geometry: ImageGeometry, grid: ImageGeometry) -> np.ndarray:
    """A (C, i, j, 1) image on ``grid`` (from :func:`plane_grid`): (C, I, J) float32. Coarsening first smooths
    (a Gaussian of half the factor), so speckle does not alias; bilinear, edge values outside."""
    planes = np.asarray(image, dtype=np.float32)[..., 0]
    f = np.asarray(grid.spacing[:2]) / np.asarray(geometry.spacing[:2])
    ii = np.arange(grid.shape[0]) * f[0] + (f[0] - 1) / 2
    jj = np.arange(grid.shape[1]) * f[1] + (f[1] - 1) / 2
    coords = np.meshgrid(ii, jj, indexing="ij")
    sigma = np.maximum(f - 1.0, 0.0) / 2.0
    out = np.empty((planes.shape[0], *grid.shape[:2]), dtype=np.float32)
    for c, plane in enumerate(planes):
        smooth = ndimage.gaussian_filter(plane, sigma) if np.any(sigma > 0) else plane
        out[c] = ndimage.map_coordinates(smooth, coords, order=1, mode="nearest")
    return out


def nodes_to_planar_boxes(nodes: Sequence[Mapping[str, Any]], grid: ImageGeometry) -> np.ndarray:
    """World boxes of a 2D image's nodes to a 2D model's boxes (N, 4) on ``grid``."""
    return nodes_to_boxes(nodes, grid)[:, PLANE_COLUMNS]


def planar_boxes_to_nodes(boxes: np.ndarray, grid: ImageGeometry) -> list[dict]:
    """A 2D model's boxes (N, 4) on ``grid`` to world boxes ``{"center", "size"}``, one slice thick."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    full = np.zeros((len(b), 6))
    full[:, PLANE_COLUMNS] = b
    full[:, 5] = 1.0  # the slice: [0, 1) in MONAI's convention
    return boxes_to_nodes(full, grid)


class PlaneGridd(MapTransform):
    """A one-slice image under ``keys`` ((C, i, j, 1), geometry in ``{key}_geometry``) onto a 2D model's grid:
    (C, I, J), the grid in ``grid_key``. ``spacing``: image pixels per grid pixel (see the module docstring)."""

    def __init__(
        self, keys: KeysCollection, spacing: Sequence[float], grid_key: str = "grid", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.factor = tuple(float(s) for s in spacing)
        self.grid_key = grid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source: ImageGeometry = d[f"{key}_geometry"]
            grid = plane_grid(source, self.factor)
            d[key] = resample_plane(d[key], source, grid)
            d[self.grid_key] = grid
        return d
