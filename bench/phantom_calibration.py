"""Calibration of the phantom nodes against the 932 real ULS23 NIH node masks.

Measures every real mask (largest component) and a sample of synthetic nodes the same way: RECIST
short and long axis with ``lnnode.measure.axes.axial_axes``, short/long ratio, z extent (number of slices
times slice spacing) and volume; prints a markdown table of quantiles (5/25/50/75/95), the agreement
of ``axial_axes`` with the stats file's rough axial axes, and writes a histogram figure.

Synthetic nodes are rendered alone on a 0.75 x 0.75 x 1.0 mm grid (about the real masks' native
spacing) with the generator's own code (``isolated_node_mask``), so both sides are digitised alike.

    python bench/phantom_calibration.py [--real-data DIR] [--n 600] [--png docs/phantom_sizes.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lnnode.io.image import read_image
from lnnode.measure.axes import axial_axes, z_axis_of
from lnnode.phantoms.config import default_real_data_dir
from lnnode.phantoms.nodes import isolated_node_mask, sample_plan, sample_plans
from lnnode.phantoms.realshapes import largest_component

QUANTILES = (5, 25, 50, 75, 95)
METRICS = (
    ("short", "short axis (mm)"),
    ("long", "long axis (mm)"),
    ("ratio", "short / long"),
    ("z", "z extent (mm)"),
    ("z_long", "z extent / long axis"),
    ("volume", "volume (mm³)"),
    ("fill", "volume / (π/6 · S · L · Z)"),
)


def measure(mask: np.ndarray, geometry) -> dict[str, float]:
    """The calibration measurements of one binary mask."""
    short, long_ = axial_axes(mask, geometry)
    az = z_axis_of(geometry)
    z = np.any(mask, axis=tuple(a for a in range(3) if a != az)).sum() * geometry.spacing[az]
    volume = float(mask.sum() * np.prod(geometry.spacing))
    return {
        "short": short,
        "long": long_,
        "ratio": short / long_ if long_ > 0 else 0.0,
        "z": float(z),
        "z_long": float(z / long_) if long_ > 0 else 0.0,
        "volume": volume,
        "fill": volume / (np.pi / 6 * short * long_ * z) if short > 0 else 0.0,
    }


def real_nodes(data_dir: Path) -> tuple[dict[str, list[dict]], list[tuple[float, float, float, float]]]:
    """Measurements of the real masks by group (MED, ABD), and (ours, stats) short/long pairs."""
    root = data_dir / "uls23_nih_ln"
    stats = json.loads((root / "nih_ln_mask_stats.json").read_text())
    groups: dict[str, list[dict]] = {"MED": [], "ABD": []}
    pairs = []
    for row in stats:
        name = row["file"].removesuffix(".zip")
        group = "MED" if row["set"].endswith("MED") else "ABD"
        array, geometry = read_image(root / "masks" / group / name)
        m = measure(largest_component(array > 0.5), geometry)
        groups[group].append(m)
        pairs.append((m["short"], row["axial_short_mm"], m["long"], row["axial_long_mm"]))
    return groups, pairs


def synthetic_nodes(n: int, seed: int) -> dict[str, list[dict]]:
    """Measurements of ``n`` synthetic nodes per class, and ``n`` drawn in case proportions ("all")."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {"benign": [], "metastatic": [], "all": []}
    for cls in ("benign", "metastatic"):
        for _ in range(n):
            mask, geometry, _ = isolated_node_mask(rng, sample_plan(rng, cls))
            out[cls].append(measure(mask, geometry))
    while len(out["all"]) < n:
        for plan in sample_plans(rng)[1]:
            mask, geometry, _ = isolated_node_mask(rng, plan)
            out["all"].append(measure(mask, geometry))
    out["all"] = out["all"][:n]
    return out


def table(columns: dict[str, list[dict]]) -> str:
    """Markdown table: one row per metric, one column per group, cells "q5 / q25 / **q50** / q75 / q95"."""
    head = "| metric | " + " | ".join(f"{k} (n={len(v)})" for k, v in columns.items()) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for key, title in METRICS:
        cells = []
        for rows in columns.values():
            q = np.percentile([r[key] for r in rows], QUANTILES)
            fmt = "{:.0f}" if key == "volume" else "{:.2f}" if key in ("ratio", "z_long", "fill") else "{:.1f}"
            vals = [fmt.format(v) for v in q]
            vals[2] = f"**{vals[2]}**"
            cells.append(" / ".join(vals))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(columns: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("short", np.linspace(0, 40, 41)), ("ratio", np.linspace(0, 1, 26)), ("z_long", np.linspace(0, 2.5, 26))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    styles = {
        "real MED": ("tab:blue", "step"),
        "real ABD": ("tab:cyan", "step"),
        "synthetic benign": ("tab:green", "stepfilled"),
        "synthetic metastatic": ("tab:red", "stepfilled"),
    }
    for ax, (key, bins) in zip(axes, keys, strict=True):
        for name, (color, kind) in styles.items():
            vals = [r[key] for r in columns[name]]
            ax.hist(
                vals,
                bins=bins,
                density=True,
                histtype=kind,
                color=color,
                alpha=0.35 if kind == "stepfilled" else 1.0,
                lw=1.5,
                label=name,
            )
        ax.set_xlabel(dict(METRICS)[key])
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Node sizes and shapes: real ULS23 NIH masks vs synthetic phantom nodes (same measurement)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-data", type=Path, default=default_real_data_dir())
    parser.add_argument("--n", type=int, default=600, help="synthetic nodes per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "phantom_sizes.png")
    args = parser.parse_args()

    t0 = time.perf_counter()
    real, pairs = real_nodes(args.real_data)
    t_real = time.perf_counter() - t0
    synth = synthetic_nodes(args.n, args.seed)
    columns = {
        "real MED": real["MED"],
        "real ABD": real["ABD"],
        "real all": real["MED"] + real["ABD"],
        "synthetic benign": synth["benign"],
        "synthetic metastatic": synth["metastatic"],
        "synthetic all": synth["all"],
    }
    print(table(columns))
    p = np.asarray(pairs)
    for name, ours, theirs in (("short", p[:, 0], p[:, 1]), ("long", p[:, 2], p[:, 3])):
        d = ours - theirs
        q5, q95 = np.percentile(d, [5, 95])
        print(
            f"\naxial_axes vs stats file, {name} axis: median difference {np.median(d):+.2f} mm, "
            f"median |difference| {np.median(np.abs(d)):.2f} mm, 5-95% [{q5:+.2f}, {q95:+.2f}] mm"
        )
    print(f"\nreal masks measured in {t_real:.1f} s ({1000 * t_real / len(pairs):.1f} ms per mask)")
    plot(columns, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
