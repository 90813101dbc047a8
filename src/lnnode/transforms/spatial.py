"""Spatial transforms: load a volume with its geometry, resample it onto a world-aligned model grid.

Detection and cropping work on a *grid*: identity direction (world LPS axes), the model's spacing,
covering the image's world extent. On such a grid a world box and an index box are the same box,
so boxes convert exactly both ways whatever the scanner's direction matrix was.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import array_to_sitk, read_image

__all__ = ["grid_for", "resample_to_grid", "body_box", "LoadVolumed", "ResampleToGridd", "CropToBodyd"]

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def grid_for(geometry: ImageGeometry, spacing: Sequence[float]) -> ImageGeometry:
    """The world-aligned grid with ``spacing`` that covers ``geometry``'s world extent."""
    lo, hi = geometry.world_bounds()
    s = np.asarray(spacing, dtype=float)
    shape = np.maximum(np.ceil((hi - lo) / s - 1e-6).astype(int), 1)
    return ImageGeometry(tuple(shape), tuple(s), tuple(lo + s / 2.0), _IDENTITY)


def resample_to_grid(
    array: np.ndarray, geometry: ImageGeometry, grid: ImageGeometry, fill: float, linear: bool = True
) -> np.ndarray:
    """Resample an index-ordered volume (or (C, i, j, k) channels) onto ``grid`` through world space."""
    a = np.asarray(array)
    if a.ndim == 4:
        return np.stack([resample_to_grid(c, geometry, grid, fill, linear) for c in a])
    reference = sitk.Image([int(s) for s in grid.shape], sitk.sitkUInt8)
    reference.SetSpacing(grid.spacing)
    reference.SetOrigin(grid.origin)
    reference.SetDirection(grid.direction)
    out = sitk.Resample(
        array_to_sitk(a.astype(np.float32, copy=False), geometry),
        reference,
        sitk.Transform(),
        sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
        float(fill),
        sitk.sitkFloat32,
    )
    return sitk.GetArrayViewFromImage(out).transpose(2, 1, 0).copy(order="K")  # SimpleITK's order: no reorder


def body_box(image: np.ndarray, threshold: float, margin: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Index range (start, stop) of the body, grown by ``margin``: the voxels above ``threshold`` in the
    large connected parts (at least a fifth of the largest, found on a coarse copy), so that the table and
    small bits of air-gap noise do not widen it; the legs of a pelvis scan are both kept."""
    fg = np.asarray(image) > threshold
    if fg.ndim == 4:
        fg = fg.any(axis=0)
    if not fg.any():
        return None
    step = tuple(max(1, n // 96) for n in fg.shape)  # components on about 96 voxels per axis
    labels, n = ndimage.label(fg[tuple(slice(None, None, k) for k in step)])
    offset = np.zeros(3, dtype=int)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        idx = np.argwhere(np.isin(labels, 1 + np.flatnonzero(sizes >= 0.2 * sizes.max())))
        offset = idx.min(axis=0) * step
        fg = fg[tuple(slice(a, b) for a, b in zip(offset, (idx.max(axis=0) + 1) * step, strict=True))]
    start = np.zeros(3, dtype=int)
    stop = np.zeros(3, dtype=int)
    full = np.asarray(image).shape[-3:]
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(fg.any(axis=other)) + offset[axis]
        start[axis] = max(int(hit[0]) - margin, 0)
        stop[axis] = min(int(hit[-1]) + 1 + margin, full[axis])
    return start, stop


class LoadVolumed(MapTransform):
    """Read the image path(s) under ``keys`` into a float32 (C, i, j, k) array and its geometry.

    Several paths (co-registered sequences, e.g. T2 + DWI) become channels; sequences on another
    grid than the first are resampled onto it. The geometry goes to ``{key}_geometry``. ``allow_2d``: a 2D
    image too, as a one-slice volume (:func:`lnnode.io.image.read_image`).
    """

    def __init__(self, keys: KeysCollection, allow_2d: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.allow_2d = allow_2d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], np.ndarray) and f"{key}_geometry" in d:
                d[key] = d[key] if d[key].ndim == 4 else d[key][None]
                continue
            paths = d[key] if isinstance(d[key], (list, tuple)) else [d[key]]
            channels = []
            geometry = None
            for path in paths:
                array, g = read_image(path, require_content=True, allow_2d=self.allow_2d)
                if geometry is None:
                    geometry = g
                elif g != geometry:
                    array = resample_to_grid(array, g, geometry, fill=float(array.min()))
                channels.append(array)
            d[key] = channels[0][None] if len(channels) == 1 else np.stack(channels)  # no copy of one channel
            d[f"{key}_geometry"] = geometry
        return d


class ResampleToGridd(MapTransform):
    """Resample ``keys`` onto the world-aligned grid with ``spacing`` (linear; fill = each channel's min).

    The grid goes to ``grid_key``; ``{key}_geometry`` must hold the source geometry.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spacing: Sequence[float],
        grid_key: str = "grid",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spacing = tuple(float(s) for s in spacing)
        self.grid_key = grid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source: ImageGeometry = d[f"{key}_geometry"]
            grid = grid_for(source, self.spacing)
            image = np.asarray(d[key])
            d[key] = np.stack([resample_to_grid(c, source, grid, fill=float(c.min())) for c in image]).astype(
                np.float32
            )
            d[self.grid_key] = grid
        return d


class CropToBodyd(MapTransform):
    """Crop ``keys`` to the body (voxels above ``threshold`` plus ``margin_mm``) and move the grid.

    Air around the patient is most of a CT field of view; skipping it makes sliding-window
    inference cheaper without changing what the detector sees inside the body.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float,
        margin_mm: float = 10.0,
        grid_key: str = "grid",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold
        self.margin_mm = margin_mm
        self.grid_key = grid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: ImageGeometry = d[self.grid_key]
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            return d
        margin = int(np.ceil(self.margin_mm / min(grid.spacing)))
        box = body_box(d[first], self.threshold, margin)
        if box is None:
            return d
        start, stop = box
        window = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        for key in self.key_iterator(d):
            d[key] = np.ascontiguousarray(np.asarray(d[key])[window])
        d[self.grid_key] = ImageGeometry(
            tuple(int(b - a) for a, b in zip(start, stop, strict=True)),
            grid.spacing,
            tuple(grid.index_to_world(start.astype(float))),
            grid.direction,
        )
        return d
