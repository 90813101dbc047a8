"""``lnnode evaluate``: run the detection infer task on labelled images and write metrics + plots.

A 2D model (its checkpoint says so) is evaluated on the studies folder's 2D images, with the 2D measurement and
rules (:mod:`lnnode.measure.planar`); a volume model on its volumes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnnode.appdir import app_module
from lnnode.contracts import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D, PIPELINE, PIPELINE_2D
from lnnode.io.atomic import atomic_write_text
from lnnode.io.checkpoint import load_checkpoint
from lnnode.io.image import pixel_spacing_known
from lnnode.measure.delineation import measure_node
from lnnode.measure.planar import measure_lesion
from lnnode.measure.rules import n_stage_hint, node_rules, planar_rules
from lnnode.metrics.classification import classification_report, cohen_kappa, plot_reliability, plot_roc
from lnnode.metrics.detection import FP_RATES, evaluate_detection
from lnnode.networks.classifier import ClassifierSpec
from lnnode.networks.detector import DetectorSpec
from lnnode.transforms import LoadVolumed, load_label

__all__ = ["detect_studies", "evaluate_studies", "plot_froc", "is_planar_model"]


def is_planar_model(path: str | os.PathLike, task: str) -> bool:
    """Whether a checkpoint holds a 2D model (``task``: detection or classification)."""
    spec = DetectorSpec if task == "detection" else ClassifierSpec
    return spec.from_dict(load_checkpoint(path, task=task).meta["network"]).spatial_dims == 2


def _manifest_short_axes(studies: Path, case: str, n_nodes: int) -> list[float] | None:
    """Per-node short axes (mm) from a phantom manifest, in the label's (instance) order, if known."""
    path = studies / "synth_manifest.json"
    if not path.exists():
        return None
    with open(path) as f:
        manifest = json.load(f)
    cases = manifest.get("cases", manifest) if isinstance(manifest, dict) else manifest
    entry = cases.get(case) if isinstance(cases, dict) else next((c for c in cases if c.get("id") == case), None)
    if not entry:
        return None
    nodes = sorted(entry.get("nodes", []), key=lambda n: n.get("instance", 0))
    axes = [n.get("short_axis_mm") for n in nodes]
    return axes if len(axes) == n_nodes and all(a is not None for a in axes) else None


def detect_studies(
    studies: str | os.PathLike, model: str, label_tag: str, device: str = "cpu", **params: Any
) -> list[dict[str, Any]]:
    """Run the detection infer task on every image with a ``label_tag`` label.

    Returns per case: id, predicted nodes, ground-truth nodes, short axes (when a phantom manifest
    gives them) and the load-to-result latency.
    """
    studies = Path(studies)
    datastore = app_module("datastore").LnnodeDatastore(str(studies))
    planar = is_planar_model(model, "detection")
    name = DETECTION_2D if planar else DETECTION
    task = app_module("infers").NodeDetection(name, [model], config={"device": device}, planar=planar)
    cases = []
    for item in app_module("trainers.datalist").labelled_datalist(datastore, label_tag, planar=planar):
        start = time.perf_counter()
        _, result = task({"image": item["image"], "image_id": item["id"], "device": device, **params})
        latency = time.perf_counter() - start
        gt = load_label(item["label"], item["id"])["nodes"]
        cases.append(
            {
                "id": item["id"],
                "pred": result["nodes"],
                "gt": gt,
                "short_axes": _manifest_short_axes(studies, item["id"], len(gt)),
                "latency_s": latency,
            }
        )
    return cases


def plot_froc(metrics: dict[str, Any], path: str | os.PathLike, title: str = "") -> None:
    """FROC curve PNG with the CPM operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp = np.asarray(metrics["froc"]["fp_per_volume"], dtype=float)
    sens = np.asarray(metrics["froc"]["sensitivity"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    ax.step(np.maximum(fp, 1e-3), sens, where="post", label=f"CPM {metrics['cpm']:.3f}")
    rates = list(FP_RATES)
    ax.plot(rates, [metrics["sensitivity_at_fp"][f"{r:g}"] for r in rates], "o", ms=4)
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per volume")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or f"FROC ({metrics['criterion']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_studies(
    studies: str | os.PathLike,
    model: str,
    out: str | os.PathLike,
    label_tag: str = "final",
    criterion: str = "iou",
    iou_thresh: float = 0.1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Detection metrics of ``model`` on ``studies``; writes ``metrics.json`` and ``froc.png`` to ``out``."""
    cases = detect_studies(studies, model, label_tag, device, score_thresh=0.01, max_boxes=100)
    if not cases:
        raise ValueError(f"{studies}: no image has a {label_tag!r} label to evaluate against")
    short_axes = [c["short_axes"] for c in cases]
    metrics = evaluate_detection(
        [c["pred"] for c in cases],
        [c["gt"] for c in cases],
        short_axes=short_axes if all(a is not None for a in short_axes) else None,
        criterion=criterion,
        iou_thresh=iou_thresh,
    )
    latencies = [c["latency_s"] for c in cases]
    metrics.update(
        {
            "model": str(model),
            "data": {"studies": str(studies), "label_tag": label_tag, "cases": [c["id"] for c in cases]},
            "latency_s": {"mean": float(np.mean(latencies)), "max": float(np.max(latencies)), "device": device},
        }
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    plot_froc(metrics, out / "froc.png", title=f"{Path(studies).name}: FROC ({metrics['criterion']})")
    return metrics


# -- classification, measurement, rules and N stage ---------------------------------------------------
def _manifest_cases(studies: Path) -> dict[str, dict]:
    path = studies / "synth_manifest.json"
    if not path.exists():
        return {}
    return {c["id"]: c for c in json.loads(path.read_text()).get("cases", [])}


def _true_stage(nodes: list[dict]) -> str | None:
    """The N-stage hint the ground truth gives (count of metastatic nodes); None without classes."""
    if any("class" not in n for n in nodes):
        return None
    return n_stage_hint(sum(n["class"] == "metastatic" for n in nodes))


@dataclass
class _NodeScores:
    """What evaluate_classification gathers, node by node and case by case."""

    y: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    rules: dict[str, list] = field(default_factory=dict)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (short-axis error mm, shape source)
    true_stages: list[str | None] = field(default_factory=list)
    hinted_stages: list[str] = field(default_factory=list)

    def add_case(
        self, gt: list[dict], predicted: list[dict], measured: list, rules: list[dict], truth: list[dict]
    ) -> None:
        for i, (node, p, m, r) in enumerate(zip(gt, predicted, measured, rules, strict=True)):
            self.y.append(int(node["class"] == "metastatic"))
            self.scores.append(p["p_metastasis"])
            for rule, value in r.items():
                self.rules.setdefault(rule, []).append(value)
            if m is not None and len(truth) == len(gt) and hasattr(m, "short_axis_mm"):
                # real ULS23 outlines carry their mask's file name as the source
                source = truth[i].get("features", {}).get("shape_source") or "unknown"
                source = source if source in ("synthetic", "unknown") else "real"
                self.errors.append((abs(m.short_axis_mm - truth[i]["short_axis_mm"]), source))


def evaluate_classification(
    studies: str | os.PathLike,
    classifier: str,
    out: str | os.PathLike,
    label_tag: str = "final",
    detector: str | None = None,
    device: str = "cpu",
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Node-level classification metrics of ``classifier`` and of the rule baselines on the same
    ground-truth nodes (their labelled boxes), the short-axis error where a phantom manifest gives
    the truth, and, with a ``detector``, the pipeline's N-stage hint against the truth per case.

    Writes ``classification.json``, ``roc.png`` and ``reliability.png`` to ``out``.
    """
    studies = Path(studies)
    infers = app_module("infers")
    planar = is_planar_model(classifier, "classification")
    names = (CLASSIFICATION_2D, DETECTION_2D, PIPELINE_2D) if planar else (CLASSIFICATION, DETECTION, PIPELINE)
    config = {"device": device}
    classify = infers.NodeClassification(names[0], [classifier], config=config, planar=planar)
    modality = classify.checkpoint().meta["preprocessing"].get("modality", "ct")
    pipeline = None
    if detector:
        detect = infers.NodeDetection(names[1], [detector], config=config, planar=planar)
        pipeline = infers.NodePipeline(names[2], detect, classify)
    manifest = _manifest_cases(studies)
    gathered, cases = _NodeScores(), []
    datastore = app_module("datastore").LnnodeDatastore(str(studies))
    for item in app_module("trainers.datalist").labelled_datalist(datastore, label_tag, planar=planar):
        gt = [n for n in load_label(item["label"], item["id"])["nodes"] if n.get("class") in ("benign", "metastatic")]
        if not gt:
            continue
        cases.append(item["id"])
        request = {"image": item["image"], "image_id": item["id"], "device": device}
        loaded = LoadVolumed(keys="image", allow_2d=planar)({"image": item["image"]})
        volume, geometry = loaded["image"], loaded["image_geometry"]
        predicted = classify.result_for({**request, "nodes": gt}, volume, geometry)["nodes"]
        if planar:
            in_mm = pixel_spacing_known(item["image"] if isinstance(item["image"], str) else item["image"][0])
            measured = [measure_lesion(volume[0], geometry, n["center"], n["size"]) for n in gt]
            rules = [planar_rules(m, in_mm) for m in measured]
        else:
            measured = [measure_node(volume[0], geometry, n["center"], n["size"], modality) for n in gt]
            rules = [node_rules(m) for m in measured]
        truth = sorted(manifest.get(item["id"], {}).get("nodes", []), key=lambda n: n.get("instance", 0))
        gathered.add_case(gt, predicted, measured, rules, truth)
        if pipeline is not None:
            gathered.true_stages.append(_true_stage(gt))
            gathered.hinted_stages.append(pipeline.result_for(request)["summary"]["n_stage_hint"])
    if not gathered.y:
        raise ValueError(f"{studies}: no labelled node has a class (benign or metastatic) to evaluate against")
    report = _classification_report(gathered, studies, cases, classifier, detector, label_tag, n_boot)
    _write_classification_report(report, gathered, Path(out), studies.name)
    return report


def _classification_report(
    g: _NodeScores, studies: Path, cases: list[str], classifier: str, detector: str | None, label_tag: str, n_boot: int
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "classifier": str(classifier),
        "data": {"studies": str(studies), "label_tag": label_tag, "cases": cases},
        "n_cases": len(cases),
        "boxes": "ground-truth boxes (labelled), so detection errors do not enter the node-level figures",
        "nodes": classification_report(np.asarray(g.y), np.asarray(g.scores), rules=g.rules, n_boot=n_boot),
        # node by node (to pool several evaluations): truth (1 metastatic), the probability, each rule's category
        "per_node": {"y": list(g.y), "p_metastasis": list(g.scores), **{k: list(v) for k, v in g.rules.items()}},
    }
    if g.errors:
        report["short_axis_error_mm"] = _error_summary([e for e, _ in g.errors])
        report["short_axis_error_mm"]["by_shape_source"] = {
            s: _error_summary([e for e, src in g.errors if src == s]) for s in sorted({src for _, src in g.errors})
        }
    if g.true_stages and all(s is not None for s in g.true_stages):
        kappa = cohen_kappa(g.true_stages, g.hinted_stages, labels=["N0", "N1", "N2"])
        report["n_stage"] = {"detector": str(detector), "n_cases": len(g.true_stages), **kappa}
    return report


def _write_classification_report(report: dict[str, Any], g: _NodeScores, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classification.json", json.dumps(report, indent=2, default=float))
    y = np.asarray(g.y)
    plot_roc(y, {"classifier": g.scores, **g.rules}, out / "roc.png", title=f"{name}: node-level ROC")
    plot_reliability(y, np.asarray(g.scores), out / "reliability.png")


def _error_summary(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    return {"n": int(e.size), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "max": float(e.max())}
