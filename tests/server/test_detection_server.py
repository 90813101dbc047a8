"""Detection on the real server: the shipped demo detector finds phantom nodes on an oblique,
anisotropic grid, and a tiny /train/ run publishes a model the next infer uses without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from lnnode.contracts import parse_result
from lnnode.phantoms import synthesize

from ..conftest import APP_DIR

pytestmark = pytest.mark.server

DEMO = APP_DIR / "model" / "demo" / "lymph_node_detection.pt"


def inside(point, node) -> bool:
    c, s = np.asarray(node["center"]), np.asarray(node["size"])
    return bool(np.all(np.abs(np.asarray(point) - c) <= s / 2 + 1e-6))


@pytest.fixture(scope="module")
def oblique_phantoms(tmp_path_factory) -> Path:
    """CT phantoms the demo detector never saw: other seed, oblique direction, anisotropic spacing."""
    studies = tmp_path_factory.mktemp("oblique") / "studies"
    synthesize(studies, 2, modality="ct", seed=4242, shape=(160, 150, 48), spacing=(1.1, 0.9, 2.5), direction="oblique")
    return studies


def test_demo_weights_are_shipped_small_and_loadable():
    from lnnode.io.checkpoint import load_checkpoint

    assert DEMO.exists(), "regenerate with: lnnode demo-weights"
    assert DEMO.stat().st_size <= 10 * 1024 * 1024
    meta = load_checkpoint(DEMO, task="detection").meta
    assert "demo" in meta["training"] and "synthetic" in meta["training"]["demo"]["data"]


def test_demo_detector_finds_phantom_nodes_on_an_oblique_grid(start_server, oblique_phantoms, tmp_path):
    manifest = json.loads((oblique_phantoms / "synth_manifest.json").read_text())
    direction = np.asarray(manifest["cases"][0]["geometry"]["direction"]).reshape(3, 3)
    assert not np.allclose(np.abs(direction), np.eye(3)), "the phantom grid must be oblique"
    server = start_server(oblique_phantoms)
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    hits, total, false_boxes = 0, 0, 0
    for case in manifest["cases"]:
        # the served default threshold (picked on validation): what a radiologist sees
        markups_file, result = client.infer("lymph_node_detection", case["id"], {})
        parse_result(json.dumps(result))
        assert result["image"] == case["id"] and result["coordinate_system"] == "LPS"
        assert all("p_metastasis" not in n for n in result["nodes"])
        markups = json.loads(Path(markups_file).read_text())
        assert len(markups["markups"]) == len(result["nodes"])
        assert all(m["coordinateSystem"] == "LPS" and m["type"] == "ROI" for m in markups["markups"])
        truth = json.loads((oblique_phantoms / "labels" / "final" / f"{case['id']}.json").read_text())["nodes"]
        big = [n for n, m in zip(truth, sorted(case["nodes"], key=lambda n: n["instance"]), strict=True)
               if m["short_axis_mm"] >= 6.0]  # fmt: skip
        total += len(big)
        hits += sum(any(inside(p["center"], gt) for p in result["nodes"]) for gt in big)
        false_boxes += sum(not any(inside(p["center"], gt) for gt in truth) for p in result["nodes"])
    assert total >= 3
    # the demo detector is small and trained on a few phantoms: most nodes >= 6 mm, few false boxes
    assert hits / total >= 0.6, (hits, total)
    assert false_boxes <= 2 * len(manifest["cases"]), false_boxes


def test_tiny_training_via_train_endpoint_publishes_a_model_the_next_infer_uses(start_server, tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 3, modality="ct", seed=99, shape=(64, 64, 24), spacing=(2.0, 2.0, 3.0))
    models = tmp_path / "models"
    server = start_server(studies, model_dir=str(models), demo_weights="false", device="cpu")
    status, body = server.request("POST", "/infer/lymph_node_detection?image=ct_000")
    assert status == 503

    params = {"max_epochs": 1, "init": "scratch", "val_split": 0.34, "patches_per_image": 1}
    params["spec"] = {"patch_size": [32, 32, 16], "roi_size": [64, 64, 32]}
    status, body = server.request(
        "POST", "/train/lymph_node_detection", json.dumps(params).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body
    train = server.wait_training()
    assert train.get("status") == "DONE", train
    stats = json.loads((models / "lymph_node_detection_train_stats.json").read_text())
    assert stats["status"] == "published" and stats["total_epochs"] == 1

    status, info = server.request("GET", "/info/")
    assert info["models"]["lymph_node_detection"]["weights"]["path"] == str(models / "lymph_node_detection.pt")
    status, result = server.request("POST", "/infer/lymph_node_detection?image=ct_001&output=json")
    assert status == 200, result
    assert result["model"]["detector"].startswith("lymph_node_detection@")
    assert stats["run_id"]


def test_multi_sequence_model_reads_the_companion_sequences(start_server, tmp_path):
    """A 2-channel detector (e.g. T2 + DWI): trained with channel suffixes, served by finding the
    case's other sequence in the datastore."""
    from lnnode.io.checkpoint import load_checkpoint
    from lnnode.io.image import read_image, write_image
    from lnnode.training import train_detector

    studies = tmp_path / "studies"
    synthesize(studies, 3, modality="mr", seed=5, shape=(64, 64, 16), spacing=(1.4, 1.4, 4.0))
    rng = np.random.default_rng(0)
    for case in ("mr_000", "mr_001"):  # a DWI-like second sequence: nodes bright; mr_002 has none
        mask, g = read_image(studies / "labels" / "instances" / f"{case}.nii.gz")
        write_image((mask > 0) * 400.0 + rng.normal(50, 10, g.shape), g, studies / f"{case}_dwi.nii.gz")
    models = tmp_path / "models"
    stats = train_detector(
        studies,
        models,
        epochs=1,
        init="scratch",
        val_split=0.0,
        patches_per_image=1,
        modality="mr",
        spec={"patch_size": [32, 32, 16], "roi_size": [64, 64, 32]},
        extra={"channel_suffixes": ["_dwi"]},
    )
    assert stats["status"] == "published"
    checkpoint = load_checkpoint(models / "lymph_node_detection.pt")
    assert checkpoint.meta["network"]["in_channels"] == 2
    assert checkpoint.meta["preprocessing"]["channel_suffixes"] == ["_dwi"]
    assert checkpoint.meta["training"]["n_train"] == 2, "the case without its DWI is left out"

    server = start_server(studies, model_dir=str(models), demo_weights="false")
    status, result = server.request("POST", "/infer/lymph_node_detection?image=mr_001&output=json")
    assert status == 200, result
    assert result["image"] == "mr_001"
    status, body = server.request("POST", "/infer/lymph_node_detection?image=mr_002")
    assert status == 404 and "mr_002_dwi" in body["detail"]
