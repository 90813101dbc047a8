"""Scale benchmarks: lnnode past one process, on this machine.

    python bench/scale.py --sections ray            # 20 CT phantoms of 96 x 96 x 48 voxels
    python bench/scale.py --sections ray --full     # 20 CT phantoms of 192 x 192 x 64 at 1 x 1 x 2 mm (the demo's)
    python bench/scale.py --sections ddp            # training: one process vs 2 (gloo on the CPU; --device cuda)

Each section is a function of ``SECTIONS`` (add one there: it takes the parsed arguments and returns its figures)
and writes its part of ``--out``/scale.json, keeping the other sections' parts; ``--sections a,b`` picks them.

* ``ray``: ``lnnode infer`` over the phantoms, once in one process (torch on every core) and once on a local Ray
  with ``--workers`` workers (one model copy and one torch thread each), each as the ``lnnode`` command a user runs:
  wall time (what the user waits: Ray's start and each worker's model load included), cases per second, the mean
  pipeline seconds per case (``latencies.total`` of the results), and whether both wrote the same results. The
  machine's load average is recorded with the figures: on a shared machine they move with it.

* ``ddp``: ``lnnode train`` of the detector and the classifier from scratch on CT phantoms, once in one process and
  once as ``--gpus N`` (on this machine: N gloo processes on the CPU; with ``--device cuda``, N GPUs): seconds per
  epoch after the first (the first reads and caches the images), the whole command's wall time, and the best
  validation metric of each (not comparable run to run beyond a rough check: a DDP step is two half batches).

* ``replicas``: ``bench/load.py --replicas 2``: 8 concurrent pipeline requests to one server and to 2 replicas on
  one studies folder (round-robin from the client), throughput and p50/p95 latency (its ``load.json``, embedded).

Phantoms, demo models, CPU only unless ``--device cuda``; the figures are about throughput, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.io.atomic import atomic_write_text  # noqa: E402
from lnnode.phantoms import synthesize  # noqa: E402

QUICK = {"shape": (96, 96, 48), "spacing": (2.0, 2.0, 3.0)}
FULL = {"shape": (192, 192, 64), "spacing": (1.0, 1.0, 2.0)}


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}


def _phantoms(out: Path, cases: int, full: bool) -> tuple[Path, dict[str, Any]]:
    size = FULL if full else QUICK
    folder = out / f"phantoms_{cases}_{'x'.join(map(str, size['shape']))}"
    if not (folder / "synth_manifest.json").exists():
        synthesize(folder, cases, modality="ct", seed=2026, label_tag="ground_truth", **size)
    return folder, {"cases": cases, "shape": list(size["shape"]), "spacing_mm": list(size["spacing"])}


def _infer(source: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """One ``lnnode infer`` command over every case (``--force``: none skipped); its wall time and summary."""
    cmd = [sys.executable, "-m", "lnnode.cli", "infer", str(source), "--out", str(out), "--no-progress", "--force"]
    load = _machine()["load_average_1m"]
    begin = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*cmd, *extra], capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd + extra)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if not p.name.endswith(".mrk.json")]
    per_case = [r["latencies"]["total"] for r in results]
    return {
        "wall_s": round(wall, 1),
        "cases_per_s": round(len(results) / wall, 3),
        "pipeline_s_per_case": round(sum(per_case) / len(per_case), 2),
        "load_average_1m_before": load,
        "summary": done.stdout.strip().splitlines()[-1],
    }


def _same_results(a: Path, b: Path) -> bool:
    def results(folder: Path) -> dict[str, Any]:
        out = {}
        for path in sorted(folder.glob("*.json")):
            doc = json.loads(path.read_text())
            doc.pop("latencies", None)  # timings differ from run to run
            out[path.name] = doc
        return out

    return results(a) == results(b)


def ray_section(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential vs Ray throughput of ``lnnode infer`` (module doc)."""
    import ray

    out = Path(args.out) / "ray"
    source, data = _phantoms(out, args.cases, args.full)
    tta = ["--tta", str(args.tta)] if args.tta else []
    sequential = _infer(source, out / "sequential", tta)
    print(f"ray: sequential {sequential['wall_s']} s ({sequential['cases_per_s']} case/s)")
    on_ray = _infer(source, out / "ray", [*tta, "--ray", "--workers", str(args.workers)])
    print(f"ray: {args.workers} Ray workers {on_ray['wall_s']} s ({on_ray['cases_per_s']} case/s)")
    return {
        "data": {**data, "kind": "synthetic CT phantoms", "tta": args.tta or "default (8)"},
        "machine": _machine(),
        "ray_version": ray.__version__,
        "workers": args.workers,
        "sequential": sequential,
        "ray": on_ray,
        "speedup": round(sequential["wall_s"] / on_ray["wall_s"], 2),
        "same_results": _same_results(out / "sequential", out / "ray"),
    }


def _train(model: str, studies: Path, model_dir: Path, args: argparse.Namespace, gpus: int) -> dict[str, Any]:
    """One ``lnnode train`` command; its wall time and seconds per epoch after the first (from the train stats)."""
    cmd = [sys.executable, "-m", "lnnode.cli", "train", model, "--studies", str(studies), "--model-dir",
           str(model_dir), "--epochs", str(args.epochs), "--init", "scratch", "--publish", "always", "--device",
           args.device, "--gpus", str(gpus), "--seed", "0", "--label-tag", "ground_truth"]  # fmt: skip
    if model == "lymph_node_detection":
        cmd += ["--patches", "2", "--spec", json.dumps({"patch_size": [64, 64, 32], "roi_size": [96, 96, 48]})]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    load = _machine()["load_average_1m"]
    begin = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    stats = json.loads((model_dir / f"{model}_train_stats.json").read_text())
    elapsed = [h["elapsed_s"] for h in stats["history"]]
    per_epoch = (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1) if len(elapsed) > 1 else None
    return {
        "processes": gpus,
        "wall_s": round(wall, 1),
        "s_per_epoch_after_first": None if per_epoch is None else round(per_epoch, 2),
        "first_epoch_s": elapsed[0],
        "best_metric": stats["best_metric"],
        "key_metric": stats["key_metric_name"],
        "load_average_1m_before": load,
    }


def ddp_section(args: argparse.Namespace) -> dict[str, Any]:
    """Single-process vs distributed data parallel training time per epoch (module doc)."""
    out = Path(args.out) / "ddp"
    studies, data = _phantoms(out, args.train_cases, args.full)
    figures: dict[str, Any] = {}
    for model in ("lymph_node_detection", "lymph_node_classification"):
        runs = {str(n): _train(model, studies, out / f"models_{model}_{n}", args, n) for n in (1, args.processes)}
        one, many = runs["1"]["s_per_epoch_after_first"], runs[str(args.processes)]["s_per_epoch_after_first"]
        figures[model] = {"runs": runs, "speedup_per_epoch": round(one / many, 2) if one and many else None}
        print(f"ddp: {model} {one} s/epoch in one process, {many} s/epoch in {args.processes}")
    return {
        "data": {**data, "kind": "synthetic CT phantoms", "epochs": args.epochs},
        "device": args.device,
        "machine": _machine(),
        **figures,
    }


def replicas_section(args: argparse.Namespace) -> dict[str, Any]:
    """One server vs 2 replicas under concurrent load: bench/load.py's figures (module doc)."""
    out = Path(args.out) / "replicas"
    cmd = [sys.executable, str(REPO / "bench" / "load.py"), "--out", str(out), "--replicas", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {"command": "python bench/load.py --replicas 2", **json.loads((out / "load.json").read_text())}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ray": ray_section,
    "ddp": ddp_section,
    "replicas": replicas_section,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"), help="output folder")
    parser.add_argument("--full", action="store_true", help="full-size phantoms (192 x 192 x 64 at 1 x 1 x 2 mm)")
    parser.add_argument("--cases", type=int, default=20, help="ray: phantoms to infer (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="ray: Ray workers (default 2)")
    parser.add_argument("--tta", type=int, help="ray: flips averaged per node (default: lnnode infer's, 8)")
    parser.add_argument("--train-cases", type=int, default=16, help="ddp: training phantoms (default 16)")
    parser.add_argument("--epochs", type=int, default=4, help="ddp: epochs per run (default 4)")
    parser.add_argument("--processes", type=int, default=2, help="ddp: processes (GPUs with --device cuda)")
    parser.add_argument("--device", default="cpu", help="ddp: cpu (gloo processes) or cuda (one process per GPU)")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    for name in sections:
        begin = time.perf_counter()
        section = SECTIONS[name](args)
        figures[name] = {**section, "full": args.full, "section_s": round(time.perf_counter() - begin, 1)}
        atomic_write_text(path, json.dumps(figures, indent=2))  # each section's figures kept as soon as it ends
        print(f"{name}: {figures[name]['section_s']} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
