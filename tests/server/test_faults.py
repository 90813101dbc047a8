"""Faults the server survives: a corrupt checkpoint at a model path leaves the other models working,
says which model is unusable and why, and one rollback command restores the previous model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lnnode.phantoms import synthesize

from ..conftest import APP_DIR

pytestmark = pytest.mark.server


def test_corrupt_checkpoint_is_reported_others_keep_working_and_rollback_restores(start_server, tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=5, shape=(96, 96, 32), spacing=(1.5, 1.5, 2.0))
    models = tmp_path / "models"
    models.mkdir()
    demo = APP_DIR / "model" / "demo" / "lymph_node_classification.pt"
    shutil.copy(demo, models / "lymph_node_classification.previous.pt")  # the model before a bad publish
    (models / "lymph_node_classification.pt").write_bytes(b"PK\x03\x04 half a zip file")  # the bad one

    server = start_server(studies, model_dir=str(models), device="cpu")
    status, info = server.request("GET", "/info/")
    assert status == 200
    weights = info["models"]["lymph_node_classification"]["weights"]
    assert weights["path"] is None and "unusable" in weights["status"], weights

    # the classifier answers 503 with the reason; detection and the pipeline keep working
    status, body = server.request("POST", "/infer/lymph_node_classification?image=ct_000&output=json")
    assert status in (422, 503), body
    status, result = server.request("POST", "/infer/lymph_node_detection?image=ct_000&output=json")
    assert status == 200 and result["nodes"], result
    status, result = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000&output=json")
    assert status == 200 and any("unusable" in w for w in result.get("warnings", [])), result
    assert all("p_metastasis" not in n for n in result["nodes"])

    cmd = [sys.executable, "-m", "lnnode.cli", "rollback", "lymph_node_classification", "--model-dir", str(models)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status, result = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000&output=json")
    assert status == 200 and "warnings" not in result, json.dumps(result)[:500]
    assert all(0.0 <= n["p_metastasis"] <= 1.0 for n in result["nodes"])
    status, info = server.request("GET", "/info/")
    served = info["models"]["lymph_node_classification"]["weights"]["path"]
    assert served == str(models / "lymph_node_classification.pt")


def test_training_killed_mid_run_leaves_the_served_model_and_the_next_training_runs(start_server, tmp_path):
    import hashlib
    import os
    import signal
    import time

    studies = tmp_path / "studies"
    synthesize(studies, 2, modality="ct", seed=6, shape=(64, 64, 24), spacing=(1.5, 1.5, 2.5))
    models = tmp_path / "models"
    server = start_server(studies, model_dir=str(models), device="cpu")
    demo = APP_DIR / "model" / "demo" / "lymph_node_detection.pt"
    before = hashlib.sha256(demo.read_bytes()).hexdigest()
    _, reference = server.request("POST", "/infer/lymph_node_detection?image=ct_000&output=json")

    def train(params):
        status, body = server.request("POST", "/train/lymph_node_detection", json.dumps(params).encode(),
                                      {"Content-Type": "application/json"})  # fmt: skip
        assert status == 200, body

    train({"max_epochs": 500, "init": "current", "val_split": 0.0, "patches_per_image": 1})
    stats_file = models / "lymph_node_detection_train_stats.json"
    deadline = time.time() + 120
    while time.time() < deadline and not stats_file.exists():
        time.sleep(0.5)
    assert stats_file.exists(), "the training wrote its first epoch's stats"
    os.kill(json.loads(stats_file.read_text())["pid"], signal.SIGKILL)  # mid-run, as an OOM kill would
    deadline = time.time() + 60
    while time.time() < deadline and server.request("GET", "/train/")[1].get("status") == "RUNNING":
        time.sleep(0.5)

    status, info = server.request("GET", "/info/")
    stats = info["train_stats"]["lymph_node_detection"]
    assert stats["status"] == "interrupted" and "unchanged" in stats["reason"], stats
    assert not (models / "lymph_node_detection.pt").exists(), "nothing was published"
    assert hashlib.sha256(demo.read_bytes()).hexdigest() == before
    _, again = server.request("POST", "/infer/lymph_node_detection?image=ct_000&output=json")
    assert again["nodes"] == reference["nodes"], "the served model answers as before"

    train({"max_epochs": 1, "init": "current", "val_split": 0.0, "patches_per_image": 1})
    deadline = time.time() + 300
    while time.time() < deadline and server.request("GET", "/train/")[1].get("status") in ("RUNNING", "SUBMITTED"):
        time.sleep(1)
    status, info = server.request("GET", "/info/")
    assert info["train_stats"]["lymph_node_detection"]["status"] == "published"
    assert (models / "lymph_node_detection.pt").exists()


def test_server_killed_while_labels_are_written_leaves_a_consistent_datastore(start_server, tmp_path):
    """Labels are PUT in a loop while the server is SIGKILLed at random moments; after each restart
    every stored label (current and earlier versions) is a whole, valid label and the datastore reads."""
    import random
    import signal
    import threading
    import time

    from lnnode.contracts import parse_label

    from ..conftest import multipart

    studies = tmp_path / "studies"
    synthesize(studies, 2, modality="ct", seed=7, shape=(64, 64, 24), spacing=(1.5, 1.5, 2.5), label_tag="truth")
    truth = json.loads((studies / "labels" / "truth" / "ct_000.json").read_text())
    rng = random.Random(0)
    for attempt in range(3):
        server = start_server(studies, model_dir=str(tmp_path / "models"), device="cpu")
        stop = threading.Event()

        def writer(server=server, stop=stop, attempt=attempt):
            i = 0
            while not stop.is_set():
                label = {**truth, "reviewer": f"r{attempt}-{i}" + "x" * rng.randint(0, 200_000)}  # large, slow writes
                data, headers = multipart({"params": "{}"}, {"label": ("ct_000.json", json.dumps(label).encode())})
                try:
                    server.request("PUT", "/datastore/label?image=ct_000&tag=final", data, headers)
                except OSError:
                    return
                i += 1

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(rng.uniform(0.5, 2.0))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        stop.set()
        thread.join(timeout=30)

        final = studies / "labels" / "final"
        for path in [*final.glob("*.json"), *(final / ".history").glob("*.json")]:
            parse_label(path.read_bytes())  # whole and valid, or this raises
        json.loads((studies / "datastore_v2.json").read_text())
    server = start_server(studies, model_dir=str(tmp_path / "models"), device="cpu")
    status, info = server.request("GET", "/datastore/label/info?label=ct_000&tag=final")
    assert status == 200 and info["history"], info


def test_disk_full_while_saving_a_label_keeps_the_current_one(tmp_path):
    """The datastore process may write no file larger than a few kB (RLIMIT_FSIZE: what a nearly full
    disk does to a big write): saving a big label fails with an error, and the current label, its
    earlier versions and the datastore file are as they were."""
    import subprocess
    import sys
    import textwrap

    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=9, shape=(48, 48, 16), spacing=(1.5, 1.5, 2.5))
    current = (studies / "labels" / "final" / "ct_000.json").read_bytes()
    big = json.loads(current)
    big["reviewer"] = "x" * 200_000
    (tmp_path / "big.json").write_text(json.dumps(big))
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from lnnode.appdir import app_module
        ds = app_module("datastore").LnnodeDatastore({str(studies)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        try:
            ds.save_label("ct_000", {str(tmp_path / "big.json")!r}, "final", {{}})
        except OSError as e:
            print("refused", e.errno)
            sys.exit(0)
        print("stored")
    """)
    before = (studies / "datastore_v2.json").read_bytes() if (studies / "datastore_v2.json").exists() else None
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "refused" in done.stdout, done.stdout + done.stderr[-2000:]
    assert (studies / "labels" / "final" / "ct_000.json").read_bytes() == current, "the current label is intact"
    history = studies / "labels" / "final" / ".history"
    for path in history.glob("*.json") if history.exists() else []:
        assert path.read_bytes() == current  # at most a copy of the current label
    after = (studies / "datastore_v2.json").read_bytes()
    json.loads(after)
    if before is not None:
        assert json.loads(after)["objects"]["ct_000"]["labels"] == json.loads(before)["objects"]["ct_000"]["labels"]


def test_temp_files_a_killed_writer_left_are_cleaned_up_when_old(tmp_path):
    import os
    import time

    from lib.datastore import LnnodeDatastore

    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=10, shape=(48, 48, 16), spacing=(1.5, 1.5, 2.5))
    tmp_dir = studies / "labels" / "final" / ".lnnode-tmp"
    tmp_dir.mkdir(exist_ok=True)
    old, fresh = tmp_dir / "ct_000.json.abc", tmp_dir / "ct_000.json.def"
    old.write_text("half a lab")
    fresh.write_text("being writ")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    LnnodeDatastore(str(studies))
    assert not old.exists() and fresh.exists(), "old leftovers go; a write in progress elsewhere stays"


def test_a_rescan_does_not_undo_what_another_process_wrote(tmp_path):
    """MONAI Label's rescan (``refresh()``: at every subprocess start, and from the file watcher when
    auto-reload is on) edits the datastore file. Another process writes image infos (scores) at the
    same time, each under its own key: every one of them must survive the rescans."""
    import textwrap

    from lib.datastore import LnnodeDatastore

    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=11, shape=(32, 32, 8), spacing=(1.5, 1.5, 2.5))
    for i in range(300):  # many entries: each rescan's read-to-write stretch is long enough to matter
        (studies / f"pad_{i:03d}.nii.gz").write_bytes(b"")
    ds = LnnodeDatastore(str(studies))
    n_writes = 150
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                from lnnode.appdir import app_module
                ds = app_module("datastore").LnnodeDatastore({str(studies)!r})
                for i in range({n_writes}):
                    ds.update_image_info("ct_000", {{f"score_{{i}}": i}})
            """),
        ]
    )
    i = 0
    while writer.poll() is None:
        # what a reader dropping files into the studies folder makes the rescan do: add, then remove
        new = studies / f"new_{i % 20:02d}.nii.gz"
        if new.exists():
            new.unlink()
        else:
            new.write_bytes(b"")
        ds.refresh()
        i += 1
    assert writer.returncode == 0
    info = json.loads((studies / "datastore_v2.json").read_text())["objects"]["ct_000"]["image"]["info"]
    lost = [k for k in range(n_writes) if f"score_{k}" not in info]
    assert i > 10 and not lost, f"{len(lost)} of {n_writes} writes undone by {i} rescans"
