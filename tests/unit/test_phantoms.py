"""Lymph-node phantoms (lnnode.phantoms): determinism, geometry, ground truth, class features, real data."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lnnode import contracts
from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_image, read_sitk, sitk_to_array
from lnnode.measure.axes import axial_axes
from lnnode.phantoms import (
    DIRECTION_PRESETS,
    MANIFEST_NAME,
    PhantomConfig,
    PhantomError,
    Tissue,
    add_synth_arguments,
    case_streams,
    default_real_data_dir,
    make_case,
    parse_direction,
    run_synth,
    synthesize,
    write_case,
)
from lnnode.phantoms.anatomy import sample_anatomy
from lnnode.phantoms.nodes import (
    Node,
    NodePlan,
    build_analytic_shape,
    isolated_node_mask,
    node_look,
    render_node,
    sample_plan,
    sample_plans,
)

from ..conftest import REAL_DATA, requires_real_data

TINY = {"shape": (64, 64, 24), "spacing": (2.0, 2.0, 3.0)}
SMALL_BACKGROUNDS = ("example_ct_sm", "example_ct_dicom")  # the full-size CTs take a minute each to prepare


def voxel_world(case, instance: int) -> np.ndarray:
    return case.geometry.index_to_world(np.argwhere(case.instances == instance).astype(float))


def assert_ground_truth_consistent(case) -> None:
    """Label validates, has one box per instance with its class, and every box holds its voxels."""
    label = contracts.validate_label(case.label())
    assert len(label["nodes"]) == len(case.classes) == len(case.nodes)
    assert set(np.unique(case.instances)) - {0} == set(case.classes)
    for value, node in zip(sorted(case.classes), label["nodes"], strict=True):
        assert node["class"] == case.classes[value]
        lo = np.asarray(node["center"]) - np.asarray(node["size"]) / 2 - 1e-3
        hi = np.asarray(node["center"]) + np.asarray(node["size"]) / 2 + 1e-3
        pts = voxel_world(case, value)
        assert np.all(pts >= lo) and np.all(pts <= hi)


# -- options -------------------------------------------------------------------------------------------
def test_direction_presets_and_parsing():
    assert parse_direction("ras") == DIRECTION_PRESETS["RAS"]
    assert parse_direction("1 0 0 0 1 0 0 0 1") == DIRECTION_PRESETS["LPS"]
    d = np.asarray(parse_direction("oblique")).reshape(3, 3)
    assert (
        np.allclose(d.T @ d, np.eye(3))
        and not ImageGeometry((2, 2, 2), (1, 1, 1), (0, 0, 0), tuple(d.ravel())).is_axis_aligned()
    )
    with pytest.raises(PhantomError, match="orthonormal"):
        parse_direction("2 0 0 0 1 0 0 0 1")
    with pytest.raises(PhantomError, match="preset"):
        parse_direction("sideways")
    # the default is deliberately not the identity
    assert PhantomConfig().direction != DIRECTION_PRESETS["LPS"]


def test_config_errors_are_clear():
    with pytest.raises(PhantomError, match="modality"):
        PhantomConfig(modality="pet")
    with pytest.raises(PhantomError, match="real backgrounds are CT"):
        PhantomConfig(modality="mr", background="real")
    with pytest.raises(PhantomError, match="spacing"):
        PhantomConfig(spacing=(0, 1, 1))
    with pytest.raises(PhantomError, match="real data folder"):
        make_case(0, 0, PhantomConfig(background="real", real_data="/nonexistent/real"))


def test_real_data_dir_default_and_env(monkeypatch):
    monkeypatch.delenv("LNNODE_REAL_DATA", raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert default_real_data_dir() == repo.parent / "shared" / "data" / "real"
    monkeypatch.setenv("LNNODE_REAL_DATA", "/somewhere/else")
    assert default_real_data_dir() == Path("/somewhere/else")


# -- determinism ----------------------------------------------------------------------------------------
def test_same_seed_same_case_and_other_seeds_differ():
    cfg = PhantomConfig(**TINY)
    a, b = make_case(5, 1, cfg), make_case(5, 1, cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert a.label() == b.label() and a.nodes == b.nodes
    c = make_case(6, 1, cfg)
    assert not np.array_equal(a.image, c.image)
    assert case_streams(5, 1)["noise"].random() != case_streams(5, 2)["noise"].random()


def test_case_does_not_depend_on_how_many_cases(tmp_path):
    kw = {"shape": (48, 48, 16), "spacing": (2.5, 2.5, 4.0)}
    e2 = synthesize(tmp_path / "two", 2, seed=3, **kw)
    e3 = synthesize(tmp_path / "three", 3, seed=3, **kw)
    assert e2 == e3[:2]
    for cid in ("ct_000", "ct_001"):
        a, _ = read_image(tmp_path / "two" / f"{cid}.nii.gz")
        b, _ = read_image(tmp_path / "three" / f"{cid}.nii.gz")
        assert np.array_equal(a, b)
        assert (tmp_path / "two" / "labels" / "final" / f"{cid}.json").read_text() == (
            tmp_path / "three" / "labels" / "final" / f"{cid}.json"
        ).read_text()


def test_flipped_direction_gives_the_same_phantom():
    """Anatomy, nodes and noise are defined in world space: LPS and RAS grids hold the same voxels."""
    lps = make_case(0, 3, PhantomConfig(direction="LPS", **TINY))
    ras = make_case(0, 3, PhantomConfig(direction="RAS", **TINY))
    assert lps.info["n_nodes"] > 0
    assert np.array_equal(lps.image, ras.image[::-1, ::-1, :])
    assert np.array_equal(lps.instances, ras.instances[::-1, ::-1, :])
    assert [n["center"] for n in lps.nodes] == [n["center"] for n in ras.nodes]


# -- CT and MR content ----------------------------------------------------------------------------------
def test_ct_intensities_by_tissue():
    case = make_case(1, 0, PhantomConfig(shape=(64, 64, 16), spacing=(5.0, 5.0, 5.0)))
    img, t = case.image, case.tissue
    assert case.image.dtype == np.int16 and case.geometry.shape == (64, 64, 16)
    assert abs(np.median(img[t == Tissue.AIR]) + 1000) < 25
    assert -130 < np.median(img[t == Tissue.VISCERAL_FAT]) < -70
    assert 30 < np.median(img[t == Tissue.MUSCLE]) < 70
    assert np.percentile(img[t == Tissue.BONE], 90) > 250
    assert np.all(t[case.instances > 0] == Tissue.NODE)


def test_mr_anisotropic_t2_contrast_and_ground_truth():
    cfg = PhantomConfig(modality="mr", shape=(96, 96, 12), spacing=(0.7, 0.7, 5.0), direction="RAS")
    case = make_case(2, 0, cfg)
    assert case.info["n_nodes"] > 0
    img, t = case.image.astype(float), case.tissue
    fat, muscle = np.median(img[t == Tissue.VISCERAL_FAT]), np.median(img[t == Tissue.MUSCLE])
    node = np.median(img[case.instances > 0])
    assert fat > node > muscle  # T2: fat bright, muscle dark, nodes in between
    assert img.min() >= 0
    assert_ground_truth_consistent(case)


@pytest.mark.parametrize("direction", ["RAS", "coronal", "oblique", "0 1 0 -1 0 0 0 0 -1"])
def test_ground_truth_boxes_hold_the_node_voxels(direction):
    case = make_case(0, 4, PhantomConfig(direction=direction, **TINY))
    assert case.info["n_nodes"] > 0
    assert_ground_truth_consistent(case)
    # sizes in the manifest are those of the final mask
    for node in case.nodes:
        short, long_ = axial_axes(case.instances == node["instance"], case.geometry)
        assert (node["short_axis_mm"], node["long_axis_mm"]) == pytest.approx((short, long_), abs=0.01)


def test_vessels_run_through_many_slices_and_mimic_nodes():
    case = make_case(0, 1, PhantomConfig(**TINY))
    vessels, n_slices = case.tissue == Tissue.VESSEL, case.geometry.shape[2]
    labels, n = ndimage.label(vessels)
    spans = [np.unique(np.argwhere(labels == k)[:, 2]).size for k in range(1, n + 1)]
    assert sum(s >= 0.9 * n_slices for s in spans) >= 3  # aorta/IVC/iliacs and smaller vessels
    # the classic confounder: across cases some vessels have node-like intensity
    overlap = 0
    for seed in range(20):
        anatomy = sample_anatomy(np.random.default_rng(seed), "ct")
        node = anatomy.values["node"]
        vessel_values = [layer.value for layer in anatomy.layers if layer.tissue == Tissue.VESSEL]
        overlap += any(abs(v - node) < 30 for v in vessel_values)
    assert overlap >= 5


def test_nodes_sit_in_visceral_fat_clear_of_other_structures():
    cfg = PhantomConfig(**TINY)
    for index in range(3):
        case = make_case(7, index, cfg)
        anatomy = sample_anatomy(case_streams(7, index)["anatomy"], "ct")  # the case's own anatomy
        for node in case.nodes:
            pts = voxel_world(case, node["instance"])
            assert np.all(anatomy.visceral.sdf_points(pts) < 0)
            for obstacle in anatomy.obstacles:
                assert np.all(obstacle.sdf_points(pts) > 0)


# -- classes -----------------------------------------------------------------------------------------------
def test_stage_mix_over_many_cases():
    stages = {"N0": 0, "N1": 0, "N2": 0}
    for seed in range(400):
        stage, plans = sample_plans(np.random.default_rng(seed))
        n_met = sum(p.cls == "metastatic" for p in plans)
        assert 2 <= len(plans) <= 8
        assert {"N0": n_met == 0, "N1": 1 <= n_met <= 3, "N2": n_met >= 4}[stage]
        stages[stage] += 1
    assert 0.25 < stages["N0"] / 400 < 0.45 and 0.3 < stages["N1"] / 400 < 0.5 and 0.15 < stages["N2"] / 400 < 0.35


def test_class_shapes_differ_as_intended():
    """Metastatic nodes: larger on average (overlapping), rounder; benign mostly < 8 mm short axis."""
    rng = np.random.default_rng(0)
    m = {
        c: [axial_axes(*isolated_node_mask(rng, sample_plan(rng, c))[:2]) for _ in range(25)]
        for c in ("benign", "metastatic")
    }
    short = {c: np.array([s for s, _ in v]) for c, v in m.items()}
    ratio = {c: np.array([s / lo for s, lo in v]) for c, v in m.items()}
    assert short["metastatic"].mean() > 1.8 * short["benign"].mean()
    assert np.mean(short["benign"] < 8.0) > 0.75
    assert short["metastatic"].min() < short["benign"].max()  # the size ranges overlap
    assert ratio["metastatic"].mean() > ratio["benign"].mean() + 0.15


def test_metastatic_nodes_are_more_heterogeneous():
    """On noise-free images, plain nodes (no hilum, no necrosis): metastatic texture varies more."""
    cfg = PhantomConfig(shape=(64, 64, 24), spacing=(1.0, 1.0, 2.0), noise=0.0)
    spread = {"benign": [], "metastatic": []}
    for index in range(10):
        case = make_case(11, index, cfg)
        for node in case.nodes:
            f = node["features"]
            if f["hilum"] or f["necrosis"]:
                continue
            core = ndimage.binary_erosion(case.instances == node["instance"], iterations=1)
            if core.sum() >= 8:
                spread[node["class"]].append(float(np.std(case.image[core])))
    assert len(spread["benign"]) >= 3 and len(spread["metastatic"]) >= 3
    assert np.mean(spread["metastatic"]) > 1.5 * np.mean(spread["benign"])


def _plan(cls="metastatic", **kw) -> NodePlan:
    base = dict(
        cls=cls,
        short_mm=16.0,
        ratio=0.8,
        z_ratio=0.9,
        hilum=False,
        necrosis=False,
        irregular_border=False,
        heterogeneous=False,
        real_shape=False,
    )
    return NodePlan(**{**base, **kw})


@pytest.mark.parametrize("feature", ["necrosis", "hilum"])
def test_necrotic_centre_and_fatty_hilum_are_painted(feature):
    """Necrosis is hypodense on CT at the centre; a fatty hilum is fat inside the node outline."""
    rng = np.random.default_rng(1)
    plan = _plan(cls="metastatic" if feature == "necrosis" else "benign", **{feature: True})
    g = ImageGeometry((48, 48, 24), (0.6, 0.6, 1.2), (-14.1, -14.1, -13.8), DIRECTION_PRESETS["LPS"])
    values = {"node": 45.0, "necrosis": 15.0, "visceral_fat": -100.0}
    node = Node(plan, build_analytic_shape(rng, plan, np.zeros(3)), node_look(rng, plan, values, "ct"), "test")
    image = np.full(g.shape, -100.0, np.float32)
    instances = np.zeros(g.shape, np.uint8)
    assert render_node(node, g, image, instances, None, 1) is not None
    inside = image[instances == 1]
    if feature == "necrosis":
        centre = tuple(np.round(g.world_to_index([0, 0, 0])).astype(int))
        assert image[centre] < 30 and np.percentile(inside, 90) > 35
    else:
        assert np.mean(inside < -50) > 0.03  # fat voxels within the node
        assert np.median(inside) > 20


# -- real data ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _organs_on_grid(name: str, geometry: ImageGeometry) -> np.ndarray:
    """Organ masks of a background, loaded here independently of the generator."""
    ts = REAL_DATA / "totalseg"
    if name == "example_ct_sm":
        organs = np.zeros(geometry.shape, bool)
        for f in sorted((ts / "example_ct_organs").glob("*.nii.gz")):
            organs |= read_image(f)[0] > 0
        return organs
    ref = read_sitk(ts / "example_ct_dicom")
    seg = sitk.Resample(
        read_sitk(ts / "example_ct_dicom_seg.nii.gz"), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    assert ImageGeometry.from_sitk(ref) == geometry
    return sitk_to_array(seg) > 0


@requires_real_data
def test_real_background_nodes_avoid_organs_and_stay_in_the_body():
    cfg = PhantomConfig(background="real", real_data=str(REAL_DATA), backgrounds=SMALL_BACKGROUNDS)
    seen = set()
    for index in range(4):
        case = make_case(0, index, cfg)
        name = case.info["background"].removeprefix("real:")
        seen.add(name)
        assert case.tissue is None and case.info["n_nodes"] > 0
        assert_ground_truth_consistent(case)
        organs = _organs_on_grid(name, case.geometry)
        near_organ = ndimage.distance_transform_edt(~organs, sampling=case.geometry.spacing) <= 2.0
        nodes = case.instances > 0
        assert not np.any(nodes & near_organ)
        faces = [np.take(nodes, end, axis=a) for a in range(3) for end in (0, -1)]
        assert not any(f.any() for f in faces), "no node is cut by the field of view"
        original, g = read_image(
            REAL_DATA / "totalseg" / ("example_ct_sm.nii.gz" if name == "example_ct_sm" else "example_ct_dicom")
        )
        assert g == case.geometry  # the native grid and direction are kept
        body = ndimage.binary_fill_holes(original > -500)
        assert np.all(body[nodes])
        away = ~ndimage.binary_dilation(nodes, iterations=6)  # partial volume of thin spurs reaches a few voxels
        assert np.array_equal(case.image[away], original[away])  # the background is untouched elsewhere
        assert set(case.classes.values()) <= {"benign", "metastatic"} and len(case.classes) == case.info["n_nodes"]
    assert seen == {"example_ct_sm", "example_ct_dicom"}


@requires_real_data
def test_real_shapes_come_from_the_uls23_masks():
    case = make_case(0, 2, PhantomConfig(real_shapes=1.0, real_data=str(REAL_DATA), **TINY))
    assert case.info["n_nodes"] > 0
    for node in case.nodes:
        name = node["features"]["shape_source"]
        assert any((REAL_DATA / "uls23_nih_ln" / "masks" / g / name).is_file() for g in ("MED", "ABD"))
        assert node["features"]["irregular_border"] is None  # the real outline is kept as it is


@requires_real_data
def test_real_shape_is_resampled_faithfully():
    """A real mask placed unrotated at scale 1 on its own grid reproduces itself."""
    from lnnode.phantoms.nodes import node_fractions
    from lnnode.phantoms.realshapes import RealNodeShape, largest_component, load_real_mask

    path = sorted((REAL_DATA / "uls23_nih_ln" / "masks" / "ABD").glob("*.nii.gz"))[3]
    array, g = read_image(path)
    truth = largest_component(array > 0)
    mask = load_real_mask(str(path))
    shape = RealNodeShape(mask, mask.centroid.copy(), np.eye(3), 1.0)
    block, occ, _, _ = node_fractions(shape, g)
    out = np.zeros(g.shape, bool)
    out[block] = occ >= 0.5
    dice = 2 * np.sum(out & truth) / (out.sum() + truth.sum())
    assert dice > 0.97


# -- writing and the command line -------------------------------------------------------------------------------
def test_synthesize_writes_a_studies_folder_and_merges_the_manifest(tmp_path):
    kw = {"shape": (48, 48, 16), "spacing": (2.5, 2.5, 4.0)}
    synthesize(tmp_path, 2, modality="mr", seed=1, label_tag="gt", **kw)
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [c["id"] for c in doc["cases"]] == ["mr_000", "mr_001"]
    synthesize(tmp_path, 3, modality="mr", seed=1, label_tag="gt", **kw)
    doc2 = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [c["id"] for c in doc2["cases"]] == ["mr_000", "mr_001", "mr_002"]
    assert doc2["cases"][:2] == doc["cases"]
    for entry in doc2["cases"]:
        image, g = read_image(tmp_path / entry["image"])
        inst, gi = read_image(tmp_path / entry["instances"])
        label = contracts.parse_label((tmp_path / entry["label"]).read_text())
        assert g == gi and g.to_dict()["shape"] == entry["geometry"]["shape"]
        assert len(label["nodes"]) == entry["n_nodes"] == len(entry["nodes"])
        for node in entry["nodes"]:
            assert set(node) >= {"instance", "class", "short_axis_mm", "long_axis_mm", "center", "features"}
            assert set(node["features"]) == {"hilum", "necrosis", "irregular_border", "heterogeneous", "shape_source"}
            short, long_ = axial_axes(inst == node["instance"], g)
            assert node["short_axis_mm"] == pytest.approx(short, abs=0.01)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_run_synth_from_the_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lnnode synth")
    add_synth_arguments(parser)
    help_text = parser.format_help()
    for option in (
        "--out",
        "--cases",
        "--modality",
        "--seed",
        "--shape",
        "--spacing",
        "--direction",
        "--background",
        "--real-data",
        "--real-shapes",
        "--label-tag",
        "--prefix",
        "--backgrounds",
        "--hard-negatives",
        "--size-matched",
    ):
        assert option in help_text
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path),
            "--cases",
            "2",
            "--shape",
            "40",
            "40",
            "12",
            "--spacing",
            "3",
            "3",
            "5",
            "--direction",
            "oblique",
            "--prefix",
            "demo_",
        ]
    )
    assert run_synth(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("demo_000: ct synthetic 40x40x12") and out[0].endswith(" s")
    assert (tmp_path / "demo_001.nii.gz").is_file() and (tmp_path / "labels" / "final" / "demo_001.json").is_file()
    bad = parser.parse_args(["--out", str(tmp_path), "--background", "real", "--real-data", str(tmp_path / "none")])
    assert run_synth(bad) == 2
    assert "real data folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--real-shapes", "1.5"])
    numbers = parser.parse_args(["--out", "x", "--direction", "1", "0", "0", "0", "-1", "0", "0", "0", "1"])
    assert numbers.direction == DIRECTION_PRESETS["LAS"]
    assert parser.parse_args(["--out", "x"]).direction == DIRECTION_PRESETS["RAS"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--direction", "1", "0", "0"])
    unknown = parser.parse_args(["--out", str(tmp_path), "--background", "real", "--backgrounds", "nowhere_ct"])
    assert run_synth(unknown) == 2 and "unknown real background" in capsys.readouterr().err


@requires_real_data
def test_run_synth_real_background_options(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lnnode synth")
    add_synth_arguments(parser)
    argv = ["--out", str(tmp_path), "--cases", "1", "--background", "real", "--backgrounds", "example_ct_sm",
            "--hard-negatives", "3", "--size-matched", "--real-data", str(REAL_DATA)]  # fmt: skip
    assert run_synth(parser.parse_args(argv)) == 0
    assert "real:example_ct_sm" in capsys.readouterr().out
    label = json.loads((tmp_path / "labels" / "final" / "ct_000.json").read_text())
    assert len(label["rejected"]) == 3
    entry = json.loads((tmp_path / MANIFEST_NAME).read_text())["cases"][0]
    assert entry["options"]["size_matched"] is True and entry["patient"] == "totalseg_example"


def test_background_registry_has_five_patients_and_refuses_unknown_names():
    from lnnode.phantoms.realct import BACKGROUND_SOURCES, DEFAULT_BACKGROUNDS, background_patient

    assert len({background_patient(n) for n in DEFAULT_BACKGROUNDS}) == len(DEFAULT_BACKGROUNDS) == 5
    assert background_patient("example_ct_sm") == background_patient("example_ct")  # a part of the same scan
    if REAL_DATA.is_dir():
        assert all((REAL_DATA / s.image).exists() for s in BACKGROUND_SOURCES.values())
    with pytest.raises(PhantomError, match="unknown real background"):
        PhantomConfig(background="real", backgrounds=("example_ct", "nope"))


@requires_real_data
def test_real_background_hard_negatives_and_nodes_that_replace_fat(tmp_path):
    from lnnode.phantoms.realct import FAT_HU, load_background

    cfg = PhantomConfig(background="real", real_data=str(REAL_DATA), backgrounds=("example_ct_sm",))
    bg = load_background(str(REAL_DATA), "example_ct_sm")
    case = make_case(3, 0, cfg)
    assert case.geometry == bg.geometry and not np.allclose(bg.geometry.direction_matrix, np.eye(3))
    label = contracts.validate_label(case.label())
    assert len(label["rejected"]) == case.info["hard_negatives"] == 8
    for box in label["rejected"]:
        idx = tuple(np.round(bg.geometry.world_to_index(box["center"])).astype(int))
        assert bg.organs[idx]  # centred inside a structure: certainly not a node
        for node in case.nodes:
            assert np.linalg.norm(np.subtract(box["center"], node["center"])) > 10.0
    for value in range(1, case.info["n_nodes"] + 1):
        footprint = case.instances == value
        was = bg.image[footprint]
        assert np.mean((was >= FAT_HU[0]) & (was <= FAT_HU[1])) >= 0.5  # the node displaced fat
        core = ndimage.binary_erosion(footprint, iterations=1) if footprint.sum() > 60 else footprint
        assert abs(float(np.median(case.image[core])) - bg.soft_hu) < 45.0  # the scan's own soft tissue
    entry = write_case(case, tmp_path)
    written = json.loads((tmp_path / entry["label"]).read_text())
    assert written["rejected"] == label["rejected"]
    no_negatives = make_case(3, 0, cfg.replace(hard_negatives=0))
    assert "rejected" not in no_negatives.label() and np.array_equal(no_negatives.image, case.image)


def test_size_matched_plans_make_size_uninformative():
    from lnnode.phantoms.nodes import sample_plan

    def shorts(cls, matched):
        rng = np.random.default_rng(5)
        return np.array([sample_plan(rng, cls, size_matched=matched).short_mm for _ in range(3000)])

    natural = np.median(shorts("metastatic", False)) / np.median(shorts("benign", False))
    matched = np.median(shorts("metastatic", True)) / np.median(shorts("benign", True))
    assert natural > 1.8 and 0.9 < matched < 1.1
    ratios = {c: np.mean([sample_plan(np.random.default_rng(i), c, size_matched=True).ratio for i in range(300)])
              for c in ("benign", "metastatic")}  # fmt: skip
    assert ratios["metastatic"] > ratios["benign"] + 0.15  # roundness still tells the classes apart
