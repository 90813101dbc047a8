"""RECIST-style axial measurement (lnnode.measure.axes) against analytic shapes and real masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lnnode.geometry import ImageGeometry
from lnnode.measure.axes import axial_axes, measure_axial, z_axis_of

from ..conftest import REAL_DATA, requires_real_data

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
CORONAL = (1, 0, 0, 0, 0, 1, 0, -1, 0)  # world z runs along index j
SAGITTAL = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # i -> y, j -> -z, k -> -x


def centred_geometry(shape, spacing, direction=IDENTITY) -> ImageGeometry:
    """A grid whose centre voxel sits at world (0, 0, 0)."""
    d = np.asarray(direction, float).reshape(3, 3)
    origin = -d @ ((np.asarray(shape) - 1) / 2 * np.asarray(spacing))
    return ImageGeometry(shape, spacing, tuple(origin), direction)


def ellipsoid_mask(geometry: ImageGeometry, a: float, b: float, c: float, angle: float, center=(0, 0, 0)) -> np.ndarray:
    """Voxels whose centre lies in the ellipsoid (semi-axes a, b in-plane at ``angle``, c along z), world-defined."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    p = geometry.index_to_world(idx) - np.asarray(center)
    u = p[..., 0] * np.cos(angle) + p[..., 1] * np.sin(angle)
    v = -p[..., 0] * np.sin(angle) + p[..., 1] * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 + (p[..., 2] / c) ** 2 <= 1.0


@pytest.mark.parametrize(
    "a, b, angle",
    [(10.0, 5.0, 0.0), (12.0, 4.0, 0.4), (7.5, 6.0, 1.1), (15.0, 9.0, 2.3), (6.0, 6.0, 0.0), (9.0, 3.0, 0.785)],
)
def test_ellipsoid_at_fine_spacing(a, b, angle):
    g = centred_geometry((2 * int(a / 0.5) + 9,) * 2 + (21,), (0.5, 0.5, 0.5))
    short, long_ = axial_axes(ellipsoid_mask(g, a, b, 4.0, angle, center=(0.13, -0.21, 0.0)), g)
    assert long_ == pytest.approx(2 * a, abs=0.5)
    assert short == pytest.approx(2 * b, abs=0.5)


def test_long_axis_slice_is_the_widest():
    """The long axis is taken on the slice where it is largest, not the first or the middle one."""
    g = centred_geometry((60, 60, 31), (0.5, 0.5, 1.0))
    m = measure_axial(ellipsoid_mask(g, 10.0, 6.0, 3.5, 0.3, center=(0, 0, 4.0)), g)
    assert m.slice_z_mm == pytest.approx(4.0)
    assert m.long_axis_mm == pytest.approx(20.0, abs=0.5)


@pytest.mark.parametrize("direction", [RAS, CORONAL, SAGITTAL, (1, 0, 0, 0, -1, 0, 0, 0, -1)])
def test_flips_and_permutations_measure_the_same(direction):
    """The same world voxels in any axis-aligned direction give the same measurement."""
    ref_g = centred_geometry((41, 41, 25), (0.5, 0.5, 0.5))
    ref = measure_axial(ellipsoid_mask(ref_g, 8.0, 4.5, 5.0, 0.6), ref_g)
    d = np.asarray(direction, float).reshape(3, 3)
    # index sizes and spacings that cover the same world grid
    shape = tuple(int(np.abs(d[:, a]) @ np.array([41, 41, 25])) for a in range(3))
    g = centred_geometry(shape, (0.5, 0.5, 0.5), direction)
    m = measure_axial(ellipsoid_mask(g, 8.0, 4.5, 5.0, 0.6), g)
    assert z_axis_of(g) == int(np.argmax(np.abs(d[2])))
    assert m.long_axis_mm == pytest.approx(ref.long_axis_mm, abs=0.02)
    assert m.short_axis_mm == pytest.approx(ref.short_axis_mm, abs=0.02)
    assert m.slice_z_mm == pytest.approx(ref.slice_z_mm)


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 5.0), (0.4, 0.6, 2.0), (0.6, 0.4, 1.5)])
def test_anisotropic_spacing(spacing):
    a, b = 11.0, 6.5
    shape = tuple(int(2 * 14 / s) + 3 for s in spacing[:2]) + (int(30 / spacing[2]) + 1,)
    g = centred_geometry(shape, spacing, RAS)
    short, long_ = axial_axes(ellipsoid_mask(g, a, b, 12.0, 0.5), g)
    tol = max(spacing[:2])
    assert long_ == pytest.approx(2 * a, abs=tol)
    assert short == pytest.approx(2 * b, abs=tol)


def test_oblique_direction_is_measured_on_axial_planes():
    """A 15-degree tilted grid: resampled onto world-axial planes, within a spacing of the truth."""
    t = np.radians(15)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    g = centred_geometry((64, 64, 48), (0.5, 0.5, 0.5), tuple(rot.ravel()))
    short, long_ = axial_axes(ellipsoid_mask(g, 10.0, 6.0, 5.0, 0.4), g)
    assert long_ == pytest.approx(20.0, abs=0.6)
    assert short == pytest.approx(12.0, abs=0.6)


def test_short_axis_chord_stays_inside_a_notched_node():
    """RECIST's short axis is a chord inside the node, not the caliper width across a notch."""
    g = centred_geometry((61, 41, 3), (0.5, 0.5, 1.0))
    ell = ellipsoid_mask(g, 12.0, 6.0, 5.0, 0.0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij"), axis=-1)
    p = g.index_to_world(idx)
    notch = (p[..., 0] ** 2 + (p[..., 1] - 6.0) ** 2) <= 4.0**2
    short, long_ = axial_axes(ell & ~notch, g)
    width_beside_notch = 12.0 * np.sqrt(1 - (4.0 / 12.0) ** 2)  # chord just beside the notch
    assert long_ == pytest.approx(24.0, abs=0.5)
    assert short == pytest.approx(width_beside_notch, abs=0.5)
    assert short < 12.0 - 0.4  # the caliper width would be 12


def test_endpoints_lie_on_the_measured_slice_and_are_perpendicular():
    g = centred_geometry((50, 50, 11), (0.5, 0.5, 2.0), RAS)
    m = measure_axial(ellipsoid_mask(g, 9.0, 5.0, 6.0, 1.0), g)
    ll, ss = m.long_axis_endpoints, m.short_axis_endpoints
    assert np.linalg.norm(ll[1] - ll[0]) == pytest.approx(m.long_axis_mm, abs=1e-6)
    assert np.linalg.norm(ss[1] - ss[0]) == pytest.approx(m.short_axis_mm, abs=1e-6)
    assert np.allclose([ll[:, 2], ss[:, 2]], m.slice_z_mm)
    u = (ll[1] - ll[0]) / m.long_axis_mm
    v = (ss[1] - ss[0]) / m.short_axis_mm
    assert abs(u @ v) < 1e-6
    # the long axis runs along the ellipse's major axis (angle 1.0 rad in world x-y)
    assert abs(abs(u[0] * np.cos(1.0) + u[1] * np.sin(1.0)) - 1.0) < 0.01


def test_fractional_occupancy_is_measured_at_its_half_level():
    g = centred_geometry((40, 40, 3), (0.5, 0.5, 1.0))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij"), axis=-1)
    p = g.index_to_world(idx)
    r = np.hypot(p[..., 0] / 1.5, p[..., 1])  # ellipse 2 x 1.5 scaled: semi-axes 9 and 6 mm
    occ = np.clip(0.5 - (r - 6.0) / 0.5, 0, 1).astype(np.float32)  # soft edge, exact 0.5 level
    occ[..., [0, 2]] = 0
    short, long_ = axial_axes(occ, g)
    assert long_ == pytest.approx(18.0, abs=0.15)
    assert short == pytest.approx(12.0, abs=0.15)


def test_small_and_empty_masks():
    g = centred_geometry((7, 7, 5), (3.0, 3.0, 3.0), RAS)
    m = np.zeros(g.shape, np.uint8)
    assert axial_axes(m, g) == (0.0, 0.0)
    assert measure_axial(m, g) is None
    m[3, 3, 2] = 1
    assert axial_axes(m, g) == pytest.approx((3.0, 3.0))
    m[3, 4, 2] = 5  # integer masks: nonzero is the node
    assert axial_axes(m, g) == pytest.approx((3.0, 6.0))
    with pytest.raises(ValueError, match="shape"):
        axial_axes(np.zeros((3, 3, 3)), g)


def test_whole_volume_masks_are_cropped():
    """A node mask the size of a whole volume measures like its crop."""
    g = centred_geometry((300, 300, 40), (0.8, 0.8, 2.0))
    m = ellipsoid_mask(centred_geometry((40, 40, 9), (0.8, 0.8, 2.0)), 8, 5, 6, 0.2)
    big = np.zeros(g.shape, bool)
    big[130:170, 100:140, 10:19] = m
    local = ImageGeometry(m.shape, g.spacing, tuple(g.index_to_world([130, 100, 10])), g.direction)
    assert axial_axes(big, g) == pytest.approx(axial_axes(m, local), abs=1e-9)


ULS = REAL_DATA / "uls23_nih_ln"


@requires_real_data
def test_real_masks_agree_with_the_stats_file():
    """On real node shapes (largest component), the long axis agrees with the stats file's rough value."""
    from lnnode.io.image import read_image
    from lnnode.phantoms.realshapes import largest_component

    rows = json.loads((ULS / "nih_ln_mask_stats.json").read_text())[::40]
    d_long, d_short = [], []
    for row in rows:
        name = row["file"].removesuffix(".zip")
        array, g = read_image(ULS / "masks" / ("MED" if "MED" in row["set"] else "ABD") / name)
        short, long_ = axial_axes(largest_component(array > 0), g)
        d_long.append(long_ - row["axial_long_mm"])
        d_short.append(short - row["axial_short_mm"])
    assert np.median(np.abs(d_long)) < 0.5
    assert np.median(np.abs(d_short)) < 1.5
