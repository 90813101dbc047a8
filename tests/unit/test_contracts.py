"""The result and label contracts: validators that name the field, and exact converters."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnnode.contracts import (
    ContractError,
    check_label_in_image,
    dumps,
    instance_boxes,
    label_from_instance_mask,
    label_to_index_boxes,
    make_label,
    parse_label,
    parse_result,
    validate_label,
    validate_result,
)
from lnnode.geometry import ImageGeometry

from .test_geometry import SIGNED_PERMUTATIONS, rotation_from_quaternion

LABEL = {
    "schema": "lnnode.label/1",
    "image": "case_001",
    "coordinate_system": "LPS",
    "units": "mm",
    "nodes": [
        {"center": [10.0, -20.0, 30.0], "size": [8.0, 6.0, 10.0], "class": "metastatic", "origin": "model",
         "edited": True, "from_node": "n3"},
        {"center": [40.0, -10.0, 35.0], "size": [5.0, 4.0, 6.0], "class": "benign", "origin": "added"},
    ],
    "rejected": [{"center": [0.0, 0.0, 0.0], "size": [6.0, 6.0, 6.0], "from_node": "n2"}],
    "reviewer": "dr.a",
    "reviewed_at": "2026-11-24T10:15:00Z",
}  # fmt: skip

RESULT = {
    "schema": "lnnode.result/1",
    "image": "case_001",
    "model": {"detector": "lymph_node_detection@2026-11-24", "classifier": None},
    "coordinate_system": "LPS",
    "units": "mm",
    "nodes": [
        {"id": "n1", "center": [1.0, 2.0, 3.0], "size": [9.0, 8.0, 7.0], "detection_score": 0.93,
         "p_metastasis": 0.81, "uncertainty": 0.07, "short_axis_mm": 9.4, "long_axis_mm": 13.0,
         "rules": {"size_10mm": "not_suspicious", "morphology": "suspicious"}},
    ],
    "summary": {"n_nodes": 1, "n_suspicious": 1, "n_stage_hint": "N1"},
    "latencies": {"total": 1.5},
}  # fmt: skip


def edited(doc: dict, path: str, value=None, delete: bool = False) -> dict:
    """A copy of ``doc`` with ``path`` (dots and [i]) set to ``value`` or deleted."""
    doc = copy.deepcopy(doc)
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    target = doc
    for key in keys[:-1]:
        target = target[key]
    if delete:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


def test_valid_documents_pass_and_round_trip_through_json():
    assert parse_label(dumps(LABEL)) == LABEL
    assert parse_result(dumps(RESULT)) == RESULT
    minimal = {"schema": "lnnode.label/1", "image": "x", "coordinate_system": "LPS", "units": "mm", "nodes": []}
    assert validate_label(minimal) is minimal


@pytest.mark.parametrize(
    "path, value, delete, field",
    [
        ("schema", None, True, "schema"),
        ("schema", "lnnode.label/2", False, "schema"),
        ("image", "", False, "image"),
        ("image", 7, False, "image"),
        ("coordinate_system", "RAS", False, "coordinate_system"),
        ("units", "cm", False, "units"),
        ("nodes", None, True, "nodes"),
        ("nodes", {}, False, "nodes"),
        ("nodes[0].center", None, True, "nodes[0].center"),
        ("nodes[0].center", [1.0, 2.0], False, "nodes[0].center"),
        ("nodes[0].center[2]", float("nan"), False, "nodes[0].center[2]"),
        ("nodes[0].center[1]", "3", False, "nodes[0].center[1]"),
        ("nodes[0].center[1]", True, False, "nodes[0].center[1]"),
        ("nodes[1].size[1]", 0.0, False, "nodes[1].size[1]"),
        ("nodes[1].size[0]", -2.0, False, "nodes[1].size[0]"),
        ("nodes[1].size[2]", float("inf"), False, "nodes[1].size[2]"),
        ("nodes[0].class", "malignant", False, "nodes[0].class"),
        ("nodes[0].origin", "ai", False, "nodes[0].origin"),
        ("nodes[0].edited", "yes", False, "nodes[0].edited"),
        ("nodes[1].from_node", "n4", False, "nodes[1].from_node"),
        ("nodes[0].colour", "red", False, "nodes[0].colour"),
        ("rejected[0].size", None, True, "rejected[0].size"),
        ("rejected[0].class", "benign", False, "rejected[0].class"),
        ("reviewed_at", "yesterday", False, "reviewed_at"),
        ("reviewer", "", False, "reviewer"),
        ("extra", 1, False, "extra"),
    ],
)
def test_malformed_labels_name_the_field(path, value, delete, field):
    with pytest.raises(ContractError) as e:
        validate_label(edited(LABEL, path, value, delete))
    assert e.value.field == field
    assert str(e.value).startswith(field)


def test_label_errors_for_duplicates_and_reused_model_nodes():
    dup = edited(LABEL, "nodes[1]", copy.deepcopy(LABEL["nodes"][0]) | {"from_node": "n9"})
    with pytest.raises(ContractError, match="duplicates nodes"):
        validate_label(dup)
    reused = edited(LABEL, "rejected[0].from_node", "n3")
    with pytest.raises(ContractError, match="'n3' is used more than once"):
        validate_label(reused)


@pytest.mark.parametrize(
    "path, value, delete, field",
    [
        ("schema", "lnnode.label/1", False, "schema"),
        ("model", None, True, "model"),
        ("model.detector", 3, False, "model.detector"),
        ("nodes[0].id", None, True, "nodes[0].id"),
        ("nodes[0].p_metastasis", 1.2, False, "nodes[0].p_metastasis"),
        ("nodes[0].detection_score", -0.1, False, "nodes[0].detection_score"),
        ("nodes[0].uncertainty", float("nan"), False, "nodes[0].uncertainty"),
        ("nodes[0].short_axis_mm", 14.0, False, "nodes[0].short_axis_mm"),
        ("nodes[0].rules.size_10mm", "maybe", False, "nodes[0].rules.size_10mm"),
        ("summary.n_nodes", 2, False, "summary.n_nodes"),
        ("summary.n_stage_hint", "N3", False, "summary.n_stage_hint"),
        ("summary.n_suspicious", -1, False, "summary.n_suspicious"),
        ("latencies.total", "fast", False, "latencies.total"),
    ],
)
def test_malformed_results_name_the_field(path, value, delete, field):
    with pytest.raises(ContractError) as e:
        validate_result(edited(RESULT, path, value, delete))
    assert e.value.field == field


def test_not_json_and_nan_literals_are_refused():
    with pytest.raises(ContractError, match="not valid JSON"):
        parse_label(b"{nodes: [")
    text = dumps(LABEL).replace("30.0", "NaN", 1)
    with pytest.raises(ContractError, match="NaN is not a number"):
        parse_label(text)
    with pytest.raises(ContractError, match="must be an object"):
        parse_label("[1, 2]")
    with pytest.raises(ValueError):
        dumps(edited(LABEL, "nodes[0].center[0]", float("nan")))


def test_instance_mask_to_label_on_an_oblique_anisotropic_grid(oblique_geometry):
    g = oblique_geometry
    mask = np.zeros(g.shape, dtype=np.int32)
    mask[5:9, 10:13, 3:5] = 1
    mask[20, 20, 8] = 4
    mask[30:33, 2:4, 0:2] = 2
    label = label_from_instance_mask(mask, g, "case_x", {1: "benign", 4: "metastatic"})
    assert [n.get("class") for n in label["nodes"]] == ["benign", None, "metastatic"]
    for value, node in zip((1, 2, 4), label["nodes"], strict=True):
        centre, size = np.asarray(node["center"]), np.asarray(node["size"])
        voxels = np.argwhere(mask == value)
        corners = (voxels[:, None, :] + np.array(list(itertools.product((-0.5, 0.5), repeat=3)))[None]).reshape(-1, 3)
        world = g.index_to_world(corners)
        # the box encloses every voxel of the node, tightly
        assert np.all(world >= centre - size / 2 - 2e-3) and np.all(world <= centre + size / 2 + 2e-3)
        np.testing.assert_allclose(world.min(0), centre - size / 2, atol=2e-3)
        np.testing.assert_allclose(world.max(0), centre + size / 2, atol=2e-3)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, len(SIGNED_PERMUTATIONS) - 1),
    st.tuples(*[st.floats(0.3, 6.0)] * 3),
    st.tuples(*[st.floats(-400.0, 400.0)] * 3),
    st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14), st.integers(0, 9), st.integers(1, 5)), min_size=1),
)
def test_label_to_voxel_boxes_and_back_is_exact_for_axis_aligned_images(perm, spacing, origin, blocks):
    g = ImageGeometry((20, 20, 12), spacing, origin, tuple(SIGNED_PERMUTATIONS[perm].ravel()))
    mask = np.zeros(g.shape, dtype=np.int32)
    for value, (i, j, k, w) in enumerate(blocks, start=1):
        mask[i : i + w, j : j + w, k : k + 2] = value
    present = instance_boxes(mask)
    label = label_from_instance_mask(mask, g, "c")
    boxes = label_to_index_boxes(label, g)
    expected = np.array([np.stack(present[v]) for v in sorted(present)])
    np.testing.assert_allclose(boxes, expected, atol=1e-3 / min(spacing))
    # and the label rebuilt from these voxel boxes is the same label
    from lnnode.contracts import index_box_to_node

    again = [index_box_to_node(lo, hi, g) for lo, hi in boxes]
    assert again == [{"center": n["center"], "size": n["size"]} for n in label["nodes"]]


@settings(max_examples=100, deadline=None)
@given(st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: np.linalg.norm(q) > 0.2))
def test_label_boxes_on_oblique_images_keep_centres(q):
    r = rotation_from_quaternion(q)
    g = ImageGeometry((16, 16, 8), (0.7, 0.9, 3.0), (10.0, -20.0, 5.0), tuple(r.ravel()))
    mask = np.zeros(g.shape, dtype=np.int32)
    mask[4:9, 3:6, 2:5] = 1
    (lo, hi) = instance_boxes(mask)[1]
    box = label_to_index_boxes(label_from_instance_mask(mask, g, "c"), g)[0]
    np.testing.assert_allclose((box[0] + box[1]) / 2, (lo + hi) / 2, atol=1e-2)
    assert np.all(box[0] <= lo + 1e-2) and np.all(box[1] >= hi - 1e-2)


def test_instance_mask_errors():
    g = ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0), tuple(np.eye(3).ravel()))
    with pytest.raises(ContractError, match="shape"):
        label_from_instance_mask(np.zeros((4, 4, 5), int), g, "c")
    mask = np.zeros((4, 4, 4), int)
    mask[1, 1, 1] = 1
    with pytest.raises(ContractError, match=r"instances \[2\]"):
        label_from_instance_mask(mask, g, "c", {2: "benign"})
    with pytest.raises(ContractError, match=r"classes\[1\]"):
        label_from_instance_mask(mask, g, "c", {1: "cancer"})
    with pytest.raises(ContractError, match="integers"):
        instance_boxes(np.full((2, 2, 2), 0.5))
    assert label_from_instance_mask(np.zeros((4, 4, 4), int), g, "c")["nodes"] == []


def test_boxes_outside_the_image_are_named(flipped_geometry):
    g = flipped_geometry
    lo, hi = g.world_bounds()
    inside = make_label("c", [{"center": list((lo + hi) / 2), "size": [5, 5, 5]}])
    check_label_in_image(inside, g)
    outside = make_label("c", [*inside["nodes"], {"center": list(hi + 10), "size": [5, 5, 5]}])
    with pytest.raises(ContractError) as e:
        check_label_in_image(outside, g)
    assert e.value.field == "nodes[1].center" and "outside the image" in str(e.value)


def test_documents_are_strict_json():
    text = dumps(LABEL)
    assert json.loads(text) == LABEL
    assert "NaN" not in text
