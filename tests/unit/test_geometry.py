"""Coordinate conversions: exact for any direction matrix and spacing (property tests), and in
agreement with SimpleITK (LPS) and nibabel (RAS)."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from lnnode.geometry import (
    GeometryError,
    ImageGeometry,
    box_index_to_world,
    box_world_to_index,
    index_box_to_slices,
    lps_to_ras,
    ras_to_lps,
)
from lnnode.io.image import array_to_sitk, read_image, write_image

SIGNED_PERMUTATIONS = [
    np.array(p)[:, :] * np.array(s)
    for p in itertools.permutations(np.eye(3))
    for s in itertools.product([1.0, -1.0], repeat=3)
]

spacing = st.tuples(*[st.floats(0.2, 8.0)] * 3)
origin = st.tuples(*[st.floats(-600.0, 600.0)] * 3)
shape = st.tuples(*[st.integers(2, 300)] * 3)
quaternion = st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: np.linalg.norm(q) > 0.2)


def rotation_from_quaternion(q) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@st.composite
def oblique_geometries(draw) -> ImageGeometry:
    r = rotation_from_quaternion(draw(quaternion)) @ np.diag([draw(st.sampled_from([1.0, -1.0])), 1.0, 1.0])
    return ImageGeometry(draw(shape), draw(spacing), draw(origin), tuple(r.ravel()))


@st.composite
def axis_aligned_geometries(draw) -> ImageGeometry:
    d = SIGNED_PERMUTATIONS[draw(st.integers(0, len(SIGNED_PERMUTATIONS) - 1))]
    return ImageGeometry(draw(shape), draw(spacing), draw(origin), tuple(d.ravel()))


@st.composite
def index_boxes(draw, geometry_strategy):
    g = draw(geometry_strategy)
    lo = np.array([draw(st.floats(-0.5, n - 1.5)) for n in g.shape])
    hi = lo + np.array([draw(st.floats(0.5, 40.0)) for _ in range(3)])
    return g, lo, hi


@settings(max_examples=200, deadline=None)
@given(oblique_geometries(), st.lists(st.tuples(*[st.floats(-50, 350)] * 3), min_size=1, max_size=8))
def test_points_round_trip_for_any_affine(geometry, points):
    p = np.asarray(points)
    np.testing.assert_allclose(geometry.world_to_index(geometry.index_to_world(p)), p, atol=1e-6)
    world = geometry.index_to_world(p)
    np.testing.assert_allclose(geometry.index_to_world(geometry.world_to_index(world)), world, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(index_boxes(axis_aligned_geometries()))
def test_boxes_round_trip_exactly_for_axis_aligned_directions(case):
    geometry, lo, hi = case
    center, size = box_index_to_world(lo, hi, geometry)
    lo2, hi2 = box_world_to_index(center, size, geometry)
    np.testing.assert_allclose(lo2, lo, atol=1e-7)
    np.testing.assert_allclose(hi2, hi, atol=1e-7)
    # and the other way round
    c2, s2 = box_index_to_world(lo2, hi2, geometry)
    np.testing.assert_allclose(c2, center, atol=1e-7)
    np.testing.assert_allclose(s2, size, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(index_boxes(oblique_geometries()))
def test_oblique_boxes_keep_their_centre_and_enclose_the_voxel_box(case):
    geometry, lo, hi = case
    center, size = box_index_to_world(lo, hi, geometry)
    # the world box holds every corner of the index box
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    world = geometry.index_to_world(corners)
    assert np.all(world >= center - size / 2 - 1e-6) and np.all(world <= center + size / 2 + 1e-6)
    # back to index space: same centre, and the index box grows (never shrinks)
    lo2, hi2 = box_world_to_index(center, size, geometry)
    np.testing.assert_allclose((lo2 + hi2) / 2, (lo + hi) / 2, atol=1e-6)
    assert np.all(lo2 <= lo + 1e-6) and np.all(hi2 >= hi - 1e-6)


@settings(max_examples=100, deadline=None)
@given(oblique_geometries())
def test_affine_and_ras_affine_rebuild_the_geometry(geometry):
    again = ImageGeometry.from_affine(geometry.affine, geometry.shape)
    np.testing.assert_allclose(again.spacing, geometry.spacing, rtol=1e-9)
    np.testing.assert_allclose(again.direction, geometry.direction, atol=1e-9)
    ras = ImageGeometry.from_ras_affine(geometry.ras_affine, geometry.shape)
    np.testing.assert_allclose(ras.affine, geometry.affine, atol=1e-9)


def test_lps_ras_negate_x_and_y():
    p = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    np.testing.assert_array_equal(lps_to_ras(p), [[-1.0, -2.0, 3.0], [4.0, -5.5, -6.0]])
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(p)), p)


def test_geometry_agrees_with_simpleitk_and_nibabel(tmp_path, oblique_geometry):
    """Our LPS index->world equals SimpleITK's; nibabel's RAS affine equals ours with x, y negated."""
    g = oblique_geometry
    array = np.arange(np.prod(g.shape), dtype=np.float32).reshape(g.shape)
    path = write_image(array, g, tmp_path / "oblique.nii.gz")
    image = sitk.ReadImage(str(path))
    index = (3, 7, 5)
    np.testing.assert_allclose(g.index_to_world(index), image.TransformIndexToPhysicalPoint(index), atol=1e-3)
    nii = nib.load(str(path))
    np.testing.assert_allclose(nii.affine, g.ras_affine, atol=1e-3)
    np.testing.assert_allclose(
        lps_to_ras(g.index_to_world(index)), nib.affines.apply_affine(nii.affine, index), atol=1e-3
    )
    # our reader gives index-ordered voxels: array[i, j, k] is voxel (i, j, k) in SimpleITK too
    back, g2 = read_image(path)
    assert back[index] == image[index] == array[index]
    np.testing.assert_allclose(g2.affine, g.affine, atol=1e-4)
    assert array_to_sitk(back, g2).GetSize() == g.shape


def test_world_bounds_enclose_all_voxel_corners(oblique_geometry):
    g = oblique_geometry
    lo, hi = g.world_bounds()
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in g.shape])))
    world = g.index_to_world(corners)
    assert np.all(world >= lo - 1e-9) and np.all(world <= hi + 1e-9)
    assert np.any(np.isclose(world, lo)) and np.any(np.isclose(world, hi))


def test_index_box_to_slices_clips_and_rounds():
    assert index_box_to_slices([1.5, -3, 2.0], [3.5, 2.5, 3.0], (10, 10, 10)) == (slice(2, 4), slice(0, 3), slice(2, 4))
    assert index_box_to_slices([1.5, 0, 2.5], [3.5, 2, 2.5], (10, 10, 10)) is None  # no voxel centre on axis k
    assert index_box_to_slices([-0.5, -0.5, -0.5], [1.5, 0.5, 0.5], (4, 4, 4)) == (
        slice(0, 2),
        slice(0, 1),
        slice(0, 1),
    )
    assert index_box_to_slices([20, 0, 0], [30, 1, 1], (10, 10, 10)) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (((10, 10), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()), "3 shape"),
        (((10, 0, 10), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()), "shape must be positive"),
        (((10, 10, 10), (1, 0, 1), (0, 0, 0), np.eye(3).ravel()), "spacing"),
        (((10, 10, 10), (1, 1e-3, np.nan), (0, 0, 0), np.eye(3).ravel()), "spacing"),
        (((10, 10, 10), (1, 1, 1), (0, 0, 0), np.zeros(9)), "direction"),
    ],
)
def test_bad_geometries_are_refused(args, message):
    with pytest.raises(GeometryError, match=message):
        ImageGeometry(*args)
