"""Import an annotated data set into a MONAI Label studies folder with ``final`` labels.

Input folder layout (``IN``)::

    IN/images/<case>.nii.gz | .nii | .nrrd | .mha     or a DICOM series folder IN/images/<case>/
    IN/masks/<case>.nii.gz                             an instance mask (one integer per node), or
    IN/masks/<case>/<node>.nii.gz                      one binary mask per node (TCIA "CT Lymph Nodes"
                                                       style); a node mask may have its own grid
                                                       (e.g. a crop): its world position is used
    IN/classes.csv (optional)                          columns case,node,class

``node`` in the CSV is the instance value (instance masks) or the node mask's file stem.
Classes: ``benign`` (also 0, negative) or ``metastatic`` (also 1, malignant, positive); nodes
without a class are imported without one (usable for detection, not for classification).
Flat mask folders can be grouped into cases with ``node_pattern`` (a regex with ``case`` and
``node`` groups, e.g. ``(?P<case>.+)_lesion_(?P<node>\\d+)``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lnnode.contracts import (
    ContractError,
    check_label_in_image,
    dumps,
    index_box_to_node,
    instance_boxes,
    label_from_instance_mask,
    make_label,
)
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.geometry import ImageGeometry
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import ImageError, image_suffix, read_image, write_image
from lnnode.transforms.spatial import resample_to_grid

logger = logging.getLogger(__name__)

__all__ = ["DatasetImportError", "ImportReport", "parse_class", "read_class_table", "import_dataset"]

_CLASS_ALIASES = {
    "benign": "benign",
    "0": "benign",
    "negative": "benign",
    "metastatic": "metastatic",
    "1": "metastatic",
    "malignant": "metastatic",
    "positive": "metastatic",
}


class DatasetImportError(ValueError):
    """The input folder cannot be imported as it is (named file and reason)."""


@dataclass
class ImportReport:
    cases: list[str] = field(default_factory=list)
    nodes: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, case: str, label: dict) -> None:
        """Count an imported case and its nodes by class."""
        self.cases.append(case)
        self.nodes += len(label["nodes"])
        for node in label["nodes"]:
            key = node.get("class", "no class")
            self.classes[key] = self.classes.get(key, 0) + 1

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(self.classes.items())) or "none"
        text = f"imported {len(self.cases)} case(s), {self.nodes} node(s); classes: {classes}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return text


def parse_class(value: str, where: str) -> str:
    cls = _CLASS_ALIASES.get(str(value).strip().lower())
    if cls is None:
        raise DatasetImportError(f"{where}: unknown class {value!r} (use benign/metastatic, 0/1)")
    return cls


def read_class_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``{case: {node: class}}`` from a CSV with columns case,node,class."""
    table: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"case", "node", "class"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetImportError(f"{path}: missing column(s) {sorted(missing)} (need case,node,class)")
        for n, row in enumerate(reader, start=2):
            case, node = row["case"].strip(), row["node"].strip()
            cls = parse_class(row["class"], f"{path} line {n}")
            if node in table.setdefault(case, {}):
                raise DatasetImportError(f"{path} line {n}: node {node!r} of case {case!r} is listed twice")
            table[case][node] = cls
    return table


def _stem(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _find_images(folder: Path) -> dict[str, Path]:
    images = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or image_suffix(p):
            images[_stem(p)] = p
    return images


def _group_masks(folder: Path, node_pattern: str | None) -> dict[str, dict[str, Path] | Path]:
    """Per case: an instance-mask path, or ``{node: mask path}``."""
    cases: dict[str, dict[str, Path] | Path] = {}
    regex = re.compile(node_pattern) if node_pattern else None
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            cases[p.name] = {_stem(m): m for m in sorted(p.iterdir()) if image_suffix(m) and not m.name.startswith(".")}
        elif image_suffix(p):
            if regex:
                match = regex.fullmatch(_stem(p))
                if not match:
                    raise DatasetImportError(f"{p}: file name does not match --node-pattern {node_pattern!r}")
                group = cases.setdefault(match["case"], {})
                if not isinstance(group, dict):
                    raise DatasetImportError(f"{p}: case {match['case']!r} has both an instance mask and node masks")
                group[match["node"]] = p
            else:
                cases[_stem(p)] = p
    return cases


def node_mask_box(path: Path) -> dict:
    """World box of one binary node mask, on its own grid (all its foreground voxels: an annotation
    drawn in several pieces is still one node)."""
    mask, geometry = read_image(path)
    boxes = instance_boxes((mask > 0).astype(np.uint8))
    if not boxes:
        raise DatasetImportError(f"{path}: the node mask is empty")
    lo, hi = boxes[1]
    return index_box_to_node(lo, hi, geometry)


def _instances_on_grid(node_masks: Mapping[str, Path], geometry: ImageGeometry) -> np.ndarray:
    """An instance mask on the image grid from per-node masks (nearest-neighbour through world space)."""
    instances = np.zeros(geometry.shape, dtype=np.uint16)
    for value, path in enumerate(node_masks.values(), start=1):
        mask, g = read_image(path)
        on_grid = resample_to_grid((mask > 0).astype(np.float32), g, geometry, fill=0.0, linear=False) > 0.5
        instances[on_grid & (instances == 0)] = value
    return instances


def import_dataset(
    source: str | os.PathLike,
    studies: str | os.PathLike,
    classes_csv: str | os.PathLike | None = None,
    node_pattern: str | None = None,
    write_instances: bool = True,
    overwrite: bool = False,
    reviewer: str | None = None,
) -> ImportReport:
    """Import ``source`` (layout in the module docstring) into the studies folder ``studies``."""
    src, out = Path(source), Path(studies)
    for sub in ("images", "masks"):
        if not (src / sub).is_dir():
            raise DatasetImportError(f"{src / sub}: missing folder (expected {src}/images and {src}/masks)")
    csv_path = Path(classes_csv) if classes_csv else (src / "classes.csv" if (src / "classes.csv").exists() else None)
    table = read_class_table(csv_path) if csv_path else {}
    images = _find_images(src / "images")
    masks = _group_masks(src / "masks", node_pattern)
    report = ImportReport()
    for case in sorted(set(table) - set(masks)):
        report.skipped[case] = "in the class table but has no masks"

    for case, mask_source in masks.items():
        why_not = _why_skip(case, images, out, overwrite)
        if why_not:
            report.skipped[case] = why_not
            continue
        try:
            image, geometry = read_image(images[case])
            label, instances = _case_label(case, mask_source, table.get(case, {}), geometry, write_instances)
            if reviewer:
                label["reviewer"] = reviewer
        except (ImageError, ContractError, DatasetImportError, ValueError) as e:
            report.skipped[case] = str(e)
            continue
        _write_case(out, case, images[case], image, geometry, label, instances)
        report.add(case, label)
    return report


def _why_skip(case: str, images: dict[str, Path], out: Path, overwrite: bool) -> str | None:
    """Why ``case`` is not imported (a bad id, no image, a label that would be overwritten), or None."""
    try:
        check_name(case, "case id")
    except InvalidName as e:
        return str(e)
    if case not in images:
        return "no image"
    label_path = out / "labels" / "final" / f"{case}.json"
    if label_path.exists() and not overwrite:
        return f"{label_path} exists (use --overwrite)"
    return None


def _case_label(case: str, mask_source, case_classes: dict, geometry: ImageGeometry, write_instances: bool):
    """The case's label and instance mask (None when not written) from one instance mask or node masks."""
    if isinstance(mask_source, dict):
        label, instances = _label_from_node_masks(case, mask_source, case_classes, geometry, write_instances)
    else:
        mask, mask_geometry = read_image(mask_source)
        if mask_geometry.shape != geometry.shape or not np.allclose(mask_geometry.affine, geometry.affine, atol=1e-3):
            raise DatasetImportError(f"{mask_source}: the instance mask is not on its image's grid")
        classes = {int(k): v for k, v in case_classes.items()} if case_classes else {}
        label = label_from_instance_mask(mask.astype(np.int64), geometry, case, classes)
        instances = mask.astype(np.uint16)
    check_label_in_image(label, geometry)
    return label, instances


def _write_case(out: Path, case: str, source: Path, image, geometry: ImageGeometry, label: dict, instances) -> None:
    suffix = image_suffix(source) if source.is_file() else ".nii.gz"
    suffix = ".nii.gz" if suffix in (".nhdr", ".mhd") else suffix
    write_image(image, geometry, out / f"{case}{suffix}")
    if instances is not None:
        write_image(instances, geometry, out / "labels" / "instances" / f"{case}.nii.gz")
    atomic_write_text(out / "labels" / "final" / f"{case}.json", dumps(label))


def _label_from_node_masks(
    case: str,
    node_masks: Mapping[str, Path],
    classes: Mapping[str, str],
    geometry: ImageGeometry,
    write_instances: bool,
) -> tuple[dict, np.ndarray | None]:
    unknown = sorted(set(classes) - set(node_masks))
    if unknown:
        raise DatasetImportError(f"class table names node(s) {unknown} that have no mask")
    nodes = []
    for name, path in node_masks.items():
        node = node_mask_box(path)
        if name in classes:
            node["class"] = classes[name]
        nodes.append(node)
    label = make_label(case, nodes)
    instances = _instances_on_grid(node_masks, geometry) if write_instances else None
    return label, instances
