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


def test_dicom_results_per_case_on_a_series_folder_and_on_a_nifti(folder, tmp_path, capsys):
    import pydicom

    from lnnode.dicom import read_series, write_series
    from lnnode.io.image import read_image

    from ..dicom_reading import read_nodes

    volume, geometry = read_image(folder / "ct_000.nii.gz")
    write_series(volume, geometry, tmp_path / "series", "CT")
    for source, case in ((tmp_path / "series", "series"), (folder / "ct_001.nii.gz", "ct_001")):
        out = tmp_path / f"out_{case}"
        assert main(["infer", str(source), "--out", str(out), "--tta", "1", "--no-progress", "--dicom"]) == 0
        result = json.loads((out / f"{case}.json").read_text())
        results = out / f"{case}.dicom"
        series = results / "image" if case == "ct_001" else tmp_path / "series"
        sources = read_series(series)
        seg = pydicom.dcmread(results / "seg.dcm") if result["nodes"] else None
        nodes = read_nodes(pydicom.dcmread(results / "sr.dcm"), seg, sources, read_image(series)[1])
        assert [n["id"] for n in nodes] == [n["id"] for n in result["nodes"]]
        for node, found in zip(nodes, result["nodes"], strict=True):
            assert node.get("Short axis") == found.get("short_axis_mm")
            assert node.get("Probability of cancer") == pytest.approx(found["p_metastasis"], abs=1e-4)
            expected = "Suspicious" if found["p_metastasis"] >= 0.5 else "Not suspicious"
            assert node["Model suspicion of metastasis"] == expected


@pytest.mark.skipif(not DICOM_SERIES.is_dir(), reason=f"real DICOM series not found at {DICOM_SERIES}")
def test_a_series_without_uids_gets_its_result_and_a_clear_word_on_the_dicom_results(tmp_path, capsys):
    out = tmp_path / "out"  # the shared TotalSegmentator series has empty Study/Series/SOP UIDs
    assert main(["infer", str(DICOM_SERIES), "--out", str(out), "--tta", "1", "--no-progress", "--dicom"]) == 1
    printed = capsys.readouterr().out
    assert "result written, DICOM SEG + SR not" in printed and "cannot reference them" in printed
    assert (out / "example_ct_dicom.json").is_file()


def test_export_writes_seg_and_sr_beside_each_label_and_names_what_it_cannot_export(tmp_path, capsys):
    studies = tmp_path / "studies"
    synthesize(studies, 2, modality="mr", seed=8, shape=(48, 48, 12), spacing=(1.0, 1.3, 4.0), direction="oblique")
    (studies / "labels" / "final" / "ghost.json").write_text("{}")
    assert main(["export", "--studies", str(studies)]) == 1
    printed = capsys.readouterr().out
    assert "2 case(s) exported, 1 failed" in printed and "ghost: not exported: " in printed
    for case in ("mr_000", "mr_001"):
        results = studies / "labels" / "final" / f"{case}.dicom"
        assert (results / "seg.dcm").is_file() and (results / "sr.dcm").is_file()
        assert len(list((results / "image").glob("*.dcm"))) == 12
    import pydicom

    assert pydicom.dcmread(studies / "labels" / "final" / "mr_000.dicom" / "image" / "0001.dcm").Modality == "MR"
    assert main(["export", "--studies", str(studies), "--image", "mr_000", "--out", str(tmp_path / "x"),
                 "--modality", "MR"]) == 0  # fmt: skip
    assert (tmp_path / "x" / "mr_000" / "sr.dcm").is_file()
