"""Training entry points outside the server (CLI, benchmarks, demo weights).

They run the very train task the server's ``/train/`` runs, on a studies folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from monai.utils import set_determinism

from .checkpoint import load_checkpoint, save_checkpoint
from .datastore import LnnodeDatastore
from .networks.detector import DetectorSpec
from .trainers.detection import NodeDetectionTrainer

logger = logging.getLogger(__name__)

__all__ = ["DETECTION", "DEMO_SYNTH", "train_detector", "make_demo_weights"]

DETECTION = "lymph_node_detection"
APP_DIR = Path(__file__).resolve().parents[1]

# the demo detector's training phantoms: synthetic CT at 1 x 1 x 2 mm on a flipped (RAS-like) grid, and
# nodes (half of them real ULS23 shapes) inserted into the real TotalSegmentator CTs
DEMO_SYNTH: dict[str, Any] = {"modality": "ct", "seed": 7, "shape": (192, 192, 64), "spacing": (1.0, 1.0, 2.0)}
DEMO_REAL: dict[str, Any] = {"modality": "ct", "seed": 8, "background": "real", "prefix": "realct_"}
DEMO_REAL_SHARE = 0.25


def train_detector(
    studies: str | os.PathLike,
    model_dir: str | os.PathLike,
    label_tag: str = "final",
    epochs: int = 50,
    init: str = "current",
    val_split: float = 0.2,
    learning_rate: float = 1e-3,
    patches_per_image: int = 4,
    device: str = "cpu",
    modality: str = "ct",
    spec: dict[str, Any] | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the detector on ``studies`` and publish to ``model_dir``; returns the train stats."""
    set_determinism(seed)
    model_path = Path(model_dir) / f"{DETECTION}.pt"
    demo = APP_DIR / "model" / "demo" / f"{DETECTION}.pt"
    trainer = NodeDetectionTrainer(
        DETECTION,
        model_dir=str(model_dir),
        publish_path=str(model_path),
        served_paths=[str(demo), str(model_path)],
        spec=DetectorSpec.from_dict({**DetectorSpec().to_dict(), **(spec or {})}),
        modality=modality,
    )
    request = {
        "max_epochs": epochs,
        "label_tag": label_tag,
        "init": init,
        "val_split": val_split,
        "learning_rate": learning_rate,
        "patches_per_image": patches_per_image,
        "device": device,
        **(extra or {}),
    }
    try:
        return trainer(request, LnnodeDatastore(str(studies)))
    finally:
        set_determinism(None)


def make_demo_weights(
    work: str | os.PathLike, out: str | os.PathLike, cases: int = 32, epochs: int = 60, device: str = "cpu"
) -> tuple[Path, dict[str, Any]]:
    """Regenerate the shipped demo detector: phantoms with fixed seeds, training from scratch."""
    from .phantoms import synthesize

    work = Path(work)
    studies = work / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    n_real = int(round(cases * DEMO_REAL_SHARE))
    synthesize(studies, cases - n_real, **DEMO_SYNTH)
    if n_real:
        synthesize(studies, n_real, **DEMO_REAL)
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    stats = train_detector(studies, model_dir, epochs=epochs, init="scratch", val_split=0.2, device=device, seed=0)
    if stats.get("status") != "published":
        raise RuntimeError(f"demo training did not publish a model: {stats.get('reason')}")
    checkpoint = load_checkpoint(model_dir / f"{DETECTION}.pt", task="detection")
    checkpoint.meta["training"]["demo"] = {
        "command": f"lnnode demo-weights --cases {cases} --epochs {epochs}",
        "data": (
            f"phantoms, not clinical data: {cases - n_real} synthetic CT ({DEMO_SYNTH}) and {n_real} real "
            f"TotalSegmentator CT backgrounds with inserted nodes ({DEMO_REAL})"
        ),
        "validation": {"val_cpm": stats.get("best_metric"), "epoch": stats.get("best_metric_epoch")},
    }
    target = save_checkpoint(Path(out) / f"{DETECTION}.pt", "detection", checkpoint.state_dict, checkpoint.meta)
    return target, stats
