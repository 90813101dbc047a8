"""SEG + SR export on an oblique, anisotropic phantom written as a DICOM series, read back with highdicom."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from lnnode.contracts import make_label
from lnnode.dicom import export_label, export_result, read_series, write_series
from lnnode.io.image import read_image
from lnnode.measure.delineation import measure_node
from lnnode.phantoms import synthesize

from ..dicom_reading import delineation_mask, predecessors, read_nodes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    synthesize(root / "studies", 1, modality="ct", seed=5, shape=(64, 56, 16), spacing=(0.8, 1.1, 3.0),
               direction="oblique")  # fmt: skip
    image = root / "studies" / "ct_000.nii.gz"
    truth = json.loads((root / "studies" / "labels" / "final" / "ct_000.json").read_text())
    volume, geometry = read_image(image)
    write_series(volume, geometry, root / "series", "CT", patient_id="LNNODE-TEST")
    return {"root": root, "image": image, "truth": truth, "series": root / "series"}


def _review(truth):
    """The truth's nodes as a review of a model result: the first two from model nodes, the rest added."""
    nodes, model = [], []
    for i, node in enumerate(truth["nodes"]):
        entry = {"center": node["center"], "size": node["size"], "class": node.get("class", "benign")}
        if i < 2:
            entry.update(origin="model", from_node=f"m{i}")
            model.append({"id": f"m{i}", "center": node["center"], "size": node["size"], "detection_score": 0.9,
                          "p_metastasis": 0.2 + 0.5 * i})  # fmt: skip
        else:
            entry["origin"] = "added"
        nodes.append(entry)
    label = make_label("ct_000", nodes, reviewer="Reader One")
    return label, {"schema": "lnnode.result/1", "image": "ct_000", "nodes": model}


def _read(exported, series):
    sources = read_series(series)
    volume, geometry = read_image(series)
    seg = pydicom.dcmread(exported.seg) if exported.seg else None
    return read_nodes(pydicom.dcmread(exported.sr), seg, sources, geometry), volume, geometry, seg


def test_a_review_reads_back_from_seg_and_sr_as_the_label_and_its_delineations(case):
    label, original = _review(case["truth"])
    exported = export_label(label, original, case["series"], case["root"] / "out", dicom=case["series"])
    nodes, volume, geometry, seg = _read(exported, case["series"])
    assert len(nodes) == len(label["nodes"]) == len(seg.SegmentSequence)
    for node, given in zip(nodes, label["nodes"], strict=True):
        m = measure_node(volume, geometry, given["center"], given["size"], "ct")
        assert node["Short axis"] == pytest.approx(round(m.short_axis_mm, 1))
        assert node["Long axis"] == pytest.approx(round(max(m.long_axis_mm, m.short_axis_mm), 1))
        assert node["Node class (reviewed)"] == {"benign": "Benign", "metastatic": "Metastasis"}[given["class"]]
        assert node["uid"] == node["segment_uid"] and node["id"] == node["segment_id"]
        assert node["seg_uid"] == seg.SOPInstanceUID
        assert node["source_series"] == read_series(case["series"])[0].SeriesInstanceUID
        expected = delineation_mask(m, geometry)
        assert node["mask"].sum() > 0 and np.array_equal(node["mask"], expected), "the segment is the delineation"
    probabilities = [n.get("Probability of cancer") for n in nodes]
    assert probabilities[:2] == [pytest.approx(0.2), pytest.approx(0.7)] and set(probabilities[2:]) == {None}


def test_the_seg_states_the_spacing_between_slices_and_references_each_source_slice(case):
    label, original = _review(case["truth"])
    exported = export_label(label, original, case["series"], case["root"] / "spacing", dicom=case["series"])
    seg = pydicom.dcmread(exported.seg)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(3.0, abs=1e-4)
    sources = {ds.SOPInstanceUID for ds in read_series(case["series"])}
    referenced = {
        ref.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for ref in derivation.SourceImageSequence
    }
    assert referenced and referenced <= sources


def test_a_nifti_case_gets_a_series_written_once_and_a_resubmission_supersedes_the_report(case):
    label, original = _review(case["truth"])
    out = case["root"] / "nifti"
    first = export_label(label, original, case["image"], out)
    assert first.source.written and (out / "image").is_dir()
    first_sr = pydicom.dcmread(first.sr)
    second = export_label({**label, "nodes": label["nodes"][:2]}, original, case["image"], out)
    sr = pydicom.dcmread(second.sr)
    assert sr.SOPInstanceUID != first_sr.SOPInstanceUID and sr.SeriesInstanceUID != first_sr.SeriesInstanceUID
    assert sr.StudyInstanceUID == first_sr.StudyInstanceUID  # the written series was reused
    assert predecessors(sr) == [first_sr.SOPInstanceUID]
    nodes, *_ = _read(second, out / "image")
    assert len(nodes) == 2


def test_a_box_without_a_node_is_reported_without_axes_and_its_segment_is_the_box_ellipsoid(case):
    volume, geometry = read_image(case["series"])
    corner = geometry.index_to_world([10.0, 40.0, 5.0]).tolist()  # in fat: nothing node-like
    assert measure_node(volume, geometry, corner, [5.0, 5.0, 6.0], "ct") is None
    label = make_label("ct_000", [{"center": corner, "size": [5.0, 5.0, 6.0], "class": "benign"}])
    exported = export_label(label, None, case["series"], case["root"] / "empty", dicom=case["series"])
    (node,) = _read(exported, case["series"])[0]
    assert "Short axis" not in node and node["Size rule (short axis >= 10 mm)"] == "Indeterminate"
    world = geometry.index_to_world(np.argwhere(node["mask"]).astype(float))
    assert len(world) >= 1 and np.all(np.abs(world - corner) <= np.array([2.5, 2.5, 3.0]) + 1e-6)


def test_a_review_without_nodes_gives_an_sr_and_no_seg(case):
    exported = export_label(make_label("ct_000", []), None, case["series"], case["root"] / "none", dicom=case["series"])
    assert exported.seg is None and not (exported.folder / "seg.dcm").exists()
    assert _read(exported, case["series"])[0] == []


def test_a_model_result_is_reported_as_the_models_call_not_as_a_final_review(case):
    _, original = _review(case["truth"])
    exported = export_result(original, case["series"], case["root"] / "result", p_thresh=0.5)
    sr = pydicom.dcmread(exported.sr)
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    nodes, *_ = _read(exported, case["series"])
    assert [n["Model suspicion of metastasis"] for n in nodes] == ["Not suspicious", "Suspicious"]
    assert all("Node class (reviewed)" not in n for n in nodes)


def test_a_left_handed_volume_is_written_once_and_its_report_superseded(case, tmp_path):
    from lnnode.geometry import ImageGeometry
    from lnnode.io.image import write_image

    volume, geometry = read_image(case["image"])
    flipped = ImageGeometry(geometry.shape, geometry.spacing, geometry.origin, np.diag([1.0, 1.0, -1.0]).ravel())
    write_image(volume, flipped, tmp_path / "left.nii.gz")  # det -1: read back from DICOM with k reversed
    centre = flipped.index_to_world(np.array(flipped.shape) / 2).tolist()
    label = make_label("left", [{"center": centre, "size": [8.0, 8.0, 9.0], "class": "benign"}])
    sr1 = pydicom.dcmread(export_label(label, None, tmp_path / "left.nii.gz", tmp_path / "out").sr)
    second = export_label(label, None, tmp_path / "left.nii.gz", tmp_path / "out")
    sr2 = pydicom.dcmread(second.sr)
    assert sr2.StudyInstanceUID == sr1.StudyInstanceUID and predecessors(sr2) == [sr1.SOPInstanceUID]
    (node,) = _read(second, tmp_path / "out" / "image")[0]
    assert node["mask"].sum() > 0


def test_a_series_lacking_optional_attributes_and_a_result_with_other_rules_still_export(case, tmp_path):
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for path in sorted(case["series"].glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyID", "PatientSex", "AccessionNumber", "SliceThickness", "PatientBirthDate"):
            delattr(ds, keyword) if keyword in ds else None
        ds.save_as(sparse / path.name)
    _, original = _review(case["truth"])
    original["nodes"][0]["rules"] = {"size_10mm": "suspicious", "node_rads": "4"}  # a rule lnnode does not report
    exported = export_result(original, sparse, tmp_path / "out")
    nodes, *_ = _read(exported, sparse)
    assert nodes[0]["Size rule (short axis >= 10 mm)"] == "Suspicious" and len(nodes) == len(original["nodes"])
