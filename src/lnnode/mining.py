"""Hard negatives mined where a detector fires: its false positives on phantoms, added to their labels' ``rejected``.

The detector trainer already centres patches on a label's rejected boxes (a reader's rejected false positives), so
a mined box becomes training signal the same way. Only boxes that are *certainly* not a node are mined:

* on a synthetic phantom (``lnnode synth``, background ``synthetic``) every inserted node is labelled, so a box
  that overlaps no labelled node (IoU < 0.1, centre outside every node box) is a false positive;
* on a real CT background the scan's own lymph nodes are not labelled, so such a box counts only when its centre
  lies in one of the background's organ or vessel masks (TotalSegmentator map), or in air, lung or fat darker than
  -500 HU, or in bone or contrast brighter than 300 HU;
* images ``lnnode synth`` did not make (a reader's data) are left alone: the reader's rejected list is theirs.

Labels are rewritten whole (temporary file, then rename); a box within 5 mm of one already rejected is not added
twice, so mining again with the same detector adds only what the last run's cap left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lnnode.contracts import DETECTION, dumps, validate_label
from lnnode.geometry import ImageGeometry
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import read_image
from lnnode.metrics.detection import box_iou, center_hits

__all__ = ["MiningReport", "mine_hard_negatives", "CERTAIN_HU"]

CERTAIN_HU = (-500.0, 300.0)  # a box centred below / above these is no node: air, lung, fat / bone, contrast
MATCH_IOU = 0.1  # the evaluation's hit criterion: a box this close to a labelled node may be that node
DUPLICATE_MM = 5.0


@dataclass
class MiningReport:
    """What one mining run did: boxes added per case, and the cases left alone with the reason."""

    detector: str
    added: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.added.values())

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "total": self.total, "added": self.added, "skipped": self.skipped}


def _phantom_cases(studies: Path) -> dict[str, dict[str, Any]]:
    manifest = studies / "synth_manifest.json"
    if not manifest.exists():
        return {}
    return {case["id"]: case for case in json.loads(manifest.read_text()).get("cases", [])}


def _inside(center: np.ndarray, geometry: ImageGeometry, volume: np.ndarray) -> Any:
    """The voxel of ``volume`` (on ``geometry``) at a world point, or None outside it."""
    idx = np.round(geometry.world_to_index(center)).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.array(volume.shape)):
        return None
    return volume[tuple(idx)]


class _Certainty:
    """Says whether a false-positive box on a case is certainly not a node (see the module docstring)."""

    def __init__(self, real_data: Path | None):
        self.real_data = real_data
        self._organs: dict[str, tuple[ImageGeometry, np.ndarray | None]] = {}

    def organs(self, background: str) -> tuple[ImageGeometry, np.ndarray | None]:
        if background not in self._organs:
            from lnnode.phantoms import default_real_data_dir
            from lnnode.phantoms.realct import read_background

            _, geometry, labels = read_background(self.real_data or default_real_data_dir(), background)
            self._organs[background] = (geometry, labels)
        return self._organs[background]

    def __call__(self, box: dict[str, Any], case: dict[str, Any], image: np.ndarray, geometry: ImageGeometry) -> bool:
        if case.get("background") == "synthetic":
            return True
        center = np.asarray(box["center"], float)
        hu = _inside(center, geometry, image)
        if hu is not None and not CERTAIN_HU[0] <= hu <= CERTAIN_HU[1]:
            return True
        organ_geometry, labels = self.organs(str(case["background"]).removeprefix("real:"))
        return labels is not None and bool(_inside(center, organ_geometry, labels))


def mine_hard_negatives(
    studies: str | os.PathLike,
    detector: str | os.PathLike,
    label_tag: str = "final",
    max_per_case: int = 8,
    score_thresh: float | None = None,
    real_data: str | os.PathLike | None = None,
    device: str = "cpu",
) -> MiningReport:
    """Run ``detector`` on every phantom of ``studies`` with a ``label_tag`` label and add up to ``max_per_case``
    of its certain false positives (highest score first) to the label's ``rejected`` list."""
    from lnnode.appdir import app_module

    task = app_module("infers").NodeDetection(DETECTION, [str(detector)], config={"device": device})
    studies = Path(studies)
    certain = _Certainty(Path(real_data) if real_data else None)
    report = MiningReport(detector=str(detector))
    cases = _phantom_cases(studies)
    for label_path in sorted((studies / "labels" / label_tag).glob("*.json")):
        case_id = label_path.name.removesuffix(".json")
        case = cases.get(case_id)
        if case is None:
            report.skipped[case_id] = "not a phantom of lnnode synth: its label is the reader's"
            continue
        label = validate_label(json.loads(label_path.read_text()))
        image_path = studies / case["image"]
        request = {"image": str(image_path), "image_id": case_id, "device": device}
        if score_thresh is not None:
            request["score_thresh"] = float(score_thresh)
        image, geometry = read_image(image_path)  # once: the detector reads it as loaded
        result = task.result_for(request, image[None], geometry)
        mined = _false_positives(result["nodes"], label, partial(certain, case=case, image=image, geometry=geometry))
        mined = mined[:max_per_case]
        if mined:
            label["rejected"] = [*label.get("rejected", []), *mined]
            atomic_write_text(label_path, dumps(validate_label(label)))
        report.added[case_id] = len(mined)
    return report


def _false_positives(boxes: list[dict[str, Any]], label: dict[str, Any], certain) -> list[dict[str, Any]]:
    """The detector's boxes (highest score first) that match no labelled node, are no rejected box already and
    are certainly not a node, in the label contract's rejected form."""
    nodes, rejected = label["nodes"], list(label.get("rejected", []))
    out: list[dict[str, Any]] = []
    for box in sorted(boxes, key=lambda b: -float(b.get("detection_score", 0.0))):
        center = np.asarray(box["center"], float)
        if nodes and (box_iou([box], nodes).max() >= MATCH_IOU or center_hits([box], nodes).any()):
            continue
        known = [np.asarray(r["center"], float) for r in [*rejected, *out]]
        if any(np.linalg.norm(center - k) < DUPLICATE_MM for k in known):
            continue
        if certain(box):
            out.append({"center": [round(float(c), 2) for c in box["center"]],
                        "size": [round(float(s), 2) for s in box["size"]]})  # fmt: skip
    return out
