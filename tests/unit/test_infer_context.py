"""One checkpoint per request: a model published while a request runs is not mixed into it, and the
pipeline's stages take the loaded volume as it is (no second read of the image)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from lib.infers import NodeClassification, NodeDetection, NodePipeline
from lib.infers.detection import model_version
from lnnode.io.checkpoint import load_checkpoint, save_checkpoint
from lnnode.phantoms import synthesize

from ..conftest import APP_DIR

DEMO = APP_DIR / "model" / "demo"


def _publish(src, dst, created: str) -> None:
    checkpoint = load_checkpoint(src, task="detection")
    meta = {**checkpoint.meta, "training": {**checkpoint.meta.get("training", {}), "created": created}}
    save_checkpoint(dst, "detection", checkpoint.state_dict, meta)
    st = os.stat(dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime, whatever the clock


def test_a_pinned_checkpoint_stays_for_the_request_and_the_next_one_sees_the_new_model(tmp_path):
    served = tmp_path / "lymph_node_detection.pt"
    _publish(DEMO / "lymph_node_detection.pt", served, "2026-01-01T00:00:00+00:00")
    task = NodeDetection("lymph_node_detection", [str(served)])
    with task.pinned() as first:
        _publish(DEMO / "lymph_node_detection.pt", served, "2026-02-02T00:00:00+00:00")  # published mid-request
        assert task.checkpoint() is first
        with task.pinned() as nested:
            assert nested is first
        seen_elsewhere = []
        other = threading.Thread(target=lambda: seen_elsewhere.append(task.checkpoint()))
        other.start()
        other.join()
        assert seen_elsewhere[0] is not first, "another request (thread) is not held to this one's checkpoint"
    assert model_version(task.checkpoint(), task.name).endswith("2026-02-02T00:00:00+00:00")
    assert model_version(first, task.name).endswith("2026-01-01T00:00:00+00:00")


def test_pipeline_stages_use_the_volume_they_are_given(tmp_path, monkeypatch):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=3, shape=(64, 64, 24), spacing=(1.2, 1.2, 2.5), direction="oblique")
    image = str(next(studies.glob("*.nii.gz")))
    detection = NodeDetection("lymph_node_detection", [str(DEMO / "lymph_node_detection.pt")])
    classification = NodeClassification("lymph_node_classification", [str(DEMO / "lymph_node_classification.pt")])
    pipeline = NodePipeline("lymph_node_pipeline", detection, classification)

    import lnnode.transforms.spatial as spatial

    reads = []
    real_read = spatial.read_image
    monkeypatch.setattr(spatial, "read_image", lambda *a, **k: reads.append(a[0]) or real_read(*a, **k))
    result = pipeline.result_for({"image": image, "image_id": "case", "device": "cpu", "tta": 1})
    assert reads == [image], "the image is read once for the whole pipeline"
    assert result["image"] == "case" and result["schema"] == "lnnode.result/1"

    # a stage given a volume does not read the image at all, and answers as on the file
    _, geometry = real_read(image, require_content=True)
    volume = real_read(image, require_content=True)[0][None]
    reads.clear()
    on_volume = detection.result_for({"image": "unused", "image_id": "case", "device": "cpu"}, volume, geometry)
    assert reads == []
    on_file = detection.result_for({"image": image, "image_id": "case", "device": "cpu"})
    assert [n["center"] for n in on_volume["nodes"]] == [n["center"] for n in on_file["nodes"]]
    with pytest.raises(ValueError, match="geometry"):
        detection.result_for({"image": image}, np.zeros((1, 4, 4, 4), np.float32))


def test_a_bad_request_is_a_400_before_a_missing_model_is_a_503(tmp_path):
    from lib.server.errors import ModelNotReady, RequestError

    missing = NodeDetection("lymph_node_detection", [str(tmp_path / "none.pt")])
    pipeline = NodePipeline("lymph_node_pipeline", missing, None)
    with pytest.raises(RequestError) as caught:
        pipeline.result_for({"image": "unused", "suspicious_by": "vibes"})
    assert caught.value.status_code == 400 and "suspicious_by" in caught.value.detail
    with pytest.raises(ModelNotReady):
        pipeline.result_for({"image": "unused"})
    assert missing._pinned.get() is None, "a refused request leaves nothing pinned"


def test_a_classifier_without_weights_leaves_the_nodes_unclassified_and_says_so(tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=4, shape=(64, 64, 24), spacing=(1.2, 1.2, 2.5), direction="RAS")
    image = str(next(studies.glob("*.nii.gz")))
    detection = NodeDetection("lymph_node_detection", [str(DEMO / "lymph_node_detection.pt")])
    untrained = NodeClassification("lymph_node_classification", [str(tmp_path / "none.pt")])
    result = NodePipeline("lymph_node_pipeline", detection, untrained).result_for({"image": image, "image_id": "c"})
    assert result["model"]["classifier"] is None and "no metastasis probabilities" in result["warnings"][0]
    assert all("p_metastasis" not in n and "rules" in n for n in result["nodes"])
    assert detection._pinned.get() is None and untrained._pinned.get() is None
