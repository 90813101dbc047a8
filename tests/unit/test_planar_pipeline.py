"""The 2D pipeline's parts: a 2D model's grid on the image's own pixels (boxes exact both ways on flipped,
anisotropic planes), the lesion measurement in the image plane and the 2D rules, per-node crop spacing, the
compact 2D classifier, pixel-spacing detection, the table importer with its groups, group-kept validation splits."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from lnnode.contracts import make_label
from lnnode.contracts.convert import planar_box_to_node
from lnnode.data.table import import_table, read_groups
from lnnode.geometry import ImageGeometry
from lnnode.io.image import pixel_spacing_known, read_image, write_image
from lnnode.measure.planar import measure_lesion
from lnnode.measure.rules import PLANAR_RULES, planar_rules
from lnnode.networks.anchors import design_anchor_shapes
from lnnode.networks.classifier import ClassifierSpec, build_classifier_network
from lnnode.transforms import PlaneGridd, nodes_to_planar_boxes, planar_boxes_to_nodes, plane_grid
from lnnode.transforms.crops import extract_planar_crops, in_plane_extent, planar_views

# a flipped (RAS-like), anisotropic ultrasound-like plane with an origin away from 0
FLIPPED = ImageGeometry((120, 90, 1), (0.3, 0.2, 1.0), (40.0, -12.0, 5.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))


def lesion_image(geometry: ImageGeometry, centre_ij, half_axes_ij, seed: int = 0, star: float = 0.0) -> np.ndarray:
    """A dark ellipse (or a spiky star: ``star`` > 0) on a brighter, noisy background, (i, j, 1)."""
    i, j = np.meshgrid(np.arange(geometry.shape[0]), np.arange(geometry.shape[1]), indexing="ij")
    di, dj = (i - centre_ij[0]) / half_axes_ij[0], (j - centre_ij[1]) / half_axes_ij[1]
    radius = 1.0 + star * np.cos(7 * np.arctan2(dj, di))
    inside = di**2 + dj**2 <= radius**2
    rng = np.random.default_rng(seed)
    return (np.where(inside, 40.0, 160.0) + rng.normal(0, 8, inside.shape)).astype(np.float32)[..., None]


def node_of(geometry: ImageGeometry, centre_ij, half_axes_ij) -> dict:
    lo = np.asarray(centre_ij, float) - np.asarray(half_axes_ij) - 0.5
    hi = np.asarray(centre_ij, float) + np.asarray(half_axes_ij) + 0.5
    return planar_box_to_node(lo, hi, geometry)


def test_a_2d_models_grid_keeps_the_plane_and_boxes_convert_exactly_both_ways():
    grid = plane_grid(FLIPPED, (2, 3))
    assert grid.shape == (60, 30, 1) and grid.spacing == pytest.approx((0.6, 0.6, 1.0))
    assert grid.direction == FLIPPED.direction
    nodes = [node_of(FLIPPED, (30, 40), (10, 6)), node_of(FLIPPED, (80, 20), (5, 9))]
    back = planar_boxes_to_nodes(nodes_to_planar_boxes(nodes, grid), grid)
    for a, b in zip(nodes, back, strict=True):
        assert np.allclose(a["center"], b["center"], atol=1e-3) and np.allclose(a["size"], b["size"], atol=1e-3)
    # the grid's pixel centres are where the image pixels they average are centred
    image = np.arange(120, dtype=np.float32)[None, :, None, None] * np.ones((1, 120, 90, 1), np.float32)
    d = PlaneGridd(keys="image", spacing=(2, 3))({"image": image, "image_geometry": FLIPPED})
    assert d["image"].shape == (1, 60, 30)
    assert d["image"][0, 10, 5] == pytest.approx(20.5, abs=0.05)  # image columns 20 and 21
    with pytest.raises(ValueError, match="one-slice"):
        plane_grid(ImageGeometry((4, 4, 3), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()), (1, 1))


def test_anchors_are_designed_for_2d_boxes():
    sizes = np.array([[10, 8], [12, 9], [30, 20], [32, 26], [60, 44], [70, 50]], float)
    shapes = design_anchor_shapes(sizes, 3)
    assert np.shape(shapes) == (3, 2)


def test_a_lesion_is_measured_in_the_image_plane_and_its_rules_follow():
    wide = lesion_image(FLIPPED, (60, 45), (30, 12))
    m = measure_lesion(wide, FLIPPED, **_box(node_of(FLIPPED, (60, 45), (30, 12))))
    # long axis across (i: 0.3 per pixel), short in depth (j: 0.2 per pixel), within a pixel or two
    assert m.long_axis == pytest.approx(2 * 30.5 * 0.3, abs=0.8) and m.short_axis == pytest.approx(
        2 * 12.5 * 0.2, abs=0.6
    )
    assert not m.taller_than_wide and m.solidity > 0.9
    rules = planar_rules(m, spacing_known=True)
    assert set(rules) == set(PLANAR_RULES)
    assert rules["shape"] == rules["orientation"] == rules["margin"] == rules["morphology"] == "not_suspicious"
    assert rules["size_10mm"] == "not_suspicious"  # 5 mm short axis

    tall = lesion_image(FLIPPED, (60, 45), (10, 40), star=0.35)
    m = measure_lesion(tall, FLIPPED, **_box(node_of(FLIPPED, (60, 45), (14, 44))))
    assert m.taller_than_wide and m.solidity < 0.9
    rules = planar_rules(m, spacing_known=False)
    assert rules["orientation"] == rules["margin"] == rules["morphology"] == "suspicious"
    assert rules["size_10mm"] == "indeterminate", "no pixel spacing: no size in mm"

    flat = np.full(FLIPPED.shape, 100.0, np.float32)
    assert measure_lesion(flat, FLIPPED, **_box(node_of(FLIPPED, (60, 45), (10, 10)))) is None
    assert set(planar_rules(None, True).values()) == {"indeterminate"}


def _box(node: dict) -> dict:
    return {"center": node["center"], "size": node["size"]}


def test_box_relative_crops_take_the_spacing_of_each_node():
    spec = ClassifierSpec.planar()
    assert spec.spatial_dims == 2 and spec.crop_shape == (64, 64) and spec.network_channels == 2
    assert spec.crop_spacings_for(10.0) == pytest.approx([96 / 64, 384 / 64])  # at least crop_mm; the context
    assert spec.crop_spacings_for(200.0) == pytest.approx([300 / 64, 384 / 64])
    network = build_classifier_network(spec)
    assert sum(p.numel() for p in network.parameters()) < 1_000_000, "the demo model stays small"
    import torch

    assert network(torch.zeros(3, 2, 64, 64)).shape == (3,)
    with pytest.raises(ValueError, match="2D crops only"):
        ClassifierSpec(box_scale=1.5)

    g = ImageGeometry((100, 80, 1), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    plane = np.zeros((100, 80, 1), np.float32)
    plane[40:60, 30:50] = 1.0  # a 20 x 20 square
    centre = [49.5, 39.5, 0.0]
    small, large = extract_planar_crops(plane, g, [centre, centre], 16, [1.0, 4.0])
    assert small[0].mean() == pytest.approx(1.0, abs=0.05)  # 16 px window inside the square
    assert 0.05 < large[0].mean() < 0.3  # 64 px window: the square and its surroundings
    assert in_plane_extent(FLIPPED, [6.0, 3.0, 1.0]) == pytest.approx(20.0)  # pixels: 6 mm at 0.3, 3 mm at 0.2
    nodes = [{"center": centre, "size": [20.0, 20.0, 1.0]}]
    views = planar_views(plane, g, nodes, 16, lambda extent: [extent / 16, 4.0])
    assert views.shape == (1, 2, 16, 16) and np.allclose(views[:, 1], large[None, 0])


def _dicom(path, spacing: bool, series: str | None = None) -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), series or generate_uid(), "US"
    ds.Rows, ds.Columns = 20, 30
    if spacing:
        ds.PixelSpacing = [0.2, 0.1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(600) % 200).astype(np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.is_little_endian, ds.is_implicit_VR = True, False
    pydicom.dcmwrite(path, ds)


def test_pixel_spacing_is_known_for_calibrated_files_only(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    calibrated = ImageGeometry((8, 8, 1), (0.5, 0.5, 1), (0, 0, 0), np.eye(3).ravel())
    write_image(np.zeros((8, 8, 1), np.float32), calibrated, tmp_path / "a.nii.gz")
    _dicom(tmp_path / "with.dcm", spacing=True)
    _dicom(tmp_path / "without.dcm", spacing=False)
    assert not pixel_spacing_known(tmp_path / "a.png")
    assert pixel_spacing_known(tmp_path / "a.nii.gz")
    assert pixel_spacing_known(tmp_path / "with.dcm") and not pixel_spacing_known(tmp_path / "without.dcm")


def test_find_cases_takes_each_single_file_dicom_image_as_a_case(tmp_path):
    from lnnode.inference import find_cases

    folder = tmp_path / "us"
    folder.mkdir()
    for name in ("a", "b"):
        _dicom(folder / f"{name}.dcm", spacing=True)
    assert [c for c, _ in find_cases(folder)] == ["a", "b"]
    one_series = tmp_path / "series"  # an ultrasound series: images, not the slices of a volume
    one_series.mkdir()
    uid = generate_uid()
    for name in ("c", "d", "e"):
        _dicom(one_series / f"{name}.dcm", spacing=True, series=uid)
    assert [c for c, _ in find_cases(one_series)] == ["c", "d", "e"]


def test_a_table_imports_2d_cases_with_classes_and_groups(tmp_path):
    src = tmp_path / "set"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    for case in ("b1", "m1", "n1", "bad"):
        Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(src / "images" / f"{case}.png")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 5:25] = 255
    Image.fromarray(mask).save(src / "masks" / "b1_mask.png")
    Image.fromarray(mask).save(src / "masks" / "m1_mask.png")
    Image.fromarray(np.roll(mask, 30, axis=1)).save(src / "masks" / "m1_mask_1.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(src / "masks" / "n1_mask.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(src / "masks" / "bad_mask.png")
    (src / "cases.csv").write_text(
        "case,label,image,masks,group\n"
        "b1,benign,images/b1.png,masks/b1_mask.png,g1\n"
        "m1,malignant,images/m1.png,masks/m1_mask.png;masks/m1_mask_1.png,g1\n"
        "n1,normal,images/n1.png,masks/n1_mask.png,g2\n"
        "bad,benign,images/bad.png,masks/bad_mask.png,g3\n"
        "gone,benign,images/gone.png,,g4\n"
    )
    studies = tmp_path / "studies"
    report = import_table(src / "cases.csv", studies)
    assert sorted(report.cases) == ["b1", "m1", "n1"] and set(report.skipped) == {"bad", "gone"}
    assert "shape" in report.skipped["bad"]
    m1 = json.loads((studies / "labels" / "final" / "m1.json").read_text())
    assert [n["class"] for n in m1["nodes"]] == ["metastatic", "metastatic"]
    assert m1["nodes"][0]["center"] == [14.5, 14.5, 0.0] and m1["nodes"][0]["size"] == [20.0, 10.0, 1.0]
    assert json.loads((studies / "labels" / "final" / "n1.json").read_text())["nodes"] == []
    assert (studies / "b1.png").read_bytes() == (src / "images" / "b1.png").read_bytes()
    assert read_groups(studies) == {"b1": "g1", "m1": "g1", "n1": "g2"}
    volume, _ = read_image(studies / "m1.png", allow_2d=True)
    assert volume.shape == (60, 40, 1)


def test_validation_keeps_a_group_on_one_side():
    from lnnode.appdir import app_module

    base = app_module("trainers.base")
    items = [{"id": f"c{i:02d}", "group": f"g{i // 4}"} for i in range(40)]

    class Context:
        datalist = items
        request = {"val_split": 0.3}

    train, val = base.LnnodeTrainTask.partition_datalist(None, Context())
    assert val and train and len(train) + len(val) == 40
    assert not {i["group"] for i in train} & {i["group"] for i in val}
    ungrouped = [{"id": i["id"]} for i in items]
    Context.datalist = ungrouped
    train2, val2 = base.LnnodeTrainTask.partition_datalist(None, Context())
    assert 1 <= len(val2) < 40


def test_a_2d_label_makes_its_boxes_on_the_models_grid():
    from lnnode.transforms import LabelToBoxesd

    node = node_of(FLIPPED, (30, 40), (10, 6))
    label = make_label("x", [node], rejected=[node_of(FLIPPED, (80, 20), (5, 5))])
    grid = plane_grid(FLIPPED, (2, 2))
    d = LabelToBoxesd(keys="label", planar=True)({"label": label, "grid": grid})
    assert d["boxes"].shape == (1, 4) and d["rejected_boxes"].shape == (1, 4)
    assert np.allclose(
        d["boxes"][0], [(19.5 + 0.5) / 2, (33.5 + 0.5) / 2, (40.5 + 0.5) / 2, (46.5 + 0.5) / 2], atol=0.3
    )


def test_automatic_training_trains_the_models_of_the_labelled_images_kind():
    from lnnode.appdir import app_module

    auto = app_module("trainers.auto").AutoTrain(1, [], {})
    trainers = ["lymph_node_detection", "lymph_node_classification", "lymph_node_detection_2d"]
    started = []
    auto.on_final_label(trainers, lambda models, **kwargs: started.append(models), planar=True)
    auto.on_final_label(trainers, lambda models, **kwargs: started.append(models), planar=False)
    auto.on_final_label(trainers, lambda models, **kwargs: started.append(models))
    assert started == [["lymph_node_detection_2d"], trainers[:2], trainers]


def test_patches_centre_on_the_readers_corrections_on_a_2d_image():
    from lnnode.transforms import RandFocusCropd

    image = np.zeros((1, 100, 80), np.float32)
    boxes = np.array([[10.0, 10.0, 20.0, 20.0], [60.0, 50.0, 70.0, 62.0]], np.float32)
    weights, rejected = np.array([1.0, 2.0], np.float32), np.zeros((0, 4), np.float32)
    data = {"image": image, "boxes": boxes, "box_labels": np.zeros(2, np.int64), "box_weights": weights,
            "rejected_boxes": rejected}  # fmt: skip
    crop = RandFocusCropd(lambda d: [d], spatial_size=(32, 32), num_samples=3, prob=1.0, jitter=0.0)
    crop.set_random_state(0)
    samples = crop(data)
    assert len(samples) == 3 and all(s["image"].shape == (1, 32, 32) for s in samples)
    for s in samples:  # the relabelled node (weight 2) in the middle of every patch
        assert len(s["boxes"]) == 1 and np.allclose(s["boxes"][0], [11.0, 10.0, 21.0, 22.0])
