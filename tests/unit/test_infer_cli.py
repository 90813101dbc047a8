"""``lnnode infer`` without a server: a folder of images (oblique, anisotropic), a DICOM series folder, a
broken file among good ones, a bad parameter, no models."""

from __future__ import annotations

import json

import pytest

from lnnode.cli import main
from lnnode.contracts import validate_result
from lnnode.io.image import read_geometry
from lnnode.phantoms import default_real_data_dir, synthesize

DICOM_SERIES = default_real_data_dir() / "totalseg" / "example_ct_dicom"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    studies = tmp_path_factory.mktemp("infer") / "images"
    synthesize(studies, 2, modality="ct", seed=3, shape=(96, 96, 32), spacing=(1.2, 1.2, 2.5), direction="oblique")
    (studies / "broken.nii.gz").write_bytes(b"not an image")
    return studies


def test_a_folder_gives_a_result_and_markups_per_case_and_names_the_broken_one(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["infer", str(folder), "--out", str(out), "--tta", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 1, "a case failed"
    assert "2 case(s) written" in printed and "broken (image" in printed and "not a readable NIfTI" in printed
    for case in ("ct_000", "ct_001"):
        result = validate_result(json.loads((out / f"{case}.json").read_text()))
        assert result["image"] == case and result["model"]["detector"] and result["model"]["classifier"]
        markups = json.loads((out / f"{case}.mrk.json").read_text())["markups"]
        assert len(markups) == len(result["nodes"]) and all(m["coordinateSystem"] == "LPS" for m in markups)
        geometry = read_geometry(folder / f"{case}.nii.gz")
        for node in result["nodes"]:
            assert geometry.contains_index(geometry.world_to_index(node["center"])), "world LPS, inside the image"
            assert "p_metastasis" in node and "rules" in node
    assert not (out / "broken.json").exists()


@pytest.mark.skipif(not DICOM_SERIES.is_dir(), reason=f"real DICOM series not found at {DICOM_SERIES}")
def test_a_dicom_series_folder_is_one_case(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(DICOM_SERIES), "--out", str(out), "--tta", "1", "--no-progress"]) == 0
    assert "1 case(s) written" in capsys.readouterr().out
    assert validate_result(json.loads((out / "example_ct_dicom.json").read_text()))["image"] == "example_ct_dicom"


def test_a_bad_parameter_or_no_model_is_an_error_before_any_case(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", str(folder), "--out", str(out), "--tta", "9"]) == 2
    assert "tta: must be between 1 and 8" in capsys.readouterr().err
    no_models = ["infer", str(folder), "--out", str(out), "--model-dir", str(tmp_path), "--no-demo-weights"]
    assert main(no_models) == 2
    assert "has no weights yet" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not list(out.glob("*.json")) if out.exists() else True
