"""Real CT backgrounds (TotalSegmentator examples) with synthetic or real-shaped nodes inserted.

Two backgrounds, each with organ masks on its own grid:

* ``example_ct_sm``: 122 x 101 x 30, 3 mm isotropic, upper abdomen, with 117 binary organ masks;
* ``example_ct_dicom``: a 512 x 512 x 20 DICOM series (0.98 x 0.98 x 2 mm) with a TotalSegmentator
  label map whose grid is stored y-flipped with another origin; it is resampled onto the DICOM grid
  through world coordinates (nearest neighbour), never by array indexing.

Nodes go inside the body (at least 10 mm deep), into soft tissue or fat (-200..150 HU over their whole
footprint, with mostly fat around them) and never within ``max(2 mm, one voxel)`` of any organ voxel
(vessels, heart, airways, bones, muscles, bowel... every mask). The backgrounds hold real, unlabelled
lymph nodes: a detector may rightly find nodes that are not in the ground truth.

The output keeps the background's native grid and direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_image, read_sitk, sitk_to_array
from lnnode.measure.axes import z_axis_of
from lnnode.phantoms.config import PhantomError
from lnnode.phantoms.nodes import Node, NodeLook, NodePlan, node_fractions, render_node
from lnnode.phantoms.realshapes import largest_component

__all__ = [
    "REAL_BACKGROUNDS",
    "RealBackground",
    "load_background",
    "body_mask",
    "organ_clearance_mm",
    "place_real_nodes",
    "real_node_values",
]

TOTALSEG_DIR = "totalseg"
REAL_BACKGROUNDS = ("example_ct_sm", "example_ct_dicom")
HU_RANGE = (-200.0, 150.0)  # a node's footprint must lie in soft tissue or fat
BODY_DEPTH_MM = 10.0
# TotalSegmentator v2 label values of vessels (nodes are preferably placed near them)
_TS_VESSEL_LABELS = (52, 62, 63, 64, 65, 66, 67, 68)
_VESSEL_NAMES = (
    "aorta",
    "inferior_vena_cava",
    "superior_vena_cava",
    "portal_vein_and_splenic_vein",
    "iliac_artery_left",
    "iliac_artery_right",
    "iliac_vena_left",
    "iliac_vena_right",
)


@dataclass
class RealBackground:
    """A real CT with what placement needs; arrays are index-ordered (i, j, k) on the CT grid."""

    name: str
    image: np.ndarray  # float32 HU
    geometry: ImageGeometry
    organs: np.ndarray  # bool, any organ mask
    body: np.ndarray  # bool
    allowed_mm: np.ndarray  # float32, distance to the nearest voxel where no node may be
    vessel_mm: np.ndarray  # float32, distance to the nearest vessel voxel (inf when none)
    fat_hu: float
    noise_hu: float


def organ_clearance_mm(geometry: ImageGeometry) -> float:
    """Clearance between nodes and organ voxels: 2 mm, or one voxel where voxels are larger."""
    return max(2.0, max(geometry.spacing))


def body_mask(image: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """The patient: voxels above -500 HU, largest component (drops the table), holes filled per axial slice."""
    body = largest_component(image > -500.0)
    az = z_axis_of(geometry)
    planes = np.moveaxis(body, az, 0)
    filled = np.stack([ndimage.binary_fill_holes(p) for p in planes])
    return np.moveaxis(filled, 0, az)


def _read_organs_folder(folder: Path, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    organs = np.zeros(geometry.shape, bool)
    vessels = np.zeros(geometry.shape, bool)
    files = sorted(folder.glob("*.nii.gz"))
    if not files:
        raise PhantomError(f"real background: no organ masks in {folder}")
    for f in files:
        array, g = read_image(f)
        if g.shape != geometry.shape or not np.allclose(g.affine, geometry.affine, atol=1e-3):
            raise PhantomError(f"real background: {f.name} is not on the grid of its CT")
        m = array > 0.5
        organs |= m
        if f.name.removesuffix(".nii.gz") in _VESSEL_NAMES:
            vessels |= m
    return organs, vessels


def _resample_labels(labels_path: Path, reference: sitk.Image) -> np.ndarray:
    """A label map resampled onto a reference grid through world coordinates (nearest neighbour)."""
    labels = read_sitk(labels_path)
    out = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk_to_array(out, dtype=np.int32)


def _noise_sigma(image: np.ndarray, fat: np.ndarray) -> float:
    """Noise of the CT (HU) from neighbouring fat voxels: std of differences / sqrt(2)."""
    sigmas = []
    for axis in range(2):
        a = np.moveaxis(image, axis, 0)
        f = np.moveaxis(fat, axis, 0)
        both = f[1:] & f[:-1]
        if both.sum() > 100:
            sigmas.append(float(np.std((a[1:] - a[:-1])[both]) / np.sqrt(2)))
    return float(np.median(sigmas)) if sigmas else 12.0


@lru_cache(maxsize=4)
def load_background(data_dir: str, name: str) -> RealBackground:
    """Load a real background and precompute its placement maps (cached per process)."""
    root = Path(data_dir) / TOTALSEG_DIR
    if name == "example_ct_sm":
        path = root / "example_ct_sm.nii.gz"
        if not path.is_file():
            raise PhantomError(f"real background: {path} not found (set --real-data or LNNODE_REAL_DATA)")
        image, geometry = read_image(path)
        organs, vessels = _read_organs_folder(root / "example_ct_organs", geometry)
    elif name == "example_ct_dicom":
        folder, seg = root / "example_ct_dicom", root / "example_ct_dicom_seg.nii.gz"
        if not folder.is_dir() or not seg.is_file():
            raise PhantomError(f"real background: {folder} or {seg} not found (set --real-data or LNNODE_REAL_DATA)")
        reference = read_sitk(folder)
        image, geometry = sitk_to_array(reference), ImageGeometry.from_sitk(reference)
        labels = _resample_labels(seg, reference)
        organs = labels > 0
        vessels = np.isin(labels, _TS_VESSEL_LABELS)
    else:
        raise PhantomError(f"unknown real background {name!r}; known: {', '.join(REAL_BACKGROUNDS)}")
    sp = geometry.spacing
    body = body_mask(image, geometry)
    deep = ndimage.distance_transform_edt(body, sampling=sp) > BODY_DEPTH_MM
    near_organ = ndimage.distance_transform_edt(~organs, sampling=sp) <= organ_clearance_mm(geometry)
    soft = (image >= HU_RANGE[0]) & (image <= HU_RANGE[1])
    forbidden = ~deep | near_organ | ~soft
    allowed_mm = ndimage.distance_transform_edt(~forbidden, sampling=sp).astype(np.float32)
    vessel_mm = (
        ndimage.distance_transform_edt(~vessels, sampling=sp).astype(np.float32)
        if vessels.any()
        else np.full(image.shape, np.inf, np.float32)
    )
    fat = body & (image > -150) & (image < -50)
    return RealBackground(
        name=name,
        image=image,
        geometry=geometry,
        organs=organs,
        body=body,
        allowed_mm=allowed_mm,
        vessel_mm=vessel_mm,
        fat_hu=float(np.median(image[fat])) if fat.any() else -100.0,
        noise_hu=_noise_sigma(image, fat),
    )


def _forbidden_hit(bg: RealBackground, block, footprint: np.ndarray) -> bool:
    """True when the node footprint touches a voxel where no node may be."""
    return bool(np.any(bg.allowed_mm[block][footprint] <= 0.0))


def _fat_around(bg: RealBackground, block, footprint: np.ndarray, min_fraction: float = 0.4) -> bool:
    """Whether most of a 2-voxel shell around the footprint is fat (nodes sit in fat)."""
    shell = ndimage.binary_dilation(footprint, iterations=2) & ~footprint
    hu = bg.image[block][shell]
    return hu.size == 0 or float(np.mean(hu < -30.0)) >= min_fraction


def _clear_of_nodes(instances: np.ndarray, block, footprint: np.ndarray, geometry: ImageGeometry) -> bool:
    """No voxel of an already placed node within 2 mm (one voxel at least) of the footprint."""
    taken = instances[block] > 0
    if not taken.any():
        return True
    r = np.maximum(np.round(2.0 / np.asarray(geometry.spacing)).astype(int), 1)
    grown = ndimage.binary_dilation(footprint, structure=np.ones(tuple(2 * r + 1), bool))
    return not np.any(grown & taken)


def _node_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Lightly correlated Gaussian noise with standard deviation ``sigma``."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), 0.6)
    return (n / max(float(n.std()), 1e-6) * sigma).astype(np.float32)


def place_real_nodes(
    rng: np.random.Generator,
    plans: list[NodePlan],
    bg: RealBackground,
    make_shape,
    looks: list[NodeLook],
    noise_scale: float = 1.0,
    attempts: int = 80,
) -> tuple[np.ndarray, np.ndarray, list[Node]]:
    """Insert nodes into a copy of the background; returns (image float32, instances, placed nodes)."""
    image = bg.image.copy()
    instances = np.zeros(bg.geometry.shape, np.uint16)
    placed: list[Node] = []
    g = bg.geometry
    for plan, look in zip(plans, looks, strict=True):
        for attempt in range(attempts):
            shape = make_shape(rng, plan, np.zeros(3))
            # a centre at least the node's radius from anything forbidden (cheap pre-filter)
            ok = bg.allowed_mm >= 0.8 * shape.radius
            if attempt < 0.7 * attempts and np.isfinite(bg.vessel_mm).any():
                near = ok & (bg.vessel_mm <= shape.radius + 30.0)
                ok = near if near.any() else ok
            candidates = np.flatnonzero(ok)
            if candidates.size == 0:
                continue
            idx = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), g.shape), float)
            idx += rng.uniform(-0.5, 0.5, 3)
            shape = shape.translated(g.index_to_world(idx))
            fractions = node_fractions(shape, g)
            if fractions is None:
                continue
            block, occ = fractions[0], fractions[1]
            footprint = occ > 0.01
            if not (occ >= 0.5).any() or _forbidden_hit(bg, block, footprint):
                continue
            if not _clear_of_nodes(instances, block, footprint, g) or not _fat_around(bg, block, footprint):
                continue
            node = Node(plan, shape, look, site="real_ct")
            if render_node(node, g, image, instances, None, len(placed) + 1, fractions) is None:
                continue
            # the inserted tissue lacks the scanner noise the background had: add it back where the node is
            keep = (1.0 - occ) ** 2
            image[block] += _node_noise(rng, occ.shape, bg.noise_hu * noise_scale) * np.sqrt(1.0 - keep)
            placed.append(node)
            break
    return image, instances, placed


def real_node_values(rng: np.random.Generator, bg: RealBackground) -> dict[str, float]:
    """Node intensities on a real CT (HU): 30-60 soft tissue, 10-20 necrosis, the background's own fat."""
    return {"node": float(rng.uniform(30, 60)), "necrosis": float(rng.uniform(10, 20)), "visceral_fat": bg.fat_hu}
