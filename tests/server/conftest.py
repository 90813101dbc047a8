"""The module-scoped server of the endpoint and guard tests: a small oblique, anisotropic image, one label already
in the folder, no weights, a 1 MB upload limit, a temp folder of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lnnode.contracts import dumps, make_label
from lnnode.io.image import write_image

from ..conftest import Server, rotation


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("server")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    return studies


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> tuple[Path, object]:
    """A small CT-like volume on an oblique, flipped, anisotropic grid."""
    from lnnode.geometry import ImageGeometry

    direction = rotation("z", 15) @ np.diag([-1.0, -1.0, 1.0])
    g = ImageGeometry((48, 40, 10), (0.8, 0.8, 4.0), (30.0, 20.0, -100.0), tuple(direction.ravel()))
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("img") / "upload_me.nii.gz"
    write_image(rng.normal(40, 20, g.shape).astype(np.int16), g, path)
    return path, g


@pytest.fixture(scope="module")
def server(studies, image_file, tmp_path_factory):
    # one image with a label JSON already in the folder: the datastore must see it as a label
    path, g = image_file
    (studies / "preexisting.nii.gz").write_bytes(path.read_bytes())
    centre = g.index_to_world(np.array(g.shape) / 2).tolist()
    label = make_label("preexisting", [{"center": centre, "size": [6.0, 5.0, 8.0], "class": "benign"}])
    (studies / "labels" / "final" / "preexisting.json").write_text(dumps(label))
    log_dir = tmp_path_factory.mktemp("logs")
    conf = {"model_dir": str(log_dir / "models"), "demo_weights": "false", "max_upload_mb": "1"}
    # its own temp folder: what an upload leaves there can be checked
    env = {"TMPDIR": str(tmp_path_factory.mktemp("server_tmp"))}
    server = Server(studies, conf, log_dir / "server.log", env_overrides=env)
    server.wait_ready()
    yield server
    server.stop()


def label_for(image_id: str, g, reviewer: str = "dr.test") -> dict:
    centre = g.index_to_world(np.array(g.shape) / 2).tolist()
    nodes = [
        {"center": centre, "size": [8.0, 7.0, 12.0], "class": "metastatic", "origin": "model", "from_node": "n1"},
        {"center": [c + 5 for c in centre], "size": [5.0, 5.0, 8.0], "class": "benign", "origin": "added"},
    ]
    rejected = [{"center": [c - 5 for c in centre], "size": [6.0, 6.0, 6.0], "from_node": "n2"}]
    return make_label(image_id, nodes, rejected, reviewer=reviewer, reviewed_at="2026-11-24T09:00:00Z")
