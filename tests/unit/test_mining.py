"""Hard-negative mining: a real detector's false positives on phantoms become rejected boxes, never a node."""

from __future__ import annotations

import json
import shutil

import numpy as np

from lnnode import contracts
from lnnode.cli import main
from lnnode.io.image import read_image
from lnnode.metrics.detection import box_iou, center_hits
from lnnode.mining import CERTAIN_HU, mine_hard_negatives
from lnnode.phantoms import synthesize
from lnnode.phantoms.realct import read_background

from ..conftest import APP_DIR, REAL_DATA, requires_real_data

DETECTOR = APP_DIR / "model" / "demo" / "lymph_node_detection.pt"
LOW = 0.05  # the demo detector fires well below its fitted threshold: false positives to mine on a tiny phantom


def _labels(studies):
    return {p.stem: json.loads(p.read_text()) for p in sorted((studies / "labels" / "final").glob("*.json"))}


def test_mined_boxes_are_rejected_false_positives_and_mining_again_adds_none(tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=3, shape=(96, 96, 32), spacing=(1.5, 1.2, 3.0), direction="oblique")
    # an image lnnode synth did not make (a reader's label): left alone
    shutil.copy(studies / "ct_000.nii.gz", studies / "reader_case.nii.gz")
    shutil.copy(studies / "labels" / "final" / "ct_000.json", studies / "labels" / "final" / "reader_case.json")
    before = _labels(studies)

    report = mine_hard_negatives(studies, DETECTOR, max_per_case=50, score_thresh=LOW)
    assert report.total > 0 and set(report.added) == {"ct_000"}
    assert "reader" in report.skipped["reader_case"]
    after = _labels(studies)
    assert after["reader_case"] == before["reader_case"]
    for case in ("ct_000",):
        label = contracts.validate_label(after[case])
        assert label["nodes"] == before[case]["nodes"], "the nodes are untouched"
        mined = label["rejected"][len(before[case].get("rejected", [])) :]
        assert len(mined) == report.added[case]
        if mined:
            assert box_iou(mined, label["nodes"]).max(initial=0) < 0.1
            assert not center_hits(mined, label["nodes"]).any()

    again = mine_hard_negatives(studies, DETECTOR, max_per_case=50, score_thresh=LOW)
    assert again.total == 0 and _labels(studies) == after


@requires_real_data
def test_on_a_real_background_only_boxes_in_an_organ_mask_or_certain_tissue_are_mined(tmp_path, capsys):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=4, background="real", backgrounds=("example_ct_sm",), hard_negatives=0)
    code = main(["mine-negatives", "--studies", str(studies), "--model", str(DETECTOR), "--score-thresh", str(LOW),
                 "--max-per-case", "40", "--real-data", str(REAL_DATA)])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    case_id = next(iter(report["added"]))
    mined = _labels(studies)[case_id].get("rejected", [])
    assert len(mined) == report["total"] > 0
    image, geometry = read_image(studies / f"{case_id}.nii.gz")
    _, organ_geometry, organs = read_background(REAL_DATA, "example_ct_sm")
    for box in mined:
        idx = tuple(np.round(geometry.world_to_index(box["center"])).astype(int))
        organ_idx = tuple(np.round(organ_geometry.world_to_index(box["center"])).astype(int))
        assert organs[organ_idx] > 0 or not CERTAIN_HU[0] <= image[idx] <= CERTAIN_HU[1], box
