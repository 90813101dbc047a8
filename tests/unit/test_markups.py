"""Slicer markups read back as a label (what the stock MONAI Label Slicer plugin saves for a detection model):
LPS and RAS, rotated ROIs, kept / moved / added / deleted boxes against the model's result, bad documents."""

from __future__ import annotations

import numpy as np
import pytest

from lnnode.contracts import ContractError, validate_label
from lnnode.contracts.markups import MARKUPS_SCHEMA, boxes_from_markups, label_from_markups, markups_from_nodes
from lnnode.corrections import review_stats

from ..conftest import fake_result


def _ras(roi: dict) -> dict:
    """The same ROI as Slicer writes it in RAS."""
    out = dict(roi, coordinateSystem="RAS", center=[-roi["center"][0], -roi["center"][1], roi["center"][2]])
    return out


def _rotated(center, size, degrees: float) -> dict:
    t = np.radians(degrees)
    r = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return {"type": "ROI", "coordinateSystem": "LPS", "center": list(center), "size": list(size),
            "orientation": r.ravel().tolist(), "controlPoints": [{"label": "R"}]}  # fmt: skip


def test_the_result_markups_read_back_unchanged_are_all_accepted():
    original = fake_result()
    doc = markups_from_nodes(original["nodes"])
    label = label_from_markups(doc, "case1", original)
    assert [n["from_node"] for n in label["nodes"]] == ["n1", "n2", "n3"] and "rejected" not in label
    stats = review_stats(label, original)
    assert stats["edited"] == 0 and stats["rejected"] == 0 and stats["added"] == 0
    assert stats["accepted"] + stats["unreviewed"] + (stats["relabelled"] or 0) == 3


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_kept_moved_added_and_deleted_boxes(system):
    original = fake_result()
    rois = markups_from_nodes(original["nodes"])["markups"]
    kept, moved = rois[0], dict(rois[1], center=[10.0, -1.0, 2.0])  # n2 moved 4 mm; n3 deleted
    moved["name"], moved["controlPoints"] = "", []  # a moved box that lost its name: matched by overlap
    added = _rotated([40.0, 30.0, 10.0], [6.0, 4.0, 5.0], 30.0)
    markups = [kept, moved, added]
    if system == "RAS":
        markups = [_ras(m) for m in markups]
    label = label_from_markups({"@schema": MARKUPS_SCHEMA, "markups": markups}, "case1", original)
    validate_label(label)
    n1, n2, new = label["nodes"]
    assert n1["from_node"] == "n1" and n1["center"] == pytest.approx([0.0, -5.0, 2.0]) and "edited" not in n1
    assert n2["from_node"] == "n2" and n2["edited"] is True and n2["center"] == pytest.approx([10.0, -1.0, 2.0])
    assert new["origin"] == "added" and new["center"] == pytest.approx([40.0, 30.0, 10.0])
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert new["size"] == pytest.approx([6 * c + 4 * s, 6 * s + 4 * c, 5.0], abs=1e-3), "the box enclosing the ROI"
    assert [r["from_node"] for r in label["rejected"]] == ["n3"]
    stats = review_stats(label, original)
    assert (stats["edited"], stats["rejected"], stats["added"]) == (1, 1, 1)


def test_a_class_is_taken_only_from_a_name_that_says_it():
    original = fake_result()
    rois = markups_from_nodes(original["nodes"])["markups"]
    rois[0]["name"] = "n1 benign"
    rois[1]["name"] = "n2"
    label = label_from_markups({"@schema": MARKUPS_SCHEMA, "markups": rois}, "case1", original)
    assert label["nodes"][0]["class"] == "benign" and label["nodes"][0]["from_node"] == "n1"
    assert "class" not in label["nodes"][1]


def test_without_an_original_every_box_is_a_node_and_other_markups_are_not_boxes():
    doc = {"@schema": MARKUPS_SCHEMA, "markups": [_rotated([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], 0.0),
                                                  {"type": "Fiducial", "controlPoints": []}]}  # fmt: skip
    label = label_from_markups(doc, "c", None)
    assert len(label["nodes"]) == 1 and "origin" not in label["nodes"][0] and "rejected" not in label


@pytest.mark.parametrize(
    "change, field",
    [
        ({"center": [1.0, "x", 3.0]}, "markups[0].center"),
        ({"size": [5.0, 0.0, 5.0]}, "markups[0].size"),
        ({"size": [5.0, float("nan"), 5.0]}, "markups[0].size"),
        ({"coordinateSystem": "IJK"}, "markups[0].coordinateSystem"),
        ({"coordinateUnits": "cm"}, "markups[0].coordinateUnits"),
        ({"orientation": [2.0, 0, 0, 0, 1, 0, 0, 0, 1]}, "markups[0].orientation"),
        ({"roiType": "Ellipsoid"}, "markups[0].roiType"),
        ({"insideOut": True}, "markups[0].roiType"),
    ],
)
def test_a_broken_roi_is_refused_naming_the_field(change, field):
    roi = {**_rotated([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], 0.0), **change}
    with pytest.raises(ContractError) as caught:
        boxes_from_markups({"@schema": MARKUPS_SCHEMA, "markups": [roi]})
    assert str(caught.value).startswith(field), str(caught.value)


def test_a_box_named_after_its_node_is_that_node_however_far_it_moved():
    original = fake_result()
    rois = markups_from_nodes(original["nodes"])["markups"]
    far = dict(rois[2], center=[60.0, 40.0, 2.0], name="", controlPoints=[{"label": "n3-1"}])  # Slicer's point label
    label = label_from_markups({"@schema": MARKUPS_SCHEMA, "markups": [far]}, "case1", original)
    assert label["nodes"][0]["from_node"] == "n3" and label["nodes"][0]["edited"] is True
    assert sorted(r["from_node"] for r in label["rejected"]) == ["n1", "n2"]
