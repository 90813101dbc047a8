"""Import a data set described by a table (one row per case) into a studies folder with ``final`` labels.

The layout of BUSI and of most 2D sets (``lnnode import --table cases.csv``); paths are relative to the table::

    case,label,image,masks,group
    benign_0004,benign,images/benign_0004.png,masks/benign_0004_mask.png;masks/benign_0004_mask_1.png,benign_0321
    normal_0001,normal,images/normal_0001.png,masks/normal_0001_mask.png,normal_0001

* ``image``: an image file lnnode reads, 2D (PNG, JPEG, a single-frame DICOM file, 2D NIfTI) or 3D; copied as it
  is when a studies folder can hold it (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``, ``.jpg``, ``.dcm``),
  a 3D header + data pair (``.mhd``, ``.nhdr``) written as ``.nii.gz``; other pictures (TIFF, BMP) are refused.
* ``masks``: binary masks on the image's grid, ``;``-separated, one lesion or node each (all its foreground is one
  box, however many pieces an annotator drew); empty for a case without any.
* ``label`` (or ``class``): the case's class, given to each of its masks: ``benign`` (0, negative),
  ``metastatic`` / ``malignant`` (1, positive; the label contract calls the positive class ``metastatic``) or
  ``normal`` (no lesion: an empty label, which counts false positives). Absent: nodes without a class.
* ``group`` (optional): images of one group (one patient, near-duplicate images) stay on one side of every
  validation split; written to the studies folder's ``groups.csv`` (column ``image,group``).

Only the masks' boxes go into the labels: an expert's outline carries the expert's reading (on BUSI its solidity
alone separates the classes), so no model or baseline may see it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lnnode.contracts import ContractError, check_label_in_image, dumps, instance_boxes, make_label
from lnnode.contracts.convert import index_box_to_node
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.io.atomic import atomic_copy, atomic_write_text
from lnnode.io.image import (
    PHOTO_SUFFIXES,
    STORED_SUFFIXES,
    ImageError,
    image_suffix,
    read_geometry,
    read_image,
    write_image,
)

from .importer import DatasetImportError, ImportReport, parse_class

__all__ = ["GROUPS_FILE", "import_table", "read_groups"]

GROUPS_FILE = "groups.csv"
NO_LESION = "normal"


def read_groups(studies: str | os.PathLike) -> dict[str, str]:
    """``{image id: group}`` from a studies folder's ``groups.csv`` ({} when there is none)."""
    path = Path(studies) / GROUPS_FILE
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["image"]: row["group"] for row in csv.DictReader(f) if row.get("image") and row.get("group")}


def _write_groups(studies: Path, groups: dict[str, str]) -> None:
    merged = {**read_groups(studies), **groups}
    lines = ["image,group", *(f"{image},{group}" for image, group in sorted(merged.items()))]
    atomic_write_text(studies / GROUPS_FILE, "\n".join(lines) + "\n")


def _mask_node(path: Path, geometry) -> dict:
    mask, g = read_image(path, allow_2d=True)
    if g.shape != geometry.shape:
        raise DatasetImportError(f"{path}: mask of shape {g.shape} on an image of shape {geometry.shape}")
    boxes = instance_boxes((mask > 0).astype(np.uint8))
    if not boxes:
        raise DatasetImportError(f"{path}: the mask is empty")
    lo, hi = boxes[1]
    return index_box_to_node(lo, hi, geometry)


def _store_image(image: Path, out: Path, case: str) -> None:
    suffix = image_suffix(image)
    if suffix in STORED_SUFFIXES:
        atomic_copy(image, out / f"{case}{suffix}")
    else:  # a header + data pair: one file
        write_image(*read_image(image), out / f"{case}.nii.gz")


def _case_label(row: dict, base: Path, where: str) -> tuple[Path, dict]:
    case = row["case"].strip()
    image = base / row["image"].strip()
    if image_suffix(image) in PHOTO_SUFFIXES and image_suffix(image) not in STORED_SUFFIXES:
        raise DatasetImportError(f"{image.name}: a studies folder holds pictures as .png or .jpg; convert it first")
    geometry = read_geometry(image, allow_2d=True)
    read_image(image, require_content=True, allow_2d=True)  # readable, not blank
    kind = (row.get("label") or row.get("class") or "").strip().lower()
    masks = [base / m.strip() for m in (row.get("masks") or "").split(";") if m.strip()]
    nodes = []
    if kind != NO_LESION:
        cls = parse_class(kind, where) if kind else None
        for path in masks:
            node = _mask_node(path, geometry)
            nodes.append({**node, "class": cls} if cls else node)
    label = make_label(case, nodes)
    check_label_in_image(label, geometry)
    return image, label


def import_table(
    table: str | os.PathLike, studies: str | os.PathLike, overwrite: bool = False, reviewer: str | None = None
) -> ImportReport:
    """Import every row of ``table`` (layout in the module docstring) into the studies folder ``studies``."""
    table, out = Path(table), Path(studies)
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"case", "image"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetImportError(
                f"{table}: missing column(s) {sorted(missing)} (need case,image[,masks,label,group])"
            )
        rows = list(enumerate(reader, start=2))
    report, groups = ImportReport(), {}
    for line, row in rows:
        case = (row.get("case") or "").strip()
        try:
            check_name(case, "case id")
            label_path = out / "labels" / "final" / f"{case}.json"
            if label_path.exists() and not overwrite:
                raise DatasetImportError(f"{label_path} exists (use --overwrite)")
            image, label = _case_label(row, table.parent, f"{table} line {line}")
            if reviewer:
                label["reviewer"] = reviewer
        except (InvalidName, ImageError, ContractError, DatasetImportError, ValueError) as e:
            report.skipped[case or f"line {line}"] = str(e)
            continue
        out.mkdir(parents=True, exist_ok=True)
        _store_image(image, out, case)
        atomic_write_text(label_path, dumps(label))
        if (row.get("group") or "").strip():
            groups[case] = row["group"].strip()
        report.add(case, label)
    if groups:
        _write_groups(out, groups)
    return report
