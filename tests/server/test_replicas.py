"""Two MONAI Label servers on one studies folder and one model dir: the replicas a reverse proxy spreads
readers over (the README's "several server replicas"). Each process answers one infer at a time; together they must
behave as one server: label saves through both lose nothing (files, history versions, datastore_v2.json),
an image uploaded through one is served by the other, ``uncertain`` never gives two readers the same case,
a model trained through one is served by the other after publish, and a second training of the same model
through the other replica does not run over the first."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock

from lib.trainers.auto import AutoTrain
from lnnode.phantoms import synthesize

from ..conftest import Server, multipart

pytestmark = pytest.mark.server

SAVERS_PER_REPLICA = 2
SAVES_PER_SAVER = 3
SHARED_CASE = "ct_004"  # every saver also saves this one: the same case through both replicas
CLAIM_CASES = 6  # unlabelled cases the claims may take (the savers' cases may be claimed too)


def start_replicas(
    studies: Path, models: Path, logs: Path, n: int = 2, env: dict[str, str] | None = None, **conf: str
) -> list[Server]:
    """``n`` servers on one studies folder and one model dir, started side by side."""
    conf = {"model_dir": str(models), "device": "cpu", **conf}
    servers = [Server(studies, conf, logs / f"replica{i}.log", env) for i in range(n)]
    try:
        for server in servers:
            server.wait_ready(timeout=240)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two replicas (demo weights) over tiny unreviewed CT phantoms (their truth under ``ground_truth``)."""
    root = tmp_path_factory.mktemp("replicas")
    studies = root / "studies"
    synthesize(studies, 4 + 1 + CLAIM_CASES, modality="ct", seed=18, shape=(40, 40, 12), spacing=(2.0, 2.0, 3.0),
               label_tag="ground_truth")  # fmt: skip
    servers = start_replicas(studies, root / "models", root)
    yield studies, servers
    for server in servers:
        server.stop()


def put_label(server: Server, image: str, label: dict, params: dict) -> tuple[int, dict]:
    data, headers = multipart({"params": json.dumps(params)}, {"label": (f"{image}.json", json.dumps(label).encode())})
    return server.request("PUT", f"/datastore/label?image={image}&tag=final", data, headers)


def truth(studies: Path, image: str) -> dict:
    return json.loads((studies / "labels" / "ground_truth" / f"{image}.json").read_text())


def test_concurrent_label_saves_through_both_replicas_lose_nothing(pair):
    studies, servers = pair
    savers = [(r, t) for r in range(len(servers)) for t in range(SAVERS_PER_REPLICA)]
    own = {saver: f"ct_{i:03d}" for i, saver in enumerate(savers)}  # a case of its own per saver
    start = threading.Barrier(len(savers))

    def save(saver: tuple[int, int]) -> list[str]:
        """Alternate saves of the saver's own case and the shared one; the submission ids it stored."""
        server, done = servers[saver[0]], []
        start.wait()
        for version in range(SAVES_PER_SAVER):
            for image in (own[saver], SHARED_CASE):
                submission = f"r{saver[0]}t{saver[1]}v{version}"
                label = dict(truth(studies, image), reviewer=submission)
                status, answer = put_label(server, image, label, {"submission": submission})
                assert status == 200 and "review" in answer, answer
                done.append(submission)
        return done

    with ThreadPoolExecutor(len(savers)) as pool:
        submitted = dict(zip(savers, pool.map(save, savers), strict=True))

    on_disk = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    for saver, image in own.items():
        stored = json.loads((studies / "labels" / "final" / f"{image}.json").read_text())
        assert stored["reviewer"] == submitted[saver][-2], "the saver's last version of its own case is stored"
        info = on_disk[image]["labels"]["final"]["info"]
        assert info["submission"] == stored["reviewer"] and "review" in info, info
        history = {json.loads((studies / v["file"]).read_text())["reviewer"] for v in label_info(servers[1], image)}
        assert history == set(submitted[saver][:-2:2]), "every earlier version is kept"

    shared = [s for done in submitted.values() for s in done[1::2]]
    current = json.loads((studies / "labels" / "final" / f"{SHARED_CASE}.json").read_text())["reviewer"]
    for server in servers:
        versions = label_info(server, SHARED_CASE)
        earlier = [json.loads((studies / v["file"]).read_text())["reviewer"] for v in versions]
        assert sorted([*earlier, current]) == sorted(shared), "each save of the shared case is a version"
        listed = server.request("GET", "/datastore/?output=all")[1]["objects"]
        assert {i: o["labels"].get("final", {}).get("info", {}).get("submission") for i, o in listed.items()} == {
            i: o["labels"].get("final", {}).get("info", {}).get("submission") for i, o in on_disk.items()
        }, "both replicas list what the datastore file holds"
    shared_info = on_disk[SHARED_CASE]["labels"]["final"]["info"]
    assert shared_info["submission"] == current and "review" in shared_info, shared_info


def label_info(server: Server, image: str) -> list[dict]:
    status, info = server.request("GET", f"/datastore/label/info?label={image}&tag=final")
    assert status == 200, info
    return info["history"]


def test_an_image_uploaded_through_one_replica_is_served_by_the_other(pair):
    studies, (a, b) = pair
    body = (studies / "ct_000.nii.gz").read_bytes()
    data, headers = multipart({}, {"file": ("upload.nii.gz", body)})
    assert a.request("PUT", "/datastore/?image=uploaded", data, headers)[0] == 200
    status, image = b.request("GET", "/datastore/image?image=uploaded")
    assert status == 200 and image == body
    label = dict(truth(studies, "ct_000"), image="uploaded")
    status, answer = put_label(b, "uploaded", label, {})
    assert status == 200, answer
    assert a.request("GET", "/datastore/label/info?label=uploaded&tag=final")[0] == 200

    # another image under that id through the other replica is a 409; the same one again is fine
    other = multipart({}, {"file": ("upload.nii.gz", (studies / "ct_001.nii.gz").read_bytes())})
    assert b.request("PUT", "/datastore/?image=uploaded", *other)[0] == 409
    assert b.request("PUT", "/datastore/?image=uploaded", data, headers)[0] == 200
    assert (studies / "uploaded.nii.gz").read_bytes() == body

    # two different images uploaded under one id through both at once: one is stored, the other is a 409
    bodies = [(studies / f"ct_00{i}.nii.gz").read_bytes() for i in (1, 2)]
    start = threading.Barrier(2)

    def upload(k: int) -> int:
        data, headers = multipart({}, {"file": ("twin.nii.gz", bodies[k])})
        start.wait()
        return (a, b)[k].request("PUT", "/datastore/?image=twin", data, headers)[0]

    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(upload, (0, 1)))
    assert sorted(statuses) == [200, 409], statuses
    assert (studies / "twin.nii.gz").read_bytes() == bodies[statuses.index(200)]


def test_uncertain_claims_through_both_replicas_never_serve_one_case_twice(pair):
    studies, servers = pair
    status, listed = servers[0].request("GET", "/datastore/?output=all")
    unlabelled = {i for i, o in listed["objects"].items() if "final" not in o["labels"]}
    assert len(unlabelled) >= CLAIM_CASES
    start = threading.Barrier(CLAIM_CASES)

    def claim(k: int) -> str:
        start.wait()
        status, answer = servers[k % len(servers)].request(
            "POST", "/activelearning/uncertain", b"{}", {"Content-Type": "application/json"}
        )
        assert status == 200 and answer.get("id"), answer
        return answer["id"]

    with ThreadPoolExecutor(CLAIM_CASES) as pool:
        claimed = list(pool.map(claim, range(CLAIM_CASES)))
    assert len(set(claimed)) == CLAIM_CASES, f"a case was served to two readers: {sorted(claimed)}"
    assert set(claimed) <= unlabelled
    on_disk = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    assert all(on_disk[i]["image"]["info"].get("lnnode_served_ts") for i in claimed), "every claim is stamped"


TRAIN = {"max_epochs": 1, "init": "scratch", "val_split": 0.0, "patches_per_image": 1, "focus_prob": 1.0,
         "spec": {"patch_size": [32, 32, 16], "roi_size": [64, 64, 32]}}  # fmt: skip


def train(server: Server, **params) -> tuple[int, dict]:
    body = json.dumps({**TRAIN, **params}).encode()
    return server.request("POST", "/train/lymph_node_detection", body, {"Content-Type": "application/json"})


def running_stats(path: Path) -> dict | None:
    """The stats file's content while it says a training is running (else None)."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stats if stats.get("status") == "running" else None


def test_a_model_trained_through_one_replica_is_served_by_the_other(tmp_path):
    """A publishes, B serves it; a second training of the model through B while A trains stops at its start."""
    from lnnode.io.checkpoint import load_checkpoint

    studies, models = tmp_path / "studies", tmp_path / "models"
    synthesize(studies, 2, modality="ct", seed=19, shape=(64, 64, 24), spacing=(2.0, 2.0, 3.0))
    # one core per replica, as a deployment would share them: a training leaves the other replica a core
    a, b = start_replicas(studies, models, tmp_path, demo_weights="false", env={"OMP_NUM_THREADS": "1"})
    try:
        assert b.request("POST", "/infer/lymph_node_detection?image=ct_001")[0] == 503, "no model yet"
        assert train(a)[0] == 200
        assert a.wait_training(timeout=300).get("status") == "DONE"
        created = load_checkpoint(models / "lymph_node_detection.pt", task="detection").meta["training"]["created"]
        status, result = b.request("POST", "/infer/lymph_node_detection?image=ct_001&output=json")
        assert status == 200 and result["model"]["detector"] == f"lymph_node_detection@{created}", result
        assert b.request("GET", "/info/")[1]["train_stats"]["lymph_node_detection"]["status"] == "published"

        assert train(a, max_epochs=2000, init="current")[0] == 200
        stats_file = models / "lymph_node_detection_train_stats.json"
        deadline = time.time() + 180
        while (running := running_stats(stats_file)) is None and time.time() < deadline:
            time.sleep(0.5)
        assert running, "A's training did not start"
        assert train(b, init="current")[0] == 200
        refused = b.wait_training(timeout=300)
        assert refused["status"] == "ERROR", refused
        assert any("another training of lymph_node_detection is running" in line for line in refused["details"])
        now = json.loads(stats_file.read_text())
        assert (now["run_id"], now["pid"], now["status"]) == (running["run_id"], running["pid"], "running"), now
        assert a.request("GET", "/train/")[1]["status"] == "RUNNING", "A's training goes on"
        assert load_checkpoint(models / "lymph_node_detection.pt").meta["training"]["created"] == created
    finally:
        a.request("DELETE", "/train/")
        for server in (a, b):
            server.stop()


# -- auto-training counted across replicas -------------------------------------------------------------
def _count_labels(model_dir: str, labels: int, every: int, started: str, barrier) -> None:
    """One replica's saves: ``labels`` final labels counted by an AutoTrain on the shared model dir."""
    auto = AutoTrain(every, [], {}, model_dir=model_dir)
    barrier.wait()
    for _ in range(labels):
        if auto.on_final_label(["lymph_node_detection"], lambda models, **kw: "started") is not None:
            with open(started, "a") as f:
                f.write(f"{os.getpid()}\n")


def test_replicas_count_final_labels_together_for_auto_training(tmp_path):
    """Two processes, 40 labels each, every 7: 11 trainings between them and 3 labels counted towards the next,
    whichever process saw which label; while the model trains (its lock held) none is started."""
    started = tmp_path / "started.txt"
    started.touch()
    fork = multiprocessing.get_context("fork")  # the test's modules already imported: starts in no time
    barrier = fork.Barrier(2)
    replicas = [fork.Process(target=_count_labels, args=(str(tmp_path), 40, 7, str(started), barrier)) for _ in "ab"]
    for process in replicas:
        process.start()
    for process in replicas:
        process.join(timeout=120)
    assert [p.exitcode for p in replicas] == [0, 0]
    assert len(started.read_text().split()) == 80 // 7
    auto = AutoTrain(7, [], {}, model_dir=str(tmp_path))
    assert auto.labels_since_training == 80 % 7

    def start(models, **kwargs):
        return "started"

    with FileLock(str(tmp_path / "lymph_node_detection.train.lock")):  # what a training holds while it runs
        answers = [auto.on_final_label(["lymph_node_detection"], start) for _ in range(7)]
    assert answers == [None] * 7 and auto.labels_since_training == 10, "due, but the model is training"
    assert auto.on_final_label(["lymph_node_detection"], start) == "started"
    assert auto.labels_since_training == 0
