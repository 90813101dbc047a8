"""`lnnode import`: images + node masks (+ classes) become a studies folder with final labels."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from lnnode.cli import main as cli
from lnnode.contracts import parse_label
from lnnode.data.importer import DatasetImportError, import_dataset, read_class_table
from lnnode.geometry import ImageGeometry, lps_to_ras
from lnnode.io.image import read_image, write_image

from ..conftest import REAL_DATA, requires_real_data, rotation

ULS = REAL_DATA / "uls23_nih_ln" / "masks"


def world_extent_lps(mask_path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the LPS world box of a mask's voxels, computed with nibabel (RAS)."""
    img = nib.load(str(mask_path))
    ijk = np.argwhere(np.asanyarray(img.dataobj) > 0).astype(float)
    corners = (ijk[:, None, :] + np.array(np.meshgrid(*[[-0.5, 0.5]] * 3)).reshape(3, -1).T[None]).reshape(-1, 3)
    lps = lps_to_ras(nib.affines.apply_affine(img.affine, corners))  # RAS -> LPS: the same sign flip
    return lps.min(0), lps.max(0)


def enclosing_image(mask_paths, out_path, direction: np.ndarray) -> ImageGeometry:
    """A phantom-ish image whose (oblique) grid covers every mask, with a margin."""
    los, his = zip(*(world_extent_lps(p) for p in mask_paths), strict=True)
    lo, hi = np.min(los, 0) - 15.0, np.max(his, 0) + 15.0
    spacing = np.array([1.0, 1.2, 2.5])
    shape = np.ceil((hi - lo) @ np.abs(direction) / spacing).astype(int) + 4
    centre = (lo + hi) / 2
    origin = centre - direction @ (spacing * (shape - 1) / 2)
    g = ImageGeometry(tuple(shape), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    rng = np.random.default_rng(1)
    write_image(rng.normal(40, 10, g.shape).astype(np.int16), g, out_path)
    return g


@requires_real_data
def test_import_real_uls23_node_masks_flat_layout(tmp_path):
    """Real masks (own cropped grids, real affines) of one patient, flat file names + classes CSV."""
    masks = sorted(ULS.glob("ABD/ABD_LYMPH_001_lesion_*"))
    assert len(masks) >= 2
    src = tmp_path / "src"
    (src / "masks").mkdir(parents=True)
    (src / "images").mkdir()
    for m in masks:
        shutil.copy(m, src / "masks" / m.name)
    direction = rotation("z", 12) @ np.diag([-1.0, -1.0, 1.0])  # oblique + flipped image grid
    g = enclosing_image(masks, src / "images" / "ABD_LYMPH_001.nii.gz", direction)
    (src / "classes.csv").write_text("case,node,class\nABD_LYMPH_001,01,metastatic\nABD_LYMPH_001,02,0\n")

    studies = tmp_path / "studies"
    code = cli(
        ["import", str(src), "--studies", str(studies), "--node-pattern", r"(?P<case>.+)_lesion_(?P<node>\d+)_.*"]
    )
    assert code == 0
    label = parse_label((studies / "labels" / "final" / "ABD_LYMPH_001.json").read_bytes())
    assert label["image"] == "ABD_LYMPH_001"
    assert [n.get("class") for n in label["nodes"]] == ["metastatic", "benign", *[None] * (len(masks) - 2)]
    for node, mask in zip(label["nodes"], masks, strict=True):
        lo, hi = world_extent_lps(mask)
        np.testing.assert_allclose(node["center"], (lo + hi) / 2, atol=2e-3)
        np.testing.assert_allclose(node["size"], hi - lo, atol=2e-3)
    # the image is copied unchanged and an instance mask is written on its grid
    image, g2 = read_image(studies / "ABD_LYMPH_001.nii.gz")
    np.testing.assert_allclose(g2.affine, g.affine, atol=1e-4)
    instances, g3 = read_image(studies / "labels" / "instances" / "ABD_LYMPH_001.nii.gz")
    assert g3.shape == g.shape and sorted(np.unique(instances).astype(int)) == list(range(len(masks) + 1))
    for value, mask in enumerate(masks, start=1):  # each node's volume survives resampling (roughly)
        img = nib.load(str(mask))
        volume = (np.asanyarray(img.dataobj) > 0).sum() * np.prod(img.header.get_zooms()[:3])
        assert abs((instances == value).sum() * np.prod(g.spacing) / volume - 1) < 0.35


def test_import_instance_masks_per_node_folders_and_errors(tmp_path, flipped_geometry):
    g = flipped_geometry
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks" / "case_b").mkdir(parents=True)
    image = np.zeros(g.shape, np.int16)
    write_image(image, g, src / "images" / "case_a.nii.gz")
    write_image(image, g, src / "images" / "case_b.nrrd")
    inst = np.zeros(g.shape, np.uint8)
    inst[2:6, 3:9, 1:3] = 1
    inst[10:12, 20:25, 5:7] = 3
    write_image(inst, g, src / "masks" / "case_a.nii.gz")
    node = np.zeros(g.shape, np.uint8)
    node[15:20, 5:8, 4:6] = 1
    write_image(node, g, src / "masks" / "case_b" / "left_iliac.nii.gz")
    write_image(inst, g, src / "masks" / "case_c.nii.gz")  # no image for case_c
    (src / "classes.csv").write_text("case,node,class\ncase_a,3,malignant\ncase_b,left_iliac,benign\n")

    report = import_dataset(src, tmp_path / "studies")
    assert report.cases == ["case_a", "case_b"] and report.nodes == 3
    assert report.classes == {"metastatic": 1, "benign": 1, "no class": 1}
    assert report.skipped == {"case_c": "no image"}
    a = json.loads((tmp_path / "studies" / "labels" / "final" / "case_a.json").read_text())
    assert [n.get("class") for n in a["nodes"]] == [None, "metastatic"]
    assert (tmp_path / "studies" / "case_b.nrrd").exists()

    # a second import does not overwrite the labels unless asked
    again = import_dataset(src, tmp_path / "studies")
    assert again.cases == [] and "exists" in again.skipped["case_a"]
    assert import_dataset(src, tmp_path / "studies", overwrite=True).cases == ["case_a", "case_b"]


def test_class_table_errors_name_the_line(tmp_path):
    bad = tmp_path / "classes.csv"
    bad.write_text("case,node,class\na,1,benign\na,2,cancer\n")
    with pytest.raises(DatasetImportError, match="line 3: unknown class 'cancer'"):
        read_class_table(bad)
    bad.write_text("case,class\na,benign\n")
    with pytest.raises(DatasetImportError, match="missing column"):
        read_class_table(bad)
    bad.write_text("case,node,class\na,1,benign\na,1,benign\n")
    with pytest.raises(DatasetImportError, match="listed twice"):
        read_class_table(bad)


def test_import_cli_reports_a_missing_layout(tmp_path, capsys):
    assert cli(["import", str(tmp_path), "--studies", str(tmp_path / "s")]) == 2
    assert "missing folder" in capsys.readouterr().err
