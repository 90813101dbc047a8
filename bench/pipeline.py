"""Pipeline benchmark: metastasis classifier vs the rule baselines, measurement error, and CPU cost.

    python bench/pipeline.py --out bench/out/pipeline            # about 6 min on 2 cores
    python bench/pipeline.py --out bench/out/pipeline --skip latency

What it measures, and on what data (nothing here is clinical performance):

1. Node level, on held-out phantoms the demo models never saw (synthetic CT on an oblique 1 x 1 x 2 mm
   grid; real TotalSegmentator CT backgrounds with inserted nodes, many of them real ULS23 shapes):
   the classifier's ROC AUC (bootstrap 95% CI) beside the size rule (short axis >= 10 mm) and the
   morphology rule, all on the same ground-truth nodes (their labelled boxes), with sensitivity,
   specificity, PPV and NPV (classifier at its Youden point, rules at "suspicious").
2. Short-axis error of the measurement against the phantom's true mask, on the real node shapes in
   real CT backgrounds.
3. Patient level: the pipeline (detector + classifier) N-stage hint against the truth (the count of
   metastatic nodes), Cohen's kappa.
4. CPU latency (load to result, fresh process) and peak memory of the whole pipeline on a
   512 x 512 x 160 CT phantom at 0.78 x 0.78 x 2.0 mm.
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

from lnnode.evaluation import evaluate_classification  # noqa: E402
from lnnode.phantoms import synthesize  # noqa: E402

DEMO = REPO / "apps" / "lnnode" / "model" / "demo"
HELD_OUT_SEED = 60606


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def held_out_sets(out: Path, quick: bool) -> dict[str, Path]:
    sets = {"synthetic": out / "heldout_synthetic", "real_background": out / "heldout_real"}
    if not (sets["synthetic"] / "synth_manifest.json").exists():
        synthesize(
            sets["synthetic"], 6 if quick else 20, modality="ct", seed=HELD_OUT_SEED,
            shape=(160, 160, 48), spacing=(1.0, 1.0, 2.0), direction="oblique",
        )  # fmt: skip
    if not (sets["real_background"] / "synth_manifest.json").exists():
        n_real = 3 if quick else 24
        synthesize(sets["real_background"], n_real, modality="ct", seed=HELD_OUT_SEED + 1, background="real")
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


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        latency_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "pipeline"))
    parser.add_argument("--detector", default=str(DEMO / "lymph_node_detection.pt"))
    parser.add_argument("--classifier", default=str(DEMO / "lymph_node_classification.pt"))
    parser.add_argument("--quick", action="store_true", help="smaller held-out sets, one latency run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "latency"])
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
        report["latency_cpu"] = {
            "image": "512x512x160 CT phantom at 0.78x0.78x2.0 mm",
            "cpu_threads": os.cpu_count(),
            "pipeline": measure_latency(Path(args.detector), Path(args.classifier), big, 1 if args.quick else 3),
        }
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
    lat = r.get("latency_cpu", {}).get("pipeline")
    if lat:
        median = np.median(lat["seconds"])
        print(f"\nCPU pipeline latency 512x512x160 (median): {median:.1f} s, peak {lat['peak_rss_gb']:.1f} GB")


if __name__ == "__main__":
    sys.exit(main())
