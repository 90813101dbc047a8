"""Node-level classification metrics: ROC AUC with a bootstrap CI, Youden point, calibration, kappa.

Scores are "higher = more likely metastatic". Rule baselines give categories; :func:`rule_scores`
maps them to scores (suspicious 1, indeterminate 0.5, not suspicious 0) so that every scorer goes
through the same code. Undefined ratios (e.g. PPV without a positive call) are ``None``, not NaN, so
reports serialise to JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

__all__ = [
    "roc_curve",
    "roc_auc",
    "bootstrap_auc_ci",
    "youden_point",
    "binary_metrics",
    "rule_scores",
    "reliability_curve",
    "expected_calibration_error",
    "brier_score",
    "fit_temperature",
    "apply_temperature",
    "fit_fusion",
    "fused_logits",
    "cohen_kappa",
    "classification_report",
    "plot_roc",
    "plot_reliability",
]

RULE_SCORE = {"suspicious": 1.0, "indeterminate": 0.5, "not_suspicious": 0.0}


def _check(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).reshape(-1)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (benign) or 1 (metastatic)")
    if np.unique(y).size < 2:
        raise ValueError("ROC analysis needs nodes of both classes")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def roc_curve(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR, TPR and thresholds (descending; a node is called positive when score >= threshold).

    Tied scores move together (one point per distinct score); the curve starts at (0, 0) with
    threshold +inf."""
    y, s = _check(y_true, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (y.size - y.sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a metastatic node > a benign one), ties counting 1/2."""
    y, s = _check(y_true, scores)
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks: ties count half
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc_ci(
    y_true: Sequence[int], scores: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling within each class (every resample keeps both)."""
    y, s = _check(y_true, scores)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    aucs = np.empty(int(n_boot))
    labels = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
    for b in range(int(n_boot)):
        sample = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        aucs[b] = roc_auc(labels, sample)
    lo, hi = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def youden_point(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """The threshold (call positive at score >= it) that maximises sensitivity + specificity - 1."""
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # never the +inf start point
    return float(thresholds[best])


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy and the counts of binary calls."""
    y = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(y_pred, dtype=int).reshape(-1)
    tp, fp = int(np.sum((p == 1) & (y == 1))), int(np.sum((p == 1) & (y == 0)))
    tn, fn = int(np.sum((p == 0) & (y == 0))), int(np.sum((p == 0) & (y == 1)))
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def rule_scores(categories: Sequence[str]) -> np.ndarray:
    """Rule categories as scores: suspicious 1, indeterminate 0.5, not suspicious 0."""
    unknown = sorted({c for c in categories if c not in RULE_SCORE})
    if unknown:
        raise ValueError(f"unknown rule categories {unknown}; known: {', '.join(RULE_SCORE)}")
    return np.asarray([RULE_SCORE[c] for c in categories], dtype=float)


# -- calibration ------------------------------------------------------------------------------------
def reliability_curve(y_true: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> dict[str, list]:
    """Per equal-width probability bin: mean predicted probability, observed frequency and count."""
    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=float).reshape(-1), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    mean_p, freq, count = [], [], []
    for b in range(n_bins):
        m = index == b
        count.append(int(m.sum()))
        mean_p.append(float(p[m].mean()) if m.any() else None)
        freq.append(float(y[m].mean()) if m.any() else None)
    return {"edges": edges.tolist(), "mean_predicted": mean_p, "observed": freq, "count": count}


def expected_calibration_error(y_true: Sequence[int], probs: Sequence[float], n_bins: int = 10) -> float:
    """Sum over bins of (bin share) x |observed frequency - mean predicted probability|."""
    curve = reliability_curve(y_true, probs, n_bins)
    n = sum(curve["count"])
    return float(
        sum(
            c / n * abs(o - m)
            for c, o, m in zip(curve["count"], curve["observed"], curve["mean_predicted"], strict=True)
            if c
        )
    )


def brier_score(y_true: Sequence[int], probs: Sequence[float]) -> float:
    y = np.asarray(y_true, dtype=float).reshape(-1)
    return float(np.mean((np.asarray(probs, dtype=float).reshape(-1) - y) ** 2))


def apply_temperature(logits: Sequence[float], temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logit / T)."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


def fit_temperature(logits: Sequence[float], y_true: Sequence[int]) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of sigmoid(logit / T) (searched in log T)."""
    z = np.asarray(logits, dtype=float).reshape(-1)
    y = np.asarray(y_true, dtype=float).reshape(-1)
    if z.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        a = z / np.exp(log_t)
        # log(1 + e^-a) for y=1, log(1 + e^a) for y=0, computed stably
        return float(np.mean(np.logaddexp(0.0, -a) * y + np.logaddexp(0.0, a) * (1 - y)))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def _standardised(values: np.ndarray, mean, std) -> np.ndarray:
    return np.nan_to_num((np.asarray(values, dtype=float) - np.asarray(mean)) / np.asarray(std))


def fit_fusion(logits: Sequence[float], features: np.ndarray, y_true: Sequence[int], l2: float = 1.0) -> dict:
    """A logistic model of the class from a CNN logit and measured features (N, F): ``z = a * logit' + w . f' + b``
    with the logit and the features standardised on these nodes (a missing feature, NaN, counts as the mean).
    ``l2``: ridge penalty on ``a`` and ``w`` (as scikit-learn's ``C = 1 / l2``: the few validation nodes must not
    be memorised). Returns what :func:`fused_logits` needs."""
    z = np.asarray(logits, dtype=float).reshape(-1)
    y = np.asarray(y_true, dtype=float).reshape(-1)
    columns = np.column_stack([z, np.asarray(features, dtype=float).reshape(len(z), -1)])
    mean = np.nan_to_num(np.nanmean(columns, axis=0)) if len(z) else np.zeros(columns.shape[1])
    std = np.nan_to_num(np.nanstd(columns, axis=0), nan=1.0) if len(z) else np.ones(columns.shape[1])
    std = np.where(std > 1e-9, std, 1.0)
    x = np.column_stack([_standardised(columns, mean, std), np.ones(len(z))])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a = x @ theta
        nll = np.sum(np.logaddexp(0.0, -a) * y + np.logaddexp(0.0, a) * (1 - y))
        penalised = np.append(theta[:-1], 0.0)  # not the bias
        grad = x.T @ (1.0 / (1.0 + np.exp(-a)) - y) + l2 * penalised
        return float(nll + 0.5 * l2 * np.sum(penalised**2)), grad

    theta = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
    return {"logit_weight": float(theta[0]), "weights": theta[1:-1].tolist(), "bias": float(theta[-1]),
            "logit_mean": float(mean[0]), "logit_std": float(std[0]), "mean": mean[1:].tolist(),
            "std": std[1:].tolist(), "l2": float(l2)}  # fmt: skip


def fused_logits(fusion: dict, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
    """:func:`fit_fusion`'s logit for each column of ``logits`` (N, T) (test-time flips: the features are the
    node's, the same in every column)."""
    z = np.asarray(logits, dtype=float)
    f = np.asarray(features, dtype=float).reshape(z.shape[0], len(fusion["weights"]))  # also for no nodes
    shift = _standardised(f, fusion["mean"], fusion["std"]) @ np.asarray(fusion["weights"]) + fusion["bias"]
    slope = fusion["logit_weight"] / fusion["logit_std"]
    return slope * (z - fusion["logit_mean"]) + (shift[:, None] if z.ndim == 2 else shift)


# -- agreement --------------------------------------------------------------------------------------
def cohen_kappa(
    a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None, weights: str | None = None
) -> dict[str, Any]:
    """Cohen's kappa of two ratings of the same cases (``weights="linear"`` for ordinal ones such as N
    stage) and the confusion matrix (rows: ``a``, columns: ``b``). When chance agreement is already
    1 (one category only), kappa is 1.0 if the ratings agree, else 0.0."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"kappa needs two equally long, non-empty ratings; got {len(a)} and {len(b)}")
    labels = list(labels) if labels is not None else sorted(set(a) | set(b))
    pos = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    m = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        m[pos[x], pos[y]] += 1
    n = m.sum()
    if weights == "linear":
        i, j = np.indices((k, k))
        w = 1.0 - np.abs(i - j) / max(k - 1, 1)
    elif weights is None:
        w = np.eye(k)
    else:
        raise ValueError(f"weights must be None or 'linear', got {weights!r}")
    observed = float((w * m).sum() / n)
    expected = float((w * np.outer(m.sum(1), m.sum(0))).sum() / n**2)
    if expected >= 1.0 - 1e-12:
        kappa = 1.0 if observed >= 1.0 - 1e-12 else 0.0
    else:
        kappa = (observed - expected) / (1.0 - expected)
    return {
        "kappa": float(kappa),
        "observed_agreement": observed,
        "expected_agreement": expected,
        "weights": weights or "none",
        "labels": labels,
        "confusion": m.astype(int).tolist(),
    }


# -- report -----------------------------------------------------------------------------------------
def _scorer_report(y: np.ndarray, s: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed)
    return {
        "auc": roc_auc(y, s),
        "auc_ci95": [lo, hi],
        "at_operating_point": {"threshold": threshold, **binary_metrics(y, (s >= threshold).astype(int))},
    }


def classification_report(
    y_true: Sequence[int],
    scores: Sequence[float],
    rules: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """JSON-ready figures of the classifier (operating point: Youden) and of each rule (at "suspicious")
    on the same nodes, plus the classifier's calibration (ECE, Brier, reliability curve)."""
    y, s = _check(y_true, scores)
    scorers = {"classifier": _scorer_report(y, s, youden_point(y, s), n_boot, seed)}
    for name, categories in (rules or {}).items():
        scorers[name] = _scorer_report(y, rule_scores(categories), 1.0, n_boot, seed)
        scorers[name]["indeterminate"] = int(sum(c == "indeterminate" for c in categories))
    return {
        "n_nodes": int(y.size),
        "n_positive": int(y.sum()),
        "scorers": scorers,
        "calibration": {
            "ece": expected_calibration_error(y, s),
            "brier": brier_score(y, s),
            "reliability": reliability_curve(y, s),
        },
    }


# -- plots ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    y_true: Sequence[int],
    scores: Mapping[str, Sequence[float] | Sequence[str]],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """ROC curves of several scorers on the same nodes (rule categories are turned into scores)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    for name, values in scores.items():
        s = rule_scores(values) if len(values) and isinstance(values[0], str) else np.asarray(values, float)
        fpr, tpr, _ = roc_curve(y_true, s)
        ax.plot(
            fpr,
            tpr,
            drawstyle="steps-post" if name == "classifier" else None,
            label=f"{name} (AUC {roc_auc(y_true, s):.3f})",
        )
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "node-level ROC", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(y_true: Sequence[int], probs: Sequence[float], path: str | os.PathLike, n_bins: int = 10) -> None:
    """Reliability diagram: observed frequency against mean predicted probability per bin."""
    plt = _pyplot()
    curve = reliability_curve(y_true, probs, n_bins)
    pts = [(m, o) for m, o in zip(curve["mean_predicted"], curve["observed"], strict=True) if m is not None]
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    if pts:
        ax.plot(*zip(*pts, strict=True), "o-", label=f"ECE {expected_calibration_error(y_true, probs, n_bins):.3f}")
    ax.set_xlabel("predicted p(metastasis)")
    ax.set_ylabel("observed share metastatic")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
