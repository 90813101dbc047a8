"""What a radiologist changed in a case: a submitted label compared with the model's result for it.

Each model node of the ``original`` result ends up in one of: accepted (kept, same box, same class),
relabelled (class changed), edited (box moved or resized: judged from the boxes, since the label's
``edited`` flag marks relabelled nodes too), rejected (a false positive), or
unreviewed (neither in the label's nodes nor in its rejected list). Nodes the reader placed are
``added``. ``corrections`` counts what the reader had to fix: relabelled + edited + rejected + added.
A node both moved and relabelled counts in both. Without the original result only what the label
says by itself is counted (added, rejected, ``edited`` flags); relabelling is then unknown (None).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lnnode.contracts import BOX_TOLERANCE_MM

__all__ = ["review_stats", "summarise_reviews", "BOX_TOLERANCE_MM", "implied_class"]

COUNTS = ("accepted", "relabelled", "edited", "rejected", "added", "unreviewed")


def implied_class(node: dict[str, Any], p_thresh: float = 0.5) -> str | None:
    """The class a result node proposes: metastatic at ``p_metastasis >= p_thresh``; None without it."""
    p = node.get("p_metastasis")
    if p is None:
        return None
    return "metastatic" if p >= p_thresh else "benign"


def _box_changed(a: dict[str, Any], b: dict[str, Any]) -> bool:
    diff = np.abs(np.subtract(a["center"], b["center"])).max(initial=0.0)
    diff = max(diff, np.abs(np.subtract(a["size"], b["size"])).max(initial=0.0))
    return bool(diff > BOX_TOLERANCE_MM)


def review_stats(label: dict[str, Any], original: dict[str, Any] | None, p_thresh: float = 0.5) -> dict[str, Any]:
    """Counts of accepted / relabelled / edited / rejected / added / unreviewed nodes (see module doc)."""
    nodes, rejected = label["nodes"], label.get("rejected", [])
    counts: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    counts["added"] = sum(n.get("origin") == "added" for n in nodes)
    counts["rejected"] = len(rejected)
    if original is None:
        counts["edited"] = sum(bool(n.get("edited")) for n in nodes if n.get("origin") != "added")
        counts["accepted"] = sum(n.get("origin") == "model" and not n.get("edited") for n in nodes)
        counts["relabelled"] = None
        counts["unreviewed"] = None
        counts["n_model_nodes"] = None
        counts["corrections"] = counts["edited"] + counts["rejected"] + counts["added"]
        counts["compared_with"] = None
        return counts
    proposed = {n["id"]: n for n in original["nodes"]}
    seen: set[str] = {r["from_node"] for r in rejected if r.get("from_node") in proposed}
    for node in nodes:
        source = proposed.get(node.get("from_node", "")) if node.get("origin") != "added" else None
        if source is None:
            continue
        seen.add(node["from_node"])
        # the box itself says whether it moved; ``edited`` also marks relabelled nodes (the contract)
        moved = _box_changed(node, source)
        proposed_class = implied_class(source, p_thresh)
        relabelled = proposed_class is not None and node.get("class") not in (None, proposed_class)
        counts["edited"] += moved
        counts["relabelled"] += relabelled
        counts["accepted"] += not (moved or relabelled)
    counts["unreviewed"] = len(set(proposed) - seen)
    counts["n_model_nodes"] = len(proposed)
    counts["corrections"] = counts["relabelled"] + counts["edited"] + counts["rejected"] + counts["added"]
    counts["compared_with"] = original.get("model")
    return counts


def summarise_reviews(reviews: Iterable[dict[str, Any]], window: int = 10) -> dict[str, Any]:
    """Totals and the trend of corrections per case over submissions (oldest first).

    ``reviews``: per case ``{"image", "ts", "stats"}``. The trend is the mean corrections per case
    over consecutive windows of ``window`` submissions: falling means the model needs fewer fixes.
    """
    ordered = sorted(reviews, key=lambda r: r.get("ts") or 0)
    totals = {k: 0 for k in (*COUNTS, "corrections")}
    for r in ordered:
        for k in totals:
            totals[k] += int(r["stats"].get(k) or 0)
    per_case = [int(r["stats"].get("corrections") or 0) for r in ordered]
    trend = [
        {"cases": f"{i + 1}-{i + len(chunk)}", "mean_corrections": float(np.mean(chunk))}
        for i, chunk in ((i, per_case[i : i + window]) for i in range(0, len(per_case), window))
    ]
    return {
        "n_cases": len(ordered),
        "totals": totals,
        "mean_corrections_per_case": float(np.mean(per_case)) if per_case else None,
        "trend": trend,
        "cases": [{"image": r["image"], "ts": r.get("ts"), **r["stats"]} for r in ordered],
    }
