"""Load on the real server: 8 concurrent pipeline requests on this 2-core machine all finish with the
same answers as one at a time (MONAI Label runs them one after the other, so memory stays that of one),
and inference keeps answering while a training runs in its own process."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lnnode.phantoms import synthesize

pytestmark = pytest.mark.server


def test_concurrent_pipeline_requests_and_infer_during_training(start_server, tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 2, modality="ct", seed=8, shape=(96, 96, 32), spacing=(1.5, 1.5, 2.0))
    server = start_server(studies, model_dir=str(tmp_path / "models"), device="cpu")

    def pipeline(image: str):
        status, result = server.request("POST", f"/infer/lymph_node_pipeline?image={image}&output=json")
        assert status == 200, result
        return [(n["id"], n["center"], n.get("p_metastasis")) for n in result["nodes"]]

    reference = {image: pipeline(image) for image in ("ct_000", "ct_001")}
    images = ["ct_000", "ct_001"] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(pipeline, images))
    for image, answer in zip(images, answers, strict=True):
        assert answer == reference[image], "a concurrent answer differs from the one-at-a-time answer"

    params = {"max_epochs": 200, "init": "current", "val_split": 0.0, "patches_per_image": 1}
    status, body = server.request("POST", "/train/lymph_node_detection", json.dumps(params).encode(),
                                  {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, body
    stats_file = tmp_path / "models" / "lymph_node_detection_train_stats.json"
    deadline = time.time() + 120
    while time.time() < deadline and not stats_file.exists():  # the training process is under way
        time.sleep(0.5)
    status, train = server.request("GET", "/train/")
    assert train.get("status") == "RUNNING" and stats_file.exists(), train
    assert pipeline("ct_000") == reference["ct_000"], "infer answers, unchanged, while a training runs"
    status, _ = server.request("DELETE", "/train/")
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline and server.request("GET", "/train/")[1].get("status") == "RUNNING":
        time.sleep(1)
    deadline = time.time() + 30  # the killed process takes a moment to go
    while time.time() < deadline:
        stats = server.request("GET", "/info/")[1]["train_stats"]["lymph_node_detection"]
        if stats["status"] != "running":
            break
        time.sleep(0.5)
    assert stats["status"] == "interrupted" and stats["epoch"] < 200, stats  # stopped, not finished
    assert not (tmp_path / "models" / "lymph_node_detection.pt").exists(), "a stopped training publishes nothing"
