"""A reader's review of one case: the model's nodes, what the reader did to each, and the label it makes.

All boxes here are world LPS millimetres (the contracts' convention); the module converts to RAS
for Slicer's ROI nodes with :func:`box_lps_to_ras` / :func:`box_ras_to_lps`. A 2D case (ultrasound, a key
slice) is reviewed the same way: its boxes are one slice thick; a picture without a pixel spacing is measured
in pixels, and a model trained on another positive class (``positive_class``, e.g. malignant) is shown with
that class's name (the label still says ``metastatic`` for the positive class: the contract's word). Every change is one
step on an undo stack. The whole state round-trips through JSON (:meth:`ReviewSession.to_json`), so
the module can keep it in the scene and nothing is lost when the server is down.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .schema import BOX_TOLERANCE_MM, NODE_CLASSES, make_label, validate_result

__all__ = [
    "ReviewNode",
    "ReviewSession",
    "PENDING",
    "ACCEPTED",
    "REJECTED",
    "probability_color",
    "box_lps_to_ras",
    "box_ras_to_lps",
    "cell_text",
    "TABLE_COLUMNS",
    "TABLE_HEADERS",
]

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
# the node table's columns, left to right (keys of ReviewNode.row()), and their headers: what the reader
# decides on first (the panel is narrow: the rest scrolls)
TABLE_COLUMNS = ("id", "status", "class", "p_metastasis", "short_axis", "long_axis", "uncertainty",
                 "size_rule", "morphology_rule")  # fmt: skip
TABLE_HEADERS = ("node", "status", "class", "p(met)", "short mm", "long mm", "uncert.", "size rule", "morphology")
POSITIVE = "metastatic"  # the label contract's positive class


def box_lps_to_ras(center: Sequence[float], size: Sequence[float]) -> tuple[list[float], list[float]]:
    """An axis-aligned world box from LPS to RAS: the centre flips x and y, the size stays."""
    return [-float(center[0]), -float(center[1]), float(center[2])], [float(s) for s in size]


box_ras_to_lps = box_lps_to_ras  # the flip is its own inverse


def probability_color(p: float | None) -> tuple[float, float, float]:
    """Box colour for a metastasis probability: green (0) through yellow (0.5) to red (1); grey if unknown."""
    if p is None:
        return (0.6, 0.6, 0.6)
    p = min(max(float(p), 0.0), 1.0)
    return (min(1.0, 2.0 * p), min(1.0, 2.0 * (1.0 - p)), 0.0)


@dataclass
class ReviewNode:
    """One node under review: the model's proposal (or the reader's addition) and the reader's decision."""

    id: str
    center: list[float]
    size: list[float]
    origin: str = "model"  # "model" or "added"
    status: str = PENDING
    cls: str | None = None  # the class the label will carry; starts as the model's proposal
    p_metastasis: float | None = None
    uncertainty: float | None = None
    detection_score: float | None = None
    short_axis_mm: float | None = None
    long_axis_mm: float | None = None
    short_axis_px: float | None = None  # a 2D picture without a pixel spacing
    long_axis_px: float | None = None
    rules: dict[str, str] = field(default_factory=dict)
    model_center: list[float] | None = None
    model_size: list[float] | None = None
    model_cls: str | None = None

    @property
    def moved(self) -> bool:
        if self.origin != "model" or self.model_center is None or self.model_size is None:
            return False
        deltas = [abs(a - b) for a, b in zip(self.center, self.model_center)]
        deltas += [abs(a - b) for a, b in zip(self.size, self.model_size)]
        return max(deltas) > BOX_TOLERANCE_MM

    @property
    def relabelled(self) -> bool:
        return self.origin == "model" and self.model_cls is not None and self.cls != self.model_cls

    def row(self, positive: str = POSITIVE) -> dict[str, Any]:
        """What the module's table shows for this node (the positive class under the name ``positive``)."""
        in_mm = self.short_axis_px is None
        return {
            "id": self.id,
            "p_metastasis": self.p_metastasis,
            "uncertainty": self.uncertainty,
            "short_axis": self.short_axis_mm if in_mm else self.short_axis_px,
            "long_axis": self.long_axis_mm if in_mm else self.long_axis_px,
            "size_rule": self.rules.get("size_10mm"),
            "morphology_rule": self.rules.get("morphology"),
            "class": positive if self.cls == POSITIVE else self.cls,
            "status": self.status + (" (moved)" if self.moved else "") + (" (relabelled)" if self.relabelled else ""),
        }


def cell_text(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


class ReviewSession:
    """The review of one case, built from a pipeline result (validated here)."""

    def __init__(self, result: dict[str, Any], p_thresh: float = 0.5):
        self.result = validate_result(copy.deepcopy(result))
        self.image_id: str = self.result["image"]
        self.positive_class: str = self.result.get("positive_class", POSITIVE)
        self.in_pixels = any("short_axis_px" in n for n in self.result["nodes"])
        self.p_thresh = p_thresh
        self.nodes: list[ReviewNode] = []
        for n in self.result["nodes"]:
            p = n.get("p_metastasis")
            cls = None if p is None else ("metastatic" if p >= p_thresh else "benign")
            self.nodes.append(
                ReviewNode(
                    id=n["id"], center=list(n["center"]), size=list(n["size"]), cls=cls, p_metastasis=p,
                    uncertainty=n.get("uncertainty"), detection_score=n.get("detection_score"),
                    short_axis_mm=n.get("short_axis_mm"), long_axis_mm=n.get("long_axis_mm"),
                    short_axis_px=n.get("short_axis_px"), long_axis_px=n.get("long_axis_px"),
                    rules=dict(n.get("rules", {})), model_center=list(n["center"]), model_size=list(n["size"]),
                    model_cls=cls,
                )
            )  # fmt: skip
        self._undo: list[list[ReviewNode]] = []
        self._added = 0

    # -- lookups ------------------------------------------------------------------------------------
    def node(self, node_id: str) -> ReviewNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in this review")

    def rows(self) -> list[dict[str, Any]]:
        return [n.row(self.positive_class) for n in self.nodes]

    def headers(self) -> list[str]:
        """The table's headers for this case: the positive class's name, the axes' unit."""
        unit = "px" if self.in_pixels else "mm"
        named = {"p(met)": f"p({self.positive_class[:3]})", "short mm": f"short {unit}", "long mm": f"long {unit}"}
        return [named.get(h, h) for h in TABLE_HEADERS]

    def table(self) -> list[list[str]]:
        """The node table's cells as text, in ``TABLE_COLUMNS`` order."""
        return [[cell_text(row.get(key)) for key in TABLE_COLUMNS] for row in self.rows()]

    def summary_text(self) -> str:
        s = self.summary()
        return (
            f"{s['n_nodes']} nodes, {s['n_suspicious']} suspicious, {s['n_stage_hint']} (hint) | "
            f"accepted {s['accepted']}, rejected {s['rejected']}, pending {s['pending']}, added {s['added']}"
        )

    def summary(self) -> dict[str, Any]:
        """Counts for the case panel (the server's summary plus the review's progress)."""
        counts = {s: sum(n.status == s for n in self.nodes) for s in (PENDING, ACCEPTED, REJECTED)}
        return {**self.result["summary"], **counts, "added": sum(n.origin == "added" for n in self.nodes)}

    # -- edits (each one undoable) ------------------------------------------------------------------
    def _snapshot(self) -> None:
        self._undo.append(copy.deepcopy(self.nodes))

    def accept(self, node_id: str) -> None:
        self._snapshot()
        self.node(node_id).status = ACCEPTED

    def reject(self, node_id: str) -> None:
        """A false positive (an added node is simply removed: it was never the model's)."""
        self._snapshot()
        node = self.node(node_id)
        if node.origin == "added":
            self.nodes.remove(node)
        else:
            node.status = REJECTED

    def set_class(self, node_id: str, cls: str) -> None:
        if cls not in NODE_CLASSES:
            raise ValueError(f"class must be one of {NODE_CLASSES}, got {cls!r}")
        self._snapshot()
        node = self.node(node_id)
        node.cls = cls
        if node.status == PENDING:
            node.status = ACCEPTED  # relabelling a node is accepting it as a node

    def move(self, node_id: str, center: Sequence[float], size: Sequence[float]) -> None:
        """The box as the reader left it (LPS); sizes must be positive."""
        if len(center) != 3 or len(size) != 3 or min(size) <= 0:
            raise ValueError("a box needs a 3D centre and three positive sizes (mm)")
        self._snapshot()
        node = self.node(node_id)
        node.center, node.size = [float(c) for c in center], [float(s) for s in size]
        if node.status == PENDING:
            node.status = ACCEPTED

    def add(self, center: Sequence[float], size: Sequence[float], cls: str = "benign") -> str:
        """A node the model missed; returns its id (``a1``, ``a2``...)."""
        if cls not in NODE_CLASSES:
            raise ValueError(f"class must be one of {NODE_CLASSES}, got {cls!r}")
        if len(center) != 3 or len(size) != 3 or min(size) <= 0:
            raise ValueError("a box needs a 3D centre and three positive sizes (mm)")
        self._snapshot()
        self._added += 1
        node_id = f"a{self._added}"
        self.nodes.append(ReviewNode(node_id, [float(c) for c in center], [float(s) for s in size], origin="added",
                                     status=ACCEPTED, cls=cls))  # fmt: skip
        return node_id

    def accept_all_pending(self) -> None:
        self._snapshot()
        for n in self.nodes:
            if n.status == PENDING:
                n.status = ACCEPTED

    def undo(self) -> bool:
        """Undo the last edit; False when there is nothing to undo."""
        if not self._undo:
            return False
        self.nodes = self._undo.pop()
        return True

    # -- the label ----------------------------------------------------------------------------------
    def to_label(self, reviewer: str | None = None, include_pending: bool = False) -> dict[str, Any]:
        """The label contract for what the reader decided (validated). Pending nodes are left out
        unless ``include_pending`` (then they count as accepted); a node needs a class to be kept."""
        nodes, rejected = [], []
        for n in self.nodes:
            if n.status == REJECTED:
                rejected.append({"center": n.center, "size": n.size, "from_node": n.id})
                continue
            if n.status == PENDING and not include_pending:
                continue
            if n.cls is None:
                raise ValueError(f"node {n.id} has no class: mark it {self.positive_class} or benign before submitting")
            entry: dict[str, Any] = {"center": n.center, "size": n.size, "class": n.cls, "origin": n.origin}
            if n.origin == "model":
                entry["from_node"] = n.id
                entry["edited"] = n.moved or n.relabelled
            nodes.append(entry)
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return make_label(self.image_id, nodes, rejected, reviewer=reviewer or None, reviewed_at=when)

    # -- persistence ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"result": self.result, "p_thresh": self.p_thresh, "added": self._added,
                           "nodes": [asdict(n) for n in self.nodes]})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> ReviewSession:
        doc = json.loads(text)
        session = cls(doc["result"], doc.get("p_thresh", 0.5))
        session.nodes = [ReviewNode(**n) for n in doc["nodes"]]
        session._added = int(doc.get("added", 0))
        return session
