"""3D Slicer markups JSON for node boxes: written with every result, so the stock MONAI Label Slicer plugin
shows the boxes too, and read back when that plugin saves the reader's boxes as a label.

Written: one ROI markup per node, in LPS millimetres (Slicer converts to its RAS scene), axis-aligned in
world space, coloured from green (benign) to red (metastatic) by ``p_metastasis`` and yellow when
only detected. Read: :func:`label_from_markups` turns the ROIs (LPS or RAS, any orientation) into a
label, compared with the model's result for the case. Pure Python + numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .schema import BOX_TOLERANCE_MM, NODE_CLASSES, ContractError, make_label

__all__ = [
    "MARKUPS_SCHEMA",
    "node_color",
    "node_description",
    "markups_from_nodes",
    "is_markups",
    "boxes_from_markups",
    "label_from_markups",
    "MATCH_IOU",
]

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def node_color(node: Mapping[str, Any]) -> list[float]:
    """RGB in [0, 1]: yellow without a probability, else green (0) to red (1) through amber."""
    p = node.get("p_metastasis")
    if p is None:
        return [1.0, 0.85, 0.0]
    p = min(max(float(p), 0.0), 1.0)
    return [round(min(1.0, 2.0 * p), 3), round(min(1.0, 2.0 * (1.0 - p)), 3), 0.0]


def node_description(node: Mapping[str, Any]) -> str:
    """A one-line summary a radiologist can read in Slicer's markups list."""
    parts = []
    if "p_metastasis" in node:
        parts.append(f"p(metastasis) {node['p_metastasis']:.2f}")
    if "detection_score" in node:
        parts.append(f"score {node['detection_score']:.2f}")
    if "short_axis_mm" in node:
        parts.append(f"short axis {node['short_axis_mm']:.1f} mm")
    for rule, value in node.get("rules", {}).items():
        parts.append(f"{rule}: {value}")
    return "; ".join(parts)


def markups_from_nodes(nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The markups JSON document (one ROI per node) for result ``nodes`` (center/size in LPS mm)."""
    markups = []
    for node in nodes:
        name = str(node.get("id", f"n{len(markups) + 1}"))
        markups.append(
            {
                "type": "ROI",
                "name": name,
                "description": node_description(node),
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "roiType": "Box",
                "center": [float(v) for v in node["center"]],
                "orientation": _IDENTITY,
                "size": [float(v) for v in node["size"]],
                "insideOut": False,
                "controlPoints": [
                    {
                        "id": "1",
                        "label": name,
                        "position": [float(v) for v in node["center"]],
                        "orientation": _IDENTITY,
                        "selected": True,
                        "locked": False,
                        "visibility": True,
                        "positionStatus": "defined",
                    }
                ],
                "display": {"color": node_color(node), "selectedColor": node_color(node), "opacity": 1.0},
            }
        )
    return {"@schema": MARKUPS_SCHEMA, "markups": markups}


# -- reading the reader's boxes back --------------------------------------------------------------------
#: a box the reader kept is matched to the model's box it overlaps most, from this 3D IoU on (a moved box;
#: the hit criterion of the detection figures)
MATCH_IOU = 0.1
_ROI_TYPES = ("Box", "BoundingBox")


def is_markups(doc: Any) -> bool:
    """A Slicer markups document (what Slicer and the stock MONAI Label plugin save), not a label."""
    return isinstance(doc, dict) and "markups-schema" in str(doc.get("@schema", "")) and "markups" in doc


def _numbers(x: Any, n: int, path: str, positive: bool = False) -> np.ndarray:
    ok = isinstance(x, list) and len(x) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
    if not ok or not all(math.isfinite(v) for v in x):
        raise ContractError(path, f"must be {n} finite numbers, got {x!r}")
    if positive and min(x) <= 0:
        raise ContractError(path, f"must be > 0, got {x!r}")
    return np.asarray(x, dtype=float)


def _roi_name(roi: Mapping[str, Any]) -> str:
    points = roi.get("controlPoints") or []
    label = points[0].get("label") if points and isinstance(points[0], dict) else None
    return str(roi.get("name") or label or "")


def _roi_box(roi: Mapping[str, Any], path: str) -> dict[str, Any]:
    """One ROI as a world-axis-aligned LPS box (a rotated ROI: the box enclosing it) with its name."""
    system = roi.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise ContractError(f"{path}.coordinateSystem", f"must be LPS or RAS, got {system!r}")
    if roi.get("coordinateUnits", "mm") != "mm":
        raise ContractError(f"{path}.coordinateUnits", f"must be mm, got {roi.get('coordinateUnits')!r}")
    if roi.get("roiType", "Box") not in _ROI_TYPES or roi.get("insideOut", False):
        raise ContractError(f"{path}.roiType", "must be a box (Box or BoundingBox, not inside out)")
    center = _numbers(roi.get("center"), 3, f"{path}.center")
    size = _numbers(roi.get("size"), 3, f"{path}.size", positive=True)
    rotation = _numbers(roi.get("orientation", list(_IDENTITY)), 9, f"{path}.orientation").reshape(3, 3)
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-3):
        raise ContractError(f"{path}.orientation", "must be a rotation (orthonormal columns)")
    if system == "RAS":
        center = center * np.array([-1.0, -1.0, 1.0])  # the flip leaves the enclosing box's size as it is
    box = {
        "center": [round(float(v), 3) for v in center],
        "size": [round(float(v), 3) for v in np.abs(rotation) @ size],
    }
    return {**box, "name": _roi_name(roi)}


def boxes_from_markups(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ROI boxes of a markups document in world LPS mm, each with its ``name`` (other markups types,
    points and lines, are not boxes and are left out); ContractError naming the broken field."""
    markups = doc.get("markups")
    if not isinstance(markups, list):
        raise ContractError("markups", f"must be a list, got {type(markups).__name__}")
    boxes = []
    for i, roi in enumerate(markups):
        if not isinstance(roi, dict):
            raise ContractError(f"markups[{i}]", f"must be an object, got {type(roi).__name__}")
        if roi.get("type") == "ROI":
            boxes.append(_roi_box(roi, f"markups[{i}]"))
    return boxes


def _iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    lo = np.maximum(
        np.subtract(a["center"], np.divide(a["size"], 2)), np.subtract(b["center"], np.divide(b["size"], 2))
    )
    hi = np.minimum(np.add(a["center"], np.divide(a["size"], 2)), np.add(b["center"], np.divide(b["size"], 2)))
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    union = float(np.prod(a["size"]) + np.prod(b["size"])) - inter
    return inter / union if union > 0 else 0.0


def _class_in(name: str) -> str | None:
    words = set(re.findall(r"[a-z]+", name.lower()))
    found = [c for c in NODE_CLASSES if c in words]
    return found[0] if len(found) == 1 else None


def _match(boxes: list[dict[str, Any]], model_nodes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Box index -> the model node it is: by the node id as the ROI's name, else by the largest overlap."""
    by_id = {str(n["id"]): n for n in model_nodes if "id" in n}
    matched: dict[int, dict[str, Any]] = {}
    for i, box in enumerate(boxes):
        # Slicer labels a box's point "<node name>-1" (its label format "%N-%d")
        node = by_id.get(re.split(r"[\s-]", box["name"])[0] if box["name"] else "")
        if node is not None and all(m is not node for m in matched.values()):
            matched[i] = node
    pairs = sorted(
        (
            (_iou(box, node), i, k)
            for i, box in enumerate(boxes)
            if i not in matched
            for k, node in enumerate(model_nodes)
        ),
        reverse=True,
    )
    for iou, i, k in pairs:
        node = model_nodes[k]
        if iou < MATCH_IOU:
            break
        if i not in matched and all(m is not node for m in matched.values()):
            matched[i] = node
    return matched


def _moved(box: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    diff = np.abs(np.subtract(box["center"], node["center"])).max()
    return bool(max(diff, np.abs(np.subtract(box["size"], node["size"])).max()) > BOX_TOLERANCE_MM)


def label_from_markups(doc: Mapping[str, Any], image: str, original: Mapping[str, Any] | None = None) -> dict:
    """A label (``lnnode.label/1``) from the reader's ROI boxes, compared with the model's ``original`` result.

    A box matched to a model node (named by its id, as the result's markups name them, or overlapping it by
    IoU >= MATCH_IOU) keeps ``from_node`` and ``origin: model``, with ``edited`` when moved or resized; other
    boxes are ``added``; model nodes no box matches are ``rejected`` (the reader deleted them). A class
    is set only when a box's name says ``benign`` or ``metastatic``. Without an original every box is a node.
    """
    boxes = boxes_from_markups(doc)
    model_nodes = list((original or {}).get("nodes", []))
    matched = _match(boxes, model_nodes)
    nodes = []
    for i, box in enumerate(boxes):
        node: dict[str, Any] = {"center": box["center"], "size": box["size"]}
        cls = _class_in(box["name"])
        if cls:
            node["class"] = cls
        if i in matched:
            node.update(origin="model", from_node=str(matched[i]["id"]))
            if _moved(box, matched[i]):
                node["edited"] = True
        elif original is not None:
            node["origin"] = "added"
        nodes.append(node)
    kept = {id(n) for n in matched.values()}
    rejected = [
        {"center": list(n["center"]), "size": list(n["size"]), "from_node": str(n["id"])}
        for n in model_nodes
        if id(n) not in kept
    ]
    return make_label(image, nodes, rejected)
