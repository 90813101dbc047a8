"""``lnnode evaluate``: run the detection infer task on labelled images and write metrics + plots."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .datastore import LnnodeDatastore
from .infers.detection import NodeDetection
from .metrics.detection import FP_RATES, evaluate_detection
from .trainers.detection import labelled_datalist
from .transforms import load_label

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
    datastore = LnnodeDatastore(str(studies))
    task = NodeDetection("lymph_node_detection", [model], config={"device": device})
    cases = []
    for item in labelled_datalist(datastore, label_tag):
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
