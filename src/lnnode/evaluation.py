"""``lnnode evaluate``: run the detection infer task on labelled images and write metrics + plots."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lnnode.appdir import app_module
from lnnode.io.atomic import atomic_write_text
from lnnode.metrics.detection import FP_RATES, evaluate_detection
from lnnode.transforms import load_label

__all__ = ["detect_studies", "evaluate_studies", "plot_froc"]


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
    task = app_module("infers").NodeDetection("lymph_node_detection", [model], config={"device": device})
    cases = []
    for item in app_module("trainers.datalist").labelled_datalist(datastore, label_tag):
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
    from lnnode.measure.rules import n_stage_hint

    if any("class" not in n for n in nodes):
        return None
    return n_stage_hint(sum(n["class"] == "metastatic" for n in nodes))


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
    from lnnode.contracts import CLASSIFICATION, DETECTION, PIPELINE
    from lnnode.measure.delineation import measure_node
    from lnnode.measure.rules import node_rules
    from lnnode.metrics.classification import classification_report, cohen_kappa, plot_reliability, plot_roc
    from lnnode.transforms import LoadVolumed

    studies = Path(studies)
    infers = app_module("infers")
    classify = infers.NodeClassification(CLASSIFICATION, [classifier], config={"device": device})
    modality = classify.checkpoint().meta["preprocessing"].get("modality", "ct")
    pipeline = (
        infers.NodePipeline(PIPELINE, infers.NodeDetection(DETECTION, [detector], config={"device": device}), classify)
        if detector
        else None
    )
    manifest = _manifest_cases(studies)
    y, scores, rules, errors, stages = [], [], {"size_10mm": [], "morphology": []}, [], ([], [])
    cases = []
    datastore = app_module("datastore").LnnodeDatastore(str(studies))
    for item in app_module("trainers.datalist").labelled_datalist(datastore, label_tag):
        gt = [n for n in load_label(item["label"], item["id"])["nodes"] if n.get("class") in ("benign", "metastatic")]
        if not gt:
            continue
        cases.append(item["id"])
        loaded = LoadVolumed(keys="image")({"image": item["image"]})
        image, geometry = loaded["image"], loaded["image_geometry"]
        _, result = classify({"image": item["image"], "image_id": item["id"], "device": device, "nodes": gt})
        truth = sorted(manifest.get(item["id"], {}).get("nodes", []), key=lambda n: n.get("instance", 0))
        for i, (node, predicted) in enumerate(zip(gt, result["nodes"], strict=True)):
            y.append(int(node["class"] == "metastatic"))
            scores.append(predicted["p_metastasis"])
            m = measure_node(image[0], geometry, node["center"], node["size"], modality)
            for rule, value in node_rules(m).items():
                rules[rule].append(value)
            if m is not None and len(truth) == len(gt):
                # real ULS23 outlines carry their mask's file name as the source
                source = truth[i].get("features", {}).get("shape_source") or "unknown"
                source = source if source in ("synthetic", "unknown") else "real"
                errors.append((abs(m.short_axis_mm - truth[i]["short_axis_mm"]), source))
        if pipeline is not None:
            true_stage = _true_stage(gt)
            _, staged = pipeline({"image": item["image"], "image_id": item["id"], "device": device})
            stages[0].append(true_stage)
            stages[1].append(staged["summary"]["n_stage_hint"])
    if not y:
        raise ValueError(f"{studies}: no labelled node has a class (benign or metastatic) to evaluate against")
    report: dict[str, Any] = {
        "classifier": str(classifier),
        "data": {"studies": str(studies), "label_tag": label_tag, "cases": cases},
        "n_cases": len(cases),
        "boxes": "ground-truth boxes (labelled), so detection errors do not enter the node-level figures",
        "nodes": classification_report(np.asarray(y), np.asarray(scores), rules=rules, n_boot=n_boot),
    }
    if errors:
        report["short_axis_error_mm"] = _error_summary([e for e, _ in errors])
        report["short_axis_error_mm"]["by_shape_source"] = {
            s: _error_summary([e for e, src in errors if src == s]) for s in sorted({src for _, src in errors})
        }
    if stages[0] and all(s is not None for s in stages[0]):
        kappa = cohen_kappa(stages[0], stages[1], labels=["N0", "N1", "N2"])
        report["n_stage"] = {"detector": str(detector), "n_cases": len(stages[0]), **kappa}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classification.json", json.dumps(report, indent=2, default=float))
    plot_roc(np.asarray(y), {"classifier": scores, **rules}, out / "roc.png", title=f"{studies.name}: node-level ROC")
    plot_reliability(np.asarray(y), np.asarray(scores), out / "reliability.png")
    return report


def _error_summary(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    return {"n": int(e.size), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "max": float(e.max())}
