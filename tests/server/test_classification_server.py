"""Classification and the one-call pipeline on the real server: a tiny classifier trained via
/train/ is served at once; /infer/lymph_node_pipeline returns the whole result contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from lnnode.contracts import RULE_VALUES, parse_result
from lnnode.io.checkpoint import load_checkpoint
from lnnode.phantoms import synthesize

from ..conftest import multipart

pytestmark = pytest.mark.server

TINY = {"crop_mm": 24.0, "crop_spacing": 1.5, "widths": [4, 8]}


def post_json(server, path: str, body: dict):
    """/train/ takes a JSON body; /infer/ takes its params as a form field (as MONAILabelClient sends them)."""
    if path.startswith("/infer/"):
        data, headers = multipart({"params": json.dumps(body)}, {})
        return server.request("POST", path, data, headers)
    return server.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Small oblique, anisotropic CT phantoms with benign and metastatic nodes."""
    out = tmp_path_factory.mktemp("cls") / "studies"
    synthesize(out, 4, modality="ct", seed=77, shape=(112, 104, 36), spacing=(1.3, 1.1, 2.5), direction="oblique")
    classes = {n["class"] for c in json.loads((out / "synth_manifest.json").read_text())["cases"] for n in c["nodes"]}
    assert classes == {"benign", "metastatic"}
    return out


def label_nodes(studies: Path, case: str) -> list[dict]:
    return json.loads((studies / "labels" / "final" / f"{case}.json").read_text())["nodes"]


def test_classifier_trained_via_train_is_served_and_the_pipeline_uses_it(start_server, studies, tmp_path):
    models = tmp_path / "models"
    server = start_server(studies, model_dir=str(models), demo_weights="false", device="cpu")
    nodes = [{"center": n["center"], "size": n["size"]} for n in label_nodes(studies, "ct_000")]

    status, body = post_json(server, "/infer/lymph_node_classification?image=ct_000&output=json", {"nodes": nodes})
    assert status == 503 and "train" in body["detail"]

    params = {"max_epochs": 2, "init": "scratch", "val_split": 0.5, "spec": TINY, "train_batch_size": 4}
    status, body = post_json(server, "/train/lymph_node_classification", params)
    assert status == 200, body
    assert server.wait_training()["status"] == "DONE"
    stats = json.loads((models / "lymph_node_classification_train_stats.json").read_text())
    assert stats["status"] == "published", stats
    meta = load_checkpoint(models / "lymph_node_classification.pt", task="classification").meta
    assert meta["network"]["crop_mm"] == 24.0 and meta["calibration"]["temperature"] > 0

    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    sent = [{**n, "id": f"gt{i}"} for i, n in enumerate(nodes)]
    markups_file, result = client.infer("lymph_node_classification", "ct_000", {"nodes": sent})
    parse_result(json.dumps(result))
    assert [n["id"] for n in result["nodes"]] == [n["id"] for n in sent]
    assert all(0.0 <= n["p_metastasis"] <= 1.0 and n["uncertainty"] >= 0.0 for n in result["nodes"])
    assert result["model"]["classifier"].startswith("lymph_node_classification@")
    assert len(json.loads(Path(markups_file).read_text())["markups"]) == len(nodes)

    # bad boxes: named, refused, and the server goes on
    far = [{"center": [9999.0, 0.0, 0.0], "size": [5.0, 5.0, 5.0]}]
    status, body = post_json(server, "/infer/lymph_node_classification?image=ct_000&output=json", {"nodes": far})
    assert status == 422 and "nodes[0].center" in body["detail"]
    bad = [{"center": [0.0, 0.0], "size": [5.0, 5.0, 5.0]}]
    status, body = post_json(server, "/infer/lymph_node_classification?image=ct_000&output=json", {"nodes": bad})
    assert status == 422 and "nodes[0].center" in body["detail"]
    status, body = post_json(server, "/infer/lymph_node_classification?image=ct_000&output=json", {})
    assert status == 422 and "no nodes" in body["detail"]

    # the pipeline has no detector here (no demo weights, none trained): 503, not a 500
    status, body = post_json(server, "/infer/lymph_node_pipeline?image=ct_000&output=json", {})
    assert status == 503


def test_pipeline_returns_the_result_contract_with_measurements_and_rules(start_server, studies, tmp_path):
    """Demo detector + demo classifier (or none yet: then morphology decides and a warning says so)."""
    server = start_server(studies, device="cpu")
    status, info = server.request("GET", "/info/")
    assert "lymph_node_pipeline" in info["models"]
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    manifest = {c["id"]: c for c in json.loads((studies / "synth_manifest.json").read_text())["cases"]}
    errors = []
    for case in ("ct_001", "ct_002"):
        markups_file, result = client.infer("lymph_node_pipeline", case, {"score_thresh": 0.3})
        parse_result(json.dumps(result))
        assert result["image"] == case
        summary = result["summary"]
        assert summary["n_stage_hint"] in ("N0", "N1", "N2") and summary["n_nodes"] == len(result["nodes"])
        for node in result["nodes"]:
            assert set(node["rules"]) == {"size_10mm", "morphology"}
            assert all(v in RULE_VALUES for v in node["rules"].values())
            assert "p_metastasis" in node or result.get("warnings")
            # a found node's measured short axis against the truth (nodes whose centre lies in the box)
            for truth in manifest[case]["nodes"]:
                c, s = np.asarray(node["center"]), np.asarray(node["size"])
                if "short_axis_mm" in node and np.all(np.abs(np.asarray(truth["center"]) - c) <= s / 2):
                    errors.append(abs(node["short_axis_mm"] - truth["short_axis_mm"]))
        assert len(json.loads(Path(markups_file).read_text())["markups"]) == len(result["nodes"])
    assert errors, "the pipeline found no phantom node"
    assert np.median(errors) <= 2.0, errors


def test_demo_classifier_is_shipped_small_calibrated_and_reproducible():
    from ..conftest import APP_DIR

    path = APP_DIR / "model" / "demo" / "lymph_node_classification.pt"
    assert path.exists(), "regenerate with: lnnode demo-weights --model lymph_node_classification"
    assert path.stat().st_size <= 10 * 1024 * 1024
    meta = load_checkpoint(path, task="classification").meta
    assert meta["training"]["demo"]["command"].startswith("lnnode demo-weights --model lymph_node_classification")
    assert "not clinical" in meta["training"]["demo"]["data"]
    assert meta["calibration"]["fitted"] and meta["calibration"]["temperature"] > 0


def test_evaluate_classification_writes_the_report_and_plots(studies, tmp_path):
    from lnnode.cli import main

    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--task", "classification", "--studies", str(studies), "--out", str(out), "--bootstrap", "50"]
    )
    assert code == 0
    report = json.loads((out / "classification.json").read_text())
    assert set(report["nodes"]["scorers"]) == {"classifier", "size_10mm", "morphology"}
    for scorer in report["nodes"]["scorers"].values():
        lo, hi = scorer["auc_ci95"]
        assert 0.0 <= lo <= scorer["auc"] <= hi <= 1.0
    assert report["short_axis_error_mm"]["n"] >= 1
    assert report["n_stage"]["n_cases"] == report["n_cases"] == 4
    assert (out / "roc.png").stat().st_size > 1000 and (out / "reliability.png").stat().st_size > 1000
