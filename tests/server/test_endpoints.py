"""The real MONAI Label server with apps/lnnode on 127.0.0.1: info, datastore uploads and label versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monailabel.client import MONAILabelClient

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
