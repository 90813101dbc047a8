"""The radiologist in the loop, on the real server: the model's result is kept as ``original``, a
submitted review is compared with it (accepted / relabelled / edited / rejected / added), earlier
versions stay readable, review statistics are served, and the ``uncertain`` strategy serves the
unlabelled case the models are least sure about (before any model: typical cases of the kinds not read yet)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.client import MONAILabelClient

from lib.scoring import APPEARANCE_KEY
from lnnode.contracts import make_label, parse_result
from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_sitk
from lnnode.phantoms import synthesize

from ..conftest import multipart

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Four unreviewed oblique CT phantoms (their truth under the tag ``ground_truth``, not ``final``)."""
    out = tmp_path_factory.mktemp("loop") / "studies"
    synthesize(
        out, 4, modality="ct", seed=505, shape=(128, 128, 40), spacing=(1.2, 1.1, 2.5), direction="oblique",
        label_tag="ground_truth",
    )  # fmt: skip
    return out


def put_label(server, image: str, label: dict | bytes, tag: str = "final"):
    body = label if isinstance(label, bytes) else json.dumps(label).encode()
    data, headers = multipart({"params": "{}"}, {"label": (f"{image}.json", body)})
    return server.request("PUT", f"/datastore/label?image={image}&tag={tag}", data, headers)


def test_review_is_compared_with_the_model_result_and_versions_are_kept(start_server, studies, tmp_path):
    server = start_server(studies, device="cpu")
    client = MONAILabelClient(server.url)
    _, result = client.infer("lymph_node_pipeline", "ct_000", {})
    result = parse_result(json.dumps(result))
    assert len(result["nodes"]) >= 3, "the demo models find at least three nodes on this phantom"

    status, original = server.request("GET", "/datastore/label?label=ct_000&tag=original")
    assert status == 200 and original["nodes"] == result["nodes"], "the model's result is kept as 'original'"

    n1, n2, n3 = result["nodes"][:3]
    flipped = "benign" if n1["p_metastasis"] >= 0.5 else "metastatic"
    kept = "metastatic" if n2["p_metastasis"] >= 0.5 else "benign"
    moved = [c + d for c, d in zip(n2["center"], (3.0, 0.0, 0.0), strict=True)]
    nodes = [
        {"center": n1["center"], "size": n1["size"], "class": flipped, "origin": "model", "from_node": "n1"},
        {"center": moved, "size": n2["size"], "class": kept, "origin": "model", "edited": True, "from_node": "n2"},
        {"center": n3["center"], "size": [6.0, 6.0, 6.0], "class": "benign", "origin": "added"},
    ]
    geometry = ImageGeometry.from_sitk(read_sitk(str(studies / "ct_000.nii.gz")))
    nodes[2]["center"] = [float(c) for c in geometry.index_to_world((np.asarray(geometry.shape) - 1) / 2)]
    rejected = [{"center": n3["center"], "size": n3["size"], "from_node": "n3"}]
    label = make_label("ct_000", nodes, rejected, reviewer="dr-test")
    status, answer = put_label(server, "ct_000", label)
    assert status == 200, answer
    review = answer["review"]
    assert (review["accepted"], review["relabelled"], review["edited"]) == (0, 1, 1)
    assert (review["rejected"], review["added"]) == (1, 1)
    assert review["unreviewed"] == len(result["nodes"]) - 3
    assert review["corrections"] == 4

    # a resubmission (the reader accepts n1 after all) keeps the first version readable
    label["nodes"][0]["class"] = "metastatic" if flipped == "benign" else "benign"
    status, answer = put_label(server, "ct_000", label)
    assert status == 200 and answer["review"]["relabelled"] == 0 and answer["review"]["accepted"] == 1
    status, info = server.request("GET", "/datastore/label/info?label=ct_000&tag=final")
    assert status == 200 and len(info["history"]) == 1
    first = json.loads((studies / info["history"][0]["file"]).read_text())
    assert first["nodes"][0]["class"] == flipped

    # a malformed review is refused, naming the field, and nothing changes
    bad = dict(label, nodes=[{**label["nodes"][0], "class": "maybe"}])
    status, answer = put_label(server, "ct_000", bad)
    assert status == 422 and "class" in str(answer)
    status, info_after = server.request("GET", "/datastore/label/info?label=ct_000&tag=final")
    assert len(info_after["history"]) == 1 and info_after["review"] == info["review"]

    summary = client.info()["review"]
    assert summary["n_cases"] == 1 and summary["totals"]["rejected"] == 1 and summary["totals"]["added"] == 1
    assert summary["cases"][0]["image"] == "ct_000"


def _set_info(server, image: str, uncertainty: float | None = None, **info) -> None:
    if uncertainty is not None:
        info["lymph_node_uncertainty"] = {"score": uncertainty}
    data, headers = multipart({"info": json.dumps(info)}, {})
    assert server.request("PUT", f"/datastore/image/info?image={image}", data, headers)[0] == 200


def _score(server) -> dict:
    status, scored = server.request("POST", "/scoring/lymph_node_uncertainty?run_sync=true", b"{}",
                                    {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, scored
    return scored


def test_uncertain_strategy_serves_the_most_uncertain_unlabelled_case(start_server, studies, tmp_path):
    studies = Path(shutil.copytree(studies, tmp_path / "studies"))
    server = start_server(studies, device="cpu")
    scored = _score(server)
    status, ds = server.request("GET", "/datastore/?output=all")
    infos = {i: o["image"]["info"] for i, o in ds["objects"].items()}
    unlabelled = sorted(i for i, o in ds["objects"].items() if "final" not in o["labels"])
    assert unlabelled and set(scored["scored"]) | set(scored["skipped"]) == set(unlabelled)
    scores = {i: infos[i]["lymph_node_uncertainty"] for i in unlabelled}
    for s in scores.values():
        assert 0.0 <= s["score"] <= 2.0 and 0.0 <= s["detection_disagreement"] <= 1.0
        assert s["models"]["lymph_node_detection"].startswith("lymph_node_detection")
    assert scored["described"] == [], "models in service: no cold start, so no appearances"

    # up to date scores are not computed again
    again = _score(server)
    assert again["scored"] == [] and sorted(again["skipped"]) == unlabelled

    # the most uncertain case
    client = MONAILabelClient(server.url)
    top = min(unlabelled, key=lambda i: (-scores[i]["score"], i))
    first = client.next_sample("uncertain", {})
    assert first["id"] == top and first["uncertainty"] == first["score"] == scores[top]["score"]

    # when the scores change, so does the order
    low = min(unlabelled, key=lambda i: scores[i]["score"])
    for image in unlabelled:
        _set_info(server, image, 1.9 if image == low else 0.1, lnnode_served_ts=0)
    assert client.next_sample("uncertain", {})["id"] == low
    # a case just served is being reviewed: the others go first, then it; none twice
    _set_info(server, low, 0.1)
    served = [client.next_sample("uncertain", {})["id"] for _ in range(len(unlabelled))]
    assert served[-1] == low and sorted(served) == unlabelled, served

    status, answer = server.request("POST", "/activelearning/no_such_strategy", b"{}",
                                    {"Content-Type": "application/json"})  # fmt: skip
    assert status == 404 and "uncertain" in str(answer)


def test_cold_start_serves_typical_cases_of_the_kinds_not_read_yet(start_server, studies, tmp_path):
    """No model weights: the scoring stores every case's appearance, and ``uncertain`` and ``badge`` serve a
    typical case of the larger kind, then one of the other kind (here another scanner calibration: anatomy
    150 HU brighter), where id order would serve two of the same kind."""
    studies = Path(shutil.copytree(studies, tmp_path / "studies"))
    shutil.rmtree(studies / "labels" / "final", ignore_errors=True)  # nothing read yet
    for source, name in (("ct_001", "ct_bright_a"), ("ct_002", "ct_bright_b")):
        image = sitk.ReadImage(str(studies / f"{source}.nii.gz"), sitk.sitkFloat32) + 150.0
        sitk.WriteImage(image, str(studies / f"{name}.nii.gz"))
    server = start_server(studies, device="cpu", demo_weights="false")
    scored = _score(server)
    cases = ["ct_000", "ct_001", "ct_002", "ct_003", "ct_bright_a", "ct_bright_b"]
    assert "no detector weights" in scored["reason"] and sorted(scored["described"]) == cases
    info = server.request("GET", "/datastore/image/info?image=ct_bright_a")[1]
    look = info[APPEARANCE_KEY]
    assert np.shape(look["histograms"]) == (2, 16) and look["preprocessing"]["modality"] == "ct"
    assert _score(server)["described"] == [], "an appearance is computed once"

    client = MONAILabelClient(server.url)
    first = client.next_sample("uncertain", {})
    second = client.next_sample("badge", {})
    assert first["cold_start"] and second["cold_start"], (first, second)
    assert not first["id"].startswith("ct_bright") and second["id"].startswith("ct_bright"), (first, second)


def test_a_submitted_correction_trains_a_model_that_the_next_infer_uses(start_server, tmp_path):
    """--conf auto_train_every 1: the PUT of a corrected label (a rejected false positive, an added and a
    moved node) queues a tiny detector training on the corrections; it publishes; infer uses it; MONAI
    Label's re-scoring after the training (a separate process) scores the unlabelled case with it."""
    from lnnode.io.checkpoint import load_checkpoint

    studies = tmp_path / "studies"
    synthesize(studies, 4, modality="ct", seed=99, shape=(64, 64, 24), spacing=(2.0, 2.0, 3.0))
    (studies / "labels" / "final" / "ct_003.json").unlink()  # one case nobody has reviewed
    models = tmp_path / "models"
    params = {"max_epochs": 1, "init": "scratch", "val_split": 0.0, "patches_per_image": 1, "focus_prob": 1.0}
    params["spec"] = {"patch_size": [32, 32, 16], "roi_size": [64, 64, 32]}
    server = start_server(
        studies, model_dir=str(models), demo_weights="false", device="cpu", auto_train_every="1",
        auto_train_models="lymph_node_detection", auto_train_params=json.dumps(params),
        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "true"},
    )  # fmt: skip
    assert server.request("POST", "/infer/lymph_node_detection?image=ct_000")[0] == 503  # no model yet

    label = json.loads((studies / "labels" / "final" / "ct_000.json").read_text())
    geometry = ImageGeometry.from_sitk(read_sitk(str(studies / "ct_000.nii.gz")))
    centre = geometry.index_to_world((np.asarray(geometry.shape) - 1) / 2)
    label["nodes"][0] = {**label["nodes"][0], "origin": "model", "edited": True}
    label["nodes"].append({"center": [float(c) for c in centre + [0, 20, 0]], "size": [6.0, 6.0, 6.0],
                           "class": "benign", "origin": "added"})  # fmt: skip
    label["rejected"] = [{"center": [float(c) for c in centre], "size": [8.0, 8.0, 6.0]}]
    status, answer = put_label(server, "ct_000", label)
    assert status == 200 and "training" in answer, answer
    assert answer["review"]["rejected"] == 1 and answer["review"]["added"] == 1

    train = server.wait_training()
    assert train.get("status") == "DONE", train
    stats = json.loads((models / "lymph_node_detection_train_stats.json").read_text())
    assert stats["status"] == "published", stats
    checkpoint = load_checkpoint(models / "lymph_node_detection.pt", task="detection")
    assert checkpoint.meta["training"]["corrections"] == {"rejected": 1, "changed": 2, "corrected_cases": 1}

    status, result = server.request("POST", "/infer/lymph_node_detection?image=ct_001&output=json")
    assert status == 200, result
    assert result["model"]["detector"] == f"lymph_node_detection@{checkpoint.meta['training']['created']}"
    assert MONAILabelClient(server.url).info()["auto_train"]["labels_since_training"] == 0

    version = result["model"]["detector"]
    deadline, score = time.time() + 300, {}
    while time.time() < deadline and score.get("models", {}).get("lymph_node_detection") != version:
        time.sleep(2)
        _, info = server.request("GET", "/datastore/image/info?image=ct_003")
        score = info.get("lymph_node_uncertainty") or {}
    assert score.get("models", {}).get("lymph_node_detection") == version, score
    _, info = server.request("GET", "/datastore/label/info?label=ct_000&tag=final")
    assert info["review"]["rejected"] == 1, "the scoring process's write kept the server's label info"


def test_badge_strategy_serves_doubtful_cases_and_never_a_copy_of_one_in_review(start_server, studies, tmp_path):
    """Scoring stores each case's classifier embedding; ``badge`` serves the most doubtful case first, then cases
    unlike those already served since the models scored the pool: an exact copy of a case in review never."""
    studies = Path(shutil.copytree(studies, tmp_path / "studies"))
    ids = [p.name[: -len(".nii.gz")] for p in studies.glob("ct_*.nii.gz")]
    unlabelled = sorted(i for i in ids if not (studies / "labels" / "final" / f"{i}.json").exists())
    twin = unlabelled[-1]
    shutil.copyfile(studies / f"{twin}.nii.gz", studies / "ct_copy.nii.gz")  # once more, under another id
    server = start_server(studies, device="cpu")
    scored = _score(server)
    assert sorted(scored["scored"]) == [*unlabelled, "ct_copy"] and len(unlabelled) >= 3, scored
    status, ds = server.request("GET", "/datastore/?output=all")
    infos = {i: o["image"]["info"]["lymph_node_uncertainty"] for i, o in ds["objects"].items() if i in scored["scored"]}
    for score in infos.values():
        assert len(score["embedding"]) == 64 and 0.0 <= score["p_doubt"] <= 1.0, "the demo classifier's 64 features"
    assert infos["ct_copy"]["embedding"] == infos[twin]["embedding"]

    client = MONAILabelClient(server.url)
    served = [client.next_sample("badge", {}) for _ in infos]
    assert [s["batch"] for s in served] == list(range(len(infos))), "each served case joins the batch"
    order = [s["id"] for s in served]
    assert sorted(order) == sorted(infos), "every case once"
    # the first of a batch is the case with the longest gradient: the most doubtful in the embedding's units
    assert served[0]["score"] == max(s["score"] for s in served) > 0
    assert order[-1] in {twin, "ct_copy"}, "a copy of a case in review comes after every other case"
