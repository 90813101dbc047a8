"""Training entry points outside the server (CLI, benchmarks, demo weights).

They run the very train tasks the server's ``/train/`` runs, on a studies folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from monai.utils import set_determinism

from lnnode.appdir import DEMO_MODEL_DIR, app_module
from lnnode.contracts import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D
from lnnode.io.atomic import atomic_write_text
from lnnode.io.checkpoint import load_checkpoint, save_checkpoint
from lnnode.networks.classifier import ClassifierSpec
from lnnode.networks.detector import DetectorSpec

logger = logging.getLogger(__name__)

__all__ = ["DEMO_RECIPES", "train_model", "train_detector", "train_classifier", "make_demo_weights"]

# model -> (the app's train task, default spec, checkpoint task, key metric, 2D)
_MODELS = {
    DETECTION: ("NodeDetectionTrainer", DetectorSpec, "detection", "val_cpm", False),
    CLASSIFICATION: ("NodeClassificationTrainer", ClassifierSpec, "classification", "val_auc", False),
    DETECTION_2D: ("NodeDetectionTrainer", DetectorSpec.planar, "detection", "val_cpm", True),
    CLASSIFICATION_2D: ("NodeClassificationTrainer", ClassifierSpec.planar, "classification", "val_auc", True),
}

# the demo models' training phantoms, per model: (share of the cases, synthesize() options). Synthetic CT at
# 1 x 1 x 2 mm on a flipped (RAS-like) grid, and nodes (half of them real ULS23 shapes) inserted into the real
# CTs of five patients (with hard negatives where a CT has a label map); the classifier also learns from
# size-matched nodes, where only roundness, border, texture, necrosis and hilum tell the classes apart
_SYNTH: dict[str, Any] = {"modality": "ct", "shape": (192, 192, 64), "spacing": (1.0, 1.0, 2.0)}
_REAL: dict[str, Any] = {"modality": "ct", "background": "real"}
_SYNTH_SMALL = {**_SYNTH, "shape": (160, 160, 48)}  # the classifier sees node crops only: smaller volumes
DEMO_RECIPES: dict[str, list[tuple[float, dict[str, Any]]]] = {
    DETECTION: [(0.5, {**_SYNTH, "seed": 7}), (0.5, {**_REAL, "seed": 8, "prefix": "realct_"})],
    CLASSIFICATION: [
        (0.25, {**_SYNTH_SMALL, "seed": 17}),
        (0.25, {**_SYNTH_SMALL, "seed": 19, "size_matched": True, "prefix": "ctsm_"}),
        (0.25, {**_REAL, "seed": 18, "prefix": "realct_"}),
        (0.25, {**_REAL, "seed": 20, "size_matched": True, "prefix": "realctsm_"}),
    ],
}
DEMO_DEFAULTS = {
    DETECTION: {"cases": 32, "epochs": 60},
    CLASSIFICATION: {"cases": 160, "epochs": 25},
    DETECTION_2D: {"epochs": 40},
    CLASSIFICATION_2D: {"epochs": 40},
}
# the 2D demo models learn from real ultrasound: all of BUSI (breast lesions, a proxy for nodes)
DEMO_2D_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "busi"
DEMO_2D_POSITIVE = "malignant"


def train_model(
    model: str,
    studies: str | os.PathLike,
    model_dir: str | os.PathLike,
    label_tag: str = "final",
    epochs: int = 50,
    init: str = "current",
    val_split: float = 0.2,
    learning_rate: float = 1e-3,
    device: str = "cpu",
    modality: str | None = None,
    spec: dict[str, Any] | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``studies`` and publish to ``model_dir``; returns the train stats. ``modality``: of a new
    model (default ``ct``; ``us`` for the 2D models)."""
    if model not in _MODELS:
        raise ValueError(f"unknown model {model!r}; trainable: {', '.join(_MODELS)}")
    trainer_name, default_spec, _, _, planar = _MODELS[model]
    trainer_cls = getattr(app_module("trainers"), trainer_name)
    base = default_spec()
    set_determinism(seed)
    model_path = Path(model_dir) / f"{model}.pt"
    demo = DEMO_MODEL_DIR / f"{model}.pt"
    trainer = trainer_cls(
        model,
        model_dir=str(model_dir),
        publish_path=str(model_path),
        served_paths=[str(demo), str(model_path)],
        spec=type(base).from_dict({**base.to_dict(), **(spec or {})}),
        modality=modality or ("us" if planar else "ct"),
        planar=planar,
    )
    request = {
        "max_epochs": epochs,
        "label_tag": label_tag,
        "init": init,
        "val_split": val_split,
        "learning_rate": learning_rate,
        "device": device,
        "seed": seed,
        **(extra or {}),
    }
    try:
        return trainer(request, app_module("datastore").LnnodeDatastore(str(studies)))
    finally:
        set_determinism(None)


def train_detector(
    studies: str | os.PathLike, model_dir: str | os.PathLike, patches_per_image: int = 4, **kwargs: Any
) -> dict[str, Any]:
    """:func:`train_model` for the detector (``patches_per_image`` patches per image and step)."""
    extra = {"patches_per_image": patches_per_image, **(kwargs.pop("extra", None) or {})}
    return train_model(DETECTION, studies, model_dir, extra=extra, **kwargs)


def train_classifier(studies: str | os.PathLike, model_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """:func:`train_model` for the metastasis classifier."""
    return train_model(CLASSIFICATION, studies, model_dir, **kwargs)


def make_demo_weights(
    work: str | os.PathLike,
    out: str | os.PathLike,
    cases: int | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    model: str = DETECTION,
    data: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Regenerate a shipped demo model: phantoms with fixed seeds, training from scratch (the 2D models: all of
    the BUSI folder ``data``)."""
    from lnnode.phantoms import synthesize

    if _MODELS[model][4]:
        return _make_planar_demo_weights(Path(work) / model, out, epochs, device, model, data)
    cases = cases or DEMO_DEFAULTS[model]["cases"]
    epochs = epochs or DEMO_DEFAULTS[model]["epochs"]
    work = Path(work) / model
    plan = [(max(1, int(round(cases * share))), options) for share, options in DEMO_RECIPES[model]]
    parts = [f"{n} x {options}" for n, options in plan]
    studies = _demo_phantoms(work / "studies", plan, synthesize)
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    stats = train_model(
        model, studies, model_dir, epochs=epochs, init="scratch", val_split=0.2, device=device,
        extra={"publish": "always"},  # a regenerated demo model replaces the shipped one whatever it scores
    )  # fmt: skip
    command = f"lnnode demo-weights --model {model} --cases {cases} --epochs {epochs}"
    data = (
        "phantoms, not clinical data: synthetic CT and nodes inserted into five patients' real CT backgrounds "
        f"({'; '.join(parts)})"
    )
    return _ship_demo(model, model_dir, out, stats, command, data), stats


def _demo_phantoms(studies: Path, plan: list[tuple[int, dict[str, Any]]], synthesize) -> Path:
    """The training phantoms of ``plan`` ((cases, synthesize options) per part) in ``studies``: a folder made for
    the same plan before is used again (phantoms are deterministic from their seeds), any other is remade."""
    stamp = studies / "demo_recipe.json"
    wanted = json.dumps([[n, options] for n, options in plan], sort_keys=True, default=list)
    if stamp.exists() and stamp.read_text() == wanted:
        logger.info(f"{studies}: the phantoms of this recipe, made before")
        return studies
    if studies.exists():
        shutil.rmtree(studies)
    for n, options in plan:
        synthesize(studies, n, **options)
    atomic_write_text(stamp, wanted)  # last: an interrupted folder is remade
    return studies


def _ship_demo(model: str, model_dir: Path, out, stats: dict[str, Any], command: str, data: str, **validation) -> Path:
    """The demo checkpoint of a finished training, with how it was made, written to ``out``."""
    if stats.get("status") != "published":
        raise RuntimeError(f"demo training did not publish a model: {stats.get('reason')}")
    task, metric = _MODELS[model][2], _MODELS[model][3]
    checkpoint = load_checkpoint(model_dir / f"{model}.pt", task=task)
    checkpoint.meta["training"]["demo"] = {
        "command": command,
        "data": data,
        "validation": {metric: stats.get("best_metric"), "epoch": stats.get("best_metric_epoch"), **validation},
    }
    return save_checkpoint(Path(out) / f"{model}.pt", task, checkpoint.state_dict, checkpoint.meta)


def _make_planar_demo_weights(
    work: Path, out: str | os.PathLike, epochs: int | None, device: str, model: str, data: str | os.PathLike | None
) -> tuple[Path, dict[str, Any]]:
    from lnnode.data.table import import_table

    busi = Path(data) if data else DEMO_2D_DATA
    if not (busi / "cases.csv").exists():
        raise FileNotFoundError(f"{busi}: no cases.csv; the 2D demo models are trained on BUSI (pass --data busi/)")
    epochs = epochs or DEMO_DEFAULTS[model]["epochs"]
    studies, model_dir = work / "studies", work / "model"
    for folder in (studies, model_dir):
        if folder.exists():
            shutil.rmtree(folder)
    report = import_table(busi / "cases.csv", studies)
    extra: dict[str, Any] = {"publish": "always", "patches_per_image": 2}
    if model == CLASSIFICATION_2D:
        extra.update(positive_class=DEMO_2D_POSITIVE, train_batch_size=32)
    stats = train_model(model, studies, model_dir, epochs=epochs, init="scratch", val_split=0.15, device=device,
                        extra=extra)  # fmt: skip
    data = (
        f"BUSI real breast ultrasound ({len(report.cases)} images: benign and malignant lesions, normal images); "
        "breast lesions, not lymph nodes: a real-ultrasound proxy, not clinical data"
    )
    command = f"lnnode demo-weights --model {model} --epochs {epochs} --data <busi>"
    split = "15 % of the images by near-duplicate group"
    return _ship_demo(model, model_dir, out, stats, command, data, split=split), stats
