"""2D ultrasound phantoms (``lnnode synth --modality us``): deterministic, ground truth consistent with the image,
the classes told apart by what radiologists read (shape, orientation, margin, echo) and not by size alone, marks
burnt into both classes alike."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from scipy import ndimage

from lnnode.cli import main
from lnnode.contracts import validate_label
from lnnode.phantoms.ultrasound import make_us_case

CASES = [make_us_case(3, i) for i in range(40)]
NODES = [(case, node) for case in CASES for node in case.nodes]


def test_a_case_depends_only_on_seed_and_index():
    again = make_us_case(3, 5)
    assert np.array_equal(again.image, CASES[5].image) and again.nodes == CASES[5].nodes
    assert not np.array_equal(make_us_case(4, 5).image, CASES[5].image)


def test_each_label_box_is_its_instance_masks_box_read_back_from_the_files(tmp_path):
    from lnnode.contracts.convert import instance_boxes, label_to_index_boxes
    from lnnode.io.image import read_image
    from lnnode.phantoms.ultrasound import synthesize_us

    synthesize_us(tmp_path, 12, seed=3)
    for i in range(12):
        label = validate_label(json.loads((tmp_path / "labels" / "final" / f"us_{i:03d}.json").read_text()))
        masks, geometry = read_image(tmp_path / "labels" / "instances" / f"us_{i:03d}.png", allow_2d=True)
        _, image_geometry = read_image(tmp_path / f"us_{i:03d}.png", allow_2d=True)
        assert image_geometry == geometry and geometry.shape == (256, 256, 1)
        boxes = instance_boxes(masks.astype(np.int32))
        assert len(boxes) == len(label["nodes"])
        for (lo, hi), (want_lo, want_hi) in zip(label_to_index_boxes(label, geometry), boxes.values(), strict=True):
            assert np.allclose(lo, want_lo) and np.allclose(hi, want_hi), "the label's box is the mask's, in pixels"


def test_the_image_is_a_sector_of_speckle_and_nodes_are_darker_than_around_them():
    darker = 0
    for case, node in NODES:
        mask = case.instances == node["instance"]
        ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=2)
        darker += case.image[mask].mean() < case.image[ring].mean()
    assert darker >= 0.8 * len(NODES), f"{darker} of {len(NODES)} nodes darker than their surroundings"
    for case in CASES[:5]:
        assert case.image.dtype == np.uint8 and case.image[0, 0] == 0 and case.image[0, -1] == 0  # outside the fan
        patch = case.image[200:230, 100:150].astype(float)
        assert patch.std() > 15, "speckle, not a smooth image"


def test_classes_overlap_in_size_and_differ_in_shape():
    by_class = {c: [n for _, n in NODES if n["class"] == c] for c in ("benign", "metastatic")}
    assert min(len(v) for v in by_class.values()) >= 10
    short = {c: [n["nominal_short_axis_px"] for n in v] for c, v in by_class.items()}
    assert max(short["benign"]) > np.median(short["metastatic"]) > min(short["benign"]), "sizes overlap"
    assert not any(n["taller_than_wide"] for n in by_class["benign"])
    assert any(n["taller_than_wide"] for n in by_class["metastatic"])
    elongation = {c: [n["nominal_long_axis_px"] / n["nominal_short_axis_px"] for n in v] for c, v in by_class.items()}
    ratio = {c: np.median(v) for c, v in elongation.items()}
    assert ratio["benign"] > 1.4 > ratio["metastatic"], ratio


def test_marks_are_burnt_into_cases_of_both_classes():
    marked = [case for case in CASES if case.info["marks"]]
    kinds = {"metastatic" if case.info["n_metastatic"] else "benign" for case in marked}
    assert kinds == {"benign", "metastatic"}
    assert all(case.nodes for case in marked), "marks go with a measured node"


def test_the_command_writes_pngs_labels_and_masks(tmp_path, capsys):
    out = tmp_path / "us"
    assert main(["synth", "--out", str(out), "--modality", "us", "--cases", "3", "--shape", "200", "160", "1"]) == 0
    assert "wrote 3 cases" in capsys.readouterr().out
    for i in range(3):
        image = np.asarray(Image.open(out / f"us_{i:03d}.png"))
        assert image.shape == (160, 200) and image.dtype == np.uint8
        masks = np.asarray(Image.open(out / "labels" / "instances" / f"us_{i:03d}.png"))
        label = validate_label(json.loads((out / "labels" / "final" / f"us_{i:03d}.json").read_text()))
        assert masks.shape == image.shape and int(masks.max()) == len(label["nodes"])
    assert main(["synth", "--out", str(out), "--modality", "us", "--shape", "64", "64", "4"]) == 2
    assert "2D" in capsys.readouterr().err
