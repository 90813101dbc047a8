"""Results back to a real Orthanc: a final review is stored as a DICOM SEG + SR on the series' study, read back
from the PACS as the review (node count, short axes, probabilities, segment voxels = the delineations); a
resubmission supersedes them; the model's own result is never stored; training reads the PACS review; a PACS down
at submission answers 502 with the label saved, and the SEG + SR follow once it is back."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from monailabel.client import MONAILabelClient

from lnnode.contracts import dumps, make_label
from lnnode.dicom import read_series
from lnnode.io.checkpoint import load_checkpoint
from lnnode.io.image import read_image
from lnnode.measure.delineation import measure_node

from ..dicom_reading import delineation_mask, predecessors, read_nodes

pytestmark = [pytest.mark.server, pytest.mark.filterwarnings("ignore::UserWarning")]

SR_MODALITY, SEG_MODALITY = "SR", "SEG"


def _series_of(orthanc, study: str, modality: str) -> list[dict]:
    found = orthanc.get(f"/dicom-web/studies/{study}/series?Modality={modality}")
    return sorted(found, key=lambda s: s["0020000E"]["Value"][0])


def _fetch(orthanc, study: str, series: str):
    (ds,) = DICOMwebClient(url=orthanc.dicomweb).retrieve_series(study, series)
    return ds


def _review(result: dict, geometry) -> dict:
    """A reader's review of the model's result: its first nodes kept (the first as metastatic, the last of several
    rejected), one node added and one false positive marked."""
    nodes, rejected = [], []
    found = result["nodes"][:4]
    for i, node in enumerate(found):
        box = {"center": node["center"], "size": node["size"]}
        if i == len(found) - 1 and i > 0:
            rejected.append({**box, "from_node": node["id"]})
        else:
            nodes.append({**box, "class": "metastatic" if i == 0 else "benign", "origin": "model",
                          "from_node": node["id"]})  # fmt: skip
    centre = geometry.index_to_world(np.array(geometry.shape) / 2).tolist()
    nodes.append({"center": centre, "size": [9.0, 8.0, 6.0], "class": "benign", "origin": "added"})
    elsewhere = geometry.index_to_world(np.array(geometry.shape) / 4).tolist()
    rejected.append({"center": elsewhere, "size": [6.0, 6.0, 6.0]})  # a false positive the reader marked
    return make_label(result["image"], nodes, rejected=rejected, reviewer="Reader^One")


@pytest.fixture(scope="module")
def reviewed(server, pacs, orthanc, tmp_path_factory):
    """The pipeline's result on the CT series and a final review of it, saved through the stock client."""
    tmp = tmp_path_factory.mktemp("review")
    status, result = server.request("POST", f"/infer/lymph_node_pipeline?image={pacs['ct']}&output=json")
    assert status == 200, result
    volume, geometry = read_image(pacs["folder"])
    label = _review(result, geometry)
    (tmp / "label.json").write_text(dumps(label))
    begin = time.perf_counter()
    answer = MONAILabelClient(server.url, tmpdir=str(tmp)).save_label(pacs["ct"], str(tmp / "label.json"), tag="final")
    seconds = time.perf_counter() - begin
    rejected = len(label.get("rejected", []))
    print(f"{len(result['nodes'])} model nodes; {len(label['nodes'])} reviewed, {rejected} rejected")
    print(f"final review saved and written back: {seconds:.2f} s (SEG + SR made and stored: "
          f"{answer['pacs']['seconds']:.2f} s)")  # fmt: skip
    return {"result": result, "label": label, "answer": answer, "volume": volume, "geometry": geometry, "tmp": tmp}


def test_a_final_review_reads_back_from_the_pacs_as_the_review_and_its_delineations(orthanc, pacs, reviewed):
    record = reviewed["answer"]["pacs"]
    assert record["status"] == "stored", record
    study = record["study"]
    (seg_series,) = _series_of(orthanc, study, SEG_MODALITY)
    (sr_series,) = _series_of(orthanc, study, SR_MODALITY)
    assert seg_series["0020000E"]["Value"][0] == record["seg_series"]
    seg = _fetch(orthanc, study, record["seg_series"])
    sr = _fetch(orthanc, study, record["sr_series"])
    sources, volume, geometry = read_series(pacs["folder"]), reviewed["volume"], reviewed["geometry"]
    nodes = read_nodes(sr, seg, sources, geometry)
    label, result = reviewed["label"], reviewed["result"]
    assert len(nodes) == len(label["nodes"])
    model = {n["id"]: n for n in result["nodes"]}
    for node, given in zip(nodes, label["nodes"], strict=True):
        assert node["source_series"] == pacs["ct"] and node["uid"] == node["segment_uid"]
        assert node["Node class (reviewed)"] == {"benign": "Benign", "metastatic": "Metastasis"}[given["class"]]
        m = measure_node(volume, geometry, given["center"], given["size"], "ct")
        if m is None:
            assert "Short axis" not in node
        else:
            assert node["Short axis"] == pytest.approx(round(m.short_axis_mm, 1))
            expected = delineation_mask(m, geometry)
            assert np.array_equal(node["mask"], expected), f"segment {node['segment']} = the delineation"
        p = model.get(given.get("from_node"), {}).get("p_metastasis")
        assert node.get("Probability of cancer") == (pytest.approx(p, abs=1e-4) if p is not None else None)


def test_the_models_own_result_is_never_stored_on_the_pacs(orthanc, server, pacs, reviewed):
    status, _ = server.request("POST", f"/infer/lymph_node_pipeline?image={pacs['mr']}&output=json")
    assert status == 200
    mr_study = orthanc.get(f"/dicom-web/series?SeriesInstanceUID={pacs['mr']}")[0]["0020000D"]["Value"][0]
    assert _series_of(orthanc, mr_study, SEG_MODALITY) == [] and _series_of(orthanc, mr_study, SR_MODALITY) == []


def test_training_reads_the_review_made_on_the_pacs_series(server, reviewed):
    params = {"max_epochs": 1, "init": "scratch", "val_split": 0.0, "train_batch_size": 2}
    params["spec"] = {"crop_mm": 24.0, "crop_spacing": 1.5, "widths": [4, 8]}
    status, body = server.request("POST", "/train/lymph_node_classification", json.dumps(params).encode(),
                                  {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, body
    train = server.wait_training()
    assert train["status"] == "DONE", train
    meta = load_checkpoint(server.models / "lymph_node_classification.pt", task="classification").meta
    label = reviewed["label"]
    assert meta["training"]["n_train"] == 1 and meta["training"]["n_train_nodes"] == len(label["nodes"])
    assert meta["training"]["corrections"]["rejected"] == len(label.get("rejected", []))
    assert meta["training"]["corrections"]["changed"] >= 1  # the node the reader added


def test_a_resubmission_supersedes_the_seg_and_sr_on_the_pacs(orthanc, server, pacs, reviewed):
    first = reviewed["answer"]["pacs"]
    label = {**reviewed["label"], "nodes": reviewed["label"]["nodes"][:1]}
    (reviewed["tmp"] / "again.json").write_text(dumps(label))
    client = MONAILabelClient(server.url, tmpdir=str(reviewed["tmp"]))
    answer = client.save_label(pacs["ct"], str(reviewed["tmp"] / "again.json"), tag="final")
    second = answer["pacs"]
    assert second["status"] == "stored" and second["sr_series"] != first["sr_series"]
    superseded = second["superseded"][-1]
    assert (superseded["seg_series"], superseded["sr_series"]) == (first["seg_series"], first["sr_series"])
    status, info = server.request("GET", f"/datastore/label/info?label={pacs['ct']}&tag=final")
    assert info["pacs"]["sr_series"] == second["sr_series"], "the label says which report is current"
    sr = _fetch(orthanc, second["study"], second["sr_series"])
    assert predecessors(sr) == [first["sr_instance"]]
    assert len(read_nodes(sr, _fetch(orthanc, second["study"], second["seg_series"]), read_series(pacs["folder"]),
                          reviewed["geometry"])) == 1  # fmt: skip


def test_a_pacs_down_at_submission_answers_502_keeps_the_label_and_stores_it_when_back(orthanc, server, pacs, reviewed):
    status, info = server.request("GET", f"/datastore/label/info?label={pacs['ct']}&tag=final")
    before = info["pacs"]  # the resubmission's report, current on the PACS
    label = {**reviewed["label"], "nodes": reviewed["label"]["nodes"][:2], "reviewer": "Reader^Two"}
    path = reviewed["tmp"] / "while_down.json"
    path.write_text(dumps(label))
    orthanc.stop()
    try:
        body, headers = _form(path)
        status, answer = server.request("PUT", f"/datastore/label?image={pacs['ct']}&tag=final", body, headers)
        assert status == 502 and orthanc.url.split("//")[1] in answer["detail"], answer
        assert "saved in lnnode" in answer["detail"] and "next refresh" in answer["detail"]
        stored = json.loads((server.cache / "labels" / "final" / f"{pacs['ct']}.json").read_text())
        assert stored["reviewer"] == "Reader^Two", "the label is saved though the PACS is down"
        status, info = server.request("GET", f"/datastore/label/info?label={pacs['ct']}&tag=final")
        assert info["pacs"]["status"] == "pending" and info["pacs"]["sr_series"] == before["sr_series"]
        (built,) = (server.cache / "labels" / "final" / f"{pacs['ct']}.dicom").glob(".pending-*/sr.dcm")
        built_uid = pydicom.dcmread(built).SOPInstanceUID
    finally:
        orthanc.start()
    server.request("GET", "/datastore/?output=all")  # a listing refreshes: the write-back is tried again
    status, info = server.request("GET", f"/datastore/label/info?label={pacs['ct']}&tag=final")
    after = info["pacs"]
    assert after["status"] == "stored" and after["sr_instance"] == built_uid, "the instances built while down are sent"
    assert after["superseded"][-1]["sr_series"] == before["sr_series"]
    sr = _fetch(orthanc, after["study"], after["sr_series"])
    assert predecessors(sr) == [before["sr_instance"]], "the report the PACS held before is superseded"
    assert len(_series_of(orthanc, after["study"], SR_MODALITY)) == 3, "one SR per stored version, none twice"


def _form(path):
    from ..conftest import multipart

    return multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
