"""One learning curve of ``bench/active_learning_pool.py`` driven through the real server, to check the in-process loop.

    python bench/active_learning_pool_server.py --out bench/out/al_busi --strategy badge --start seeded --repeat 0

The same pool, split, seed cases, budgets and held-out evaluation as the in-process benchmark (its ``--out`` folder
holds the imported studies and the prepared pool), but every step goes through ``monailabel start_server`` with
lnnode on a studies folder of the repeat's pool images:

* models are trained by ``/train/lymph_node_detection_2d`` and ``/train/lymph_node_classification_2d`` from scratch
  on the labelled images (the classifier for as many gradient steps as the in-process loop, no validation split,
  reader-changed nodes not up-weighted, so that it trains on what the in-process loop trains on; the detector, which
  the in-process loop does not have, for ``--det-minutes``);
* the pool is scored by ``/scoring/lymph_node_uncertainty`` (the 2D pipeline on each unlabelled image: *detected*
  boxes, where the in-process loop reads the classifier on the true lesions), the case to read comes from
  ``/activelearning/<strategy>``, the simulated reader runs ``/infer/lymph_node_pipeline_2d`` on it and saves the
  truth as corrections of that result (``PUT /datastore/label``, as ``bench/active_learning.py``'s reader);
* at each budget the published classifier is scored on the held-out lesions exactly as in process.

On a cold start the first batch is the server's cold start (typical cases by appearance) and must be the very batch
the in-process loop picks; the table printed says whether it is.

Writes ``server_<strategy>_<start>_r<repeat>.json`` to ``--out`` (the curve, time per round and its parts,
corrections per case) and prints it beside the in-process runs of the same strategy and setting
(``runs.jsonl``): the repeat's own curve and the mean and 95 % interval over repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "apps" / "lnnode"), str(REPO / "bench")]

from active_learning import Server, reader_label  # noqa: E402
from active_learning_pool import Pool, add_loop_arguments, held_out_auc, log, summarise  # noqa: E402

from lnnode.contracts import CLASSIFICATION_2D, DETECTION_2D, PIPELINE_2D, make_label, parse_label  # noqa: E402
from lnnode.io.checkpoint import load_checkpoint  # noqa: E402
from lnnode.networks.classifier import ClassifierSpec, build_classifier_network  # noqa: E402
from lnnode.selection import representative  # noqa: E402

MODEL_FREE = ("random", "first")  # strategies that read no score: the pool is not scored, no detector is trained


def pool_studies(pool: Pool, source: Path, cases: list[int], labelled: list[int], target: Path) -> Path:
    """A studies folder of the pool images ``cases`` (hard links), the ``labelled`` ones with their truth."""
    if target.exists():
        shutil.rmtree(target)
    (target / "labels" / "final").mkdir(parents=True)
    for i in cases:
        name = pool.cases[i]
        (target / f"{name}.png").hardlink_to(source / f"{name}.png")
    for i in labelled:
        shutil.copy(source / "labels" / "final" / f"{pool.cases[i]}.json", target / "labels" / "final")
    return target


def published_auc(pool: Pool, models: Path, test: np.ndarray) -> float:
    checkpoint = load_checkpoint(models / f"{CLASSIFICATION_2D}.pt")
    network = build_classifier_network(ClassifierSpec.from_dict(checkpoint.meta["network"]))
    network.load_state_dict(checkpoint.state_dict)
    return held_out_auc(pool, [network.eval()], test)


def train_round(server: Server, pool: Pool, labelled: list[int], strategy: str, args) -> dict:
    """Both models from scratch on the labelled images; seconds per model."""
    seconds = {}
    common = {"init": "scratch", "publish": "always", "device": "cpu"}
    if strategy not in MODEL_FREE:
        t0 = time.time()
        status = server.train(DETECTION_2D, {**common, "val_split": 0.2, "max_epochs": args.det_epochs,
                                             "max_train_minutes": args.det_minutes})  # fmt: skip
        seconds["detector"] = round(time.time() - t0, 1)
        if status.get("status") != "DONE":
            raise RuntimeError(f"detector training: {status}")
    n_nodes = sum(len(pool.nodes_of[i]) for i in labelled)
    epochs = math.ceil(args.steps * 16 / n_nodes)  # one epoch draws each node once (batches of 16)
    t0 = time.time()
    status = server.train(CLASSIFICATION_2D, {**common, "val_split": 0, "max_epochs": epochs, "changed_weight": 1})
    seconds["classifier"] = round(time.time() - t0, 1)
    if status.get("status") != "DONE":
        raise RuntimeError(f"classifier training: {status}")
    return seconds


def read_batch(client, studies: Path, source: Path, strategy: str, k: int, corrects: bool) -> list:
    """The simulated reader: K cases from the strategy, each saved as final with its truth (with ``corrects``, as
    corrections of the pipeline's result)."""
    cases = []
    for _ in range(k):
        served = client.next_sample(strategy, {})
        image_id = served.get("id")
        if not image_id:
            break
        truth = parse_label((source / "labels" / "final" / f"{image_id}.json").read_bytes())
        if corrects:
            _, result = client.infer(PIPELINE_2D, image_id, {})
            label = reader_label(result, truth)
        else:  # nothing to correct yet: the reader draws the lesions
            nodes = [{**n, "origin": "added"} for n in truth["nodes"]]
            label = make_label(image_id, nodes, [], reviewer="simulated-reader")
        path = studies.parent / "submitted" / f"{image_id}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(label))
        answer = client.save_label(image_id, str(path), tag="final")
        said = {key: served[key] for key in ("score", "uncertainty", "cold_start") if key in served}
        cases.append({"image": image_id, "corrections": answer.get("review", {}).get("corrections"), **said})
    return cases


def server_curve(pool: Pool, source: Path, strategy: str, start: str, repeat: int, args) -> dict:
    from monailabel.client import MONAILabelClient

    seed = 1000 * repeat + 17  # as the in-process curve
    cases, test = pool.split(seed, args.test_share)
    seeds = []
    if start == "seeded":
        seeds = sorted(np.random.default_rng(seed).choice(len(cases), args.seed_cases, replace=False).tolist())
    index = {pool.cases[i]: j for j, i in enumerate(cases)}
    work = args.out / f"server_{strategy}_{start}_r{repeat}"
    studies = pool_studies(pool, source, cases.tolist(), cases[seeds].tolist(), work / "studies")
    (work / "models").mkdir(exist_ok=True)
    server = Server(studies, work / "models", work / "server.log", {"auto_train_every": "0"})
    client = MONAILabelClient(server.url)
    labelled, points, trained = list(seeds), [], False
    try:
        if seeds:
            train_round(server, pool, cases[labelled].tolist(), strategy, args)
            trained = True
        for budget in args.budgets:
            began, parts = time.time(), {}
            if strategy not in MODEL_FREE:  # before any model: the appearances of the cold start
                t0 = time.time()
                server.post("/scoring/lymph_node_uncertainty?run_sync=true")
                parts["scoring"] = round(time.time() - t0, 1)
            t0 = time.time()
            corrects = trained and strategy not in MODEL_FREE  # a detector to correct
            read = read_batch(client, studies, source, strategy, budget - len(labelled), corrects)
            parts["reading"] = round(time.time() - t0, 1)
            labelled += [index[c["image"]] for c in read]
            if read or not trained:  # as in process: nothing new read, the models stay
                parts.update(train_round(server, pool, cases[labelled].tolist(), strategy, args))
            trained = True
            auc = published_auc(pool, work / "models", test)
            corrections = [c["corrections"] for c in read if c["corrections"] is not None]
            points.append({"labels": budget, "auc": round(auc, 4), "seconds": round(time.time() - began, 1),
                           "parts": parts, "corrections_per_case": float(np.mean(corrections)) if corrections
                           else None, "cases": read})  # fmt: skip
            log(f"server {strategy} {start} r{repeat} at {budget}: auc {auc:.3f} {parts}")
    finally:
        server.stop()
    run = {"strategy": strategy, "start": start, "repeat": repeat, "seed": seed, "pool": len(cases),
           "test_images": len(test), "points": points, "server": True}  # fmt: skip
    if start == "cold" and strategy not in MODEL_FREE:  # the in-process loop's first batch, for comparison
        first = representative(pool.looks[cases], np.zeros(len(cases), bool), args.budgets[0])
        run["first_batch_in_process"] = [pool.cases[cases[i]] for i in first]
        run["first_batch_server"] = [c["image"] for c in points[0]["cases"]]
    return run


def compare(run: dict, runs_file: Path) -> str:
    """The server's curve beside the in-process ones of the same strategy and start."""
    budgets = tuple(p["labels"] for p in run["points"])
    mine = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    # each budget trains from scratch on what was read before it: a longer curve's first points are a shorter one's
    mine = [{**r, "points": r["points"][: len(budgets)]} for r in mine if r["start"] == run["start"]]
    mine = [r for r in mine if tuple(p["labels"] for p in r["points"]) == budgets]
    lines = [
        "| curve | " + " | ".join(str(b) for b in budgets) + " |",
        "|---" * (len(budgets) + 1) + "|",
        f"| server, repeat {run['repeat']} | " + " | ".join(f"{p['auc']:.3f}" for p in run["points"]) + " |",
    ]
    same = [r for r in mine if r["strategy"] == run["strategy"]]
    twin = next((r for r in same if r["repeat"] == run["repeat"]), None)
    if twin:
        lines.append(
            f"| in process, repeat {run['repeat']} | " + " | ".join(f"{p['auc']:.3f}" for p in twin["points"]) + " |"
        )
    if len(same) > 1:
        t = summarise(same)[run["start"]]["strategies"][run["strategy"]]
        cells = [f"{m:.3f} ± {c:.3f}" for m, c in zip(t["mean"], t["ci95"], strict=True)]
        lines.append(f"| in process, mean of {t['runs']} | " + " | ".join(cells) + " |")
    if "first_batch_server" in run:
        same = run["first_batch_server"] == run["first_batch_in_process"]
        lines.append(f"\nfirst batch (cold start) the same as in process, in the same order: {same}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the in-process benchmark's --out (studies, pool)")
    ap.add_argument("--strategy", default="badge", choices=["random", "first", "uncertain", "badge"])
    ap.add_argument("--start", default="seeded", choices=["cold", "seeded"])
    ap.add_argument("--repeat", type=int, default=0)
    add_loop_arguments(ap)
    ap.add_argument("--det-epochs", type=int, default=30, help="detector epochs per training (at most)")
    ap.add_argument("--det-minutes", type=float, default=1.5, help="detector wall-clock budget per training")
    args = ap.parse_args()
    source = args.out / "studies"
    pool = Pool(source, args.out / "pool.npz")
    run = server_curve(pool, source, args.strategy, args.start, args.repeat, args)
    (args.out / f"server_{args.strategy}_{args.start}_r{args.repeat}.json").write_text(json.dumps(run, indent=1))
    print(compare(run, args.out / "runs.jsonl"))


if __name__ == "__main__":
    main()
