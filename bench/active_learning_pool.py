"""Active learning on a large real pool, in process: which strategy reaches a quality with the fewest labels read.

    python bench/active_learning_pool.py --out bench/out/al_pool                    # ultrasound, both starts, 5 repeats
    python bench/active_learning_pool.py --out /tmp/al --repeats 1 --budgets 10 20  # a quick look

Data: the real breast-ultrasound cases of ``../shared/data/real/busi/`` that hold a lesion (benign or malignant:
a proxy, not lymph nodes), imported as lnnode studies. Per repeat the near-duplicate ``group``\\ s are dealt at
random (the repeat's seed) into a held-out test set (``--test-share``) and the pool: no group on both sides.

Per repeat, setting and strategy, the reader labels cases of the pool up to each budget (``--budgets``; ``cold``:
from nothing, the first batch chosen without a model; ``seeded``: from ``--seed-cases`` random cases, the same for
every strategy). At each budget the classifier is trained **from scratch** on the labelled cases for ``--steps``
gradient steps, exactly as ``lymph_node_classification_2d`` trains (its crops, augmentation, class-balanced
sampling, optimiser; :func:`lib.trainers.classification.node_crops`), and scored on the held-out lesions (node-level
ROC AUC, true boxes, 4-flip TTA). The next batch is then chosen from what that model says of the pool:

* ``random``; ``first`` (MONAI Label's: id order, no model);
* ``uncertain`` (today's server strategy on the classifier term alone: highest entropy of p first);
* ``novelty`` (what the server's ``uncertain`` did with the ``--conf al_novelty_weight`` it no longer has: entropy
  plus ``--novelty-weight`` times the appearance distance to the nearest labelled case or case already in the
  batch, greedily; kept here as the evidence for its removal);
* ``coreset`` (k-centre on the classifier's embeddings), ``badge`` (gradient embeddings, k-means++: uncertainty
  and diversity of the batch at once);
* ``oracle`` (reads the held-out answers: at each budget it trains on ``--oracle-candidates`` random batches and the
  batches ``uncertain`` and ``badge`` would choose, and keeps the batch whose model scores best on the held-out
  set): not a strategy one can ship; it shows how much the choice of cases can matter on this pool, i.e. that the
  design can show a difference where there is one.

On a cold start every model-driven strategy picks its first batch as the server's ``uncertain`` and ``badge`` do
before any model (:func:`lnnode.selection.representative` on the images' appearances: typical cases of the kinds
not read yet, one at a time); ``random`` and ``first`` keep their own rule.

``--ensemble N`` trains N classifiers per budget (seeds apart) and averages their probabilities, for the held-out
AUC and for the strategies (embeddings side by side): less noise per point, N times the time.

Reported per setting: mean AUC per budget with a 95 % t-interval over repeats, and per strategy the number of labels
at which it first reaches random's final mean AUC (on the mean curve and per run), and in how many repeats it is at
or above random at every budget. The in-process loop trains as the server's trainer does but without the server;
``active_learning_pool_server.py`` drives one curve through the real server to check that both give the same
curve. The 3D setting and detection are not here yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "apps" / "lnnode"), str(REPO / "bench")]

from lib.scoring.appearance import BINS, appearance_of  # noqa: E402
from lib.trainers.classification import JITTER_MM, NodeCropDataset, node_crops  # noqa: E402
from lnnode.data.table import read_groups  # noqa: E402
from lnnode.metrics.classification import roc_auc  # noqa: E402
from lnnode.networks.classifier import ClassifierSpec, build_classifier_network, predict_embeddings  # noqa: E402
from lnnode.selection import badge, binary_entropy, k_center, representative, top_uncertain  # noqa: E402
from lnnode.transforms import DEFAULT_INTENSITY  # noqa: E402

STRATEGIES = ("random", "first", "uncertain", "novelty", "coreset", "badge", "oracle")
DEFAULT_STRATEGIES = ("random", "uncertain", "coreset", "badge")  # ``first`` reads BUSI's benign ids first


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -----------------------------------------------------------------------------------------------
class Pool:
    """Every lesion image of a studies folder, prepared once: node crops (as the 2D trainer makes them), per image
    its nodes, class labels, group and appearance (intensity and gradient histograms of the whole image)."""

    def __init__(self, studies: Path, cache: Path):
        self.spec = ClassifierSpec.planar()
        if cache.exists():
            z = np.load(cache, allow_pickle=False)
            self.crops, self.labels, self.node_case = z["crops"], z["labels"], z["node_case"]
            self.cases, self.looks = list(z["cases"]), z["looks"]
        else:
            self._prepare(studies)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, crops=self.crops, labels=self.labels, node_case=self.node_case,
                     cases=np.array(self.cases), looks=self.looks)  # fmt: skip
        self.looks = np.round(self.looks, 4)  # as the server stores them: the same cold-start picks
        groups = read_groups(studies)
        self.groups = [groups.get(c, c) for c in self.cases]
        self.nodes_of = [np.flatnonzero(self.node_case == i) for i in range(len(self.cases))]

    def _prepare(self, studies: Path) -> None:
        items = [
            {"id": p.stem, "image": str(p), "label": str(studies / "labels" / "final" / f"{p.stem}.json")}
            for p in sorted(studies.glob("*.png"))
        ]
        intensity = DEFAULT_INTENSITY["us"]
        margin = int(round(JITTER_MM / self.spec.crop_spacing))
        crops, labels, ids, _, _ = node_crops(items, self.spec, intensity, margin)
        self.cases = sorted(set(ids))
        index = {c: i for i, c in enumerate(self.cases)}
        self.crops, self.labels = crops.numpy(), labels.numpy()
        self.node_case = np.array([index[c] for c in ids])
        by_id = {it["id"]: it for it in items}
        looks = [appearance_of(by_id[c]["image"], "us")["histograms"] for c in self.cases]  # as the server's
        self.looks = np.stack([np.ravel(look) for look in looks])

    def centre_crops(self, nodes: np.ndarray) -> torch.Tensor:
        """The crops without their jitter margin (what the trainer validates on)."""
        size, crops = self.spec.crop_shape[0], self.crops[nodes]
        m = (crops.shape[-1] - size) // 2
        return torch.from_numpy(np.ascontiguousarray(crops[..., m : m + size, m : m + size]))

    def case_label(self) -> np.ndarray:
        """Per image: 1 if any of its lesions is malignant."""
        return np.array([self.labels[n].max() for n in self.nodes_of])

    def split(self, seed: int, test_share: float) -> tuple[np.ndarray, np.ndarray]:
        """(pool image indices, held-out image indices), whole groups on one side."""
        names = sorted(set(self.groups))
        order = np.random.default_rng(seed).permutation(len(names))
        n_test = int(round(test_share * len(self.cases)))
        test_groups, count = set(), 0
        members = {g: [i for i, x in enumerate(self.groups) if x == g] for g in names}
        for j in order:
            if count >= n_test:
                break
            test_groups.add(names[j])
            count += len(members[names[j]])
        test = np.array(sorted(i for g in test_groups for i in members[g]))
        pool = np.array(sorted(set(range(len(self.cases))) - set(test.tolist())))
        return pool, test


# -- the classifier, as lymph_node_classification_2d trains it ------------------------------------------------
def train(pool: Pool, cases: np.ndarray, args, seed: int) -> list[torch.nn.Module]:
    """``--ensemble`` classifiers trained on ``cases`` (seeds ``seed``, ``seed + 1``, ...)."""
    return [train_one(pool, cases, args.steps, seed + m) for m in range(args.ensemble)]


def train_one(pool: Pool, cases: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    nodes = np.concatenate([pool.nodes_of[i] for i in cases])
    crops, labels = torch.from_numpy(pool.crops[nodes]), torch.from_numpy(pool.labels[nodes])
    network = build_classifier_network(pool.spec)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    n_pos = max(float(labels.sum()), 1e-6)
    n_neg = max(float((1 - labels).sum()), 1e-6)
    weights = torch.where(labels > 0, 1.0 / n_pos, 1.0 / n_neg).double()
    sampler = WeightedRandomSampler(weights, num_samples=steps * 16, replacement=True)
    loader = DataLoader(NodeCropDataset(crops, labels, pool.spec.crop_shape[0], augment=True), 16, sampler=sampler)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    network.train()
    for batch in loader:
        optimiser.zero_grad()
        loss_fn(network(batch["image"]), batch["label"]).backward()
        optimiser.step()
        schedule.step()
    return network


def predict(pool: Pool, models: list[torch.nn.Module], cases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per node of ``cases``: probability (mean over 4 flips and the models), embedding (the models' side by
    side); and the node indices."""
    nodes = np.concatenate([pool.nodes_of[i] for i in cases])
    crops = pool.centre_crops(nodes)
    ps, hs = [], []
    for network in models:
        logits, embeddings = predict_embeddings(network, crops, tta=4)
        ps.append(torch.sigmoid(logits).mean(1).numpy())
        hs.append(embeddings.numpy())
    return np.mean(ps, axis=0), np.concatenate(hs, axis=1), nodes


# -- strategies -------------------------------------------------------------------------------------------
def per_case(pool: Pool, cases: np.ndarray, values: np.ndarray, nodes: np.ndarray, reduce) -> np.ndarray:
    where = {n: j for j, n in enumerate(nodes)}
    return np.stack([reduce(values[[where[n] for n in pool.nodes_of[i]]]) for i in cases])


def with_novelty(looks: np.ndarray, entropy: np.ndarray, labelled: np.ndarray, k: int, weight: float) -> list[int]:
    """K cases by entropy + ``weight`` x novelty, one at a time: a chosen case is a reference for the next (as a
    case in review is on the server)."""
    looks = looks.reshape(len(looks), -1, BINS)
    taken = labelled.copy()
    chosen: list[int] = []
    for _ in range(min(k, int((~taken).sum()))):
        free = np.flatnonzero(~taken)
        novel = np.zeros(len(free))
        if taken.any():  # mean Hellinger distance over the histograms, to the nearest reference
            d = np.sqrt(np.square(looks[free][:, None] - looks[taken][None]).sum(-1)).mean(-1) / np.sqrt(2.0)
            novel = d.min(axis=1)
        best = int(free[np.argmax(entropy[free] + weight * novel)])
        chosen.append(best)
        taken[best] = True
    return chosen


def choose(
    strategy: str, k: int, pool: Pool, cases: np.ndarray, labelled: np.ndarray, model, rng, weight: float = 1.0
) -> list[int]:
    """Indices into ``cases`` of the next K to read (``weight``: the ``novelty`` strategy's)."""
    if strategy == "random":
        return [int(i) for i in rng.choice(np.flatnonzero(~labelled), size=k, replace=False)]
    if strategy == "first":
        return [int(i) for i in np.flatnonzero(~labelled)[:k]]
    if model is None:  # cold start: no model yet
        return representative(pool.looks[cases], labelled, k)  # as the server: seed 0
    p, h, nodes = predict(pool, model, cases)
    entropy = per_case(pool, cases, binary_entropy(p), nodes, np.max)
    if strategy == "uncertain":
        return top_uncertain(entropy, labelled, k)
    if strategy == "novelty":
        return with_novelty(pool.looks[cases], entropy, labelled, k, weight)
    embedding = per_case(pool, cases, h, nodes, lambda x: x.mean(0))
    if strategy == "coreset":
        return k_center(embedding, labelled, k)
    if strategy == "badge":
        case_p = per_case(pool, cases, p, nodes, lambda x: x[np.argmax(binary_entropy(x))])
        return badge(embedding, case_p, labelled, k, rng)
    raise ValueError(f"unknown strategy {strategy!r}")


def held_out_auc(pool: Pool, model: list[torch.nn.Module], test: np.ndarray) -> float:
    p, _, nodes = predict(pool, model, test)
    return float(roc_auc(pool.labels[nodes], p))


def lookahead(
    pool: Pool, cases, test, labelled, k, model, rng, seed, args
) -> tuple[np.ndarray, list[torch.nn.Module], float]:
    """The ``oracle``'s step: of several candidate batches, the one whose model scores best on the held-out set."""
    candidates = [[int(i) for i in rng.choice(np.flatnonzero(~labelled), k, replace=False)]
                  for _ in range(args.oracle_candidates)]  # fmt: skip
    candidates += [choose(s, k, pool, cases, labelled, model, rng) for s in ("uncertain", "badge")]
    best = None
    for batch in candidates:
        trial = labelled.copy()
        trial[batch] = True
        trained = train(pool, cases[trial], args, seed)
        auc = held_out_auc(pool, trained, test)
        if best is None or auc > best[2]:
            best = (trial, trained, auc)
    return best


# -- one curve --------------------------------------------------------------------------------------------
def curve(pool: Pool, strategy: str, start: str, repeat: int, args) -> dict:
    seed = 1000 * repeat + 17
    cases, test = pool.split(seed, args.test_share)
    rng = np.random.default_rng(seed + STRATEGIES.index(strategy))
    labelled = np.zeros(len(cases), dtype=bool)
    model = None
    if start == "seeded":
        labelled[np.random.default_rng(seed).choice(len(cases), args.seed_cases, replace=False)] = True
        model = train(pool, cases[labelled], args, seed)
    points = []
    for budget in args.budgets:
        k = budget - int(labelled.sum())
        if strategy == "oracle" and k > 0:
            labelled, model, auc = lookahead(pool, cases, test, labelled, k, model, rng, seed, args)
        else:
            if k > 0 or model is None:
                labelled[choose(strategy, k, pool, cases, labelled, model, rng, args.novelty_weight)] = True
                model = train(pool, cases[labelled], args, seed)
            auc = held_out_auc(pool, model, test)
        y = pool.case_label()[cases[labelled]]
        points.append({"labels": budget, "auc": round(float(auc), 4), "malignant": int(y.sum())})
    return {"strategy": strategy, "start": start, "repeat": repeat, "seed": seed, "pool": len(cases),
            "test_images": len(test), "points": points}  # fmt: skip


# -- summary ----------------------------------------------------------------------------------------------
def t95(n: int) -> float:
    return {1: float("nan"), 2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36}.get(n, 2.0)


def labels_to_reach(points: list[dict], target: float) -> int | None:
    return next((p["labels"] for p in points if p["auc"] >= target - 1e-9), None)


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for start in sorted({r["start"] for r in runs}):
        mine = [r for r in runs if r["start"] == start]
        by = {s: sorted((r for r in mine if r["strategy"] == s), key=lambda r: r["repeat"]) for s in STRATEGIES}
        by = {s: v for s, v in by.items() if v}
        budgets = [p["labels"] for p in mine[0]["points"]]
        table = {}
        for s, rs in by.items():
            a = np.array([[p["auc"] for p in r["points"]] for r in rs])
            half = np.full(a.shape[1], np.nan)
            if len(rs) > 1:
                half = t95(len(rs)) * a.std(axis=0, ddof=1) / np.sqrt(len(rs))
            table[s] = {"mean": a.mean(0).round(4).tolist(), "ci95": half.round(4).tolist(), "runs": len(rs)}
        random_final = table.get("random", {}).get("mean", [None])[-1]
        for s, rs in by.items():
            if random_final is None:
                break
            mean_points = [{"labels": b, "auc": m} for b, m in zip(budgets, table[s]["mean"], strict=True)]
            reach = labels_to_reach(mean_points, random_final)
            table[s]["labels_to_random_final"] = reach
            table[s]["share_of_random_labels"] = None if reach is None else round(reach / budgets[-1], 3)
            rand = {r["repeat"]: r for r in by["random"]}
            per_run, at_or_above, differences = [], 0, []
            for r in rs:
                mate = rand.get(r["repeat"])
                if mate is None:
                    continue
                per_run.append(labels_to_reach(r["points"], mate["points"][-1]["auc"]))
                pairs = list(zip(r["points"], mate["points"], strict=True))
                at_or_above += all(p["auc"] >= q["auc"] - 1e-9 for p, q in pairs)
                differences.append([p["auc"] - q["auc"] for p, q in pairs])
            table[s]["labels_to_random_final_per_run"] = per_run
            if s == "random":
                continue
            table[s]["repeats_at_or_above_random_everywhere"] = at_or_above
            d = np.array(differences)  # paired by repeat: same split, same held-out set
            half = t95(len(d)) * d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(d.shape[1], np.nan)
            table[s]["minus_random"] = {"mean": d.mean(0).round(4).tolist(), "ci95": half.round(4).tolist()}
        out[start] = {"budgets": budgets, "strategies": table}
    return out


def markdown(summary: dict) -> str:
    lines = []
    for start, s in summary.items():
        lines += [f"### {start} start", "", "| strategy | " + " | ".join(str(b) for b in s["budgets"]) +
                  " | labels to random's final (mean curve; per run) | >= random everywhere |",
                  "|---" * (len(s["budgets"]) + 3) + "|"]  # fmt: skip
        for name, t in s["strategies"].items():
            cells = [f"{m:.3f} ± {c:.3f}" for m, c in zip(t["mean"], t["ci95"], strict=True)]
            reach = t.get("labels_to_random_final")
            runs = ", ".join("never" if x is None else str(x) for x in t.get("labels_to_random_final_per_run", []))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {reach or 'never'}; {runs} | "
                         f"{t.get('repeats_at_or_above_random_everywhere', '-')}/{t['runs']} |")  # fmt: skip
        lines += ["", "AUC minus random's, paired by repeat (mean ± 95 % CI):", "",
                  "| strategy | " + " | ".join(str(b) for b in s["budgets"]) + " |",
                  "|---" * (len(s["budgets"]) + 1) + "|"]  # fmt: skip
        for name, t in s["strategies"].items():
            if "minus_random" in t:
                d = t["minus_random"]
                cells = [f"{m:+.3f} ± {c:.3f}" for m, c in zip(d["mean"], d["ci95"], strict=True)]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.5), squeeze=False)
    for ax, (start, s) in zip(axes[0], summary.items(), strict=True):
        for name, t in s["strategies"].items():
            m, c = np.array(t["mean"]), np.nan_to_num(np.array(t["ci95"]))
            ax.plot(s["budgets"], m, marker="o", label=name, linestyle="--" if name == "oracle" else "-")
            ax.fill_between(s["budgets"], m - c, m + c, alpha=0.12)
        ax.set(title=f"BUSI ultrasound, {start} start (mean, 95 % CI)", xlabel="images labelled",
               ylabel="held-out lesion AUC")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def add_loop_arguments(ap: argparse.ArgumentParser) -> None:
    """The loop's settings, shared with ``active_learning_pool_server.py`` (same names, same defaults)."""
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40, 60, 80])
    ap.add_argument("--seed-cases", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150, help="classifier gradient steps (batch 16) per training")
    ap.add_argument("--test-share", type=float, default=0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busi", type=Path, default=REPO.parent / "shared" / "data" / "real" / "busi")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--starts", nargs="+", default=["cold", "seeded"], choices=["cold", "seeded"])
    ap.add_argument("--repeats", type=int, default=5)
    add_loop_arguments(ap)
    ap.add_argument("--ensemble", type=int, default=1, help="classifiers per budget, probabilities averaged")
    ap.add_argument("--novelty-weight", type=float, default=1.0, help="the novelty strategy's al_novelty_weight")
    ap.add_argument("--oracle-candidates", type=int, default=3, help="random batches the oracle tries per budget")
    ap.add_argument("--plot", type=Path, help="write the learning curves here (PNG)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from ultrasound import imported

    studies = imported(args.busi, args.out)
    pool = Pool(studies, args.out / "pool.npz")
    log(f"pool: {len(pool.cases)} lesion images, {len(pool.labels)} lesions ({int(pool.labels.sum())} malignant)")
    runs_file = args.out / ("runs.jsonl" if args.ensemble == 1 else f"runs_ensemble{args.ensemble}.jsonl")
    done = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    key = lambda r: (r["strategy"], r["start"], r["repeat"], tuple(p["labels"] for p in r["points"]))  # noqa: E731
    have = {key(r) for r in done}
    for repeat in range(args.repeats):
        for start in args.starts:
            for strategy in args.strategies:
                if (strategy, start, repeat, tuple(args.budgets)) in have:
                    continue
                t0 = time.time()
                run = curve(pool, strategy, start, repeat, args)
                run["seconds"] = round(time.time() - t0, 1)
                done.append(run)
                with open(runs_file, "a") as f:
                    f.write(json.dumps(run) + "\n")
                log(f"{start} {strategy} r{repeat}: " + " ".join(f"{p['auc']:.3f}" for p in run["points"]) +
                    f" ({run['seconds']} s)")  # fmt: skip
    wanted = [r for r in done if tuple(p["labels"] for p in r["points"]) == tuple(args.budgets)]
    summary = summarise(wanted)
    runs_file.with_name(runs_file.name.replace("runs", "summary").replace(".jsonl", ".json")).write_text(
        json.dumps(summary, indent=1)
    )
    print(markdown(summary))
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
