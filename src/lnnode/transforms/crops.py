"""Node-centred crops of fixed physical size on world-aligned grids (what the classifier sees).

A crop's grid has identity direction (LPS axes) and isotropic spacing, centred on the node's world
centre, whatever the scanner's direction matrix and spacing: the same node looks the same in an
axial, an oblique or a flipped acquisition, and the crop's axes mean the same thing to the network.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform

from lnnode.geometry import ImageGeometry
from lnnode.io.image import array_to_sitk

__all__ = ["crop_geometry", "extract_crops", "NodeCropsd"]

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


class NodeCropsd(MapTransform):
    """Replace the (C, i, j, k) image under ``keys`` by crops (N, C, X, Y, Z) around ``data[nodes_key]``.

    ``{key}_geometry`` must hold the image geometry. Nodes are dicts with a world ``center``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        shape: Sequence[int],
        spacing: float,
        nodes_key: str = "nodes",
        fill: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.shape = tuple(int(s) for s in shape)
        self.spacing = float(spacing)
        self.nodes_key = nodes_key
        self.fill = fill

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        centers = [n["center"] for n in d[self.nodes_key]]
        for key in self.key_iterator(d):
            d[key] = extract_crops(d[key], d[f"{key}_geometry"], centers, self.shape, self.spacing, self.fill)
        return d
