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
from lnnode.geometry import ImageGeometry, box_corners
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
    "save_report",
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
    """The same voxel centres, whatever the order of the k axis (a left-handed NIfTI grid reads back from DICOM
    with k reversed)."""
    if a.shape != b.shape:
        return False
    corners = box_corners(np.zeros(3), np.array(a.shape, dtype=float) - 1)
    ca, cb = (np.round(g.index_to_world(corners), 2) for g in (a, b))
    return np.array_equal(np.unique(ca, axis=0), np.unique(cb, axis=0))


def source_series(image: str | os.PathLike, out: str | os.PathLike, dicom: str | os.PathLike | None = None,
                  modality: str | None = None) -> SourceSeries:  # fmt: skip
    """The case's source series: ``dicom`` (a series folder) when given, ``image`` when it is a DICOM folder, else
    ``image`` written as a series into ``out/image`` (reused when it is already there, on the same grid) as
    ``modality`` (None: :func:`guess_modality`)."""
    folder = Path(dicom) if dicom is not None else Path(image)
    if folder.is_dir():
        volume, geometry = read_image(folder)
        datasets = read_series(folder)
        for ds in datasets:
            if "SliceThickness" not in ds:  # the SEG's pixel measures copy it
                ds.SliceThickness = f"{geometry.spacing[2]:.6g}"
        return SourceSeries(datasets, volume, geometry, folder, written=False)
    volume, geometry = read_image(image)
    written = Path(out) / IMAGE_DIR
    if written.is_dir():
        try:
            _, existing = read_image(written)
            if _same_grid(existing, geometry):
                return SourceSeries(read_series(written), volume, geometry, written, written=True)
        except ImageError:
            pass  # not a usable series: written again below
    modality = modality or guess_modality(volume)
    datasets = write_series(volume, geometry, written, modality, description=f"lnnode: {Path(image).name}")
    return SourceSeries(datasets, volume, geometry, written, written=True)


def guess_modality(volume: np.ndarray) -> str:
    """CT when the volume holds air or lung in HU (below -500), else MR: a NIfTI does not say which it is."""
    return "CT" if float(np.min(volume)) < -500.0 else "MR"


def _reported_series(sr: Dataset) -> set[str]:
    evidence = [*sr.get("CurrentRequestedProcedureEvidenceSequence", []), *sr.get("PertinentOtherEvidenceSequence", [])]
    return {str(series.SeriesInstanceUID) for study in evidence for series in study.get("ReferencedSeriesSequence", [])}


def _previous(folder: Path, source: SourceSeries) -> list[Dataset]:
    """The SR this export supersedes: the folder's, when it reports on the same source series."""
    path = folder / SR_FILE
    if not path.is_file():
        return []
    try:
        old = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError):
        return []  # unreadable: nothing to name as predecessor (it is replaced)
    return [old] if str(source.datasets[0].SeriesInstanceUID) in _reported_series(old) else []


def save_report(folder: str | os.PathLike, report: Report, source: SourceSeries) -> Exported:
    """Write ``seg.dcm`` and ``sr.dcm`` into ``folder``: both serialised before either replaces the old one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, ds in ((SEG_FILE, report.seg), (SR_FILE, report.sr)):
        if ds is not None:
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            ds.save_as(tmp, write_like_original=False)
            staged.append((tmp, folder / name))
    for tmp, target in staged:
        os.replace(tmp, target)
    seg_path = folder / SEG_FILE
    if report.seg is None and seg_path.exists():
        os.remove(seg_path)  # the new report has no nodes: no segments that are not current
    return Exported(folder, seg_path if report.seg is not None else None, folder / SR_FILE, report, source)


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
    return save_report(folder, report, source)


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
    return save_report(folder, report, source)


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
        except Exception as e:  # noqa: BLE001 - one case that cannot be exported does not stop the others
            done[image_id] = f"{type(e).__name__}: {e}"
    return done
