"""Node delineation and measurement in a box: analytic ellipsoids on oblique, anisotropic grids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lnnode.geometry import ImageGeometry
from lnnode.measure.axes import measure_axial
from lnnode.measure.delineation import measure_node

from ..conftest import requires_real_data, rotation


def render(geometry: ImageGeometry, center, semi_axes, value=50.0, background=-100.0, hole=None, noise=0.0, seed=0):
    """An axis-aligned (world) ellipsoid in fat, 4x supersampled for partial volume; optional fat hole."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    occ = np.zeros(len(idx))
    offsets = (np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / 4 - 0.5
    for off in offsets:
        w = geometry.index_to_world(idx + off) - center
        inside = np.sum((w / semi_axes) ** 2, axis=1) <= 1.0
        if hole is not None:
            inside &= np.linalg.norm(w, axis=1) > hole
        occ += inside
    occ /= len(offsets)
    image = background + (value - background) * occ + rng.normal(0, noise, len(idx))
    return image.reshape(geometry.shape).astype(np.float32)


@pytest.fixture
def grid() -> ImageGeometry:
    direction = rotation("z", 25) @ rotation("x", 8) @ np.diag([-1.0, -1.0, 1.0])
    return ImageGeometry((48, 44, 20), (0.8, 0.7, 2.5), (20.0, -10.0, -30.0), tuple(direction.ravel()))


def center_of(g: ImageGeometry) -> np.ndarray:
    return g.index_to_world((np.asarray(g.shape) - 1) / 2.0)


@pytest.mark.parametrize("semi", [(6.0, 4.0, 5.0), (3.0, 3.0, 4.0), (9.0, 5.5, 8.0)])
def test_ellipsoid_axes_on_an_oblique_anisotropic_grid(grid, semi):
    c = center_of(grid)
    image = render(grid, c, np.asarray(semi), noise=5.0)
    m = measure_node(image, grid, c, 2 * np.asarray(semi) + 2.0)
    assert m is not None
    # against the same measurement of the true (supersampled) occupancy: the delineation's own error
    truth = measure_axial(render(grid, c, np.asarray(semi), value=1.0, background=0.0), grid)
    assert m.short_axis_mm == pytest.approx(truth.short_axis_mm, abs=0.6)
    assert m.long_axis_mm == pytest.approx(truth.long_axis_mm, abs=0.6)
    # and against the analytic axes (2.5 mm slices take up to about a millimetre off a small ellipse)
    assert m.short_axis_mm == pytest.approx(2 * min(semi[:2]), abs=1.0)
    assert m.long_axis_mm == pytest.approx(2 * max(semi[:2]), abs=1.0)


def test_a_box_off_centre_and_too_large_still_measures_the_node(grid):
    c = center_of(grid)
    image = render(grid, c, np.array([5.0, 4.0, 5.0]), noise=5.0)
    m = measure_node(image, grid, c + [2.0, -1.5, 1.0], [13.0, 11.0, 14.0])
    assert m is not None and m.short_axis_mm == pytest.approx(8.0, abs=1.2)


def test_a_fatty_hilum_or_necrosis_stays_inside(grid):
    c = center_of(grid)
    image = render(grid, c, np.array([7.0, 6.0, 7.0]), hole=2.5)
    m = measure_node(image, grid, c, [15.0, 13.0, 15.0])
    assert m is not None and m.short_axis_mm == pytest.approx(12.0, abs=1.0)


def test_nothing_there_or_outside_gives_none(grid):
    c = center_of(grid)
    flat = np.full(grid.shape, -100.0, np.float32) + np.random.default_rng(0).normal(0, 5, grid.shape).astype(
        np.float32
    )
    assert measure_node(flat, grid, c, [10.0, 10.0, 10.0]) is None
    assert measure_node(flat, grid, c + 500.0, [10.0, 10.0, 10.0]) is None


def test_mr_nodes_are_darker_than_fat(grid):
    c = center_of(grid)
    image = render(grid, c, np.array([5.0, 4.0, 6.0]), value=300.0, background=900.0, noise=15.0)
    m = measure_node(image, grid, c, [11.0, 9.0, 13.0], modality="mr")
    assert m is not None and m.short_axis_mm == pytest.approx(8.0, abs=1.2)


@requires_real_data
def test_real_node_shapes_in_real_ct_backgrounds(tmp_path):
    from lnnode.io.image import read_image
    from lnnode.phantoms import synthesize

    synthesize(
        tmp_path, 2, modality="ct", seed=123, background="real", backgrounds=("example_ct_sm", "example_ct_dicom")
    )
    errors = []
    for case in json.loads((tmp_path / "synth_manifest.json").read_text())["cases"]:
        image, g = read_image(tmp_path / f"{case['id']}.nii.gz")
        label = json.loads((tmp_path / "labels" / "final" / f"{case['id']}.json").read_text())["nodes"]
        for node, truth in zip(label, sorted(case["nodes"], key=lambda n: n["instance"]), strict=True):
            m = measure_node(image, g, node["center"], node["size"])
            if m is not None:
                errors.append(abs(m.short_axis_mm - truth["short_axis_mm"]))
    assert len(errors) >= 4
    assert np.median(errors) <= 2.0, errors
