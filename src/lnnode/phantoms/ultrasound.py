"""2D ultrasound phantoms of lymph nodes (``lnnode synth --modality us``): B-mode images with ground truth.

What a case holds, deterministic from ``(seed, index)``:

* a **sector** (curved-array fan from an apex above the image; black outside it), tissue layers (bright skin line,
  hypo-echoic fat, echogenic fascia and muscle bands), depth attenuation;
* **speckle**: a complex Gaussian field blurred anisotropically (cells longer laterally than axially), its
  magnitude (Rayleigh) multiplying the echogenicity, then log-compressed to 8 bits as a scanner does;
* zero to three **nodes**. Benign: oval, wider than tall (parallel to the skin), circumscribed, mildly hypo-echoic
  with an echogenic fatty hilum, posterior enhancement. Metastatic: round or taller than wide, an irregular
  (lobulated, angular) margin, markedly hypo-echoic and heterogeneous, no hilum, sometimes a cystic (anechoic)
  part, posterior shadowing. Sizes overlap across the classes. About one case in seven has no node;
* **burnt-in marks** on some cases of both classes alike: caliper crosses at the ends of a node's long axis, a text
  block in the top-left corner and depth ticks along the right edge (what a model must learn to ignore).

The image is written as an 8-bit grey PNG: a one-slice image whose pixel column and row are x and y in world
coordinates (spacing 1, origin 0), so a node's box in the label is ``center`` [x, y, 0], ``size`` [w, h, 1] in
pixels. ``labels/instances/<id>.png`` holds the node masks (one integer per node, 16-bit).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from lnnode import contracts
from lnnode.io.atomic import atomic_write, atomic_write_text

from .config import PhantomError

__all__ = ["UltrasoundCase", "make_us_case", "synthesize_us", "US_SIZE"]

US_SIZE = (256, 256)  # (width, height) in pixels
_NO_NODE_SHARE = 1 / 7
_MARKS_SHARE = 0.5


@dataclass
class UltrasoundCase:
    """One phantom: ``image`` uint8 (rows, columns), ``instances`` uint16 (rows, columns), the node records."""

    case_id: str
    image: np.ndarray
    instances: np.ndarray
    nodes: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def label(self) -> dict:
        boxes = [{"center": n["center"], "size": n["size"], "class": n["class"]} for n in self.nodes]
        return contracts.make_label(self.case_id, boxes)


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    if seed < 0 or index < 0:
        raise PhantomError(f"seed and case index must be >= 0, got {seed}, {index}")
    children = np.random.SeedSequence([int(seed), int(index), 2]).spawn(4)  # 2: not the 3D phantoms' streams
    names = ("tissue", "nodes", "speckle", "marks")
    return {name: np.random.default_rng(s) for name, s in zip(names, children, strict=True)}


def _sector(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The fan's mask and each pixel's depth (distance from the apex, 0 at the top of the fan, 1 at its bottom)."""
    rows, cols = shape
    apex_y = -rng.uniform(0.15, 0.5) * rows
    half_angle = math.radians(rng.uniform(28, 40))
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    radius = np.hypot(x - cols / 2, y - apex_y)
    angle = np.arctan2(x - cols / 2, y - apex_y)
    r0, r1 = -apex_y + 2, -apex_y + rows * rng.uniform(0.92, 0.99)
    mask = (np.abs(angle) <= half_angle) & (radius >= r0) & (radius <= r1)
    return mask, np.clip((radius - r0) / (r1 - r0), 0, 1)


def _tissue(shape: tuple[int, int], depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Echogenicity (0-1) of the background: skin, fat, fascia, muscle bands, a slow texture."""
    rows, cols = shape
    y = np.arange(rows, dtype=np.float32)[:, None] / rows
    tilt = rng.uniform(-0.06, 0.06) * (np.arange(cols, dtype=np.float32)[None, :] / cols - 0.5)
    e = np.full(shape, rng.uniform(0.35, 0.5), np.float32)
    skin, fat_end = rng.uniform(0.02, 0.05), rng.uniform(0.25, 0.45)
    e = np.where(y + tilt < fat_end, rng.uniform(0.2, 0.3), e)  # subcutaneous fat: hypo-echoic
    e = np.where(y + tilt < skin, 0.9, e)
    for _ in range(int(rng.integers(1, 4))):  # fascia and fibrous bands: thin bright lines
        at, width = rng.uniform(fat_end, 0.95), rng.uniform(0.004, 0.012)
        e = np.where(np.abs(y + tilt * rng.uniform(0.5, 2) - at) < width, rng.uniform(0.7, 0.9), e)
    slow = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=rows / 12)
    e = e * (1 + 0.25 * slow / (slow.std() + 1e-6))
    return np.clip(e * (1 - rng.uniform(0.2, 0.45) * depth), 0.02, 1)  # attenuation the gain leaves


def _outline(rng: np.random.Generator, metastatic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Radius multipliers around the node (a smooth oval, or a lobulated and angular margin) at 360 angles."""
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    r = np.ones_like(theta)
    harmonics = range(5, 13) if metastatic else range(2, 4)
    amp = 0.07 if metastatic else 0.02
    for k in harmonics:
        r += rng.uniform(0, amp) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if metastatic and rng.random() < 0.6:  # angular spikes
        for _ in range(int(rng.integers(2, 6))):
            at = rng.uniform(0, 2 * np.pi)
            r += rng.uniform(0.1, 0.25) * np.exp(-(((theta - at + np.pi) % (2 * np.pi) - np.pi) ** 2) / 0.004)
    return theta, r


def _node_mask(shape, centre, axes, tilt, rng, metastatic) -> np.ndarray:
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    dx, dy = x - centre[0], y - centre[1]
    c, s = math.cos(tilt), math.sin(tilt)
    u, v = (c * dx + s * dy) / axes[0], (-s * dx + c * dy) / axes[1]
    theta, r = _outline(rng, metastatic)
    angle = np.mod(np.arctan2(v, u), 2 * np.pi)
    limit = np.interp(angle, theta, r, period=2 * np.pi)
    return np.hypot(u, v) <= limit


def _sample_node(shape, sector, taken, rng) -> dict | None:
    """Class, centre, semi-axes (px) and tilt of a node that fits in the sector clear of the others."""
    rows, cols = shape
    metastatic = bool(rng.random() < 0.5)
    short = rng.uniform(7, 22) if metastatic else rng.uniform(5, 18)  # overlapping sizes
    ratio = rng.uniform(1.0, 1.35) if metastatic else rng.uniform(1.5, 2.6)  # long / short axis
    if metastatic and rng.random() < 0.5:
        axes, tilt = (short, short * ratio), rng.uniform(-0.3, 0.3)  # taller than wide
    else:
        axes, tilt = (short * ratio, short), rng.uniform(-0.25, 0.25)  # parallel to the skin
    for _ in range(60):
        centre = (rng.uniform(0.15, 0.85) * cols, rng.uniform(0.3, 0.8) * rows)
        x0, y0 = int(round(centre[0])), int(round(centre[1]))
        reach = int(max(axes) * 1.5) + 2
        inside = reach <= x0 < cols - reach and reach <= y0 < rows - reach
        window = (slice(y0 - reach, y0 + reach), slice(x0 - reach, x0 + reach))
        if inside and sector[window].all() and not taken[window].any():
            return {"metastatic": metastatic, "centre": centre, "axes": axes, "tilt": tilt}
    return None


def _paint_node(echo, mask, spec, rng) -> np.ndarray:
    """The node into the echogenicity map, with its hilum, its interior texture and what lies behind it."""
    rows = echo.shape[0]
    level = rng.uniform(0.04, 0.12) if spec["metastatic"] else rng.uniform(0.1, 0.22)
    inner = ndimage.gaussian_filter(rng.standard_normal(echo.shape).astype(np.float32), 2.0)
    spread = 0.6 if spec["metastatic"] else 0.15
    node = np.clip(level * (1 + spread * inner / (inner.std() + 1e-6)), 0.01, 1)
    cx, cy = spec["centre"]
    if spec["metastatic"] and rng.random() < 0.3:  # a cystic (necrotic) part: anechoic
        y, x = np.mgrid[0:rows, 0 : echo.shape[1]]
        node = np.where(np.hypot(x - cx, y - cy) < min(spec["axes"]) * 0.35, 0.01, node)
    elif not spec["metastatic"] and rng.random() < 0.8:  # the fatty hilum: an echogenic band along the long axis
        core = ndimage.binary_erosion(mask, iterations=max(2, int(round(min(spec["axes"]) * 0.7))))
        node = np.where(core, rng.uniform(0.55, 0.8), node)
    edge = ndimage.gaussian_filter(mask.astype(np.float32), 0.8)  # a margin a pixel or so wide
    out = echo * (1 - edge) + node * edge
    columns = mask.any(axis=0)
    bottom = np.max(np.where(mask, np.arange(rows)[:, None], -1), axis=0)
    below = (np.arange(rows)[:, None] > bottom[None, :]) & columns[None, :]
    gain = rng.uniform(0.35, 0.6) if spec["metastatic"] and rng.random() < 0.6 else rng.uniform(1.15, 1.35)
    fade = ndimage.gaussian_filter(below.astype(np.float32), (0, 2.0))
    return out * (1 + (gain - 1) * fade)  # shadowing (< 1) or enhancement (> 1) behind the node


def _speckle(shape, rng) -> np.ndarray:
    field_ = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    blurred = ndimage.gaussian_filter(field_.real, (0.8, 2.0)) + 1j * ndimage.gaussian_filter(field_.imag, (0.8, 2.0))
    magnitude = np.abs(blurred)
    return (magnitude / magnitude.mean()).astype(np.float32)


def _to_bmode(echo: np.ndarray, sector: np.ndarray, rng) -> np.ndarray:
    """Log compression to 8 bits, as a scanner shows it (dynamic range 40-60 dB)."""
    db = 20 * np.log10(np.maximum(echo, 1e-4))
    dynamic = rng.uniform(40, 60)
    top = np.percentile(db[sector], 99.5)
    grey = np.clip((db - (top - dynamic)) / dynamic, 0, 1) * 255
    return np.where(sector, grey, 0).astype(np.uint8)


def _marks(image: np.ndarray, nodes: list[dict], rng) -> None:
    """Burnt-in calipers at a node's long-axis ends, a text block and a depth scale (white, in place)."""
    rows, cols = image.shape
    for node in nodes[:1]:
        (x0, y0), (x1, y1) = node["caliper"]
        for x, y in ((x0, y0), (x1, y1)):
            xi, yi = int(round(x)), int(round(y))
            image[max(yi - 3, 0) : yi + 4, min(max(xi, 0), cols - 1)] = 255
            image[min(max(yi, 0), rows - 1), max(xi - 3, 0) : xi + 4] = 255
    glyphs = rng.integers(0, 2, size=(5, int(rng.integers(12, 24)))).astype(bool)  # blocky "text"
    text = np.kron(glyphs, np.ones((2, 2), bool))
    image[4 : 4 + text.shape[0], 4 : 4 + text.shape[1]][text] = 230
    for y in range(8, rows - 4, rows // 8):  # depth ticks on the right
        image[y, cols - 6 : cols - 2] = 220


def make_us_case(seed: int, index: int, size: tuple[int, int] = US_SIZE, case_id: str | None = None):
    """One ultrasound phantom in memory (see the module docstring)."""
    cols, rows = int(size[0]), int(size[1])
    if min(cols, rows) < 96:
        raise PhantomError(f"an ultrasound phantom needs at least 96 x 96 pixels, got {cols} x {rows}")
    rng = _streams(seed, index)
    shape = (rows, cols)
    sector, depth = _sector(shape, rng["tissue"])
    echo = _tissue(shape, depth, rng["tissue"])
    instances = np.zeros(shape, np.uint16)
    n = 0 if rng["nodes"].random() < _NO_NODE_SHARE else int(rng["nodes"].integers(1, 4))
    records = []
    for _ in range(n):
        spec = _sample_node(shape, sector, instances > 0, rng["nodes"])
        if spec is None:
            continue
        mask = _node_mask(shape, spec["centre"], spec["axes"], spec["tilt"], rng["nodes"], spec["metastatic"])
        echo = _paint_node(echo, mask, spec, rng["nodes"])
        instances[mask] = len(records) + 1
        records.append(_record(len(records) + 1, mask, spec))
    image = _to_bmode(echo * _speckle(shape, rng["speckle"]), sector, rng["speckle"])
    marked = bool(records) and bool(rng["marks"].random() < _MARKS_SHARE)
    if marked:
        _marks(image, records, rng["marks"])
    info = {"seed": int(seed), "index": int(index), "modality": "us", "size": [cols, rows], "marks": marked,
            "n_nodes": len(records), "n_metastatic": sum(r["class"] == "metastatic" for r in records)}  # fmt: skip
    for r in records:
        r.pop("caliper")
    return UltrasoundCase(case_id or f"us_{index:03d}", image, instances, records, info)


def _record(instance: int, mask: np.ndarray, spec: dict) -> dict:
    """A node's box (pixels, one slice thick), class, and where calipers would sit (ends of its long axis)."""
    ys, xs = np.nonzero(mask)
    lo, hi = np.array([xs.min(), ys.min()], float) - 0.5, np.array([xs.max(), ys.max()], float) + 0.5
    (cx, cy), (a, b), tilt = spec["centre"], spec["axes"], spec["tilt"]
    along = tilt if a >= b else tilt + math.pi / 2
    half = max(a, b)
    caliper = ((cx - half * math.cos(along), cy - half * math.sin(along)),
               (cx + half * math.cos(along), cy + half * math.sin(along)))  # fmt: skip
    return {
        "instance": instance,
        "class": "metastatic" if spec["metastatic"] else "benign",
        "center": [round(float(v), 3) for v in (*(lo + hi) / 2, 0.0)],
        "size": [round(float(v), 3) for v in (*(hi - lo), 1.0)],
        # the drawn ellipse before its margin was perturbed: a lobulated node's mask is up to ~20 % wider
        "nominal_short_axis_px": round(2 * float(min(a, b)), 1),
        "nominal_long_axis_px": round(2 * float(max(a, b)), 1),
        "taller_than_wide": bool(b > a),
        "caliper": caliper,
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), suffix=".png")


def synthesize_us(out_dir: str | Path, cases: int, seed: int = 0, label_tag: str = "final",
                  prefix: str | None = None, size: tuple[int, int] = US_SIZE, progress=None) -> list[dict]:  # fmt: skip
    """Write ``cases`` ultrasound phantoms into a folder: ``<id>.png``, ``labels/<tag>/<id>.json``,
    ``labels/instances/<id>.png`` and ``synth_manifest_us.json``; their manifest entries."""
    if int(cases) < 1:
        raise PhantomError(f"cases must be >= 1, got {cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "us_" if prefix is None else prefix
    entries = []
    for index in range(int(cases)):
        t0 = time.perf_counter()
        case = make_us_case(seed, index, size, case_id=f"{prefix}{index:03d}")
        _write_png(out / f"{case.case_id}.png", case.image)
        _write_png(out / "labels" / "instances" / f"{case.case_id}.png", case.instances)
        atomic_write_text(out / "labels" / label_tag / f"{case.case_id}.json", contracts.dumps(case.label()) + "\n")
        entries.append({"id": case.case_id, **case.info, "image": f"{case.case_id}.png", "nodes": case.nodes})
        if progress is not None:
            progress(case, time.perf_counter() - t0)
    doc = {"schema": "lnnode.synth_manifest_us/1", "cases": entries}
    atomic_write_text(out / "synth_manifest_us.json", json.dumps(doc, indent=1) + "\n")
    return entries
