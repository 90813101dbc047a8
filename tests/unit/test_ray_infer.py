"""``lnnode infer --ray`` and ``lnnode score --ray`` on a real local Ray (2 CPUs, 127.0.0.1): the same results as
the sequential run, a re-run that skips finished cases, failed cases (an unreadable file, one whose pixels break
off, a worker that dies) reported while the others go on."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from lnnode.cli import main
from lnnode.phantoms import synthesize

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lnnode[ray]'")

from lnnode.distributed import RayOptions, WorkerDied, Workers, ray_session  # noqa: E402

CASES = ("ct_000", "ct_001", "ct_002", "ct_003")
TIMING = ("latencies",)  # result keys that differ from run to run
SCORE_TIMING = ("seconds", "ts")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs on 127.0.0.1 for the module, started as ``--ray`` starts one (the CLI then joins it)."""
    with ray_session(RayOptions(workers=2)) as connected:
        assert connected.cluster_resources()["CPU"] == 2
        yield connected


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four small CT phantoms, a file that is no image and one whose pixels break off after a good header."""
    folder = tmp_path_factory.mktemp("ray") / "images"
    synthesize(folder, len(CASES), modality="ct", seed=5, shape=(48, 48, 16), spacing=(1.5, 1.5, 3.0))
    shutil.rmtree(folder / "labels")
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    data = (folder / "ct_000.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    return folder


@pytest.fixture(scope="module")
def sequential(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    assert main(["infer", str(images), "--out", str(out), "--tta", "1", "--no-progress"]) == 1
    return out


def _result(path: Path) -> dict:
    result = json.loads(path.read_text())
    return {k: v for k, v in result.items() if k not in TIMING}


def _same_outputs(a: Path, b: Path, cases=CASES) -> None:
    for case in cases:
        assert _result(a / f"{case}.json") == _result(b / f"{case}.json"), case
        assert (a / f"{case}.mrk.json").read_text() == (b / f"{case}.mrk.json").read_text(), case


def test_ray_results_equal_the_sequential_ones_and_failures_are_named(local_ray, images, sequential, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["infer", str(images), "--out", str(out), "--tta", "1", "--no-progress", "--ray", "--workers", "2"])
    printed = capsys.readouterr().out
    assert rc == 1, "two cases failed"
    assert "4 case(s) written" in printed and "on 2 Ray worker(s)" in printed, printed
    assert "broken (image" in printed, "refused on the driver: its header cannot be read"
    assert "truncated (image" in printed and "truncated gzip data" in printed, "refused in the worker reading it"
    _same_outputs(sequential, out)
    assert not (out / "broken.json").exists() and not (out / "truncated.json").exists()


def test_a_rerun_skips_finished_cases_and_redoes_unfinished_ones(local_ray, images, sequential, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(sequential, out)
    (out / "ct_001.mrk.json").unlink()  # stopped between the result and the markups
    (out / "ct_002.json").write_text('{"schema": "lnnode.result/1"')  # not a result
    capsys.readouterr()
    assert main(["infer", str(images), "--out", str(out), "--tta", "1", "--no-progress", "--ray"]) == 1
    printed = capsys.readouterr().out
    assert "2 case(s) written" in printed and "2 skipped, done before" in printed, printed
    assert "2 failed" in printed, "failed cases are not done: tried again"
    _same_outputs(sequential, out)
    assert main(["infer", str(images), "--out", str(out), "--no-progress"]) == 1  # sequential: the same account
    assert "0 case(s) written, 0 node(s); 4 skipped, done before" in capsys.readouterr().out
    assert main(["infer", str(images / "ct_003.nii.gz"), "--out", str(out), "--tta", "1", "--force"]) == 0
    assert "1 case(s) written" in capsys.readouterr().out


class _DiesOn:
    """A worker's runner that ends its process on the items in ``victims`` (a crash, the OOM killer)."""

    def __init__(self, victims: set[int]):
        self.victims = victims

    def run(self, item: int) -> int:
        if item in self.victims:
            os._exit(1)
        time.sleep(0.2)
        return item * 10


def test_a_worker_that_dies_fails_its_case_and_the_others_go_on(local_ray):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    items = [(i,) for i in range(6)]
    with Workers(RayOptions(workers=2), lambda: _DiesOn({1, 3}), len(items)) as workers:
        assert workers.count == 2
        done = dict(workers.map(items))
    assert set(done) == set(items)
    assert {item: done.pop(item) for item in [(0,), (2,)]} == {(0,): 0, (2,): 20}, "the other worker goes on"
    assert all(isinstance(v, WorkerDied) for v in done.values())
    assert "its Ray worker died" in str(done[(1,)]) and "its Ray worker died" in str(done[(3,)])
    assert "no Ray worker left" in str(done[(4,)]) and "no Ray worker left" in str(done[(5,)])


def _scores(studies: Path) -> dict:
    objects = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    scores = {k: dict(v["image"]["info"].get("lymph_node_uncertainty") or {}) for k, v in objects.items()}
    return {k: {p: v for p, v in s.items() if p not in SCORE_TIMING} for k, s in scores.items()}


def test_score_on_ray_equals_the_sequential_scores_and_a_rerun_skips_them(local_ray, tmp_path, capsys):
    studies = tmp_path / "seq"
    synthesize(studies, 3, modality="ct", seed=9, shape=(48, 48, 16), spacing=(1.5, 1.5, 3.0), label_tag="truth")
    (studies / "broken.nii.gz").write_bytes(b"not an image")
    shutil.copytree(studies, tmp_path / "ray")
    capsys.readouterr()
    assert main(["score", "--studies", str(studies), "--no-progress"]) == 1
    assert main(["score", "--studies", str(tmp_path / "ray"), "--no-progress", "--ray"]) == 1
    printed = capsys.readouterr().out.splitlines()
    for line in printed:
        assert line.startswith("3 image(s) scored; 1 failed: broken (") and "not a readable NIfTI" in line, line
    assert "on 2 Ray worker(s)" in printed[1]
    scores = _scores(studies)
    assert scores == _scores(tmp_path / "ray")
    assert all(scores[f"ct_{i:03d}"]["models"] and "score" in scores[f"ct_{i:03d}"] for i in range(3))
    (studies / "broken.nii.gz").unlink()
    assert main(["score", "--studies", str(tmp_path / "seq"), "--no-progress", "--ray"]) == 0
    assert capsys.readouterr().out.startswith("0 image(s) scored; 3 skipped, up to date")


def test_ray_flags_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    source = tmp_path / "none.nii.gz"
    assert main(["infer", str(source), "--out", str(tmp_path), "--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    assert main(["infer", str(source), "--out", str(tmp_path), "--device", "cuda:1", "--ray"]) == 2
    assert "give --device cuda, not cuda:1" in capsys.readouterr().err
    assert main(["score", "--studies", str(tmp_path), "--ray", "--cpus-per-worker", "0"]) == 2
    assert "--cpus-per-worker must be above 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    assert main(["score", "--studies", str(tmp_path), "--ray"]) == 2
    assert "pip install 'lnnode[ray]'" in capsys.readouterr().err
