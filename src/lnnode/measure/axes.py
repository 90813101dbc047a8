"""RECIST-style node measurement: long and short axis on the axial slice, in millimetres.

The long axis is the largest in-plane diameter (maximum Feret diameter) over all axial slices (planes
of constant world z); the short axis is the longest diameter perpendicular to it on that same slice,
measured as a chord that stays inside the node (what a radiologist draws with a caliper).

How the outline is found: the mask is treated as an occupancy image (binary masks: 0 or 1) and the
outline is its 0.5 iso-line under bilinear interpolation. For a binary mask this puts the boundary
half-way between an inside and an outside voxel centre, which is an unbiased estimate of where the
true edge lies; measuring between voxel centres would under-estimate every diameter by about a voxel
and measuring between voxel corners would over-estimate it.

Geometry: for any axis-aligned direction (a signed permutation, e.g. LPS, RAS, or sagittal/coronal
acquisitions) the index axis that runs along world z is found and its slices are measured exactly.
An oblique image has no axial slices; its mask is resampled (linear interpolation of the occupancy)
onto a world-aligned grid at the finest input spacing and measured there, which adds an
interpolation error of a fraction of that spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from lnnode.geometry import ImageGeometry

__all__ = ["AxialMeasurement", "axial_axes", "measure_axial", "z_axis_of", "occupancy"]


@dataclass(frozen=True)
class AxialMeasurement:
    """Result of :func:`measure_axial`. Endpoints are world LPS mm, arrays of shape (2, 3)."""

    short_axis_mm: float
    long_axis_mm: float
    slice_z_mm: float
    long_axis_endpoints: np.ndarray
    short_axis_endpoints: np.ndarray


def occupancy(mask: np.ndarray) -> np.ndarray:
    """A mask as float occupancy: booleans and integers map nonzero to 1; floats are kept (0..1)."""
    m = np.asarray(mask)
    if m.dtype == bool or np.issubdtype(m.dtype, np.integer):
        return (m != 0).astype(np.float32)
    return np.clip(m.astype(np.float32), 0.0, 1.0)


def z_axis_of(geometry: ImageGeometry) -> int:
    """The index axis that runs along world z (the one with the largest z component)."""
    return int(np.argmax(np.abs(geometry.direction_matrix[2])))


# -- 2D primitives (physical in-plane coordinates, mm) --------------------------------------------------
def _outline_points(occ: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Points (N, 2) in mm where the 0.5 iso-line of ``occ`` crosses the grid lines (marching-squares vertices)."""
    p = np.pad(occ, 1)
    pts = []
    for axis in (0, 1):
        a = p[:-1, :] if axis == 0 else p[:, :-1]
        b = p[1:, :] if axis == 0 else p[:, 1:]
        cross = (a >= 0.5) != (b >= 0.5)
        if not cross.any():
            continue
        ia, ja = np.nonzero(cross)
        va, vb = a[ia, ja], b[ia, ja]
        t = (0.5 - va) / (vb - va)
        coord = np.stack([ia, ja], axis=1).astype(float) - 1.0  # undo the padding
        coord[:, axis] += t
        pts.append(coord)
    if not pts:
        return np.zeros((0, 2))
    return np.concatenate(pts) * np.asarray(spacing, dtype=float)


def _max_feret(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between two points (the diameter of their convex hull) and its endpoints."""
    if len(points) >= 3:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points: every point may be an extreme one
            pass
    d2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return float(np.sqrt(d2[i, j])), points[i], points[j]


def _bilinear(occ: np.ndarray, spacing: tuple[float, float], pts_mm: np.ndarray) -> np.ndarray:
    # pad with zeros so points just outside the plane interpolate towards 0 whatever the boundary mode
    coords = (pts_mm / np.asarray(spacing, dtype=float)).reshape(-1, 2).T + 2.0
    values = ndimage.map_coordinates(np.pad(occ, 2), coords, order=1, mode="constant", cval=0.0)
    return values.reshape(pts_mm.shape[:-1])


def _longest_perpendicular_chord(
    occ: np.ndarray, spacing: tuple[float, float], p: np.ndarray, q: np.ndarray, outline: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Longest chord perpendicular to the segment p-q that stays inside the 0.5 iso-line.

    The plane is sampled on lines perpendicular to p-q at a quarter of the finest spacing; along each
    line the inside runs are found and their ends refined by linear interpolation of the occupancy.
    """
    u = (q - p) / max(np.linalg.norm(q - p), 1e-12)
    v = np.array([-u[1], u[0]])
    pu, pv = outline @ u, outline @ v
    extent = max(pu.max() - pu.min(), pv.max() - pv.min())
    h = max(min(spacing) / 4.0, extent / 1500.0)
    us = np.arange(pu.min(), pu.max() + h / 2, h)
    vs = np.arange(pv.min() - 2 * h, pv.max() + 2.5 * h, h)  # lines start and end outside
    pts = us[:, None, None] * u + vs[None, :, None] * v
    val = _bilinear(occ, spacing, pts)
    inside = val >= 0.5
    step = np.diff(inside.astype(np.int8), axis=1)
    best = (0.0, p, p)
    for row in np.flatnonzero(step.any(axis=1)):
        enter = np.flatnonzero(step[row] == 1)
        leave = np.flatnonzero(step[row] == -1)
        y = val[row]
        # crossing between samples m and m + 1, sub-sample position by linear interpolation
        t_in = enter + (0.5 - y[enter]) / (y[enter + 1] - y[enter])
        t_out = leave + (0.5 - y[leave]) / (y[leave + 1] - y[leave])
        lengths = (t_out - t_in) * h
        k = int(np.argmax(lengths))
        if lengths[k] > best[0]:
            a = us[row] * u + (vs[0] + t_in[k] * h) * v
            b = us[row] * u + (vs[0] + t_out[k] * h) * v
            best = (float(lengths[k]), a, b)
    return best


# -- 3D -----------------------------------------------------------------------------------------------
def _axial_grid(occ: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, ImageGeometry]:
    """Resample an oblique occupancy onto an identity-direction grid at the finest spacing (linear)."""
    idx = np.argwhere(occ > 0)
    lo, hi = idx.min(axis=0) - 1.0, idx.max(axis=0) + 1.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    world = geometry.index_to_world(corners)
    s = min(geometry.spacing)
    wlo, whi = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((whi - wlo) / s).astype(int) + 1)
    axial = ImageGeometry(shape, (s, s, s), tuple(wlo), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    src = geometry.world_to_index(axial.index_to_world(grid))
    out = ndimage.map_coordinates(occ, src.T, order=1, mode="constant", cval=0.0)
    return out.reshape(shape).astype(np.float32), axial


ANTIALIAS_SIGMA = 0.5  # voxels, in-plane: Gaussian pre-filter for binary masks (see measure_axial)


def _is_binary(mask: np.ndarray, occ: np.ndarray) -> bool:
    if mask.dtype == bool or np.issubdtype(mask.dtype, np.integer):
        return True
    return bool(np.all((occ == 0.0) | (occ == 1.0)))


def measure_axial(mask_ijk: np.ndarray, geometry: ImageGeometry) -> AxialMeasurement | None:
    """Long and short axis (mm) of one node mask (index order (i, j, k)), with their endpoints.

    Boolean and integer masks: nonzero is the node. Float masks: occupancy in [0, 1], the node's edge
    is the 0.5 level. Returns None for an empty mask.

    A binary mask is anti-aliased in-plane (Gaussian, 0.5 voxel) before its outline is taken: the
    maximum over directions of a staircase outline is biased upwards by about half a voxel, and the
    pre-filter roughly halves that bias. Objects less than 4 voxels across are measured without it
    (the filter would shrink them).
    """
    mask = np.asarray(mask_ijk)
    if mask.shape != tuple(geometry.shape):
        raise ValueError(f"mask shape {mask.shape} differs from the geometry shape {geometry.shape}")
    # crop to the node with room for the filter before anything else: masks may be whole volumes
    nz = [np.flatnonzero(np.any(mask != 0, axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(len(n) == 0 for n in nz):
        return None
    lo = np.array([int(n[0]) for n in nz])
    hi = np.array([int(n[-1]) + 1 for n in nz])
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    # a margin of empty voxels, whatever the mask's own margin: results never depend on the crop
    occ = np.pad(occupancy(crop), 3)
    lo = lo - 3
    cropped = ImageGeometry(occ.shape, geometry.spacing, tuple(geometry.index_to_world(lo)), geometry.direction)
    if not _is_binary(crop, occ):
        return _measure(occ, cropped)
    smooth = _measure(_antialias(occ, z_axis_of(cropped)), cropped)
    # the pre-filter shrinks objects only a few voxels across (a one-voxel node would measure a third of a
    # voxel): those are measured on the staircase outline itself
    if smooth is None or smooth.long_axis_mm < 4.0 * min(geometry.spacing):
        return _measure(occ, cropped)
    return smooth


def _antialias(occ: np.ndarray, az: int) -> np.ndarray:
    sigma = [ANTIALIAS_SIGMA] * 3
    sigma[az] = 0.0
    return ndimage.gaussian_filter(occ, sigma, mode="constant", cval=0.0)


def _measure(occ: np.ndarray, geometry: ImageGeometry) -> AxialMeasurement | None:
    """Measure an occupancy crop (0.5 level) on the slices of constant world z."""
    if not np.any(occ >= 0.5):
        return None
    if geometry.is_axis_aligned():
        az = z_axis_of(geometry)
    else:
        occ, geometry = _axial_grid(occ, geometry)
        az = 2
        if not np.any(occ >= 0.5):  # a node thinner than the interpolation kernel
            return None
    inplane = [a for a in range(3) if a != az]
    sp = (geometry.spacing[inplane[0]], geometry.spacing[inplane[1]])
    planes = np.moveaxis(occ, az, 0)

    best = None  # (long axis, slice, p, q, outline)
    for n, plane in enumerate(planes):
        if not np.any(plane >= 0.5):
            continue
        outline = _outline_points(plane, sp)
        length, p, q = _max_feret(outline)
        if best is None or length > best[0] + 1e-9:
            best = (length, n, p, q, outline)
    length, n, p, q, outline = best
    short, a, b = _longest_perpendicular_chord(planes[n], sp, p, q, outline)

    def to_world(pt2: np.ndarray) -> np.ndarray:
        index = np.zeros(3)
        index[az] = n
        index[inplane[0]] = pt2[0] / sp[0]
        index[inplane[1]] = pt2[1] / sp[1]
        return geometry.index_to_world(index)

    long_ends = np.stack([to_world(p), to_world(q)])
    return AxialMeasurement(
        short_axis_mm=float(short),
        long_axis_mm=float(length),
        slice_z_mm=float(long_ends[0, 2]),
        long_axis_endpoints=long_ends,
        short_axis_endpoints=np.stack([to_world(a), to_world(b)]),
    )


def axial_axes(mask_ijk: np.ndarray, geometry: ImageGeometry) -> tuple[float, float]:
    """RECIST-style ``(short_axis_mm, long_axis_mm)`` of one node mask; ``(0.0, 0.0)`` when empty.

    See :func:`measure_axial` for the mask conventions and the module docstring for the method.
    """
    m = measure_axial(mask_ijk, geometry)
    return (0.0, 0.0) if m is None else (m.short_axis_mm, m.long_axis_mm)
