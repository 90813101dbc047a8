"""Real lymph-node shapes from the ULS23 NIH masks (932 nodes, mediastinal and abdominal).

A real shape replaces the ellipsoid of a synthetic node: the mask's largest component, turned by a
random angle about z, randomly flipped in-plane, mildly rescaled toward the size drawn for the node's
class, and resampled into the target grid with supersampling (fractional occupancy, so partial volume
is right). The class texture (heterogeneity, necrotic core, fatty hilum) is then painted inside it as
for synthetic nodes. The masks carry no pathology, so a real shape says nothing about the class:
selection only prefers masks whose roundness suits the class.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_image
from lnnode.phantoms.config import PhantomError
from lnnode.phantoms.nodes import NodePlan
from lnnode.phantoms.primitives import Perturbation

__all__ = [
    "ULS23_DIR",
    "RealShapeEntry",
    "RealShapeCatalog",
    "RealMask",
    "RealNodeShape",
    "load_real_mask",
    "largest_component",
    "build_real_shape",
]

ULS23_DIR = "uls23_nih_ln"
STATS_FILE = "nih_ln_mask_stats.json"
# masks whose (rough, stats-file) roundness suits each class
CLASS_RATIO = {"benign": (0.35, 0.75), "metastatic": (0.6, 1.0)}
SCALE_RANGE = (0.5, 1.5)  # "mild" rescale toward the drawn size (benign nodes are smaller than ULS23's)
SDF_PAD_MM = 8.0  # the signed distance is valid this far outside the mask


@dataclass(frozen=True)
class RealShapeEntry:
    """One mask of the catalogue, with the rough axial sizes of the stats file."""

    name: str  # file name, e.g. MED_LYMPH_001_lesion_01_sample_0.nii.gz
    group: str  # MED | ABD
    path: Path
    short_mm: float
    long_mm: float


class RealShapeCatalog:
    """The ULS23 masks under ``<real data>/uls23_nih_ln``, indexed from the stats file (no mask read)."""

    def __init__(self, data_dir: str | Path):
        root = Path(data_dir) / ULS23_DIR
        stats = root / STATS_FILE
        if not stats.is_file():
            raise PhantomError(
                f"real node shapes: {stats} not found; point --real-data (or LNNODE_REAL_DATA) at the folder "
                f"that holds {ULS23_DIR}/"
            )
        entries = []
        for row in json.loads(stats.read_text()):
            name = row["file"].removesuffix(".zip")
            group = "MED" if row["set"].endswith("MED") else "ABD"
            path = root / "masks" / group / name
            if path.is_file() and row["axial_short_mm"] > 0 and row["axial_long_mm"] > 0:
                entries.append(
                    RealShapeEntry(name, group, path, float(row["axial_short_mm"]), float(row["axial_long_mm"]))
                )
        if not entries:
            raise PhantomError(f"real node shapes: no mask files found under {root / 'masks'}")
        self.entries = sorted(entries, key=lambda e: e.name)

    def choose(self, rng: np.random.Generator, cls: str, target_short_mm: float) -> tuple[RealShapeEntry, float]:
        """A mask of suitable roundness and size near the target, and the scale that brings it closer."""
        lo, hi = CLASS_RATIO[cls]
        pool = [e for e in self.entries if lo <= e.short_mm / e.long_mm <= hi] or self.entries
        pool = sorted(pool, key=lambda e: (abs(math.log(e.short_mm / target_short_mm)), e.name))[:15]
        entry = pool[int(rng.integers(len(pool)))]
        scale = float(np.clip(target_short_mm / entry.short_mm, *SCALE_RANGE))
        return entry, scale


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (some ULS23 masks hold more than one)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


@dataclass(frozen=True)
class RealMask:
    """A real node mask prepared for rendering: signed distance (mm, padded) and its frame."""

    name: str
    sdf: np.ndarray  # (i, j, k), negative inside; zero half-way between inside and outside voxel centres
    geometry: ImageGeometry  # of the padded grid
    centroid: np.ndarray  # world LPS
    axes: np.ndarray  # (3, 3) columns: in-plane long direction, in-plane short direction, z (world)
    half_extent: np.ndarray  # (3,) mm along the axes
    max_depth: float  # deepest inside distance, mm
    surface_points: np.ndarray  # (N, 3) world points on the outline (voxel centres next to the edge)
    radius: float  # from the centroid, mm, enclosing the mask


@lru_cache(maxsize=256)
def load_real_mask(path: str) -> RealMask:
    """Read a ULS23 mask (largest component) and precompute its signed distance and frame."""
    array, geometry = read_image(path)
    mask = largest_component(array > 0.5)
    sp = np.asarray(geometry.spacing)
    pad = np.ceil(SDF_PAD_MM / sp).astype(int)
    mask = np.pad(mask, [(p, p) for p in pad])
    origin = geometry.index_to_world(-pad.astype(float))
    geometry = ImageGeometry(mask.shape, geometry.spacing, tuple(origin), geometry.direction)
    inside = ndimage.distance_transform_edt(mask, sampling=sp)
    outside = ndimage.distance_transform_edt(~mask, sampling=sp)
    half = float(sp.min()) / 2.0
    sdf = np.where(mask, half - inside, outside - half).astype(np.float32)

    world = geometry.index_to_world(np.argwhere(mask).astype(float))
    centroid = world.mean(axis=0)
    rel = world - centroid
    # in-plane principal directions (the hilum sits on a side of the short one)
    cov = np.cov(rel[:, :2].T) if len(rel) > 2 else np.eye(2)
    evals, evecs = np.linalg.eigh(cov)
    e1 = np.array([*evecs[:, 1], 0.0])
    e2 = np.array([*evecs[:, 0], 0.0])
    axes = np.stack([e1, e2, np.array([0.0, 0.0, 1.0])], axis=1)
    half_extent = np.abs(rel @ axes).max(axis=0) + sp.min() / 2
    edge = mask & (inside <= float(sp.max()) * 1.01)
    surface = geometry.index_to_world(np.argwhere(edge).astype(float))
    stride = max(1, len(surface) // 400)
    return RealMask(
        name=Path(path).name,
        sdf=sdf,
        geometry=geometry,
        centroid=centroid,
        axes=axes,
        half_extent=half_extent,
        max_depth=float(inside.max()),
        surface_points=surface[::stride],
        radius=float(np.linalg.norm(rel, axis=1).max() + np.linalg.norm(sp) / 2),
    )


@dataclass(frozen=True)
class RealNodeShape:
    """A real mask placed in the world: ``p = center + scale * A (q - centroid)`` with A a rotation about z
    composed with in-plane flips; q are the mask's own world coordinates."""

    mask: RealMask
    center: np.ndarray
    transform: np.ndarray  # A (3, 3), orthogonal
    scale: float
    hilum_center: np.ndarray | None = None  # in the mask frame (e1, e2, z), mm
    hilum_radii: np.ndarray | None = None
    necrosis_radius: float = 0.0  # fraction of the depth, as for analytic nodes
    necrosis_perturb: Perturbation | None = None

    @property
    def source(self) -> str:
        return self.mask.name

    @property
    def radius(self) -> float:
        return self.scale * self.mask.radius

    def _to_mask(self, p: np.ndarray) -> np.ndarray:
        return self.mask.centroid + ((np.asarray(p, dtype=float) - self.center) @ self.transform) / self.scale

    def _sdf_mask(self, q: np.ndarray) -> np.ndarray:
        g = self.mask.geometry
        idx = g.world_to_index(q.reshape(-1, 3))
        out = ndimage.map_coordinates(self.mask.sdf, idx.T, order=1, mode="nearest")
        beyond = np.any((idx < 0) | (idx > np.asarray(g.shape) - 1), axis=1)
        out[beyond] = np.maximum(out[beyond], SDF_PAD_MM)
        return out.reshape(q.shape[:-1])

    def sdf_points(self, p):
        return self.scale * self._sdf_mask(self._to_mask(p))

    def regions(self, p):
        q = self._to_mask(p)
        sd = self._sdf_mask(q)
        inside = sd <= 0.0
        necrosis = np.zeros_like(inside)
        if self.necrosis_radius > 0:
            rel = q - self.mask.centroid
            u = rel / np.maximum(np.linalg.norm(rel, axis=-1), 1e-9)[..., None]
            depth = -sd / self.mask.max_depth
            necrosis = inside & (depth >= 1.0 - self.necrosis_radius * (1.0 + self.necrosis_perturb(u)))
        hilum = np.zeros_like(inside)
        if self.hilum_center is not None:
            local = (q - self.mask.centroid) @ self.mask.axes
            hilum = inside & ~necrosis & (np.sum(((local - self.hilum_center) / self.hilum_radii) ** 2, axis=-1) <= 1.0)
        return inside, hilum, necrosis

    def surface(self, margin):
        rel = (self.mask.surface_points - self.mask.centroid) @ self.transform.T * self.scale
        r = np.linalg.norm(rel, axis=1, keepdims=True)
        shell = rel * (1.0 + margin / np.maximum(r, 1e-9))
        return self.center + np.concatenate([shell, 0.5 * rel[::4], np.zeros((1, 3))])

    def translated(self, offset):
        return replace(self, center=self.center + np.asarray(offset, dtype=float))


def build_real_shape(
    rng: np.random.Generator, plan: NodePlan, center: np.ndarray, catalog: RealShapeCatalog
) -> RealNodeShape:
    """A real mask for the plan: random turn about z, random in-plane flips, mild rescale, class features."""
    entry, scale = catalog.choose(rng, plan.cls, plan.short_mm)
    mask = load_real_mask(str(entry.path))
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    flips = np.diag([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0]), 1.0])
    transform = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ flips
    shape = RealNodeShape(mask, np.asarray(center, dtype=float), transform, scale)
    if plan.hilum:
        h = mask.half_extent
        side = 1.0 if rng.random() < 0.5 else -1.0
        hc = np.array(
            [rng.uniform(-0.3, 0.3) * h[0], side * rng.uniform(0.85, 1.05) * h[1], rng.uniform(-0.2, 0.2) * h[2]]
        )
        hr = np.array([rng.uniform(0.35, 0.6) * h[0], rng.uniform(0.4, 0.6) * h[1], rng.uniform(0.4, 0.7) * h[2]])
        shape = replace(shape, hilum_center=hc, hilum_radii=hr)
    if plan.necrosis:
        shape = replace(
            shape,
            necrosis_radius=float(rng.uniform(0.35, 0.6)),
            necrosis_perturb=Perturbation.random(rng, 0.1, k=5, freq=(1.0, 3.0)),
        )
    return shape
