"""2D images on the real server: both 2D models train through /train/ on ultrasound phantoms (PNG), the 2D pipeline
answers with boxes, probabilities of the named positive class, axes in pixels and the 2D rules, and an image of the
wrong kind gets a 422 that names the model to use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from lnnode.contracts import CLASSIFICATION_2D, DETECTION_2D, PIPELINE, PIPELINE_2D, parse_result
from lnnode.measure.rules import PLANAR_RULES
from lnnode.phantoms import synthesize
from lnnode.phantoms.ultrasound import synthesize_us

pytestmark = pytest.mark.server

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Five labelled ultrasound phantoms (PNG, pixels), two unlabelled ones and one CT volume in one studies folder."""
    root = tmp_path_factory.mktemp("planar") / "studies"
    synthesize_us(root, 5, seed=21)
    synthesize_us(root, 2, seed=22, prefix="new_", label_tag="truth")
    synthesize(root, 1, modality="ct", seed=3, shape=(64, 64, 24), spacing=(2.0, 2.0, 3.0))
    return root


def train(server, model: str, params: dict) -> dict:
    status, body = server.request("POST", f"/train/{model}", json.dumps(params).encode(), JSON)
    assert status == 200, body
    done = server.wait_training()
    assert done.get("status") == "DONE", done
    return done


def test_2d_models_train_through_the_server_and_the_2d_pipeline_answers(start_server, studies, tmp_path):
    models = tmp_path / "models"
    server = start_server(studies, model_dir=str(models), device="cpu", demo_weights="false")
    status, info = server.request("GET", "/info/")
    assert {DETECTION_2D, CLASSIFICATION_2D, PIPELINE_2D} <= set(info["models"])
    assert {DETECTION_2D, CLASSIFICATION_2D} <= set(info["trainers"])

    status, body = server.request("POST", f"/infer/{PIPELINE_2D}?image=us_000")
    assert status == 503 and f"/train/{DETECTION_2D}" in body["detail"]

    common = {"max_epochs": 1, "init": "scratch", "val_split": 0.3}
    train(server, DETECTION_2D, {**common, "patches_per_image": 1, "spec": {"patch_size": [64, 64]}})
    stats = json.loads((models / f"{DETECTION_2D}_train_stats.json").read_text())
    assert stats["status"] == "published", stats
    train(server, CLASSIFICATION_2D, {**common, "positive_class": "malignant", "train_batch_size": 4})
    stats = json.loads((models / f"{CLASSIFICATION_2D}_train_stats.json").read_text())
    assert stats["status"] == "published", stats

    from lnnode.io.checkpoint import load_checkpoint

    detector = load_checkpoint(models / f"{DETECTION_2D}.pt", task="detection").meta
    assert len(detector["network"]["spacing"]) == 2 and detector["preprocessing"]["modality"] == "us"
    assert detector["training"]["n_train"] + detector["training"]["n_val"] == 5, "the CT volume is not a 2D case"
    assert load_checkpoint(models / f"{CLASSIFICATION_2D}.pt").meta["classes"] == ["benign", "malignant"]

    # the 2D pipeline on a PNG: boxes one pixel-slice thick, axes in pixels, the 2D rules, the positive class named
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    _, result = client.infer(PIPELINE_2D, "us_001", {"score_thresh": 0.0, "max_boxes": 5})
    parse_result(json.dumps(result))
    assert result["positive_class"] == "malignant"
    assert result["model"]["detector"].startswith(DETECTION_2D) and result["model"]["classifier"]
    assert result["nodes"], "with no score threshold the detector gives boxes"
    for node in result["nodes"]:
        assert node["size"][2] == pytest.approx(1.0) and node["center"][2] == pytest.approx(0.0)
        assert 0.0 <= node["p_metastasis"] <= 1.0
        assert set(node["rules"]) == set(PLANAR_RULES)
        assert node["rules"]["size_10mm"] == "indeterminate", "a PNG has no pixel spacing"
        assert "short_axis_mm" not in node
    assert any("short_axis_px" in n for n in result["nodes"])

    # the loop: the 2D cases are scored by the 2D models and served by the uncertain strategy
    status, scores = server.request("POST", "/scoring/lymph_node_uncertainty?run_sync=true", b"{}", JSON)
    assert status == 200, scores
    status, info = server.request("GET", "/datastore/?output=all")
    scored = {i: o["image"]["info"].get("lymph_node_uncertainty") for i, o in info["objects"].items()}
    assert scored["new_000"] and scored["new_001"], scored
    assert DETECTION_2D in scored["new_000"]["models"]
    status, served = server.request("POST", "/activelearning/uncertain", b"{}", JSON)
    assert status == 200 and served["id"] in ("new_000", "new_001"), served

    # the 2D classifier alone, on the phantom's true boxes
    truth = json.loads((studies / "labels" / "final" / "us_002.json").read_text())["nodes"]
    _, result = client.infer(CLASSIFICATION_2D, "us_002", {"nodes": truth})
    assert len(result["nodes"]) == len(truth) and result["positive_class"] == "malignant"
    assert np.allclose([n["center"] for n in result["nodes"]], [n["center"] for n in truth])


def test_an_image_of_the_wrong_kind_names_the_model_to_use(start_server, studies):
    server = start_server(studies)  # the shipped 3D demo weights
    status, body = server.request("POST", f"/infer/{PIPELINE}?image=us_000")
    assert status == 422 and PIPELINE_2D in body["detail"] and "2D image" in body["detail"], body
    status, body = server.request("POST", "/infer/lymph_node_detection?image=us_000")
    assert status == 422 and DETECTION_2D in body["detail"], body
    status, body = server.request("GET", "/info/")
    assert status == 200, "the server keeps going"


def test_the_command_line_infers_and_evaluates_2d_images(studies, tmp_path):
    """``lnnode infer`` sends a PNG to the 2D pipeline; ``lnnode evaluate --2d`` scores the 2D models on the 2D images
    (the CT volume in the same folder is left out)."""
    from lnnode.cli import main
    from lnnode.training import train_model

    models = tmp_path / "models"
    tiny = {"epochs": 1, "init": "scratch", "val_split": 0.0}
    train_model(DETECTION_2D, studies, models, **tiny, extra={"patches_per_image": 1, "publish": "always"})
    train_model(CLASSIFICATION_2D, studies, models, **tiny, extra={"positive_class": "malignant", "publish": "always"})

    out = tmp_path / "infer"
    assert main(["infer", str(studies / "new_000.png"), "--out", str(out), "--model-dir", str(models),
                 "--no-demo-weights", "--score-thresh", "0", "--no-progress"]) == 0  # fmt: skip
    result = parse_result((out / "new_000.json").read_text())
    assert result["positive_class"] == "malignant" and result["model"]["detector"].startswith(DETECTION_2D)

    for task, written in (("detection", "metrics.json"), ("classification", "classification.json")):
        target = tmp_path / task
        args = ["evaluate", "--2d", "--task", task, "--studies", str(studies), "--model-dir", str(models)]
        assert main([*args, "--out", str(target), "--bootstrap", "50"]) == 0
        report = json.loads((target / written).read_text())
        cases = report["data"]["cases"]
        assert "ct_000" not in cases and all(c.startswith("us_") for c in cases), cases
    rules = report["nodes"]["scorers"]
    assert {"classifier", "shape", "orientation", "margin", "morphology"} <= set(rules), sorted(rules)


def test_the_2d_demo_models_are_shipped_small_and_say_what_they_learnt_from():
    from lnnode.appdir import DEMO_MODEL_DIR
    from lnnode.io.checkpoint import load_checkpoint

    paths = [DEMO_MODEL_DIR / f"{name}.pt" for name in (DETECTION_2D, CLASSIFICATION_2D)]
    assert all(p.exists() for p in paths), "regenerate with: lnnode demo-weights --model <name> --data <busi>"
    assert sum(p.stat().st_size for p in paths) <= 10 * 1024 * 1024
    detector = load_checkpoint(paths[0], task="detection").meta
    classifier = load_checkpoint(paths[1], task="classification").meta
    assert len(detector["network"]["spacing"]) == 2 and classifier["classes"] == ["benign", "malignant"]
    for meta in (detector, classifier):
        assert "BUSI" in meta["training"]["demo"]["data"] and "not lymph nodes" in meta["training"]["demo"]["data"]
