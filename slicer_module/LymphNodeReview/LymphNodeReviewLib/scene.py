"""A review in an MRML scene: one ROI node per node, and the reader's edits read back from the scene.

Takes the scene as an argument and never imports ``slicer``: in Slicer it gets ``slicer.mrmlScene``;
in tests a ``vtkMRMLScene`` from PyPI's ``slicer-core``. ROI nodes are axis-aligned boxes in RAS
(Slicer's world); the review is LPS, so every box goes through :func:`box_lps_to_ras`.
"""

from __future__ import annotations

from typing import Any

from .review import REJECTED, ReviewSession, box_lps_to_ras, box_ras_to_lps, probability_color

__all__ = ["ROI_CLASS", "NODE_ID_ATTRIBUTE", "show_review", "read_review", "review_rois", "clear_rois"]

ROI_CLASS = "vtkMRMLMarkupsROINode"
NODE_ID_ATTRIBUTE = "LymphNodeReview.nodeId"
ADDED_PREFIX = "LN new"  # name of a box the reader placed with Slicer's own ROI tool: "LN new..."
CHANGE_TOLERANCE_MM = 1e-3


def _world_box(roi: Any) -> tuple[list[float], list[float]]:
    """An ROI's world (RAS) axis-aligned box as centre and size: right for a rotated ROI or one under a
    transform too (its enclosing box), where the ROI's own centre and size are in its own frame."""
    b = [0.0] * 6
    roi.GetRASBounds(b)
    return [(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2], [b[1] - b[0], b[3] - b[2], b[5] - b[4]]


def _rois(scene: Any) -> list:
    nodes = scene.GetNodesByClass(ROI_CLASS)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def review_rois(scene: Any) -> dict:
    """The review's ROI nodes by node id."""
    return {roi.GetAttribute(NODE_ID_ATTRIBUTE): roi for roi in _rois(scene) if roi.GetAttribute(NODE_ID_ATTRIBUTE)}


def clear_rois(scene: Any) -> None:
    for roi in review_rois(scene).values():
        scene.RemoveNode(roi)


def show_review(scene: Any, session: ReviewSession) -> dict:
    """Replace the review's ROI nodes by one per node (rejected ones hidden); returns them by node id."""
    clear_rois(scene)
    rois = {}
    for node in session.nodes:
        roi = scene.AddNewNodeByClass(ROI_CLASS, f"LN {node.id}")
        roi.SetAttribute(NODE_ID_ATTRIBUTE, node.id)
        center, size = box_lps_to_ras(node.center, node.size)
        roi.SetCenter(center)
        roi.SetSize(size)
        roi.CreateDefaultDisplayNodes()
        display = roi.GetDisplayNode()
        if display is not None:
            color = probability_color(node.p_metastasis)
            display.SetSelectedColor(*color)
            display.SetColor(*color)
            display.SetVisibility(node.status != REJECTED)
        rois[node.id] = roi
    return rois


def read_review(scene: Any, session: ReviewSession, added_class: str = "benign") -> list:
    """Bring the scene's edits into the review; returns the ids of the nodes that changed.

    A box moved or resized with the ROI handles becomes a move; a review box the reader deleted
    becomes a rejection; an ROI the reader placed and named ``LN new...`` becomes an added node
    (``added_class``), tagged so it is read once."""
    changed = []
    rois = review_rois(scene)
    for node in list(session.nodes):
        roi = rois.get(node.id)
        if roi is None:
            if node.status != REJECTED:
                session.reject(node.id)
                changed.append(node.id)
            continue
        lps_center, lps_size = box_ras_to_lps(*_world_box(roi))
        deltas = [abs(a - b) for a, b in zip(lps_center + lps_size, node.center + node.size)]
        if max(deltas) > CHANGE_TOLERANCE_MM:
            session.move(node.id, lps_center, lps_size)
            changed.append(node.id)
    for roi in _rois(scene):
        if roi.GetAttribute(NODE_ID_ATTRIBUTE) or not (roi.GetName() or "").startswith(ADDED_PREFIX):
            continue
        lps_center, lps_size = box_ras_to_lps(*_world_box(roi))
        node_id = session.add(lps_center, lps_size, added_class)
        roi.SetAttribute(NODE_ID_ATTRIBUTE, node_id)
        changed.append(node_id)
    return changed
