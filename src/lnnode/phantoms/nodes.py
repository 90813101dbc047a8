"""Lymph nodes: what each class looks like, how many per case, where they go, and how they are rendered.

Radiological criteria modelled (see docs/phantoms.md for sources and the calibration):

* benign: oval (short/long ratio ~0.35-0.75), homogeneous, often (55%) a fatty hilum (an eccentric
  fat notch reaching toward the centre), smooth border; short axis mostly < 8 mm;
* metastatic: rounder (ratio ~0.55-1.0), larger on average (sizes matched to the real ULS23 nodes,
  which are mostly enlarged) but overlapping the benign range, heterogeneous texture (85%), irregular
  or lobulated border (70%, a low-frequency radial perturbation), necrotic centre in 30% (CT
  hypodense 10-20 HU, T2 bright), fatty hilum rarely (5%).

A node's shape is a function of world points (analytic ellipsoid or a real mask, :mod:`.realshapes`),
rendered with supersampling so that small nodes get the right partial volume on coarse grids; the
instance mask is where at least half of a voxel is node (hilum included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from lnnode.geometry import ImageGeometry
from lnnode.phantoms.anatomy import Anatomy
from lnnode.phantoms.config import Tissue
from lnnode.phantoms.primitives import (
    Ellipsoid,
    Perturbation,
    Texture,
    block_of_box,
    block_points,
    fibonacci_sphere,
    rotation_about,
    rotation_z,
)

__all__ = [
    "CLASSES",
    "STAGES",
    "SIZE_MODEL",
    "FEATURE_PROBABILITIES",
    "NodePlan",
    "NodeShape",
    "AnalyticNodeShape",
    "Node",
    "sample_stage",
    "sample_plan",
    "sample_plans",
    "build_analytic_shape",
    "node_look",
    "place_nodes",
    "supersample_offsets",
    "node_fractions",
    "render_node",
    "isolated_node_mask",
]

CLASSES = ("benign", "metastatic")
STAGES = ("N0", "N1", "N2")

# Sizes. Short axis: offset + lognormal(median, sigma), clipped to [lo, hi] (mm); short/long ratio:
# lo + (hi - lo) * Beta(a, b); z semi-axis / long semi-axis: lognormal(median, sigma), clipped.
# Metastatic sizes and all shape ratios are calibrated against the 932 ULS23 NIH masks with
# bench/phantom_calibration.py (table in docs/phantoms.md): the lobulated border adds about 6% to the
# measured short axis, which the targets allow for. Benign sizes follow the literature (normal
# abdominal and pelvic nodes are mostly < 8-10 mm short axis), which the real masks cannot check.
SIZE_MODEL = {
    "benign": {"short": (0.0, 5.5, 0.35, 2.5, 15.0), "ratio": (0.35, 0.75, 3.0, 3.0), "z": (0.9, 0.4, 0.3, 2.5)},
    "metastatic": {"short": (4.0, 9.3, 0.53, 5.0, 40.0), "ratio": (0.55, 1.0, 3.0, 2.0), "z": (0.92, 0.4, 0.3, 2.5)},
}
FEATURE_PROBABILITIES = {
    "benign": {"hilum": 0.55, "necrosis": 0.0, "irregular_border": 0.10, "heterogeneous": 0.10},
    "metastatic": {"hilum": 0.05, "necrosis": 0.30, "irregular_border": 0.70, "heterogeneous": 0.85},
}
PLACEMENT_MARGIN_MM = 1.5  # clearance between a node and any other structure or node


@dataclass(frozen=True)
class NodePlan:
    """What one node should be, before it is placed: class, target sizes and features."""

    cls: str
    short_mm: float
    ratio: float  # short / long, in-plane
    z_ratio: float  # z extent / long axis
    hilum: bool
    necrosis: bool
    irregular_border: bool
    heterogeneous: bool
    real_shape: bool

    @property
    def long_mm(self) -> float:
        return self.short_mm / self.ratio


def sample_stage(rng: np.random.Generator) -> tuple[str, int, int]:
    """(stage, number of metastatic nodes, number of benign nodes): N0 35%, N1 (1-3) 40%, N2 (>=4) 25%."""
    stage = str(rng.choice(STAGES, p=[0.35, 0.40, 0.25]))
    if stage == "N0":
        return stage, 0, int(rng.integers(2, 7))
    if stage == "N1":
        return stage, int(rng.integers(1, 4)), int(rng.integers(1, 5))
    return stage, int(rng.integers(4, 7)), int(rng.integers(0, 3))


def _lognormal(
    rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float, offset: float = 0.0
) -> float:
    return float(np.clip(offset + median * math.exp(sigma * rng.standard_normal()), lo, hi))


def sample_plan(
    rng: np.random.Generator, cls: str, real_shape_fraction: float = 0.0, size_matched: bool = False
) -> NodePlan:
    """Draw one node's class-conditional sizes and features. ``size_matched``: the short axis comes
    from either class's size model at random (the same mixture for both classes), so size says
    nothing about the class; roundness, border, texture, necrosis and hilum still do."""
    size_cls = str(rng.choice(CLASSES)) if size_matched else cls
    size = SIZE_MODEL[cls]
    lo, hi, a, b = size["ratio"]
    p = FEATURE_PROBABILITIES[cls]
    necrosis = bool(rng.random() < p["necrosis"])
    return NodePlan(
        cls=cls,
        short_mm=_lognormal(rng, *SIZE_MODEL[size_cls]["short"][1:], offset=SIZE_MODEL[size_cls]["short"][0]),
        ratio=float(lo + (hi - lo) * rng.beta(a, b)),
        z_ratio=_lognormal(rng, *size["z"]),
        hilum=bool(rng.random() < p["hilum"]) and not necrosis,
        necrosis=necrosis,
        irregular_border=bool(rng.random() < p["irregular_border"]),
        heterogeneous=bool(rng.random() < p["heterogeneous"]),
        real_shape=bool(rng.random() < real_shape_fraction),
    )


def sample_plans(
    rng: np.random.Generator, real_shape_fraction: float = 0.0, size_matched: bool = False
) -> tuple[str, list[NodePlan]]:
    """A case's planned stage and nodes (metastatic first, so they get placed before the benign ones)."""
    stage, n_met, n_ben = sample_stage(rng)
    plans = [sample_plan(rng, "metastatic", real_shape_fraction, size_matched) for _ in range(n_met)]
    plans += [sample_plan(rng, "benign", real_shape_fraction, size_matched) for _ in range(n_ben)]
    return stage, plans


# -- shapes -------------------------------------------------------------------------------------------
class NodeShape(Protocol):
    """The solid of one node in world space (analytic or from a real mask)."""

    center: np.ndarray
    source: str  # "synthetic" or the real mask's file name

    @property
    def radius(self) -> float: ...

    def regions(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inside, hilum, necrosis) booleans at world points (..., 3); hilum and necrosis lie inside."""
        ...

    def sdf_points(self, p: np.ndarray) -> np.ndarray: ...

    def surface(self, margin: float) -> np.ndarray:
        """World points (N, 3) on the surface pushed out by ``margin`` mm, plus some inside points."""
        ...

    def translated(self, offset: np.ndarray) -> NodeShape:
        """The same node moved by ``offset`` (world mm)."""
        ...


@dataclass(frozen=True)
class AnalyticNodeShape:
    """An ellipsoid node (long axis a, short b in-plane, c along z), optionally lobulated, with a
    fatty hilum notch and/or a necrotic core."""

    body: Ellipsoid
    hilum: Ellipsoid | None = None
    necrosis_radius: float = 0.0  # fraction of the node's normalised radius
    necrosis_perturb: Perturbation | None = None
    source: str = "synthetic"

    @property
    def center(self) -> np.ndarray:
        return self.body.center

    @property
    def radius(self) -> float:
        return self.body.radius

    def regions(self, p):
        q, rho = self.body.normalised(p)
        inside = rho <= 1.0
        necrosis = np.zeros_like(inside)
        if self.necrosis_radius > 0:
            r = np.linalg.norm(q, axis=-1)
            limit = self.necrosis_radius * (1.0 + self.necrosis_perturb(q / np.maximum(r, 1e-12)[..., None]))
            necrosis = inside & (rho <= limit)
        hilum = np.zeros_like(inside)
        if self.hilum is not None:
            hilum = inside & ~necrosis & (self.hilum.normalised(p)[1] <= 1.0)
        return inside, hilum, necrosis

    def sdf_points(self, p):
        return self.body.sdf_points(p)

    def translated(self, offset):
        offset = np.asarray(offset, dtype=float)
        body = replace(self.body, center=self.body.center + offset)
        hilum = None if self.hilum is None else replace(self.hilum, center=self.hilum.center + offset)
        return replace(self, body=body, hilum=hilum)

    def surface(self, margin):
        dirs = fibonacci_sphere(256)
        g = self.body.perturb(dirs) if self.body.perturb is not None else 0.0
        local = dirs * self.body.axes * (1.0 + np.asarray(g))[:, None]
        r = np.linalg.norm(local, axis=1, keepdims=True)
        shell = local * (1.0 + margin / r)
        pts = np.concatenate([shell, 0.5 * local[::4], np.zeros((1, 3))])
        return self.body.center + pts @ self.body.rotation.T


def build_analytic_shape(rng: np.random.Generator, plan: NodePlan, center: np.ndarray) -> AnalyticNodeShape:
    """An ellipsoid with the plan's sizes, a random in-plane orientation and a small tilt."""
    b = plan.short_mm / 2.0
    a = b / plan.ratio
    c = max(a * plan.z_ratio, 0.6 * b)
    rot = rotation_z(rng.uniform(0, np.pi)) @ rotation_about(
        np.array([1.0, 0.0, 0.0]), np.radians(rng.uniform(-15, 15))
    )
    if plan.irregular_border:
        perturb = Perturbation.random(rng, rng.uniform(0.06, 0.12), k=7, freq=(1.5, 3.5))
    else:
        perturb = Perturbation.random(rng, rng.uniform(0.01, 0.025), k=4, freq=(1.0, 2.0))
    axes = np.array([a, b, c])
    body = Ellipsoid(np.asarray(center, dtype=float), axes, rot, perturb)
    hilum = None
    if plan.hilum:
        side = 1.0 if rng.random() < 0.5 else -1.0
        local = np.array([rng.uniform(-0.3, 0.3) * a, side * rng.uniform(0.85, 1.05) * b, rng.uniform(-0.2, 0.2) * c])
        radii = np.array([rng.uniform(0.35, 0.6) * a, rng.uniform(0.4, 0.6) * b, rng.uniform(0.4, 0.7) * c])
        hilum = Ellipsoid(body.center + rot @ local, radii, rot)
    if plan.necrosis:
        return AnalyticNodeShape(
            body, hilum, float(rng.uniform(0.35, 0.6)), Perturbation.random(rng, 0.1, k=5, freq=(1.0, 3.0))
        )
    return AnalyticNodeShape(body, hilum)


# -- appearance ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeLook:
    """Intensities of one node: soft tissue (+ texture), necrosis, fatty hilum."""

    value: float
    necrosis_value: float
    hilum_value: float
    texture: Texture


def node_look(rng: np.random.Generator, plan: NodePlan, values: dict, modality: str) -> NodeLook:
    """Class texture on top of the case's node intensity. The mean is class-independent on purpose:
    on CT and T2 the mean density does not tell metastatic from benign; texture and shape do."""
    base = values["node"] + (rng.uniform(-5, 5) if modality == "ct" else rng.uniform(-30, 30))
    unit = 1.0 if modality == "ct" else 0.01 * values["node"]  # CT: HU; MR: percent of the node signal
    if plan.heterogeneous:
        amp = rng.uniform(10, 18) if plan.cls == "metastatic" else rng.uniform(6, 10)
    else:
        amp = rng.uniform(3, 6) if plan.cls == "metastatic" else rng.uniform(2, 4)
    return NodeLook(
        value=float(base),
        necrosis_value=float(values["necrosis"]),
        hilum_value=float(values["visceral_fat"]),
        texture=Texture.random(rng, amp * unit),
    )


@dataclass
class Node:
    """A placed node: its plan, shape, look, and where it was placed."""

    plan: NodePlan
    shape: NodeShape
    look: NodeLook
    site: str  # the vessel it was placed beside, "visceral_fat", or "real_ct"
    instance: int = 0


# -- placement (synthetic anatomy: analytic, grid-independent checks) ---------------------------------
def _inside_grid(geometry: ImageGeometry, pts: np.ndarray, margin_vox: float = 1.0) -> bool:
    idx = geometry.world_to_index(pts)
    return bool(np.all(idx >= margin_vox) and np.all(idx <= np.asarray(geometry.shape) - 1 - margin_vox))


def _fits(shape: NodeShape, anatomy: Anatomy, placed: list[Node], geometry: ImageGeometry) -> bool:
    pts = shape.surface(PLACEMENT_MARGIN_MM)
    if not _inside_grid(geometry, pts):
        return False
    if np.any(anatomy.visceral.sdf_points(pts) > -2.0):
        return False
    for obstacle in anatomy.obstacles:
        if np.any(obstacle.sdf_points(pts) <= 0.0):
            return False
    for other in placed:
        if (
            np.linalg.norm(other.shape.center - shape.center)
            > other.shape.radius + shape.radius + 2 * PLACEMENT_MARGIN_MM
        ):
            continue
        if np.any(other.shape.sdf_points(pts) <= 0.0):
            return False
        if np.any(shape.sdf_points(other.shape.surface(PLACEMENT_MARGIN_MM)) <= 0.0):
            return False
    return True


def _candidate_center(
    rng: np.random.Generator, anatomy: Anatomy, radius: float, zlim: tuple[float, float], near_vessel: bool
) -> tuple[np.ndarray, str]:
    z = rng.uniform(zlim[0] + radius, zlim[1] - radius) if zlim[1] - zlim[0] > 2 * radius else sum(zlim) / 2
    if near_vessel:
        weights = np.array([v.weight for v in anatomy.vessels])
        for _ in range(10):
            v = anatomy.vessels[int(rng.choice(len(weights), p=weights / weights.sum()))]
            if v.shape.z0 <= z <= v.shape.z1:
                break
        else:
            near_vessel = False
    if near_vessel:
        zz = np.array(z)
        c = np.array([float(v.shape.cx(zz)), float(v.shape.cy(zz))])
        r_vessel = float(max(v.shape.a(zz), v.shape.b(zz)))
        angle = rng.uniform(0, 2 * np.pi)
        d = r_vessel + radius + rng.uniform(1.5, 8.0)
        return np.array([c[0] + d * np.cos(angle), c[1] + d * np.sin(angle), z]), v.name
    lo, hi = anatomy.visceral.bounds((z, z))
    return np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]), z]), "visceral_fat"


def place_nodes(
    rng: np.random.Generator,
    plans: list[NodePlan],
    anatomy: Anatomy,
    geometry: ImageGeometry,
    make_shape,
    modality: str,
    attempts: int = 120,
) -> list[Node]:
    """Place planned nodes in the visceral fat, mostly beside vessels, clear of every other structure.

    ``make_shape(rng, plan, center) -> NodeShape`` builds the analytic or real shape. A node that
    finds no room in ``attempts`` tries (small field of view) is left out.
    """
    lo, hi = geometry.world_bounds()
    zlim = (float(lo[2]), float(hi[2]))
    placed: list[Node] = []
    for plan in plans:
        look = node_look(rng, plan, anatomy.values, modality)
        for attempt in range(attempts):
            shape = make_shape(rng, plan, np.zeros(3))
            center, site = _candidate_center(rng, anatomy, shape.radius, zlim, near_vessel=attempt < 0.75 * attempts)
            shape = shape.translated(center)
            if _fits(shape, anatomy, placed, geometry):
                placed.append(Node(plan, shape, look, site))
                break
    return placed


# -- rendering ------------------------------------------------------------------------------------------
def supersample_offsets(spacing: tuple[float, float, float], target_mm: float = 0.4, cap: int = 8) -> np.ndarray:
    """Sub-voxel offsets (index units, (M, 3)) so sub-samples are about ``target_mm`` apart."""
    n = [min(cap, max(1, math.ceil(s / target_mm))) for s in spacing]
    axes = [(np.arange(k) + 0.5) / k - 0.5 for k in n]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def node_fractions(
    shape: NodeShape, geometry: ImageGeometry
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """(block, occupancy, hilum fraction, necrosis fraction) of a node on a grid, by supersampling."""
    r = shape.radius
    block = block_of_box(geometry, shape.center - r, shape.center + r, pad=1)
    if block is None:
        return None
    size = tuple(s.stop - s.start for s in block)
    occ = np.zeros(size, np.float32)
    hil = np.zeros(size, np.float32)
    nec = np.zeros(size, np.float32)
    offsets = supersample_offsets(geometry.spacing)
    for off in offsets:
        inside, hilum, necrosis = shape.regions(block_points(geometry, block, off))
        occ += inside
        hil += hilum
        nec += necrosis
    n = float(len(offsets))
    return block, occ / n, hil / n, nec / n


def render_node(
    node: Node,
    geometry: ImageGeometry,
    image: np.ndarray,
    instances: np.ndarray,
    tissue: np.ndarray | None,
    instance: int,
    fractions=None,
) -> np.ndarray | None:
    """Paint one node (partial volume, texture, hilum, necrosis) and write its instance voxels.

    Returns the node's occupancy block (or None when no voxel is at least half node, e.g. a tiny node
    between thick slices: then nothing is painted, so the image never shows an unlabelled node).
    """
    fractions = fractions if fractions is not None else node_fractions(node.shape, geometry)
    if fractions is None:
        return None
    block, occ, hil, nec = fractions
    mask = (occ >= 0.5) & (instances[block] == 0)
    if not mask.any():
        return None
    tex = node.look.texture(block_points(geometry, block))
    tissue_frac = occ - hil - nec
    value = (
        tissue_frac * (node.look.value + tex)
        + hil * node.look.hilum_value
        + nec * (node.look.necrosis_value + 0.5 * tex)
    )
    view = image[block]
    view *= 1.0 - occ
    view += value.astype(np.float32)
    instances[block][mask] = instance
    if tissue is not None:
        tissue[block][mask] = int(Tissue.NODE)
    node.instance = instance
    return occ


def isolated_node_mask(
    rng: np.random.Generator,
    plan: NodePlan,
    spacing: tuple[float, float, float] = (0.75, 0.75, 1.0),
    make_shape=None,
) -> tuple[np.ndarray, ImageGeometry, NodeShape]:
    """One node rendered alone on a small identity-direction grid: (mask, geometry, shape).

    For calibration and tests: the node model without anatomy, measured like the real masks.
    """
    shape = (make_shape or build_analytic_shape)(rng, plan, np.zeros(3))
    r = shape.radius + 2 * max(spacing)
    n = tuple(int(np.ceil(2 * r / s)) + 1 for s in spacing)
    origin = tuple(-(k - 1) / 2 * s for k, s in zip(n, spacing, strict=True))
    geometry = ImageGeometry(n, spacing, origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    block, occ, _, _ = node_fractions(shape, geometry)
    mask = np.zeros(n, bool)
    mask[block] = occ >= 0.5
    return mask, geometry, shape
