"""The review in a real MRML scene (PyPI's ``slicer-core``: Slicer's MRML libraries without the GUI):
ROI nodes are made from a review, the reader's edits in the scene (move, resize, delete, a new box)
come back as the right label, and Slicer's own markups JSON of the boxes agrees with it in LPS.

Optional: ``pip install -e ".[slicer]"`` (about 1 GB with VTK); skipped without it."""

from __future__ import annotations

import json
import sys

import pytest

from ..conftest import REPO, fake_result

slicer = pytest.importorskip("slicer", reason="slicer-core not installed (pip install -e '.[slicer]')")
if not hasattr(slicer, "vtkMRMLMarkupsROINode"):
    pytest.skip("this 'slicer' module has no MRML markups", allow_module_level=True)

sys.path.insert(0, str(REPO / "slicer_module" / "LymphNodeReview"))

from LymphNodeReviewLib import ReviewSession  # noqa: E402
from LymphNodeReviewLib.scene import read_review, review_rois, show_review  # noqa: E402


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    for node in (slicer.vtkMRMLMarkupsROINode(), slicer.vtkMRMLMarkupsROIDisplayNode(),
                 slicer.vtkMRMLMarkupsROIJsonStorageNode(), slicer.vtkMRMLLinearTransformNode()):  # fmt: skip
        s.RegisterNodeClass(node)
    return s


def roi_box(roi):
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    return center, list(roi.GetSize())


def test_scene_edits_become_the_label(scene, tmp_path):
    session = ReviewSession(fake_result())
    rois = show_review(scene, session)
    assert sorted(rois) == ["n1", "n2", "n3"]
    center, size = roi_box(rois["n1"])
    assert center == [-0.0, 5.0, 2.0] and size == [8.0, 7.0, 6.0]  # LPS (0, -5, 2) in RAS
    assert rois["n1"].GetDisplayNode().GetSelectedColor()[0] > 0.9  # p = 0.8: red

    rois["n1"].SetCenter([-3.0, 5.0, 2.0])  # moved 3 mm to the patient's right (RAS x = -3: LPS x = 3)
    rois["n3"].SetSize([12.0, 7.0, 6.0])  # resized
    scene.RemoveNode(rois["n2"])  # deleted: a false positive
    new = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "LN new 1")  # placed with Slicer's ROI tool
    new.SetCenter([-20.0, 30.0, 4.0])
    new.SetSize([5.0, 5.0, 5.0])
    changed = read_review(scene, session)
    assert sorted(changed) == ["a1", "n1", "n2", "n3"]
    assert read_review(scene, session) == [], "read once"

    label = session.to_label(reviewer="dr-scene")
    nodes = {n.get("from_node", "added"): n for n in label["nodes"]}
    assert nodes["n1"]["center"] == [3.0, -5.0, 2.0] and nodes["n1"]["edited"] is True
    assert nodes["n3"]["size"] == [12.0, 7.0, 6.0] and nodes["n3"]["edited"] is True
    assert nodes["added"]["center"] == [20.0, -30.0, 4.0] and nodes["added"]["origin"] == "added"
    assert [r["from_node"] for r in label["rejected"]] == ["n2"]

    # Slicer's own markups JSON of the moved box: LPS, the same numbers the label carries
    roi = review_rois(scene)["n1"]
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsROIJsonStorageNode")
    roi.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "n1.mrk.json"))
    assert storage.WriteData(roi)
    markup = json.loads((tmp_path / "n1.mrk.json").read_text())["markups"][0]
    assert markup["type"] == "ROI" and markup["coordinateSystem"] == "LPS"
    assert markup["center"] == pytest.approx(nodes["n1"]["center"]) and markup["size"] == pytest.approx([8, 7, 6])

    # a box rotated in the scene is read as the world box that encloses it
    import vtk

    rotation = vtk.vtkTransform()
    rotation.RotateZ(90)
    rois = review_rois(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(rotation.GetMatrix())
    rois["n3"].SetAndObserveTransformNodeID(transform.GetID())
    read_review(scene, session)
    assert session.node("n3").size == pytest.approx([7.0, 12.0, 6.0]), "x and y extents swap under a 90 degree turn"

    # showing the review again hides the rejected box and keeps one ROI per node
    rois = show_review(scene, session)
    assert sorted(rois) == ["a1", "n1", "n2", "n3"] and not rois["n2"].GetDisplayNode().GetVisibility()


def test_slicers_own_markups_files_read_back_as_the_label(scene, tmp_path):
    """ROI markups as Slicer writes them (its JSON storage node), gathered in one document as the stock MONAI
    Label plugin uploads a detection label, become the label lnnode stores: kept, moved, deleted, added."""
    from lnnode.contracts.markups import MARKUPS_SCHEMA, label_from_markups

    original = fake_result()
    written = []
    for node, move in zip(original["nodes"][:2], ([0.0, 0.0, 0.0], [-4.0, 0.0, 0.0]), strict=True):  # n3 deleted
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", node["id"])
        x, y, z = node["center"]
        roi.SetCenter([-x + move[0], -y + move[1], z + move[2]])  # RAS in the scene
        roi.SetSize(node["size"])
        written.append(roi)
    new = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "metastatic")
    new.SetCenter([-40.0, -30.0, 10.0])
    new.SetSize([6.0, 6.0, 6.0])
    written.append(new)
    markups = []
    for i, roi in enumerate(written):
        storage = scene.AddNewNodeByClass("vtkMRMLMarkupsROIJsonStorageNode")
        roi.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(tmp_path / f"roi{i}.mrk.json"))
        assert storage.WriteData(roi)
        markups += json.loads((tmp_path / f"roi{i}.mrk.json").read_text())["markups"]
    label = label_from_markups({"@schema": MARKUPS_SCHEMA, "markups": markups}, "case1", original)
    kept, moved, added = label["nodes"]
    assert kept["from_node"] == "n1" and kept["center"] == pytest.approx([0.0, -5.0, 2.0]) and "edited" not in kept
    assert moved["from_node"] == "n2" and moved["edited"] and moved["center"] == pytest.approx([14.0, -5.0, 2.0])
    assert added["origin"] == "added" and added["center"] == pytest.approx([40.0, 30.0, 10.0])
    assert added["class"] == "metastatic", "the class the reader named the box with"
    assert [r["from_node"] for r in label["rejected"]] == ["n3"]
    assert [m["controlPoints"][0]["label"] for m in markups[:2]] == ["n1-1", "n2-1"], "matched by name, too"
