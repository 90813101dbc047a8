"""Shared fixtures: paths, the real data folder, oblique geometries, and a real MONAI Label server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lnnode.appdir import use_app
from lnnode.geometry import ImageGeometry

use_app()  # the tests import the app's modules as the server does: lib.*

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "lnnode"
REAL_DATA = Path(os.environ.get("LNNODE_REAL_DATA", REPO.parent / "shared" / "data" / "real"))

requires_real_data = pytest.mark.skipif(
    not (REAL_DATA / "README.md").exists(),
    reason=f"real data folder not found at {REAL_DATA} (set LNNODE_REAL_DATA)",
)


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.fixture
def oblique_geometry() -> ImageGeometry:
    """Anisotropic spacing, flipped and rotated axes: the geometry every coordinate test must survive."""
    direction = rotation("z", 20) @ rotation("x", 10) @ np.diag([-1.0, -1.0, 1.0])
    return ImageGeometry((40, 36, 12), (0.7, 0.9, 5.0), (120.0, -35.5, -410.0), tuple(direction.ravel()))


@pytest.fixture
def flipped_geometry() -> ImageGeometry:
    """Axis-aligned but not identity: RAS-like flips and a permutation, anisotropic spacing."""
    direction = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return ImageGeometry((30, 40, 10), (0.8, 0.6, 4.0), (-15.0, 60.0, 12.5), tuple(direction.ravel()))


# -- the real server ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ``monailabel start_server`` process on 127.0.0.1 serving apps/lnnode."""

    def __init__(
        self,
        studies: Path | str,
        conf: dict[str, str],
        log: Path,
        env_overrides: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.studies = studies  # a folder, or a DICOMweb URL (then give cwd)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR)]
        cmd += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in conf.items():
            cmd += ["--conf", key, value]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env["MONAI_LABEL_DATASTORE_AUTO_RELOAD"] = "false"
        # MONAI Label re-scores every image after each training and served case; tests that want the
        # scores ask for them (a background scoring process would compete for the 2 cores)
        env["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
        env.update(env_overrides or {})
        self.env = env
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd or Path(studies).parent
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/info/", timeout=5).read()
                return
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()[-4000:]}")

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None):
        """Plain HTTP: (status, parsed JSON or raw bytes)."""
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return status, body

    def wait_training(self, timeout: float = 600.0) -> dict:
        """The training task's status once it is DONE or ERROR (TimeoutError after ``timeout`` s)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, train = self.request("GET", "/train/")
            if status == 200 and train.get("status") in ("DONE", "ERROR"):
                return train
            time.sleep(2)
        raise TimeoutError(f"training did not finish in {timeout:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log_file.close()


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(studies, **conf)`` starts a server and stops it after the test."""
    servers = []

    def start(studies: Path, env: dict[str, str] | None = None, **conf: str) -> Server:
        conf.setdefault("model_dir", str(tmp_path / "models"))
        server = Server(Path(studies), conf, tmp_path / f"server{len(servers)}.log", env)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """Encode a multipart/form-data body (for raw HTTP tests)."""
    boundary = "lnnode-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def fake_result(n: int = 3) -> dict:
    """A small valid pipeline result (three nodes, LPS) for tests that need no server."""
    nodes = [
        {"id": f"n{i + 1}", "center": [10.0 * i, -5.0, 2.0], "size": [8.0, 7.0, 6.0], "detection_score": 0.9,
         "p_metastasis": p, "uncertainty": 0.05, "short_axis_mm": 6.5, "long_axis_mm": 8.0,
         "rules": {"size_10mm": "not_suspicious", "morphology": "indeterminate"}}
        for i, p in enumerate([0.8, 0.2, 0.6][:n])
    ]  # fmt: skip
    return {
        "schema": "lnnode.result/1", "image": "case1", "model": {"detector": "d@1", "classifier": "c@1"},
        "coordinate_system": "LPS", "units": "mm", "nodes": nodes,
        "summary": {"n_nodes": n, "n_suspicious": 2, "n_stage_hint": "N1"},
    }  # fmt: skip
