"""Make phantom cases: in memory (:func:`make_case`) or as a MONAI Label studies folder (:func:`synthesize`).

Determinism: case ``index`` of run ``seed`` draws everything from ``SeedSequence([seed, index])``, split
into independent streams (anatomy, nodes, noise, background), so a case never depends on how many
cases are made, and changing one stream (say, more nodes) leaves the others alone.

Output layout::

    OUT/<id>.nii.gz                     image (int16: CT in HU, MR in arbitrary units)
    OUT/labels/<tag>/<id>.json          ground truth, lnnode.label/1 (boxes from the instance mask)
    OUT/labels/instances/<id>.nii.gz    instance mask (1..N, one per node), same grid
    OUT/synth_manifest.json             per case: seed, options, geometry, nodes with sizes and features
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lnnode.geometry import ImageGeometry
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import write_image
from lnnode.measure.axes import axial_axes, z_axis_of
from lnnode.phantoms.anatomy import render_anatomy, sample_anatomy
from lnnode.phantoms.config import PhantomConfig, PhantomError
from lnnode.phantoms.nodes import Node, build_analytic_shape, node_look, place_nodes, render_node, sample_plans
from lnnode.phantoms.primitives import block_world, split_block

from .. import contracts

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "Case",
    "case_streams",
    "make_case",
    "write_case",
    "synthesize",
    "correlated_noise",
    "stage_of",
]

MANIFEST_NAME = "synth_manifest.json"
MANIFEST_SCHEMA = "lnnode.synth_manifest/1"
CT_RANGE = (-1024, 3071)


@dataclass
class Case:
    """One phantom in memory. Arrays are index-ordered (i, j, k) on ``geometry``."""

    case_id: str
    image: np.ndarray  # int16
    geometry: ImageGeometry
    instances: np.ndarray  # uint8 / uint16, 0 = background, 1..N nodes
    classes: dict[int, str]
    nodes: list[dict]  # per node: instance, class, sizes (measured on the final mask), features, centre
    info: dict  # seed, index, modality, background, phase, stage...
    tissue: np.ndarray | None = None  # uint8 Tissue codes (synthetic backgrounds only)
    rejected: list[dict] = field(default_factory=list)  # hard-negative boxes (real backgrounds), label contract

    def label(self) -> dict:
        """Ground truth in the label contract, boxes from the final instance mask; hard negatives as ``rejected``."""
        label = contracts.label_from_instance_mask(self.instances, self.geometry, self.case_id, self.classes)
        if self.rejected:
            label = contracts.make_label(self.case_id, label["nodes"], rejected=self.rejected)
        return label

    def manifest_entry(self, label_tag: str = "final") -> dict:
        return {
            "id": self.case_id,
            **self.info,
            "image": f"{self.case_id}.nii.gz",
            "label": f"labels/{label_tag}/{self.case_id}.json",
            "instances": f"labels/instances/{self.case_id}.nii.gz",
            "geometry": _rounded_geometry(self.geometry),
            "nodes": self.nodes,
        }


def _rounded_geometry(g: ImageGeometry) -> dict:
    d = g.to_dict()
    return {k: [round(float(x), 6) if isinstance(x, float) else x for x in v] for k, v in d.items()}


def case_streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent random streams of one case, from ``SeedSequence([seed, index])``."""
    if seed < 0 or index < 0:
        raise PhantomError(f"seed and case index must be >= 0, got {seed}, {index}")
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(4)
    return {
        name: np.random.default_rng(s)
        for name, s in zip(("anatomy", "nodes", "noise", "background"), children, strict=True)
    }


def stage_of(classes: dict[int, str]) -> str:
    """N0 (no metastatic node), N1 (1-3), N2 (4 or more): the count-based stage hint."""
    n = sum(1 for c in classes.values() if c == "metastatic")
    return "N0" if n == 0 else ("N1" if n <= 3 else "N2")


# -- noise ----------------------------------------------------------------------------------------------
def _axis_map(geometry: ImageGeometry) -> tuple[list[int], list[float]]:
    """For each index axis, the world axis it runs along (nearest) and the sign."""
    d = geometry.direction_matrix
    world = [int(np.argmax(np.abs(d[:, a]))) for a in range(3)]
    return world, [float(np.sign(d[world[a], a])) for a in range(3)]


def _kernel_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after a 1D Gaussian filter of ``sigma`` voxels."""
    if sigma <= 0:
        return 1.0
    delta = np.zeros(int(8 * sigma) * 2 + 1)
    delta[len(delta) // 2] = 1.0
    return float(np.sqrt(np.sum(ndimage.gaussian_filter1d(delta, sigma) ** 2)))


def correlated_noise(rng: np.random.Generator, geometry: ImageGeometry, sigma_vox: float = 0.6) -> np.ndarray:
    """Unit-variance Gaussian noise, correlated in-plane (``sigma_vox`` voxels), float32 (i, j, k).

    For axis-aligned directions it is drawn on the world-ordered grid and flipped/permuted onto the
    target, so the same seed gives the same noise in world space whatever the direction.
    """
    world, sign = _axis_map(geometry)
    if geometry.is_axis_aligned():
        cshape = [0, 0, 0]
        for a in range(3):
            cshape[world[a]] = geometry.shape[a]
        noise = rng.standard_normal(tuple(cshape), dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, (sigma_vox, sigma_vox, 0.0))
        noise = np.transpose(noise, world)
        flips = tuple(a for a in range(3) if sign[a] < 0)
        noise = np.ascontiguousarray(np.flip(noise, flips) if flips else noise)
    else:
        noise = rng.standard_normal(geometry.shape, dtype=np.float32)
        sig = [sigma_vox if world[a] < 2 else 0.0 for a in range(3)]
        noise = ndimage.gaussian_filter(noise, sig)
    return noise / np.float32(_kernel_gain(sigma_vox) ** 2)


def _bias_field(rng: np.random.Generator, geometry: ImageGeometry, image: np.ndarray) -> None:
    """Multiply ``image`` in place by a smooth MR coil bias field (world-defined, ~0.7-1.4)."""
    c = rng.uniform(-0.2, 0.2, 6)
    block = tuple(slice(0, n) for n in geometry.shape)
    for chunk in split_block(block):
        x, y, z = (v / 200.0 for v in block_world(geometry, chunk, dtype=np.float32))
        log_b = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * x * x + c[5] * y * y
        image[chunk] *= np.exp(log_b).astype(np.float32)


def _finish_ct(image: np.ndarray, rng: np.random.Generator, geometry: ImageGeometry, scale: float) -> np.ndarray:
    sigma = rng.uniform(10, 20)
    if scale > 0:
        image += correlated_noise(rng, geometry) * np.float32(sigma * scale)
    return np.clip(np.rint(image), *CT_RANGE).astype(np.int16)


def _finish_mr(
    image: np.ndarray, rng: np.random.Generator, geometry: ImageGeometry, fat: float, scale: float
) -> np.ndarray:
    _bias_field(rng, geometry, image)
    sigma = np.float32(rng.uniform(0.02, 0.04) * fat * scale)
    if scale > 0:
        # Rician: magnitude of a complex signal with Gaussian noise on both channels
        re = image + sigma * correlated_noise(rng, geometry)
        im = sigma * correlated_noise(rng, geometry)
        image = np.sqrt(re * re + im * im)
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)


# -- nodes' records ---------------------------------------------------------------------------------------
def _node_record(node: Node, instances: np.ndarray, geometry: ImageGeometry, block) -> dict:
    """What the manifest says about a node, measured on the final instance mask."""
    mask = instances[block] == node.instance
    lo = np.array([s.start for s in block], float)
    local = ImageGeometry(mask.shape, geometry.spacing, tuple(geometry.index_to_world(lo)), geometry.direction)
    short, long_ = axial_axes(mask, local)
    idx = np.argwhere(mask)
    center = local.index_to_world(idx.mean(axis=0))
    az = z_axis_of(geometry)
    n_slices = int(np.unique(idx[:, az]).size)
    p = node.plan
    real = p.real_shape
    return {
        "instance": node.instance,
        "class": p.cls,
        "short_axis_mm": round(short, 2),
        "long_axis_mm": round(long_, 2),
        "z_extent_mm": round(n_slices * geometry.spacing[az], 2),
        "volume_mm3": round(float(mask.sum() * np.prod(geometry.spacing)), 1),
        "center": [round(float(c), 2) for c in center],
        "site": node.site,
        "features": {
            "hilum": p.hilum,
            "necrosis": p.necrosis,
            # a real outline is kept as it is: its border is not set by the class
            "irregular_border": None if real else p.irregular_border,
            "heterogeneous": p.heterogeneous,
            "shape_source": node.shape.source,
        },
    }


def _paint_and_record(nodes: list[Node], geometry: ImageGeometry, image, instances, tissue) -> list[Node]:
    """Render nodes in order; nodes with no voxel at least half inside are dropped (never painted)."""
    kept = []
    for node in nodes:
        occ = render_node(node, geometry, image, instances, tissue, len(kept) + 1)
        if occ is not None:
            kept.append(node)
    return kept


def _records(nodes: list[Node], instances: np.ndarray, geometry: ImageGeometry) -> list[dict]:
    objects = ndimage.find_objects(instances.astype(np.int32))
    return [_node_record(n, instances, geometry, objects[n.instance - 1]) for n in nodes]


# -- cases --------------------------------------------------------------------------------------------------
def _shape_maker(config: PhantomConfig, need_real: bool):
    catalog = None
    if need_real:
        from lnnode.phantoms.realshapes import RealShapeCatalog

        catalog = RealShapeCatalog(_checked_real_dir(config))

    def make(rng, plan, center):
        if plan.real_shape:
            from lnnode.phantoms.realshapes import build_real_shape

            return build_real_shape(rng, plan, center, catalog)
        return build_analytic_shape(rng, plan, center)

    return make


def _checked_real_dir(config: PhantomConfig) -> Path:
    d = config.real_data_dir
    if not d.is_dir():
        raise PhantomError(
            f"real data folder {d} not found: pass --real-data DIR or set LNNODE_REAL_DATA "
            "(it holds totalseg/ and uls23_nih_ln/, see shared/data/real/README.md)"
        )
    return d


def _make_synthetic(streams, config: PhantomConfig):
    geometry = config.geometry()
    anatomy = sample_anatomy(streams["anatomy"], config.modality)
    image, tissue = render_anatomy(anatomy, geometry)
    planned_stage, plans = sample_plans(streams["nodes"], config.real_shape_fraction, config.size_matched)
    make_shape = _shape_maker(config, any(p.real_shape for p in plans))
    nodes = place_nodes(streams["nodes"], plans, anatomy, geometry, make_shape, config.modality)
    instances = np.zeros(geometry.shape, np.uint16)
    nodes = _paint_and_record(nodes, geometry, image, instances, tissue)
    if config.modality == "ct":
        image = _finish_ct(image, streams["noise"], geometry, config.noise)
    else:
        image = _finish_mr(image, streams["noise"], geometry, anatomy.values["visceral_fat"], config.noise)
    info = {"background": "synthetic", "phase": anatomy.phase, "planned_stage": planned_stage, **anatomy.meta}
    return image, geometry, instances, tissue, nodes, info, []


def _make_real(streams, config: PhantomConfig):
    from lnnode.phantoms.realct import hard_negative_boxes, load_background, place_real_nodes, real_node_values

    data_dir = _checked_real_dir(config)
    names = config.background_names
    name = names[int(streams["background"].integers(len(names)))]
    bg = load_background(str(data_dir), name)
    planned_stage, plans = sample_plans(streams["nodes"], config.real_shape_fraction, config.size_matched)
    make_shape = _shape_maker(config, any(p.real_shape for p in plans))
    rng = streams["nodes"]
    looks = [node_look(rng, p, real_node_values(rng, bg), "ct") for p in plans]
    image, instances, nodes = place_real_nodes(rng, plans, bg, make_shape, looks, config.noise)
    image = np.clip(np.rint(image), -32768, 32767).astype(np.int16)  # the background's own values stay
    rejected = hard_negative_boxes(streams["background"], bg, nodes, config.hard_negatives)
    info = {
        "background": f"real:{name}",
        "patient": bg.patient,
        "phase": "unknown",
        "planned_stage": planned_stage,
        "background_noise_hu": round(bg.noise_hu, 1),
        "background_soft_tissue_hu": round(bg.soft_hu, 1),
        "hard_negatives": len(rejected),
    }
    return image, bg.geometry, instances, None, nodes, info, rejected


def make_case(seed: int, index: int = 0, config: PhantomConfig | None = None, case_id: str | None = None) -> Case:
    """Make case ``index`` of run ``seed`` in memory (nothing is written)."""
    config = config or PhantomConfig()
    streams = case_streams(seed, index)
    make = _make_synthetic if config.background == "synthetic" else _make_real
    image, geometry, instances, tissue, nodes, info, rejected = make(streams, config)
    if len(nodes) < 256:
        instances = instances.astype(np.uint8)
    classes = {n.instance: n.plan.cls for n in nodes}
    records = _records(nodes, instances, geometry)
    info = {
        "seed": int(seed),
        "index": int(index),
        "modality": config.modality,
        **info,
        "stage": stage_of(classes),
        "n_nodes": len(nodes),
        "n_metastatic": sum(1 for c in classes.values() if c == "metastatic"),
        "options": {
            "shape": list(config.shape),
            "spacing": list(config.spacing),
            "direction": [round(d, 6) for d in config.direction],
            "center": list(config.center),
            "real_shapes": config.real_shape_fraction,
            "noise": config.noise,
            "size_matched": config.size_matched,
        },
    }
    return Case(
        case_id=case_id or f"{config.modality}_{index:03d}",
        image=image,
        geometry=geometry,
        instances=instances,
        classes=classes,
        nodes=records,
        info=info,
        tissue=tissue,
        rejected=rejected,
    )


# -- writing ----------------------------------------------------------------------------------------------------
def write_case(case: Case, out_dir: str | Path, label_tag: str = "final") -> dict:
    """Write image, instance mask and label of a case (atomic writes); returns its manifest entry."""
    out = Path(out_dir)
    write_image(case.image, case.geometry, out / f"{case.case_id}.nii.gz")
    write_image(case.instances, case.geometry, out / "labels" / "instances" / f"{case.case_id}.nii.gz")
    atomic_write_text(out / "labels" / label_tag / f"{case.case_id}.json", contracts.dumps(case.label()) + "\n")
    return case.manifest_entry(label_tag)


def _update_manifest(out: Path, entries: list[dict]) -> None:
    """Merge entries into the manifest by case id (re-running replaces a case, never duplicates it)."""
    path = out / MANIFEST_NAME
    cases: dict[str, dict] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            cases = {c["id"]: c for c in doc.get("cases", [])}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise PhantomError(
                f"{path} exists but is not a synth manifest; move it away or pick another --out"
            ) from None
    for e in entries:
        cases[e["id"]] = e
    doc = {"schema": MANIFEST_SCHEMA, "cases": [cases[k] for k in sorted(cases)]}
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def synthesize(
    out_dir: str | Path,
    cases: int,
    modality: str = "ct",
    seed: int = 0,
    label_tag: str = "final",
    prefix: str | None = None,
    progress=None,
    **options,
) -> list[dict]:
    """Write ``cases`` phantoms (indices 0..cases-1) into a studies folder; returns their manifest entries.

    ``options`` are :class:`PhantomConfig` fields (shape, spacing, direction, center, background,
    real_data, real_shapes, noise). ``progress(case, seconds)`` is called after each case.
    """
    if int(cases) < 1:
        raise PhantomError(f"cases must be >= 1, got {cases}")
    if not label_tag or "/" in label_tag or label_tag == "instances":
        raise PhantomError(f"label tag {label_tag!r} is not usable (a folder name other than 'instances')")
    unknown = sorted(set(options) - set(PhantomConfig.__dataclass_fields__))
    if unknown:
        raise PhantomError(f"unknown phantom options {unknown}; known: {sorted(PhantomConfig.__dataclass_fields__)}")
    config = PhantomConfig(modality=modality, **options)
    prefix = f"{modality}_" if prefix is None else prefix
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(int(cases)):
        t0 = time.perf_counter()
        case = make_case(seed, index, config, case_id=f"{prefix}{index:03d}")
        entry = write_case(case, out, label_tag)
        _update_manifest(out, [entry])  # after every case: an interrupted run leaves a consistent folder
        entries.append(entry)
        if progress is not None:
            progress(case, time.perf_counter() - t0)
    return entries
