"""Write a reviewed label or a model result as DICOM SEG + SR files in a folder, on the case's source series.

The folder holds ``seg.dcm`` (absent for a case without nodes), ``sr.dcm`` and, when the image is not DICOM
(NIfTI, NRRD), ``image/``: the volume written as a DICOM series for the SEG and SR to reference. Exporting again
into the same folder supersedes the earlier files: the new SR names the old one as its predecessor and the
written image series is reused, so every version stays in one study.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from lnnode.contracts import ContractError, parse_label, parse_result
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.geometry import ImageGeometry
from lnnode.io.atomic import atomic_write
from lnnode.io.image import IMAGE_SUFFIXES, ImageError, read_image

from .findings import findings_from_label, findings_from_result
from .report import Report, make_report
from .series import read_series, write_series

__all__ = [
    "Exported",
    "SourceSeries",
    "source_series",
    "export_label",
    "export_result",
    "export_studies",
    "guess_modality",
    "SEG_FILE",
    "SR_FILE",
    "RESULTS_SUFFIX",
]

SEG_FILE, SR_FILE, IMAGE_DIR = "seg.dcm", "sr.dcm", "image"
RESULTS_SUFFIX = ".dicom"  # labels/<tag>/<id>.dicom/: the SEG + SR of that label, beside it


@dataclass
class SourceSeries:
    """The image as the SEG and SR see it: its DICOM datasets, its voxels and grid, and where the series is."""

    datasets: list[Dataset]
    volume: np.ndarray
    geometry: ImageGeometry
    folder: Path
    written: bool  # True: the series was written from a non-DICOM volume (into the export folder)

    @property
    def modality(self) -> str:
        return "mr" if str(self.datasets[0].get("Modality", "")).upper() == "MR" else "ct"


@dataclass
class Exported:
    folder: Path
    seg: Path | None
    sr: Path
    report: Report
    source: SourceSeries


def _same_grid(a: ImageGeometry, b: ImageGeometry) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)


def source_series(image: str | os.PathLike, out: str | os.PathLike, dicom: str | os.PathLike | None = None,
                  modality: str | None = None) -> SourceSeries:  # fmt: skip
    """The case's source series: ``dicom`` (a series folder) when given, ``image`` when it is a DICOM folder, else
    ``image`` written as a series into ``out/image`` (reused when it is already there, on the same grid) as
    ``modality`` (None: :func:`guess_modality`)."""
    folder = Path(dicom) if dicom is not None else Path(image)
    if folder.is_dir():
        volume, geometry = read_image(folder)
        return SourceSeries(read_series(folder), volume, geometry, folder, written=False)
    volume, geometry = read_image(image)
    written = Path(out) / IMAGE_DIR
    if written.is_dir():
        try:
            _, existing = read_image(written)
            if _same_grid(existing, geometry):
                return SourceSeries(read_series(written), volume, existing, written, written=True)
        except ImageError:
            pass  # not a usable series: written again below
    modality = modality or guess_modality(volume)
    datasets = write_series(volume, geometry, written, modality, description=f"lnnode: {Path(image).name}")
    return SourceSeries(datasets, volume, geometry, written, written=True)


def guess_modality(volume: np.ndarray) -> str:
    """CT when the volume holds air or lung in HU (below -500), else MR: a NIfTI does not say which it is."""
    return "CT" if float(np.min(volume)) < -500.0 else "MR"


def _previous(folder: Path, source: SourceSeries) -> list[Dataset]:
    """The SR this export supersedes: the folder's, when it reports on the same series."""
    path = folder / SR_FILE
    if not path.is_file():
        return []
    old = pydicom.dcmread(path)
    same = old.get("StudyInstanceUID") == source.datasets[0].StudyInstanceUID
    return [old] if same else []


def _write(folder: Path, report: Report, source: SourceSeries) -> Exported:
    folder.mkdir(parents=True, exist_ok=True)
    seg_path = folder / SEG_FILE
    if report.seg is not None:
        atomic_write(seg_path, lambda tmp: report.seg.save_as(tmp, write_like_original=False))
    elif seg_path.exists():
        os.remove(seg_path)  # the new report has no nodes: no segments that are not current
    sr_path = atomic_write(folder / SR_FILE, lambda tmp: report.sr.save_as(tmp, write_like_original=False))
    return Exported(folder, seg_path if report.seg is not None else None, sr_path, report, source)


def export_label(label: dict[str, Any], original: dict[str, Any] | None, image: str | os.PathLike,
                 out: str | os.PathLike, dicom: str | os.PathLike | None = None, modality: str | None = None,
                 version: str = "lnnode", source: SourceSeries | None = None) -> Exported:  # fmt: skip
    """SEG + SR of a reviewed label (``lnnode.label/1``) in ``out``; ``original``: the model result the review
    started from (its probabilities), or None. ``source``: the source series, when the caller has it read."""
    folder = Path(out)
    source = source or source_series(image, folder, dicom, modality)
    findings = findings_from_label(label, original, source.volume, source.geometry, source.modality)
    report = make_report(source.datasets, source.geometry, findings, reviewed=True, reviewer=label.get("reviewer"),
                         version=version, previous=_previous(folder, source))  # fmt: skip
    return _write(folder, report, source)


def export_result(result: dict[str, Any], image: str | os.PathLike, out: str | os.PathLike,
                  dicom: str | os.PathLike | None = None, modality: str | None = None,
                  p_thresh: float = 0.5) -> Exported:  # fmt: skip
    """SEG + SR of a model result (``lnnode.result/1``) in ``out``: the model's call, not a reviewed label."""
    folder = Path(out)
    source = source_series(image, folder, dicom, modality)
    findings = findings_from_result(result, source.volume, source.geometry, source.modality, p_thresh)
    version = str((result.get("model") or {}).get("detector") or "lnnode")
    report = make_report(source.datasets, source.geometry, findings, reviewed=False, version=version,
                         previous=_previous(folder, source))  # fmt: skip
    return _write(folder, report, source)


def _studies_image(studies: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = studies / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{studies}: no image {image_id!r} ({', '.join(IMAGE_SUFFIXES)})")


def _json(path: Path, parse) -> dict[str, Any] | None:
    return parse(path.read_bytes()) if path.is_file() else None


def export_studies(studies: str | os.PathLike, image_ids: Sequence[str] = (), tag: str = "final",
                   out: str | os.PathLike | None = None, dicom: str | os.PathLike | None = None,
                   modality: str | None = None) -> dict[str, Exported | str]:  # fmt: skip
    """``lnnode export``: SEG + SR per labelled case of a studies folder (``image_ids``: those; else every case
    with a ``tag`` label). Into ``out/<id>`` when given, else next to the label: ``labels/<tag>/<id>.dicom/``.
    ``tag`` ``original`` exports the model's stored results. Per case the export, or why it failed."""
    root = Path(studies)
    labels = root / "labels" / check_name(tag, "label tag")
    ids = list(image_ids) or sorted(p.name[: -len(".json")] for p in labels.glob("*.json"))
    if not ids:
        raise FileNotFoundError(f"{labels}: no {tag!r} label to export")
    if dicom is not None and len(ids) != 1:
        raise ValueError("--dicom names the source series of one case: give one --image with it")
    done: dict[str, Exported | str] = {}
    for image_id in ids:
        try:
            check_name(image_id, "image id")
            image = _studies_image(root, image_id)
            folder = Path(out) / image_id if out is not None else labels / f"{image_id}{RESULTS_SUFFIX}"
            if tag == "original":
                result = _json(labels / f"{image_id}.json", parse_result)
                if result is None:
                    raise FileNotFoundError(f"no stored model result for {image_id!r}")
                done[image_id] = export_result(result, image, folder, dicom, modality)
                continue
            label = _json(labels / f"{image_id}.json", parse_label)
            if label is None:
                raise FileNotFoundError(f"no {tag!r} label for {image_id!r}")
            original = _json(root / "labels" / "original" / f"{image_id}.json", parse_result)
            done[image_id] = export_label(label, original, image, folder, dicom, modality)
        except (InvalidName, ContractError, ImageError, FileNotFoundError, ValueError) as e:
            done[image_id] = str(e)
    return done
