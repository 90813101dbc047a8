"""Detection benchmark: lnnode's compact detector beside MONAI's reference lung-nodule recipe.

    python bench/detection.py --out bench/out/detection            # the full run (about 2 h on 2 cores)
    python bench/detection.py --out bench/out/quick --quick        # smaller, skips the reference's 47-min latency

What it measures, and on what data (nothing here is clinical performance):

1. Quality of the served/demo model on held-out phantoms the model never saw: synthetic CT on an
   oblique 1 x 1 x 2 mm grid, and real CT backgrounds (TotalSegmentator) with inserted nodes, half of
   them real ULS23 node shapes. CPM (mean sensitivity at 1/8..8 FP per volume), AP@0.1, AP@0.5,
   per-size sensitivity; hit criterion IoU >= 0.1 (also reported: centre inside the box).
2. Certain false positives: boxes (score >= 0.5) centred inside an organ mask (aorta, heart,
   trachea, bones, muscles... every TotalSegmentator structure) on the two bare real CTs.
3. CPU latency (load to result, in a fresh process) and peak memory on a 512 x 512 x 160 CT phantom at
   0.78 x 0.78 x 2.0 mm, for lnnode and for the reference recipe (ResNet50-FPN RetinaNet,
   0.703 x 0.703 x 1.25 mm, its anchors, sliding window 512 x 512 x 192, untrained weights: latency
   does not depend on them). The reference runs once.
4. Same data, same budget: both detectors trained from scratch on the same phantoms for the same
   wall-clock minutes on this CPU (the reference's patch halved to 96 x 96 x 40 so that it fits the
   budget at all: the reduced scale), then evaluated on the synthetic held-out set.
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

from real_ct import (  # noqa: E402
    MAPPED_BACKGROUNDS,
    background_patient,
    background_sets,
    certain_false_positives,
    link_studies,
    lobo_folds,
)

from lnnode.evaluation import detect_studies, evaluate_studies  # noqa: E402
from lnnode.io.checkpoint import save_checkpoint  # noqa: E402
from lnnode.metrics.detection import evaluate_detection  # noqa: E402
from lnnode.networks.detector import DetectorSpec, build_detector_network  # noqa: E402
from lnnode.phantoms import default_real_data_dir, synthesize  # noqa: E402
from lnnode.training import train_detector  # noqa: E402
from lnnode.transforms import DEFAULT_INTENSITY  # noqa: E402

DEMO = REPO / "apps" / "lnnode" / "model" / "demo" / "lymph_node_detection.pt"
HELD_OUT_SEED, TRAIN_SEED = 90210, 31337


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -------------------------------------------------------------------------------------------
def held_out_sets(out: Path, quick: bool) -> dict[str, Path]:
    sets = {"synthetic": out / "heldout_synthetic", "real_background": out / "heldout_real"}
    if not (sets["synthetic"] / "synth_manifest.json").exists():
        synthesize(
            sets["synthetic"], 4 if quick else 8, modality="ct", seed=HELD_OUT_SEED,
            shape=(192, 192, 64), spacing=(1.0, 1.0, 2.0), direction="oblique",
        )  # fmt: skip
    if not (sets["real_background"] / "synth_manifest.json").exists():
        n = 3 if quick else 10  # drawn from the five patients' backgrounds
        synthesize(sets["real_background"], n, modality="ct", seed=HELD_OUT_SEED + 1, background="real")
    return sets


# -- 1. quality -------------------------------------------------------------------------------------
def quality(model: Path, sets: dict[str, Path], out: Path) -> dict:
    results = {}
    for name, studies in sets.items():
        m = evaluate_studies(studies, str(model), out / f"eval_{name}", "final")
        cases = detect_studies(studies, str(model), "final", score_thresh=0.01, max_boxes=100)
        centre = evaluate_detection([c["pred"] for c in cases], [c["gt"] for c in cases], criterion="center")
        results[name] = {
            "n_volumes": m["n_volumes"],
            "n_nodes": m["n_nodes"],
            "cpm": m["cpm"],
            "ap@0.1": m["ap@0.1"],
            "ap@0.5": m["ap@0.5"],
            "cpm_centre_criterion": centre["cpm"],
            "per_size": m["per_size_sensitivity"],
            "latency_s_mean": m["latency_s"]["mean"],
        }
        log(f"{name}: CPM {m['cpm']:.3f} AP@0.1 {m['ap@0.1']:.3f} ({m['n_volumes']} vol, {m['n_nodes']} nodes)")
    return results


# -- 2. certain false positives (bench/real_ct.py) ----------------------------------------------------
def organ_false_positives(model: Path, real: Path) -> dict:
    out = certain_false_positives(model, real)
    for name, v in out["volumes"].items():
        log(f"certain FPs {name}: {v['centred_in_an_organ_mask']} of {v['boxes']} boxes (default threshold)")
    return out


# -- 5. leave one background out ----------------------------------------------------------------------
def _detection_figures(cases: list[dict]) -> dict:
    m = evaluate_detection([c["pred"] for c in cases], [c["gt"] for c in cases], [c["short_axes"] for c in cases])
    at = m["sensitivity_at_fp"]
    return {
        "n_volumes": m["n_volumes"],
        "n_nodes": m["n_nodes"],
        "cpm": m["cpm"],
        "sensitivity_at_4_fp": at.get("4"),
        "sensitivity_at_fp": at,
        "per_size_at_1_fp": m["per_size_sensitivity"]["bins"],
    }


def _cases(studies: list[Path], model: Path) -> list[dict]:
    cases = []
    for folder in studies:
        cases += detect_studies(folder, str(model), "final", score_thresh=0.01, max_boxes=100)
    return cases


def _synthetic_base(out: Path, synth: Path, minutes: float) -> Path:
    """A detector trained from scratch on the synthetic phantoms alone (no real background: no patient to
    leak), the starting point of every fold when ``--lobo-base-minutes`` is set; trained once, then reused."""
    model_dir = out / "lobo_base"
    path = model_dir / "lymph_node_detection.pt"
    if not path.exists():
        train_detector(synth, model_dir, epochs=10000, init="scratch", val_split=0.0, patches_per_image=2,
                       extra={"max_train_minutes": minutes})  # fmt: skip
    return path


def leave_one_background_out(
    out: Path, model: Path, real: Path, minutes: float, quick: bool, base_minutes: float = 0.0
) -> dict:
    """Train on every patient's inserted nodes but one (plus synthetic phantoms), test on the one left out; the
    figures pool the test volumes of all folds. Each fold starts from scratch, or with ``base_minutes`` from a
    detector trained on the synthetic phantoms only. The shipped model is scored on the same tests."""
    n_train, n_test = (3, 2) if quick else (8, 4)
    sets = background_sets(out / "lobo_data", n_train, n_test, log=log)
    synth = out / "lobo_data" / "train_synthetic"
    if not (synth / "synth_manifest.json").exists():
        synthesize(synth, 4 if quick else 16, modality="ct", seed=TRAIN_SEED + 1, shape=(192, 192, 64),
                   spacing=(1.0, 1.0, 2.0), prefix="synth_")  # fmt: skip
    base = _synthetic_base(out, synth, base_minutes) if base_minutes > 0 else None
    report: dict = {"minutes_per_fold": minutes, "start": "synthetic base" if base else "scratch", "folds": {}}
    pooled, pooled_shipped = [], []
    for held, fold in lobo_folds(sets).items():
        studies = link_studies(out / f"lobo_{held}" / "studies", [*fold["train"], synth])
        model_dir = out / f"lobo_{held}" / "model"
        trained = model_dir / "lymph_node_detection.pt"
        if base is not None:
            model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base, trained)
        stats = train_detector(studies, model_dir, epochs=10000, init="current" if base else "scratch",
                               val_split=0.0, patches_per_image=2, extra={"max_train_minutes": minutes})  # fmt: skip
        cases, shipped = _cases(fold["test"], trained), _cases(fold["test"], model)
        pooled += cases
        pooled_shipped += shipped
        mapped = [n for n in MAPPED_BACKGROUNDS if background_patient(n) == held]
        report["folds"][held] = {
            "test_backgrounds": fold["backgrounds"],
            "epochs": stats.get("epoch"),
            "trained": _detection_figures(cases),
            "shipped": _detection_figures(shipped),
            "certain_false_positives": certain_false_positives(trained, real, mapped) if mapped else None,
            "shipped_certain_false_positives": certain_false_positives(model, real, mapped) if mapped else None,
        }
        f = report["folds"][held]["trained"]
        log(f"LOBO {held}: CPM {f['cpm']:.3f}, sens@4FP {f['sensitivity_at_4_fp']:.3f} ({stats.get('epoch')} epochs)")
    report["pooled"] = {"trained": _detection_figures(pooled), "shipped": _detection_figures(pooled_shipped)}
    for key in ("certain_false_positives", "shipped_certain_false_positives"):
        fps = [f[key]["per_volume"] for f in report["folds"].values() if f[key]]
        report["pooled"][key.replace("false_positives", "fp_per_mapped_ct")] = float(np.mean(fps)) if fps else None
    return report


# -- 3. latency -------------------------------------------------------------------------------------
def latency_child(model: str, image: str, repeats: int, crop: bool) -> None:
    """Runs in a fresh process: load-to-result seconds per call and peak RSS."""
    import torch

    from lib.infers.detection import NodeDetection

    torch.set_num_threads(os.cpu_count() or 1)
    times, n_boxes = [], 0
    for _ in range(repeats):
        task = NodeDetection("lymph_node_detection", [model], config={"device": "cpu"})
        start = time.perf_counter()
        _, result = task({"image": image, "image_id": "bench", "device": "cpu", "crop_to_body": crop})
        times.append(time.perf_counter() - start)
        n_boxes = len(result["nodes"])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": times, "peak_rss_gb": peak_gb, "boxes": n_boxes}))


def measure_latency(model: Path, image: Path, repeats: int, crop: bool = True) -> dict:
    cmd = [sys.executable, __file__, "latency", str(model), str(image), str(repeats), str(int(crop))]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    log(f"latency {model.name} crop={crop}: {result['seconds']} s, peak {result['peak_rss_gb']:.2f} GB")
    return result


def reference_checkpoint(path: Path) -> Path:
    spec = DetectorSpec.reference_lung_nodule()
    meta = {"network": spec.to_dict(), "preprocessing": {"modality": "ct", "intensity": DEFAULT_INTENSITY["ct"]}}
    return save_checkpoint(path, "detection", build_detector_network(spec).state_dict(), meta)


# -- 4. same data, same budget ----------------------------------------------------------------------
def budget_training(out: Path, minutes: float, sets: dict[str, Path], quick: bool) -> dict:
    train = out / "train_synthetic"
    if not (train / "synth_manifest.json").exists():
        n = 8 if quick else 24
        synthesize(train, n, modality="ct", seed=TRAIN_SEED, shape=(192, 192, 64), spacing=(1.0, 1.0, 2.0))
    reference = DetectorSpec.reference_lung_nodule()
    # lnnode designs its anchors from the training nodes; the reference keeps its own anchor shapes
    runs = {
        "lnnode": ({}, {}),
        "reference": (
            {**reference.to_dict(), "patch_size": [96, 96, 40], "roi_size": [256, 256, 96]},
            {"spec": {"anchor_shapes": [list(a) for a in reference.anchor_shapes]}},
        ),
    }
    results = {}
    for name, (spec, request) in runs.items():
        model_dir = out / f"budget_{name}"
        start = time.time()
        stats = train_detector(
            train, model_dir, epochs=1000, init="scratch", val_split=0.0, patches_per_image=2,
            spec=spec or None, extra={"max_train_minutes": minutes, **request},
        )  # fmt: skip
        trained = time.time() - start
        m = evaluate_studies(sets["synthetic"], str(model_dir / "lymph_node_detection.pt"), out / f"eval_budget_{name}")
        results[name] = {
            "train_minutes": round(trained / 60, 1),
            "epochs_completed": stats.get("epoch"),
            "cpm": m["cpm"],
            "ap@0.1": m["ap@0.1"],
            "eval_latency_s_mean": m["latency_s"]["mean"],
        }
        log(f"budget {name}: {results[name]}")
    return results


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        latency_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(sys.argv[5])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "detection"))
    parser.add_argument("--model", default=str(DEMO), help="detector checkpoint (default: the demo weights)")
    parser.add_argument("--real-data", default=None, help="real data folder (default: as lnnode synth)")
    parser.add_argument("--quick", action="store_true", help="smaller sets; no reference latency run")
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="training budget per detector")
    parser.add_argument("--lobo-minutes", type=float, default=10.0, help="training budget per leave-out fold")
    parser.add_argument(
        "--lobo-base-minutes", type=float, default=0.0,
        help="train a synthetic-only detector this long first and start every fold from it (default 0: scratch)",
    )  # fmt: skip
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["quality", "organs", "latency", "reference", "budget", "lobo"]
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = Path(args.real_data) if args.real_data else default_real_data_dir()
    model = Path(args.model)
    report: dict = {"model": str(model), "data": "phantoms and real CT backgrounds; not clinical data"}
    report_path = out / "detection.json"
    if report_path.exists():
        report.update(json.loads(report_path.read_text()))

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2))

    if "quality" not in args.skip:
        report["quality"] = quality(model, held_out_sets(out, args.quick), out)
        save()
    if "organs" not in args.skip:
        report["organ_false_positives"] = organ_false_positives(model, real)
        save()
    big = out / "ct512" / "ct_000.nii.gz"
    if not big.exists() and not {"latency", "reference"} <= set(args.skip):
        synthesize(big.parent, 1, modality="ct", seed=512, shape=(512, 512, 160), spacing=(0.78, 0.78, 2.0))
    if "latency" not in args.skip:
        report["latency_cpu"] = {
            "image": "512x512x160 CT phantom at 0.78x0.78x2.0 mm",
            "cpu_threads": os.cpu_count(),
            "lnnode": measure_latency(model, big, 3),
            "lnnode_no_body_crop": measure_latency(model, big, 2, crop=False),
        }
        save()
    if "reference" not in args.skip and not args.quick:
        ref = reference_checkpoint(out / "reference_untrained.pt")
        report.setdefault("latency_cpu", {})["reference_lung_nodule"] = measure_latency(ref, big, 1, crop=False)
        save()
    if "lobo" not in args.skip:
        report["leave_one_background_out"] = leave_one_background_out(
            out, model, real, args.lobo_minutes, args.quick, args.lobo_base_minutes
        )
        save()
    if "budget" not in args.skip:
        minutes = args.budget_minutes / (4 if args.quick else 1)
        report["same_budget"] = budget_training(out, minutes, held_out_sets(out, args.quick), args.quick)
        save()
    print_table(report)
    print_lobo(report)
    return 0


def print_lobo(r: dict) -> None:
    lobo = r.get("leave_one_background_out")
    if not lobo:
        return
    print("\nLeave one background out (real CT backgrounds, inserted nodes; IoU >= 0.1):")
    print("| test patient | volumes / nodes | trained: CPM | sens @ 4 FP | shipped: CPM | sens @ 4 FP |")
    print("|---|---|---|---|---|---|")
    rows = [*lobo["folds"].items(), ("pooled", lobo["pooled"])]
    for name, f in rows:
        t, s = f["trained"], f["shipped"]
        print(f"| {name} | {t['n_volumes']} / {t['n_nodes']} | {t['cpm']:.3f} | {t['sensitivity_at_4_fp']:.3f} "
              f"| {s['cpm']:.3f} | {s['sensitivity_at_4_fp']:.3f} |")  # fmt: skip
    fp, shipped = lobo["pooled"].get("certain_fp_per_mapped_ct"), lobo["pooled"].get("shipped_certain_fp_per_mapped_ct")
    if fp is not None:
        print(f"boxes centred in an organ mask per real CT with a label map, default threshold: fold models {fp:.2f}, "
              f"shipped {shipped:.2f}")  # fmt: skip


def print_table(r: dict) -> None:
    q, lat, b = r.get("quality", {}), r.get("latency_cpu", {}), r.get("same_budget", {})
    print("\n| figure | lnnode | MONAI reference recipe |\n|---|---|---|")
    for name in ("synthetic", "real_background"):
        if name in q:
            print(f"| CPM, held-out {name} (IoU>=0.1) | {q[name]['cpm']:.3f} | |")
            print(f"| AP@0.1, held-out {name} | {q[name]['ap@0.1']:.3f} | |")
    if "organ_false_positives" in r:
        organ = r["organ_false_positives"]["per_volume"]
        print(f"| boxes centred in an organ mask per real CT (default threshold) | {organ:.1f} | |")
    if "lnnode" in lat:
        ref = lat.get("reference_lung_nodule")
        ref_s = f"{ref['seconds'][0] / 60:.1f} min, {ref['peak_rss_gb']:.1f} GB" if ref else "not run"
        ours = lat["lnnode"]
        ours_s = f"{np.median(ours['seconds']):.1f} s, {ours['peak_rss_gb']:.1f} GB"
        print(f"| CPU latency 512x512x160 (median), peak memory | {ours_s} | {ref_s} |")
    if b:
        minutes = b["lnnode"]["train_minutes"]
        print(
            f"| CPM after the same training budget ({minutes} min) "
            f"| {b['lnnode']['cpm']:.3f} | {b['reference']['cpm']:.3f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
