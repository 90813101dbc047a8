"""Image geometry and coordinate conversions: the one place where voxel indices meet world LPS mm.

Conventions (ITK / SimpleITK / DICOM):

* A voxel index is ``(i, j, k)`` in SimpleITK order (``i`` runs fastest, along the first image axis).
  A numpy array from SimpleITK is indexed ``[k, j, i]``; helpers here always take ``(i, j, k)``.
* ``world = origin + direction @ (spacing * index)``, world in LPS millimetres.
* Voxel ``v`` covers the continuous index interval ``[v - 0.5, v + 0.5]`` on each axis, so a box
  covering voxels ``a..b`` (inclusive) is ``lo = a - 0.5``, ``hi = b + 0.5``.
* A world box is axis-aligned in world space (``center`` + ``size``). For an oblique image it is
  the world-axis-aligned box enclosing the index box; for an axis-aligned direction matrix (any
  permutation with flips) the two are the same box and conversions are exact both ways.

Pure numpy and Python 3.9 syntax on purpose: the Slicer module carries a copy of this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ImageGeometry",
    "GeometryError",
    "lps_to_ras",
    "ras_to_lps",
    "box_corners",
    "enclosing_box",
    "box_world_to_index",
    "box_index_to_world",
    "index_box_to_slices",
]

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


class GeometryError(ValueError):
    """An image geometry that cannot describe a 3D voxel grid (bad spacing, singular direction...)."""


def lps_to_ras(points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Convert points (..., 3) from LPS to RAS (negate x and y). The conversion is its own inverse."""
    return np.asarray(points, dtype=float) @ _LPS_RAS


ras_to_lps = lps_to_ras


@dataclass(frozen=True)
class ImageGeometry:
    """The voxel grid of a 3D image in world LPS millimetres.

    ``shape`` is ``(ni, nj, nk)`` in index order, ``direction`` a 3x3 matrix whose columns are the
    world directions of the index axes (SimpleITK's ``GetDirection()`` reshaped row-major).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(s) for s in self.origin)
        direction = tuple(float(s) for s in np.asarray(self.direction, dtype=float).ravel())
        if len(shape) != 3 or len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
            raise GeometryError(
                f"a 3D geometry needs 3 shape, 3 spacing, 3 origin and 9 direction values, got "
                f"{len(shape)}, {len(spacing)}, {len(origin)}, {len(direction)}"
            )
        if any(s <= 0 for s in shape):
            raise GeometryError(f"image shape must be positive on every axis, got {shape}")
        if not all(np.isfinite(spacing)) or any(s <= 0 for s in spacing):
            raise GeometryError(f"spacing must be finite and > 0 mm, got {spacing}")
        if not all(np.isfinite(origin)):
            raise GeometryError(f"origin must be finite, got {origin}")
        d = np.asarray(direction).reshape(3, 3)
        if not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
            raise GeometryError(f"direction matrix must be finite and invertible, got {direction}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> ImageGeometry:
        """Geometry of a 3D SimpleITK image (the first three axes of a vector image)."""
        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_affine(cls, affine_lps: np.ndarray, shape: Sequence[int]) -> ImageGeometry:
        """Geometry from a 4x4 index-to-world LPS affine (shape in index order)."""
        a = np.asarray(affine_lps, dtype=float)
        if a.shape != (4, 4):
            raise GeometryError(f"affine must be 4x4, got {a.shape}")
        m = a[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"affine has a zero-length axis: {a.tolist()}")
        return cls(tuple(shape), tuple(spacing), tuple(a[:3, 3]), tuple((m / spacing).ravel()))

    @classmethod
    def from_ras_affine(cls, affine_ras: np.ndarray, shape: Sequence[int]) -> ImageGeometry:
        """Geometry from a 4x4 index-to-world RAS affine, as nibabel and MONAI report it."""
        a = np.asarray(affine_ras, dtype=float).copy()
        a[:2, :] *= -1.0
        return cls.from_affine(a, shape)

    # -- matrices ---------------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def affine(self) -> np.ndarray:
        """4x4 index-to-world LPS affine."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        a[:3, 3] = self.origin
        return a

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 index-to-world RAS affine (nibabel / MONAI convention)."""
        a = self.affine
        a[:2, :] *= -1.0
        return a

    def is_axis_aligned(self, tol: float = 1e-6) -> bool:
        """True when every index axis runs along a world axis (a signed permutation direction)."""
        d = np.abs(self.direction_matrix)
        return bool(np.all((np.abs(d) < tol) | (np.abs(d - 1.0) < tol)))

    # -- points -----------------------------------------------------------------------------------
    def index_to_world(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """Continuous index points (..., 3) to world LPS mm (..., 3)."""
        p = np.asarray(index, dtype=float)
        m = self.direction_matrix * np.asarray(self.spacing)
        return p @ m.T + np.asarray(self.origin)

    def world_to_index(self, world: np.ndarray | Sequence[float]) -> np.ndarray:
        """World LPS mm points (..., 3) to continuous index (..., 3); exact inverse of index_to_world."""
        p = np.asarray(world, dtype=float) - np.asarray(self.origin)
        # solve instead of inverting: better conditioned for near-singular obliques
        m = self.direction_matrix * np.asarray(self.spacing)
        return np.linalg.solve(m, p.reshape(-1, 3).T).T.reshape(p.shape)

    def contains_index(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """Whether continuous index points lie inside the image extent (voxel edges included)."""
        p = np.asarray(index, dtype=float)
        return np.all((p >= -0.5) & (p <= np.asarray(self.shape) - 0.5), axis=-1)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World-axis-aligned box (min, max) enclosing the whole image, voxel edges included."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.shape, dtype=float) - 0.5
        return enclosing_box(self.index_to_world(box_corners(lo, hi)))

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImageGeometry:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


def box_corners(lo: np.ndarray | Sequence[float], hi: np.ndarray | Sequence[float]) -> np.ndarray:
    """The 8 corners (8, 3) of the axis-aligned box [lo, hi]."""
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    sel = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)
    return np.where(sel, hi, lo)


def enclosing_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned (min, max) of points (N, 3)."""
    p = np.asarray(points, dtype=float).reshape(-1, 3)
    return p.min(axis=0), p.max(axis=0)


def box_world_to_index(
    center: Sequence[float], size: Sequence[float], geometry: ImageGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """A world box (center + size, LPS mm) to the continuous index box (lo, hi) enclosing it."""
    c = np.asarray(center, dtype=float)
    h = np.asarray(size, dtype=float) / 2.0
    return enclosing_box(geometry.world_to_index(box_corners(c - h, c + h)))


def box_index_to_world(
    lo: Sequence[float], hi: Sequence[float], geometry: ImageGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """A continuous index box (lo, hi) to the world box (center, size; LPS mm) enclosing it."""
    wlo, whi = enclosing_box(geometry.index_to_world(box_corners(lo, hi)))
    return (wlo + whi) / 2.0, whi - wlo


def index_box_to_slices(
    lo: Sequence[float], hi: Sequence[float], shape: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    """Index slices (i, j, k order) of the voxels whose centres lie in [lo, hi], clipped to the image.

    Returns None when the box holds no voxel centre inside the image.
    """
    lo = np.ceil(np.asarray(lo, dtype=float) - 1e-9).astype(int)
    hi = np.floor(np.asarray(hi, dtype=float) + 1e-9).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(shape) - 1)
    if np.any(hi < lo):
        return None
    return tuple(slice(int(lo[a]), int(hi[a]) + 1) for a in range(3))  # type: ignore[return-value]
