"""The real MONAI Label server with apps/lnnode on 127.0.0.1: info, datastore uploads and label versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lnnode.contracts import dumps

from .conftest import label_for

pytestmark = pytest.mark.server


def test_info_lists_models_before_any_training(server):
    status, info = server.request("GET", "/info/")
    assert status == 200
    assert info["name"] == "lnnode"
    assert "lymph_node_detection" in info["models"]
    assert info["models"]["lymph_node_detection"]["type"] == "detection"
    assert info["models"]["lymph_node_detection"]["weights"]["path"] is None
    assert "lymph_node_detection" in info["trainers"]
    assert {"random", "first"} <= set(info["strategies"])
    assert next(iter(info["strategies"])) == "badge", "the default strategy is listed first (a viewer preselects it)"
    assert info["datastore"]["completed"] >= 1, "the label JSON already in the folder counts as a label"


def test_infer_without_weights_explains_instead_of_crashing(server):
    status, body = server.request("POST", "/infer/lymph_node_detection?image=preexisting")
    assert status == 503
    assert "has no weights yet" in body["detail"] and "/train/lymph_node_detection" in body["detail"]
    assert server.request("GET", "/info/")[0] == 200, "the server keeps serving"


def test_upload_image_and_label_with_the_client_and_read_them_back(server, image_file, tmp_path):
    path, g = image_file
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert client.upload_image(str(path), image_id="case_001")["image"] == "case_001"
    label = label_for("case_001", g)
    label_path = tmp_path / "case_001.json"
    label_path.write_text(dumps(label))
    assert client.save_label("case_001", str(label_path), tag="final")["label"] == "case_001"

    downloaded = Path(client.download_label("case_001", "final"))
    assert downloaded.read_bytes() == label_path.read_bytes()
    assert json.loads(downloaded.read_text()) == label
    status, image_bytes = server.request("GET", "/datastore/image?image=case_001")
    assert status == 200 and image_bytes == path.read_bytes()
    objects = client.datastore()["objects"]
    assert objects["case_001"]["labels"]["final"]["ext"] == ".json"


def test_resubmitted_label_keeps_the_earlier_version(server, image_file, studies, tmp_path):
    path, g = image_file
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.upload_image(str(path), image_id="case_002")
    first = tmp_path / "first.json"
    first.write_text(dumps(label_for("case_002", g)))
    client.save_label("case_002", str(first), tag="final")
    second = tmp_path / "second.json"
    second.write_text(dumps(label_for("case_002", g, reviewer="dr.second")))
    client.save_label("case_002", str(second), tag="final")
    assert Path(client.download_label("case_002", "final")).read_bytes() == second.read_bytes()
    history = list((studies / "labels" / "final" / ".history").glob("*case_002.json"))
    assert [h.read_bytes() for h in history] == [first.read_bytes()]


def test_boxes_saved_by_the_stock_monai_label_plugin_become_a_reviewed_label(server, image_file, studies, tmp_path):
    """The stock MONAI Label Slicer plugin saves a detection model's boxes as one Slicer markups JSON of ROIs,
    with no tag and params {"label_info": [], "model": ...}: it is stored as a label compared with the model's
    result (kept, moved, added, deleted), in RAS as Slicer writes it."""
    from lnnode.contracts.markups import MARKUPS_SCHEMA, markups_from_nodes

    path, g = image_file
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.upload_image(str(path), image_id="case_010")
    centre = g.index_to_world(np.array(g.shape) / 2)
    nodes = [
        {"id": f"n{i + 1}", "center": (centre + offset).tolist(), "size": [8.0, 7.0, 12.0], "detection_score": 0.9}
        for i, offset in enumerate(([0, 0, 0], [9, 0, 0], [0, 9, 0]))
    ]
    original = {"schema": "lnnode.result/1", "image": "case_010", "model": {"detector": "d@1", "classifier": None},
                "coordinate_system": "LPS", "units": "mm", "nodes": nodes, "summary": {"n_nodes": 3}}  # fmt: skip
    (tmp_path / "original.json").write_text(json.dumps(original))
    client.save_label("case_010", str(tmp_path / "original.json"), tag="original")

    rois = markups_from_nodes(nodes)["markups"]
    rois[1]["center"] = (np.asarray(nodes[1]["center"]) + [3.0, 0.0, 0.0]).tolist()  # moved 3 mm
    new = dict(rois[0], name="metastatic", center=(centre + [-9.0, -9.0, 0.0]).tolist(), controlPoints=[])
    ras = []
    for roi in (rois[0], rois[1], new):  # n3 deleted
        x, y, z = roi["center"]
        ras.append(dict(roi, coordinateSystem="RAS", center=[-x, -y, z]))
    markups = tmp_path / "case_010.mrk.json"
    markups.write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": ras}))
    answer = client.save_label("case_010", str(markups), params={"label_info": [], "model": "lymph_node_detection"})
    review = answer["review"]
    assert (review["edited"], review["added"], review["rejected"]) == (1, 1, 1), review

    stored = json.loads(Path(client.download_label("case_010", "final")).read_text())
    assert stored["schema"] == "lnnode.label/1" and stored["coordinate_system"] == "LPS"
    kept, moved, added = stored["nodes"]
    assert kept["from_node"] == "n1" and kept["center"] == pytest.approx(nodes[0]["center"], abs=1e-3)
    assert moved["from_node"] == "n2" and moved["edited"] is True
    assert added["origin"] == "added" and added["class"] == "metastatic"
    assert [r["from_node"] for r in stored["rejected"]] == ["n3"]
    status, info = server.request("GET", "/datastore/label/info?label=case_010&tag=final")
    assert status == 200 and info["converted_from"] == "slicer_markups" and info["label_info"] == []

    broken = tmp_path / "broken.mrk.json"
    broken.write_text(json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [dict(ras[0], size=[1, 0, 1])]}))
    with pytest.raises(MONAILabelClientException) as caught:
        client.save_label("case_010", str(broken))
    assert "422" in str(caught.value) or "markups[0].size" in str(caught.value)
    assert json.loads(Path(client.download_label("case_010", "final")).read_text()) == stored, "nothing replaced"
