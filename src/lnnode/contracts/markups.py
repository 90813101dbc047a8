"""3D Slicer markups JSON for node boxes, so the stock MONAI Label Slicer plugin shows them too.

One ROI markup per node, in LPS millimetres (Slicer converts to its RAS scene), axis-aligned in
world space, coloured from green (benign) to red (metastatic) by ``p_metastasis`` and yellow when
only detected. Pure Python on purpose (the Slicer module may reuse it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MARKUPS_SCHEMA", "node_color", "node_description", "markups_from_nodes"]

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
