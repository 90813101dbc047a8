"""A lesion on a 2D image (ultrasound, a key slice): its delineation in the box and what a reader measures.

The delineation is :func:`lnnode.measure.delineation.delineate_node` on the one-slice volume, with the lesion
taken as the darker side of its box (hypo-echoic on ultrasound), after a Gaussian of 8 % of the box's smaller
side: speckle would otherwise fray every outline (on the ultrasound phantoms it lowers the solidity of an oval
lesion from 0.77 to 0.60). In the image's plane (pixel axes i = across,
j = down, whatever the image's orientation in the world):

* long axis (the largest diameter) and short axis (the longest chord perpendicular to it inside the lesion);
* width and height: the lesion's extent across (i) and in depth (j); *taller than wide* when height > width;
* solidity: area over convex-hull area (a circumscribed margin is near 1, an angular or spiculated one lower).

Lengths are in the image's units: mm where the pixel spacing is known, pixels where it is not (a PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import is_planar
from lnnode.measure.axes import measure_axial
from lnnode.measure.delineation import SEARCH_MARGIN_MM, delineate_node, section_solidity

__all__ = ["LesionMeasurement", "measure_lesion"]

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SPECKLE_SIGMA = 0.08  # of the box's smaller in-plane side (in pixels), at least one pixel


@dataclass
class LesionMeasurement:
    """What :func:`measure_lesion` finds; lengths in the image's units (mm, or pixels without a spacing)."""

    short_axis: float
    long_axis: float
    width: float
    height: float
    solidity: float
    occupancy: np.ndarray  # on ``geometry``, a block of the image grid (i, j, 1)
    geometry: ImageGeometry

    @property
    def axis_ratio(self) -> float:
        return self.short_axis / max(self.long_axis, 1e-6)

    @property
    def taller_than_wide(self) -> bool:
        return self.height > self.width


def _extent(mask: np.ndarray, axis: int, spacing: float) -> float:
    hit = np.flatnonzero(mask.any(axis=1 - axis))
    return float((hit[-1] - hit[0] + 1) * spacing) if hit.size else 0.0


def _window(plane: np.ndarray, geometry: ImageGeometry, center, pixels: np.ndarray, sigma: float):
    """The part of the plane the delineation can reach (box, search margin) plus the filter's reach, with its
    geometry: smoothing only there keeps a large image's many boxes cheap and changes nothing inside."""
    half = pixels / 2 + SEARCH_MARGIN_MM / np.asarray(geometry.spacing[:2]) + 4 * sigma + 2
    c = geometry.world_to_index(center)[:2]
    lo = np.clip(np.floor(c - half).astype(int), 0, np.asarray(plane.shape) - 1)
    hi = np.clip(np.ceil(c + half).astype(int) + 1, lo + 1, np.asarray(plane.shape))
    origin = geometry.index_to_world([lo[0], lo[1], 0.0])
    shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]), 1)
    return plane[lo[0] : hi[0], lo[1] : hi[1]], ImageGeometry(
        shape, geometry.spacing, tuple(origin), geometry.direction
    )


def measure_lesion(
    image: np.ndarray, geometry: ImageGeometry, center: Sequence[float], size: Sequence[float]
) -> LesionMeasurement | None:
    """Delineate the lesion in its box on a one-slice ``image`` (i, j, 1) and measure it in the image's plane;
    None when the box holds nothing that stands out from its surroundings."""
    if not is_planar(geometry):
        raise ValueError(f"a lesion on a 2D image: one slice expected, got shape {geometry.shape}")
    pixels = (np.abs(geometry.direction_matrix).T @ np.asarray(size, dtype=float) / np.asarray(geometry.spacing))[:2]
    sigma = max(1.0, SPECKLE_SIGMA * pixels.min())
    plane, window = _window(np.asarray(image, dtype=np.float32)[..., 0], geometry, center, pixels, sigma)
    found = delineate_node(ndimage.gaussian_filter(plane, sigma)[..., None], window, center, size, modality="us")
    if found is None:
        return None
    occupancy, g, _ = found
    # measured in the image's own plane (k is the slice), whatever its orientation in the world
    in_plane = ImageGeometry(g.shape, g.spacing, (0.0, 0.0, 0.0), _IDENTITY)
    axes = measure_axial(occupancy, in_plane)
    mask = occupancy[..., 0] >= 0.5
    solidity = section_solidity(mask)
    if axes is None or solidity is None:
        return None
    return LesionMeasurement(
        short_axis=axes.short_axis_mm,
        long_axis=max(axes.long_axis_mm, axes.short_axis_mm),
        width=_extent(mask, 0, g.spacing[0]),
        height=_extent(mask, 1, g.spacing[1]),
        solidity=solidity,
        occupancy=occupancy,
        geometry=g,
    )
