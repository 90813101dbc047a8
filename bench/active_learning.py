"""Active-learning benchmark: a simulated radiologist corrects the served cases through the real server.

    python bench/active_learning.py --out bench/out/active_learning            # about 45 min on 2 cores
    python bench/active_learning.py --out /tmp/al --quick                      # a few minutes
    python bench/active_learning.py --out DIR --summarise RUN1 RUN2 ...         # mean curves of repeated runs
    python bench/active_learning.py --out RUN --strategies uncertain --keep-arms  # re-run one arm of RUN

What it does (phantoms only; nothing here is clinical performance):

1. A pool of synthetic CT phantoms whose truth stays outside the server's studies folder, a fixed
   held-out set, and a few pool cases labelled up front (the seed set). Starting models are trained
   from scratch on the seed set, once, and copied into each arm.
2. Per arm (``uncertain``, ``random``) a real ``monailabel start_server`` with lnnode. Each round:
   (uncertain only) score the unlabelled pool (``/scoring/lymph_node_uncertainty``); ask the strategy
   for a case K times; run ``/infer/lymph_node_pipeline`` on it; the simulated reader compares the
   result with the hidden truth (hit: IoU >= 0.1) and submits the corrected label with
   ``PUT /datastore/label``: true nodes accepted (box set to the truth's, relabelled when the
   classifier's class is wrong), false positives rejected, misses added; then both models are
   fine-tuned through ``/train/`` on every corrected case.
3. After each round the published models are evaluated on the held-out set: detector CPM (IoU >= 0.1)
   and classifier node-level AUC (ground-truth boxes). Reader corrections per case are recorded.

Goal (issue 5): ``uncertain`` reaches ``random``'s final CPM and AUC with at most 60 % of its cases.
The report says whether it did, on these phantoms, at this scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.contracts import CLASSIFICATION, DETECTION, PIPELINE, make_label, parse_label  # noqa: E402
from lnnode.corrections import implied_class  # noqa: E402
from lnnode.evaluation import evaluate_classification, evaluate_studies  # noqa: E402
from lnnode.metrics.detection import match_volume  # noqa: E402
from lnnode.phantoms import synthesize  # noqa: E402
from lnnode.training import train_model  # noqa: E402

PHANTOM = {"modality": "ct", "shape": (128, 128, 48), "spacing": (1.5, 1.5, 2.0)}
# small networks and patches: the benchmark measures which cases help, not the best model
DETECTOR_SPEC = {"patch_size": [64, 64, 32], "roi_size": [128, 128, 48]}
CLASSIFIER_SPEC = {"crop_mm": 32.0, "crop_spacing": 1.5, "widths": [8, 16, 32]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -----------------------------------------------------------------------------------------------
def make_data(
    out: Path, n_pool: int, n_test: int, n_seed: int, real_share: float = 0.0, seed: int = 3030
) -> tuple[Path, Path, Path]:
    """(pool truth folder, held-out folder, seed studies folder). With ``real_share`` that share of the
    pool and of the held-out set are real CT backgrounds with inserted nodes (``realct_*``): a second
    kind of case the seed set (synthetic only) has not shown the models."""
    truth, heldout, seed_studies = out / "pool_truth", out / "heldout", out / "seed" / "studies"
    n_pool_real, n_test_real = int(round(n_pool * real_share)), int(round(n_test * real_share))
    real = {"modality": "ct", "background": "real", "prefix": "realct_"}
    if not (truth / "synth_manifest.json").exists():
        synthesize(truth, n_pool - n_pool_real, seed=seed, **PHANTOM)
        if n_pool_real:
            synthesize(truth, n_pool_real, seed=seed + 2, **real)
    if not (heldout / "synth_manifest.json").exists():
        synthesize(heldout, n_test - n_test_real, seed=seed + 1, **PHANTOM)
        if n_test_real:
            synthesize(heldout, n_test_real, seed=seed + 3, **real)
    if not seed_studies.exists():
        (seed_studies / "labels" / "final").mkdir(parents=True)
        for image_id in pool_ids(truth):
            shutil.copy(truth / f"{image_id}.nii.gz", seed_studies)  # images only: the truth stays hidden
        for image_id in pool_ids(truth)[:n_seed]:  # synthetic cases sort first: the seed set is synthetic
            shutil.copy(truth / "labels" / "final" / f"{image_id}.json", seed_studies / "labels" / "final")
    return truth, heldout, seed_studies


def pool_ids(truth: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in truth.glob("*.nii.gz"))


def train_seed_models(seed_studies: Path, models: Path, det_epochs: int, cls_epochs: int) -> None:
    if (models / f"{DETECTION}.pt").exists() and (models / f"{CLASSIFICATION}.pt").exists():
        return
    log("training the starting models on the seed set (scratch)")
    common = {"init": "scratch", "val_split": 0.34, "device": "cpu"}
    train_model(DETECTION, seed_studies, models, epochs=det_epochs, spec=DETECTOR_SPEC, **common,
                extra={"patches_per_image": 2, "publish": "always"})  # fmt: skip
    train_model(CLASSIFICATION, seed_studies, models, epochs=cls_epochs, spec=CLASSIFIER_SPEC, **common,
                extra={"publish": "always"})  # fmt: skip


# -- the simulated reader -----------------------------------------------------------------------------------
def reader_label(result: dict, truth: dict) -> dict:
    """What a careful reader submits for a served case: the truth, expressed as corrections of the result."""
    pred, gt = result["nodes"], truth["nodes"]
    match = match_volume(pred, gt, "iou", 0.1)
    nodes, rejected, found = [], [], set()
    for node, hit in zip(pred, match.hit, strict=True):
        if hit < 0:
            rejected.append({"center": node["center"], "size": node["size"], "from_node": node["id"]})
            continue
        found.add(int(hit))
        t = gt[int(hit)]
        moved = bool(np.abs(np.subtract(node["center"], t["center"])).max() > 0.5)
        moved = moved or bool(np.abs(np.subtract(node["size"], t["size"])).max() > 0.5)
        relabelled = implied_class(node) not in (None, t["class"])
        entry = {"center": t["center"], "size": t["size"], "class": t["class"], "origin": "model"}
        entry.update({"edited": moved or relabelled, "from_node": node["id"]})
        nodes.append(entry)
    for i, t in enumerate(gt):
        if i not in found:
            nodes.append({"center": t["center"], "size": t["size"], "class": t["class"], "origin": "added"})
    return make_label(result["image"], nodes, rejected, reviewer="simulated-reader")


# -- the server ---------------------------------------------------------------------------------------------
class Server:
    def __init__(self, studies: Path, models: Path, log_path: Path, conf: dict[str, str] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "lnnode"),
               "--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        conf = {"model_dir": str(models), "demo_weights": "false", "device": "cpu", **(conf or {})}
        for key, value in conf.items():
            cmd += ["--conf", key, value]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.update(MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", MONAI_LABEL_AUTO_UPDATE_SCORING="false")
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {log_path}")
            try:
                urllib.request.urlopen(f"{self.url}/info/", timeout=5).read()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server not ready; see {log_path}")

    def post(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=3600) as r:
            return json.loads(r.read())

    def train(self, model: str, params: dict) -> dict:
        self.post(f"/train/{model}", params)
        while True:
            time.sleep(2)
            with urllib.request.urlopen(f"{self.url}/train/", timeout=60) as r:
                status = json.loads(r.read())
            if status.get("status") in ("DONE", "ERROR"):
                return status

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


# -- one arm ------------------------------------------------------------------------------------------------
def evaluate(models: Path, heldout: Path, out: Path) -> dict:
    det = evaluate_studies(heldout, str(models / f"{DETECTION}.pt"), out / "detection")
    cls = evaluate_classification(heldout, str(models / f"{CLASSIFICATION}.pt"), out / "classification", n_boot=200)
    return {"cpm": det["cpm"], "auc": cls["nodes"]["scorers"]["classifier"]["auc"]}


def run_arm(strategy: str, out: Path, truth: Path, heldout: Path, seed_dir: Path, args) -> list[dict]:
    from monailabel.client import MONAILabelClient

    arm = out / strategy
    if arm.exists():
        shutil.rmtree(arm)
    shutil.copytree(seed_dir, arm)
    server = Server(arm / "studies", arm / "models", arm / "server.log")
    client = MONAILabelClient(server.url)
    n_seed = len(list((arm / "studies" / "labels" / "final").glob("*.json")))
    history = [{"round": 0, "n_corrected": 0, "n_labelled": n_seed, **evaluate(arm / "models", heldout, arm / "eval0")}]
    log(f"{strategy} round 0: {history[-1]}")
    try:
        for r in range(1, args.rounds + 1):
            begin = time.time()
            if strategy == "uncertain":
                server.post("/scoring/lymph_node_uncertainty?run_sync=true")
            corrections = []
            for _ in range(args.k):
                served = client.next_sample(strategy, {})
                image_id = served.get("id")
                if not image_id:
                    break
                _, result = client.infer(PIPELINE, image_id, {})
                truth_label = parse_label((truth / "labels" / "final" / f"{image_id}.json").read_bytes())
                label = reader_label(result, truth_label)
                path = arm / "submitted" / f"{image_id}.json"
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(label))
                answer = client.save_label(image_id, str(path), tag="final")
                ranked = {k: served[k] for k in ("uncertainty",) if k in served}
                corrections.append({"image": image_id, **answer.get("review", {}), **ranked})
            # a quarter of the corrected cases validate: the best epoch, and the detector's served score
            # threshold (the most sensitive point with <= 1 false positive per volume) come from them
            common = {"init": "current", "val_split": args.val_split, "publish": "always", "device": "cpu"}
            det = server.train(DETECTION, {**common, "max_epochs": args.det_epochs, "patches_per_image": 2})
            cls = server.train(CLASSIFICATION, {**common, "max_epochs": args.cls_epochs})
            metrics = evaluate(arm / "models", heldout, arm / f"eval{r}")
            n_labelled = len(list((arm / "studies" / "labels" / "final").glob("*.json")))
            history.append({
                "round": r, "n_corrected": n_labelled - n_seed, "n_labelled": n_labelled, **metrics,
                "corrections_per_case": float(np.mean([c.get("corrections", 0) for c in corrections])),
                "cases": corrections, "train_status": [det.get("status"), cls.get("status")],
                "seconds": round(time.time() - begin, 1),
            })  # fmt: skip
            log(f"{strategy} round {r}: cpm {metrics['cpm']:.3f} auc {metrics['auc']:.3f} "
                f"corrections/case {history[-1]['corrections_per_case']:.1f} ({history[-1]['seconds']} s)")  # fmt: skip
    finally:
        server.stop()
    return history


# settings that make two runs' arms comparable (the data, the seed models, the loop)
SAME_RUN = ("pool", "test", "seed_cases", "k", "rounds", "seed_det_epochs", "seed_cls_epochs", "det_epochs",
            "cls_epochs", "val_split", "real_share", "seed")  # fmt: skip


def kept_arms(path: Path, args) -> tuple[dict, list[str]]:
    """The arms of an earlier report in this folder that this run does not repeat, and their names (after
    checking that the earlier run had the same data and loop settings)."""
    if not path.exists():
        raise SystemExit(f"--keep-arms: no earlier report {path}")
    earlier = json.loads(path.read_text())
    defaults = {"seed": 3030}
    differ = [k for k in SAME_RUN if earlier["settings"].get(k, defaults.get(k)) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--keep-arms: the earlier run differs in {differ}")
    arms = {a: h for a, h in earlier["arms"].items() if a not in args.strategies}
    return arms, sorted(arms)


def cases_to_reach(history: list[dict], target: dict) -> dict:
    """The corrected cases an arm needed to reach ``target``'s CPM and AUC (None: never)."""
    out = {}
    for key in ("cpm", "auc"):
        reached = [h["n_corrected"] for h in history if h[key] >= target[key]]
        out[key] = min(reached) if reached else None
    return out


def goal(uncertain: list[dict], random: list[dict]) -> dict:
    """Issue 5's goal: ``uncertain`` reaches ``random``'s final CPM and AUC with at most 60 % of its cases."""
    final = random[-1]
    need = cases_to_reach(uncertain, final)
    total = final["n_corrected"]
    return {
        "random_final": {k: final[k] for k in ("n_corrected", "cpm", "auc")},
        "uncertain_cases_to_reach_it": need,
        "share_of_random_cases": {k: (None if v is None else v / max(total, 1)) for k, v in need.items()},
        "met (<= 60 %)": all(v is not None and v <= 0.6 * total for v in need.values()),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for strategy, history in report["arms"].items():
        n = [h["n_corrected"] for h in history]
        axes[0].plot(n, [h["cpm"] for h in history], marker="o", label=strategy)
        axes[1].plot(n, [h["auc"] for h in history], marker="o", label=strategy)
        axes[2].plot(n[1:], [h["corrections_per_case"] for h in history[1:]], marker="o", label=strategy)
    for ax, title in zip(axes, ("held-out CPM (IoU >= 0.1)", "held-out node AUC", "corrections per case"), strict=True):
        ax.set_xlabel("corrected cases")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Simulated reader on CT phantoms (not clinical data)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summarise(runs: list[Path], png: Path) -> dict:
    """Mean learning curves over repeated runs (same settings, other phantom seeds), the goal judged on
    the means and per run, and one plot: mean with the runs' range, per arm."""
    reports = [json.loads((run / "active_learning.json").read_text()) for run in runs]
    arms = [a for a in reports[0]["arms"] if all(a in r["arms"] for r in reports)]  # e.g. also MONAI's "first"
    means: dict[str, list[dict]] = {}
    for arm in arms:
        curves = [r["arms"][arm] for r in reports]
        n = [h["n_corrected"] for h in curves[0]]
        if any([h["n_corrected"] for h in c] != n for c in curves):
            raise SystemExit(f"runs differ in their rounds ({arm}): summarise runs made with the same --k/--rounds")
        means[arm] = []
        for i, n_corrected in enumerate(n):
            point = {"n_corrected": n_corrected}
            for key in ("cpm", "auc", "corrections_per_case"):
                values = [c[i].get(key) for c in curves if c[i].get(key) is not None]
                if values:
                    point[key] = float(np.mean(values))
                    point[f"{key}_min"], point[f"{key}_max"] = float(np.min(values)), float(np.max(values))
            means[arm].append(point)
    summary: dict = {
        "runs": [str(r) for r in runs],
        "seeds": [r["settings"].get("seed", 3030) for r in reports],
        "data": reports[0]["data"],
        "mean": means,
        "per_run_goal": [r.get("goal") for r in reports],
    }
    if {"uncertain", "random"} <= set(means):
        summary["goal_on_means"] = goal(means["uncertain"], means["random"])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = ("held-out CPM (IoU >= 0.1)", "held-out node AUC", "corrections per case")
    for arm, curve in means.items():
        for ax, key in zip(axes, ("cpm", "auc", "corrections_per_case"), strict=True):
            points = [p for p in curve if key in p]
            n = [p["n_corrected"] for p in points]
            (line,) = ax.plot(n, [p[key] for p in points], marker="o", label=f"{arm} (mean)")
            ax.fill_between(n, [p[f"{key}_min"] for p in points], [p[f"{key}_max"] for p in points],
                            color=line.get_color(), alpha=0.15, label=f"{arm} (range of runs)")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("corrected cases")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Simulated reader on CT phantoms, {len(runs)} runs (not clinical data)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "active_learning"))
    parser.add_argument("--pool", type=int, default=32, help="pool cases (the seed set included)")
    parser.add_argument("--test", type=int, default=16, help="held-out cases")
    parser.add_argument("--seed-cases", type=int, default=3, help="pool cases labelled before the loop")
    parser.add_argument("--k", type=int, default=3, help="cases corrected between trainings")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed-det-epochs", type=int, default=40, help="detector epochs on the seed set")
    parser.add_argument("--seed-cls-epochs", type=int, default=10, help="classifier epochs on the seed set")
    parser.add_argument("--det-epochs", type=int, default=10, help="detector fine-tuning epochs per round")
    parser.add_argument("--cls-epochs", type=int, default=10, help="classifier fine-tuning epochs per round")
    parser.add_argument("--val-split", type=float, default=0.25, help="validation share of the labelled cases")
    parser.add_argument(
        "--real-share",
        type=float,
        default=0.0,
        help="share of pool and held-out cases on real CT backgrounds (a second kind of case)",
    )
    parser.add_argument("--seed", type=int, default=3030, help="phantom seed (pool; held-out and real: +1, +2, +3)")
    parser.add_argument("--strategies", nargs="+", default=["uncertain", "random"])
    parser.add_argument("--keep-arms", action="store_true",
                        help="keep the arms of --out's earlier report that --strategies does not run")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny run: 10-case pool, 2 rounds of 2 cases")
    parser.add_argument("--summarise", nargs="+", metavar="RUN", help="mean curves of earlier runs' --out folders")
    args = parser.parse_args()
    if args.summarise:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = summarise([Path(r) for r in args.summarise], out / "active_learning_runs.png")
        (out / "active_learning_runs.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: summary[k] for k in ("seeds", "goal_on_means") if k in summary}, indent=2))
        return 0
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("monailabel").setLevel(logging.WARNING)
    if args.quick:
        args.pool, args.test, args.seed_cases, args.k, args.rounds = 10, 3, 3, 2, 2
        args.det_epochs, args.cls_epochs, args.seed_det_epochs, args.seed_cls_epochs = 1, 2, 2, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept, kept_names = kept_arms(out / "active_learning.json", args) if args.keep_arms else ({}, [])
    truth, heldout, seed_studies = make_data(out, args.pool, args.test, args.seed_cases, args.real_share, args.seed)
    train_seed_models(seed_studies, out / "seed" / "models", args.seed_det_epochs, args.seed_cls_epochs)
    report = {
        "data": (
            f"CT phantoms: synthetic {PHANTOM}, and a {args.real_share:.0%} share on real TotalSegmentator CT "
            f"backgrounds with inserted nodes; pool {args.pool} (seed set {args.seed_cases}, synthetic), "
            f"held-out {args.test}"
        ),
        "settings": vars(args),
        "hit_criterion": "IoU >= 0.1 (detection CPM and the simulated reader's matching)",
        "arms": kept,
        "kept_arms": kept_names,
    }
    for strategy in args.strategies:
        report["arms"][strategy] = run_arm(strategy, out, truth, heldout, out / "seed", args)
        (out / "active_learning.json").write_text(json.dumps(report, indent=2, default=float))
    if {"uncertain", "random"} <= set(report["arms"]):
        report["goal"] = goal(report["arms"]["uncertain"], report["arms"]["random"])
        log(f"goal: {report['goal']}")
    (out / "active_learning.json").write_text(json.dumps(report, indent=2, default=float))
    plot(report, out / "active_learning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
