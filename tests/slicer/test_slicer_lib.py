"""The Slicer module's GUI-free core (``LymphNodeReviewLib``), outside Slicer, against the real server:
connect, get the next case, run the pipeline, review (accept, reject, relabel, move, add, undo), submit
the label and read back what the server made of it; and what happens when the server is down."""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lnnode.phantoms import synthesize

from ..conftest import REPO, fake_result

sys.path.insert(0, str(REPO / "slicer_module" / "LymphNodeReview"))

from LymphNodeReviewLib import LymphNodeServer, ReviewSession, ServerError, probability_color  # noqa: E402
from LymphNodeReviewLib.client import describe_server  # noqa: E402
from LymphNodeReviewLib.review import (  # noqa: E402
    ACCEPTED,
    PENDING,
    REJECTED,
    TABLE_COLUMNS,
    TABLE_HEADERS,
    box_lps_to_ras,
    box_ras_to_lps,
)
from LymphNodeReviewLib.saliency import write_saliency_maps  # noqa: E402

LIB = REPO / "slicer_module" / "LymphNodeReview" / "LymphNodeReviewLib"


def test_the_module_carries_an_exact_copy_of_the_schema():
    source = REPO / "src" / "lnnode" / "contracts" / "schema.py"
    assert filecmp.cmp(source, LIB / "schema.py", shallow=False), (
        "slicer_module/LymphNodeReview/LymphNodeReviewLib/schema.py differs from src/lnnode/contracts/schema.py: "
        "run python tools/copy_schema.py"
    )


def test_the_core_imports_neither_slicer_nor_qt():
    for path in LIB.glob("*.py"):
        text = path.read_text()
        assert "import slicer" not in text and "import qt" not in text and "from qt" not in text, path.name


def test_review_session_edits_undo_and_label():
    session = ReviewSession(fake_result())
    assert [r["class"] for r in session.rows()] == ["metastatic", "benign", "metastatic"]
    session.accept("n1")
    session.reject("n2")
    session.set_class("n3", "benign")  # relabelled: accepted as a node, other class
    session.move("n1", [1.0, -5.0, 2.0], [9.0, 7.0, 6.0])
    added = session.add([0.0, 30.0, 0.0], [5.0, 5.0, 5.0], "metastatic")
    assert [n.status for n in session.nodes] == [ACCEPTED, REJECTED, ACCEPTED, ACCEPTED]
    assert session.undo() and [n.id for n in session.nodes] == ["n1", "n2", "n3"]  # the addition undone
    added = session.add([0.0, 30.0, 0.0], [5.0, 5.0, 5.0], "metastatic")

    label = session.to_label(reviewer="dr-a")
    by_from = {n.get("from_node", "added"): n for n in label["nodes"]}
    assert by_from["n1"]["edited"] is True and by_from["n1"]["class"] == "metastatic"
    assert by_from["n3"]["edited"] is True and by_from["n3"]["class"] == "benign"
    assert by_from["added"]["origin"] == "added" and "from_node" not in by_from["added"]
    assert label["rejected"] == [{"center": [10.0, -5.0, 2.0], "size": [8.0, 7.0, 6.0], "from_node": "n2"}]
    assert label["reviewer"] == "dr-a" and label["coordinate_system"] == "LPS"
    assert added == "a2"

    # the review survives a round trip through the scene (JSON), undo stack aside
    again = ReviewSession.from_json(session.to_json())
    assert again.to_label(reviewer="dr-a")["nodes"] == label["nodes"]

    # pending nodes are left out unless asked for; a node without a class cannot be submitted
    fresh = ReviewSession(fake_result())
    assert fresh.to_label()["nodes"] == [] and len(fresh.to_label(include_pending=True)["nodes"]) == 3
    with pytest.raises(ValueError, match="class"):
        fresh.set_class("n1", "maybe")
    with pytest.raises(ValueError, match="positive"):
        fresh.move("n1", [0, 0, 0], [0, 1, 1])
    assert fresh.nodes[0].status == PENDING and not fresh.undo()


def test_the_table_and_summary_the_panel_shows():
    session = ReviewSession(fake_result())
    session.reject("n2")
    session.set_class("n3", "benign")
    assert session.table()[0] == ["n1", "pending", "metastatic", "0.80", "6.50", "8.00", "0.05", "not_suspicious",
                                  "indeterminate"]  # fmt: skip
    assert [row[1] for row in session.table()] == ["pending", "rejected", "accepted (relabelled)"]
    assert len(TABLE_COLUMNS) == len(TABLE_HEADERS) == len(session.table()[0])
    assert session.summary_text() == ("3 nodes, 2 suspicious, N1 (hint) | accepted 1, rejected 1, pending 1, added 0")
    info = {"models": {"b": {}, "a": {}}, "train_stats": {"a": {"status": "published"}, "b": {}}}
    assert describe_server(info) == "connected: a, b (training a: published)"


def test_box_conversion_and_colours():
    center, size = box_lps_to_ras([10.0, -20.0, 30.0], [4.0, 5.0, 6.0])
    assert center == [-10.0, 20.0, 30.0] and size == [4.0, 5.0, 6.0]
    assert box_ras_to_lps(center, size) == ([10.0, -20.0, 30.0], [4.0, 5.0, 6.0])
    assert probability_color(0.0) == (0.0, 1.0, 0.0) and probability_color(1.0) == (1.0, 0.0, 0.0)
    assert probability_color(None) == (0.6, 0.6, 0.6)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slicer") / "studies"
    synthesize(
        out, 2, modality="ct", seed=404, shape=(128, 128, 40), spacing=(1.2, 1.1, 2.5), direction="oblique",
        label_tag="ground_truth",
    )  # fmt: skip
    return out


def test_review_against_the_real_server(start_server, studies, tmp_path):
    server = start_server(studies, device="cpu")
    client = LymphNodeServer(server.url)
    assert "lymph_node_pipeline" in client.models()
    assert client.training_status()["status"] in ("NONE", "DONE", "RUNNING", "ERROR")

    case = client.next_case("uncertain")
    assert case and case["id"] in ("ct_000", "ct_001")
    local = client.download_image(case["id"], str(tmp_path))
    assert Path(local).stat().st_size == (studies / f"{case['id']}.nii.gz").stat().st_size

    session = ReviewSession(client.run_pipeline(case["id"], {"score_thresh": 0.01}))
    assert len(session.nodes) >= 2
    first, second = session.nodes[0].id, session.nodes[1].id
    session.reject(second)
    session.set_class(first, "benign" if session.node(first).cls == "metastatic" else "metastatic")
    c = np.asarray(session.node(first).center)
    session.add(list(c + [0.0, 0.0, 5.0]), [5.0, 5.0, 5.0], "benign")
    answer = client.submit_label(case["id"], session.to_label(reviewer="dr-test"))
    review = answer["review"]
    assert (review["relabelled"], review["rejected"], review["added"]) == (1, 1, 1)
    assert review["edited"] == 0, "a relabelled node the reader did not move is not counted as moved"
    assert review["unreviewed"] == len(session.nodes) - 3

    # a label the server refuses comes back in words, and the review is still there to fix and resend
    bad = session.to_label()
    bad["nodes"][0]["center"] = [1e6, 0.0, 0.0]
    with pytest.raises(ServerError, match="outside the image") as refused:
        client.submit_label(case["id"], bad)
    assert refused.value.status == 422
    with pytest.raises(ServerError, match="unknown model"):
        client.start_training("no_such_model")

    uploaded = client.upload_image(str(studies / "ct_001.nii.gz"), "uploaded_case")
    assert uploaded == "uploaded_case"
    assert client.channel_suffixes() == []  # the demo models read one sequence

    # saliency maps come back as files Slicer can overlay, where the node is
    from lnnode.geometry import ImageGeometry
    from lnnode.io.image import read_sitk

    result = client.run_pipeline(case["id"], {"saliency": True})
    paths = write_saliency_maps(result, str(tmp_path))
    assert sorted(paths) == sorted(n["id"] for n in result["nodes"] if "saliency" in n) and paths
    node = next(n for n in result["nodes"] if n["id"] in paths)
    geometry = ImageGeometry.from_sitk(read_sitk(paths[node["id"]]))
    assert geometry.contains_index(geometry.world_to_index(node["center"]))


def test_server_down_is_said_in_words_and_nothing_is_lost(tmp_path):
    client = LymphNodeServer("http://127.0.0.1:9", timeout=5)  # nothing listens on port 9
    session = ReviewSession(fake_result())
    session.accept("n1")
    kept = session.to_json()
    with pytest.raises(ServerError, match="cannot be reached"):
        client.submit_label("case1", session.to_label())
    assert ReviewSession.from_json(kept).to_label()["nodes"] == session.to_label()["nodes"]
    with pytest.raises(ServerError, match="http"):
        LymphNodeServer("127.0.0.1:8000")
    assert json.loads(kept)["nodes"][0]["status"] == ACCEPTED


def test_module_files_are_listed_and_the_panel_has_every_widget_the_code_uses():
    import py_compile
    import re
    import xml.etree.ElementTree as ET

    module = REPO / "slicer_module" / "LymphNodeReview"
    cmake = (module / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "LymphNodeReview")
    for path in sorted(module.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".png", ".ui") and "__pycache__" not in path.parts:
            assert str(path.relative_to(module)) in cmake, f"{path.relative_to(module)} missing from CMakeLists.txt"
    assert not [p for p in module.glob("*.py") if p.name != "LymphNodeReview.py"], "helpers go in LymphNodeReviewLib/"
    py_compile.compile(str(module / "LymphNodeReview.py"), doraise=True)
    code = (module / "LymphNodeReview.py").read_text()
    for cls in ("LymphNodeReview(", "LymphNodeReviewWidget(", "LymphNodeReviewLogic(", "LymphNodeReviewTest("):
        assert f"class {cls}" in code
    ui = ET.parse(module / "Resources" / "UI" / "LymphNodeReview.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used <= names, f"widgets used but not in the .ui: {sorted(used - names)}"


def test_module_code_parses_as_python_3_9_and_3_12():
    """Slicer 5.6 ships Python 3.9, later Slicers 3.12 (ruff also checks the module with target py39)."""
    import ast

    sources = sorted((REPO / "slicer_module").rglob("*.py"))
    assert len(sources) >= 7
    for path in sources:
        for version in ((3, 9), (3, 12)):
            ast.parse(path.read_text(), filename=str(path), feature_version=version)
