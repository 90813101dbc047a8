"""Node-centred crops of fixed physical size on world-aligned grids (what the classifier sees).

A crop's grid has identity direction (LPS axes) and isotropic spacing, centred on the node's world
centre, whatever the scanner's direction matrix and spacing: the same node looks the same in an
axial, an oblique or a flipped acquisition, and the crop's axes mean the same thing to the network.

A 2D image (a one-slice volume) is cropped in its own plane (:func:`extract_planar_crops`): the crop's axes
are the image's columns and rows (on ultrasound: across and in depth), at an isotropic in-plane spacing.
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
from lnnode.io.image import array_to_sitk

__all__ = ["crop_geometry", "extract_crops", "extract_planar_crops", "in_plane_extent", "planar_views", "NodeCropsd"]

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def crop_geometry(center: Sequence[float], shape: Sequence[int], spacing: float) -> ImageGeometry:
    """The world-aligned grid of ``shape`` voxels at ``spacing`` mm centred on ``center`` (LPS mm)."""
    n = np.asarray(shape, dtype=float)
    origin = np.asarray(center, dtype=float) - spacing * (n - 1) / 2.0
    return ImageGeometry(tuple(int(v) for v in shape), (spacing,) * 3, tuple(origin), _IDENTITY)


def extract_crops(
    image: np.ndarray,
    geometry: ImageGeometry,
    centers: Sequence[Sequence[float]],
    shape: Sequence[int],
    spacing: float,
    fill: float = 0.0,
) -> np.ndarray:
    """Crops (N, C, X, Y, Z) float32 of a (C, i, j, k) image around world ``centers`` (linear; ``fill``
    outside the image). Each channel becomes a SimpleITK image once, not once per node."""
    channels = np.asarray(image, dtype=np.float32)
    if channels.ndim == 3:
        channels = channels[None]
    out = np.empty((len(centers), channels.shape[0], *(int(s) for s in shape)), dtype=np.float32)
    if not len(centers):
        return out
    sources = [array_to_sitk(c, geometry) for c in channels]
    for n, center in enumerate(centers):
        g = crop_geometry(center, shape, spacing)
        reference = sitk.Image([int(s) for s in g.shape], sitk.sitkUInt8)
        reference.SetSpacing(g.spacing)
        reference.SetOrigin(g.origin)
        reference.SetDirection(g.direction)
        for c, source in enumerate(sources):
            crop = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, float(fill), sitk.sitkFloat32)
            out[n, c] = sitk.GetArrayViewFromImage(crop).transpose(2, 1, 0)
    return out


def in_plane_extent(geometry: ImageGeometry, size: Sequence[float]) -> float:
    """The larger side, in image pixels along the columns or rows, of a world box ``size`` on a 2D image
    (axis-aligned planes: the box's sides along i and j)."""
    along_index = np.abs(geometry.direction_matrix).T @ np.asarray(size, dtype=float) / np.asarray(geometry.spacing)
    return float(max(along_index[0], along_index[1]))


def extract_planar_crops(
    image: np.ndarray,
    geometry: ImageGeometry,
    centers: Sequence[Sequence[float]],
    size: int,
    spacing: float | Sequence[float],
    fill: float = 0.0,
    in_pixels: bool = False,
) -> np.ndarray:
    """Crops (N, C, size, size) float32 of a 2D image ((C, i, j, 1), (C, i, j) or (i, j)) around world
    ``centers``, in the image's plane: crop axis 0 runs along the image's columns (i), axis 1 along its rows (j),
    ``spacing`` (the pixel spacing's units, or image pixels with ``in_pixels``; one per centre, or one for all)
    per crop pixel; bilinear, ``fill`` outside the image. A coarse crop is smoothed first (speckle would alias)."""
    if geometry.shape[2] != 1:
        raise ValueError(f"a planar crop needs a one-slice image, got shape {geometry.shape}")
    channels = np.asarray(image, dtype=np.float32)
    if channels.shape[-3:] == tuple(geometry.shape):
        channels = channels[..., 0]  # (C, i, j, 1) or (i, j, 1): the plane
    channels = channels[None] if channels.ndim == 2 else channels
    out = np.empty((len(centers), channels.shape[0], int(size), int(size)), dtype=np.float32)
    spacings = np.broadcast_to(np.asarray(spacing, dtype=float), (len(centers),))
    unit = np.arange(int(size), dtype=np.float64) - (int(size) - 1) / 2.0
    smoothed: dict[float, np.ndarray] = {}
    for n, (center, step) in enumerate(zip(centers, spacings, strict=True)):
        ci, cj, ck = geometry.world_to_index(center)
        if abs(ck) > 0.5:
            raise ValueError(f"centre {list(center)} lies {ck:.2f} slices off the image's plane")
        per_pixel = np.ones(2) if in_pixels else np.asarray(geometry.spacing[:2], dtype=float)
        di, dj = np.meshgrid(unit * step / per_pixel[0], unit * step / per_pixel[1], indexing="ij")
        sigma = np.maximum(step / per_pixel - 1.0, 0.0) / 2.0
        key = round(float(sigma.max()), 1)
        if key not in smoothed:
            smoothed[key] = np.stack([ndimage.gaussian_filter(p, sigma) if key else p for p in channels])
        for c, plane in enumerate(smoothed[key]):
            out[n, c] = ndimage.map_coordinates(plane, [ci + di, cj + dj], order=1, mode="constant", cval=float(fill))
    return out


def planar_views(
    image: np.ndarray, geometry: ImageGeometry, nodes: Sequence[Mapping[str, Any]], size: int, spacings_for, fill=0.0
) -> np.ndarray:
    """Crops (N, C * V, size, size) of a 2D image around ``nodes`` (world ``center`` + ``size``): per node the V
    spacings ``spacings_for(larger in-plane side of its box)``, the views of each channel side by side."""
    spacings = np.asarray([spacings_for(in_plane_extent(geometry, n["size"])) for n in nodes], dtype=float)
    centers = [n["center"] for n in nodes]
    if not len(nodes):
        return extract_planar_crops(image, geometry, [], size, 1.0, fill)
    views = [
        extract_planar_crops(image, geometry, centers, size, spacings[:, v], fill) for v in range(spacings.shape[1])
    ]
    n, c = views[0].shape[:2]
    return np.stack(views, axis=2).reshape(n, c * len(views), size, size)


class NodeCropsd(MapTransform):
    """Replace the (C, i, j, k) image under ``keys`` by crops (N, C, X, Y, Z) around ``data[nodes_key]``;
    a two-value ``shape`` crops a 2D image in its plane: (N, C, X, Y), at ``spacing`` or, with ``spacing_for``
    (a function of a node box's larger in-plane side giving one spacing per view), at spacings per node: (N, C * V,
    X, Y), the views of each channel side by side.

    ``{key}_geometry`` must hold the image geometry. Nodes are dicts with a world ``center`` (and ``size``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        shape: Sequence[int],
        spacing: float,
        nodes_key: str = "nodes",
        fill: float = 0.0,
        spacing_for=None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) == 2 and self.shape[0] != self.shape[1]:
            raise ValueError(f"a 2D crop is square, got shape {self.shape}")
        self.spacing = float(spacing)
        self.nodes_key = nodes_key
        self.fill = fill
        self.spacing_for = spacing_for

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        centers = [n["center"] for n in d[self.nodes_key]]
        for key in self.key_iterator(d):
            geometry = d[f"{key}_geometry"]
            if len(self.shape) == 2 and self.spacing_for is not None:
                d[key] = planar_views(d[key], geometry, d[self.nodes_key], self.shape[0], self.spacing_for, self.fill)
            elif len(self.shape) == 2:
                d[key] = extract_planar_crops(d[key], geometry, centers, self.shape[0], self.spacing, self.fill)
            else:
                d[key] = extract_crops(d[key], geometry, centers, self.shape, self.spacing, self.fill)
        return d
