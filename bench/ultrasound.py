"""2D benchmark on real ultrasound: the whole 2D pipeline, cross-validated on BUSI by near-duplicate group.

    python bench/ultrasound.py --busi ../shared/data/real/busi --out bench/out/ultrasound
    python bench/ultrasound.py --busi ../shared/data/real/busi --out bench/out/ultrasound --folds 5 --quick

What it measures, and on what data (nothing here is lymph-node or clinical performance):

Data: ``busi/`` (real breast-ultrasound B-mode images, hand-drawn lesion masks; benign, malignant and normal
images), imported with ``lnnode import --table``. These are breast lesions, not lymph nodes: a real-ultrasound
proxy. K-fold cross-validation split by the ``group`` column (near-duplicate images; no group on both sides),
groups dealt to folds at random (seeded). Per fold both 2D models are trained from scratch on the other folds
(the detector and the classifier through the app's train tasks, each validating on a group-split 15 % of its
training images) and the pipeline runs on the held-out fold. Masks give the boxes (training targets, hit test);
nothing reads a mask's outline.

1. Detection, normal images included: sensitivity at 0.25 / 0.5 / 1 false positives per image; hit = the box's
   centre inside the lesion mask's box and box IoU >= 0.3 (greedy by score, one box per lesion).
2. Per lesion, on the lesions the detector found (at its 0.5 FP/image operating point): ROC AUC of malignant vs
   benign with bootstrap 95 % CI for the classifier, the 2D shape rule, the morphology rule and the lesion's size
   (the delineated long axis, pixels), all from the same detected boxes. Per image (benign vs malignant images):
   the largest probability among the image's boxes at that operating point (0 when there is none).
3. Calibration of the per-lesion probabilities: ECE (10 bins), reliability plot.
4. Burnt-in marks: the classifier on the held-out lesions' true boxes, on each image and on the image with its
   bright marks (calipers, text: small saturated blobs) inpainted; mean |change| of the probability and both AUCs.
5. CPU: pipeline latency per image (load to result, 2 threads, after a warm-up) and peak memory (fresh process).

Writes ``ultrasound.json`` to --out and the plots to docs/ (``--plots``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.appdir import use_app  # noqa: E402

use_app()  # the app's tasks are lib.*, as in the server

from lnnode.contracts import CLASSIFICATION_2D, DETECTION_2D  # noqa: E402
from lnnode.data.table import import_table, read_groups  # noqa: E402
from lnnode.metrics.classification import (  # noqa: E402
    bootstrap_auc_ci,
    expected_calibration_error,
    plot_reliability,
    plot_roc,
    roc_auc,
    rule_scores,
)
from lnnode.metrics.detection import box_iou, center_hits  # noqa: E402

HIT_IOU = 0.3
RULES = ("shape", "orientation", "margin", "morphology")
FP_POINTS = (0.25, 0.5, 1.0)
POSITIVE = "malignant"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -----------------------------------------------------------------------------------------------
def imported(busi: Path, out: Path) -> Path:
    studies = out / "studies"
    if not (studies / "groups.csv").exists():
        report = import_table(busi / "cases.csv", studies, overwrite=True)
        log(f"imported BUSI: {report.summary()[:200]}")
    return studies


def folds_by_group(studies: Path, k: int, seed: int) -> list[list[str]]:
    """Cases per fold: whole groups dealt at random, so no near-duplicate group is on two sides."""
    groups = read_groups(studies)
    cases = sorted(p.stem for p in studies.glob("*.png"))
    by_group: dict[str, list[str]] = {}
    for case in cases:
        by_group.setdefault(groups.get(case, case), []).append(case)
    order = np.random.default_rng(seed).permutation(sorted(by_group))
    folds: list[list[str]] = [[] for _ in range(k)]
    for n, group in enumerate(order):
        folds[n % k].extend(by_group[group])
    return folds


def fold_studies(studies: Path, cases: list[str], target: Path) -> Path:
    """A studies folder of ``cases`` (hard links: the images stay where they are on disk)."""
    if target.exists():
        shutil.rmtree(target)
    (target / "labels" / "final").mkdir(parents=True)
    groups = read_groups(studies)
    label = Path("labels") / "final"
    for case in cases:
        for name in (f"{case}.png", label / f"{case}.json"):
            src, dst = studies / name, target / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    (target / "groups.csv").write_text("image,group\n" + "".join(f"{c},{groups.get(c, c)}\n" for c in cases))
    return target


# -- one fold ---------------------------------------------------------------------------------------------
def train_fold(train: Path, models: Path, args) -> dict:
    from lnnode.training import train_model

    if models.exists():
        shutil.rmtree(models)  # never a model of another split
    det = train_model(
        DETECTION_2D, train, models, epochs=args.det_epochs, init="scratch", val_split=0.15, seed=args.seed,
        spec=json.loads(args.det_spec),
        extra={"patches_per_image": 2, "publish": "always", "max_train_minutes": args.det_minutes},
    )  # fmt: skip
    cls = train_model(
        CLASSIFICATION_2D, train, models, epochs=args.cls_epochs, init="scratch", val_split=0.15, seed=args.seed,
        extra={"positive_class": POSITIVE, "publish": "always", "train_batch_size": 32},
    )  # fmt: skip
    for name, stats in (("detector", det), ("classifier", cls)):
        if stats.get("status") != "published":
            raise RuntimeError(f"the {name} of this fold was not published: {stats.get('reason')}")
    return {"detector": _brief(det), "classifier": _brief(cls)}


def _brief(stats: dict) -> dict:
    return {k: stats.get(k) for k in ("status", "best_metric", "best_metric_epoch", "total_epochs", "total_time")}


def predict_fold(test: Path, models: Path) -> list[dict]:
    """Per held-out image: the pipeline's boxes (all scores), the truth, and the classifier on the true boxes
    with and without the burnt-in marks."""
    from lnnode.inference import build_pipeline
    from lnnode.transforms import load_label

    pipeline = build_pipeline(models, None, {"device": "cpu"}, planar=True)
    out = []
    for image in sorted(test.glob("*.png")):
        truth = load_label(test / "labels" / "final" / f"{image.stem}.json")["nodes"]
        request = {
            "image": str(image),
            "image_id": image.stem,
            "score_thresh": 0.01,
            "max_boxes": 20,
            "tta": 2,
            "logging": "ERROR",
        }
        result = pipeline.result_for(request)
        case = {"id": image.stem, "pred": result["nodes"], "truth": truth}
        if truth:
            case["on_truth"] = _classify_truth(pipeline, image, truth)
        out.append(case)
    return out


def _classify_truth(pipeline, image: Path, truth: list[dict]) -> dict:
    from lnnode.io.image import read_image

    volume, geometry = read_image(image, allow_2d=True)
    classify = pipeline.classification
    request = {"image": str(image), "nodes": truth, "tta": 2, "logging": "ERROR"}
    original = classify.result_for(request, volume[None], geometry)["nodes"]
    clean = classify.result_for(request, inpaint_marks(volume)[None], geometry)["nodes"]
    return {"p": [n["p_metastasis"] for n in original], "p_inpainted": [n["p_metastasis"] for n in clean]}


def inpaint_marks(volume: np.ndarray) -> np.ndarray:
    """The image with its burnt-in marks (small near-white blobs: calipers, text, arrows) filled from around them
    (each masked pixel takes the value of the nearest unmasked one)."""
    from scipy import ndimage

    plane = volume[..., 0].astype(np.float32)
    bright = plane >= 0.93 * plane.max()
    labels, n = ndimage.label(ndimage.binary_dilation(bright, iterations=1))
    sizes = ndimage.sum(np.ones_like(plane), labels, index=np.arange(1, n + 1))
    marks = ndimage.binary_dilation(np.isin(labels, 1 + np.flatnonzero(sizes <= 400)), iterations=2)
    if not marks.any():
        return volume
    _, (ii, jj) = ndimage.distance_transform_edt(marks, return_indices=True)
    return plane[ii, jj][..., None]


# -- scoring ----------------------------------------------------------------------------------------------
def match(pred: list[dict], truth: list[dict]) -> np.ndarray:
    """Per box (descending score): the lesion it hits (-1: a false positive)."""
    hit = np.full(len(pred), -1)
    if pred and truth:
        ok = (center_hits(pred, truth) > 0) & (box_iou(pred, truth) >= HIT_IOU)
        iou = box_iou(pred, truth)
        taken = np.zeros(len(truth), bool)
        for i in np.argsort([-p["detection_score"] for p in pred], kind="stable"):
            free = np.flatnonzero(ok[i] & ~taken)
            if free.size:
                j = free[np.argmax(iou[i, free])]
                hit[i], taken[j] = j, True
    return hit


def detection_figures(cases: list[dict]) -> tuple[dict, float]:
    scores, tps = [], []
    n_lesions = sum(len(c["truth"]) for c in cases)
    for c in cases:
        c["hit"] = match(c["pred"], c["truth"])
        scores += [p["detection_score"] for p in c["pred"]]
        tps += list(c["hit"] >= 0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, tp = np.asarray(scores)[order], np.asarray(tps, bool)[order]
    sens = np.cumsum(tp) / max(n_lesions, 1)
    fpi = np.cumsum(~tp) / len(cases)
    step = max(1, len(fpi) // 400)  # the curve, thinned for the JSON
    at = {}
    for rate in FP_POINTS:
        ok = fpi <= rate + 1e-12
        at[f"{rate:g}"] = {"sensitivity": float(sens[ok].max()) if ok.any() else 0.0,
                           "score_threshold": float(s[ok][-1]) if ok.any() else 1.0}  # fmt: skip
    figures = {
        "n_images": len(cases),
        "n_normal_images": sum(not c["truth"] for c in cases),
        "n_lesions": n_lesions,
        "hit": f"box centre inside the lesion mask's box and box IoU >= {HIT_IOU}",
        "sensitivity_at_fp_per_image": at,
        "froc": {"fp_per_image": fpi[::step].tolist(), "sensitivity": sens[::step].tolist()},
    }
    return figures, at["0.5"]["score_threshold"]


def lesion_scores(cases: list[dict], threshold: float) -> dict[str, list]:
    """Per lesion found at ``threshold``: its class and what each scorer says, from the hitting box."""
    g: dict[str, list] = {"y": [], "classifier": [], "size_px": [], **{rule: [] for rule in RULES}}
    for c in cases:
        for box, j in zip(c["pred"], c["hit"], strict=True):
            if j < 0 or box["detection_score"] < threshold:
                continue
            g["y"].append(int(c["truth"][j]["class"] == "metastatic"))
            g["classifier"].append(box["p_metastasis"])
            for rule in RULES:
                g[rule].append(box["rules"][rule])
            g["size_px"].append(box.get("long_axis_px", 0.0))  # not delineated: 0 (counted in the report)
    return g


def auc_with_ci(y: np.ndarray, s: np.ndarray, seed: int) -> dict:
    lo, hi = bootstrap_auc_ci(y, s, n_boot=2000, seed=seed)
    return {"auc": roc_auc(y, s), "ci95": [lo, hi], "n": int(len(y)), "n_positive": int(y.sum())}


def classification_figures(cases: list[dict], threshold: float, seed: int) -> tuple[dict, dict]:
    g = lesion_scores(cases, threshold)
    y = np.asarray(g["y"])
    scored = {
        "classifier": np.asarray(g["classifier"]),
        **{f"{rule}_rule": rule_scores(g[rule]) for rule in RULES},
        "size_long_axis_px": np.asarray(g["size_px"]),
    }
    per_lesion = {name: auc_with_ci(y, s, seed) for name, s in scored.items()}
    per_lesion["ece_classifier"] = float(expected_calibration_error(y, scored["classifier"]))
    per_lesion["not_delineated"] = int(np.sum(np.asarray(g["size_px"]) == 0))
    per_lesion["suspicious_share"] = {
        rule: {name: float(np.mean([v == "suspicious" for v, t in zip(g[rule], y, strict=True) if t == k]))
               for k, name in ((0, "benign"), (1, "malignant"))}
        for rule in RULES
    }  # fmt: skip
    images = [c for c in cases if c["truth"] and all("class" in n for n in c["truth"])]
    y_img = np.asarray([int(any(n["class"] == "metastatic" for n in c["truth"])) for c in images])
    s_img = np.asarray([max([p["p_metastasis"] for p in c["pred"] if p["detection_score"] >= threshold] or [0.0])
                        for c in images])  # fmt: skip
    per_image = {"classifier_max_p": auc_with_ci(y_img, s_img, seed)}
    return {"per_lesion_detected": per_lesion, "per_image": per_image}, {"y": y, **scored}


def marks_figures(cases: list[dict]) -> dict:
    y, p, q = [], [], []
    for c in cases:
        if "on_truth" not in c:
            continue
        y += [int(n["class"] == "metastatic") for n in c["truth"]]
        p += c["on_truth"]["p"]
        q += c["on_truth"]["p_inpainted"]
    y, p, q = np.asarray(y), np.asarray(p), np.asarray(q)
    return {
        "boxes": "the lesions' true boxes",
        "mean_abs_change_p": float(np.mean(np.abs(p - q))),
        "p90_abs_change_p": float(np.percentile(np.abs(p - q), 90)),
        "auc_original": roc_auc(y, p),
        "auc_marks_inpainted": roc_auc(y, q),
    }


# -- CPU cost ---------------------------------------------------------------------------------------------
def latency_child(models: str, images: list[str]) -> None:
    import torch

    torch.set_num_threads(2)
    from lnnode.inference import build_pipeline

    pipeline = build_pipeline(models, None, {"device": "cpu"}, planar=True)
    pipeline.result_for({"image": images[0], "image_id": "warmup"})
    seconds = []
    for image in images:
        start = time.perf_counter()
        pipeline.result_for({"image": image, "image_id": Path(image).stem})
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mean_s": float(np.mean(seconds)), "p90_s": float(np.percentile(seconds, 90)),
                      "n": len(seconds), "peak_rss_mb": peak}))  # fmt: skip


def latency(models: Path, images: list[Path]) -> dict:
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(REPO / 'bench')!r}); import ultrasound; "
            f"ultrasound.latency_child({str(models)!r}, {[str(p) for p in images]!r})")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "threads": 2, "device": "cpu"}


# -- main -------------------------------------------------------------------------------------------------
def plots(report: dict, scored: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target.mkdir(parents=True, exist_ok=True)
    y = scored.pop("y")
    plot_roc(y, scored, target / "ultrasound_roc.png", title="BUSI (real ultrasound proxy): detected lesions, CV")
    plot_reliability(y, scored["classifier"], target / "ultrasound_reliability.png")
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    froc = report["detection"]["froc"]
    ax.step(np.maximum(froc["fp_per_image"], 1e-3), froc["sensitivity"], where="post")
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image (normal images included)")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"BUSI, {report['folds']}-fold CV by group: hit = centre in box, IoU >= {HIT_IOU}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target / "ultrasound_froc.png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", required=True, type=Path, help="the busi/ folder (cases.csv, images/, masks/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="*", help="run these folds only (the rest from --out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--det-epochs", type=int, default=40)
    parser.add_argument("--det-minutes", type=float, default=0.0, help="wall-clock budget per detector training")
    parser.add_argument("--cls-epochs", type=int, default=40)
    parser.add_argument("--det-spec", default="{}", help="DetectorSpec fields over DetectorSpec.planar()")
    parser.add_argument("--plots", type=Path, help="folder for the PNG plots (e.g. docs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    studies = imported(args.busi, args.out)
    folds = folds_by_group(studies, args.folds, args.seed)
    all_cases, training = [], {}
    for k, test_cases in enumerate(folds):
        cached = args.out / f"fold{k}.json"
        if args.only_folds is not None and k not in args.only_folds:
            if cached.exists():
                saved = json.loads(cached.read_text())
                all_cases += [{**c, "fold": k} for c in saved["cases"]]
                training[k] = saved["training"]
            continue
        train_cases = [c for f in folds if f is not test_cases for c in f]
        log(f"fold {k}: {len(train_cases)} training images, {len(test_cases)} held out")
        models = args.out / f"models{k}"
        training[k] = train_fold(fold_studies(studies, train_cases, args.out / "train"), models, args)
        log(f"fold {k} trained: {training[k]}")
        cases = predict_fold(fold_studies(studies, test_cases, args.out / "test"), models)
        cached.write_text(json.dumps({"training": training[k], "cases": cases}, default=float))
        all_cases += [{**c, "fold": k} for c in cases]
    detection, threshold = detection_figures(all_cases)
    per_fold = [detection_figures([c for c in all_cases if c["fold"] == k])[0] for k in sorted(training)]
    detection["per_fold_sensitivity_at_fp_per_image"] = {
        f"{rate:g}": [round(f["sensitivity_at_fp_per_image"][f"{rate:g}"]["sensitivity"], 4) for f in per_fold]
        for rate in FP_POINTS
    }  # each fold's own model and operating point (the pooled curve mixes five models' scores)
    classification, scored = classification_figures(all_cases, threshold, args.seed)
    report = {
        "data": "BUSI real breast ultrasound (benign/malignant lesions, normal images): a real-ultrasound proxy, "
        "not lymph nodes, not clinical performance",
        "validation": f"{args.folds}-fold cross-validation split by near-duplicate group (seed {args.seed})",
        "folds": args.folds,
        "training": training,
        "detection": detection,
        "operating_point": {"score_threshold": threshold, "at": "0.5 false positives per image"},
        "classification": classification,
        "burnt_in_marks": marks_figures(all_cases),
    }
    report["cpu"] = latency(args.out / "models0", sorted((args.out / "test").glob("*.png"))[:30])
    (args.out / "ultrasound.json").write_text(json.dumps(report, indent=2, default=float))
    if args.plots:
        plots(report, scored, args.plots)
    shown = {k: report[k] for k in ("classification", "burnt_in_marks", "cpu")}
    log(json.dumps({"detection": report["detection"]["sensitivity_at_fp_per_image"], **shown}, default=float))


if __name__ == "__main__":
    main()
