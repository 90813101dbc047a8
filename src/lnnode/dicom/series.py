"""DICOM image series: read one as the datasets a SEG and an SR reference, and write a volume as one.

A volume that is not DICOM (NIfTI, NRRD) is written as a CT or MR image series when a SEG must reference images
(``lnnode export``, ``lnnode infer --dicom``): a new study, marked as derived, one slice per file, its geometry
exactly the volume's (position, orientation, pixel spacing, spacing between slices).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lnnode.geometry import ImageGeometry
from lnnode.io.image import ImageError

__all__ = ["person_name", "read_series", "slice_index", "write_series"]


def read_series(folder: str | os.PathLike, series_uid: str | None = None) -> list[Dataset]:
    """The headers (no pixel data) of the one image series in ``folder`` (or of ``series_uid``)."""
    datasets = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)  # the headers are what a SEG and an SR reference
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and (series_uid is None or ds.SeriesInstanceUID == series_uid):
            datasets.append(ds)
    series = {ds.get("SeriesInstanceUID") for ds in datasets}
    if len(series) != 1:
        raise ImageError(folder, f"expected one DICOM image series, found {len(series)}")
    for ds in datasets:
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
        if missing:
            raise ImageError(folder, f"slices without {', '.join(missing)}: a SEG or SR cannot reference them")
        for keyword in _TYPE2:  # the SEG and SR copy these; a series may lack them (they may be empty, not absent)
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


def slice_index(ds: Dataset, geometry: ImageGeometry) -> int:
    """The k index of a single-frame image on ``geometry`` (the grid it was read into); ImageError when the slice
    is not one of the grid's (another orientation, or off the grid)."""
    ijk = geometry.world_to_index([float(v) for v in ds.ImagePositionPatient])
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    d = geometry.direction_matrix
    same_plane = np.allclose(orientation, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-3)
    k = int(round(ijk[2]))
    if not same_plane or np.abs(ijk[:2]).max() > 0.05 or abs(ijk[2] - k) > 0.05 or not 0 <= k < geometry.shape[2]:
        raise ImageError(ds.SOPInstanceUID, "this slice is not on the image grid the results are reported on")
    if (int(ds.Columns), int(ds.Rows)) != tuple(geometry.shape[:2]):
        raise ImageError(ds.SOPInstanceUID, f"{ds.Columns}x{ds.Rows} pixels, the grid has {geometry.shape[:2]}")
    return k


def person_name(name: str) -> str:
    """A DICOM person name from free text: one component is the family name (the trailing caret says so)."""
    name = name.strip()[:60]
    return name if "^" in name else f"{name}^"


def _stored(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """int16 pixels and the rescale (slope, intercept) giving back ``volume``: exact for integer values (HU)."""
    lo, hi = float(volume.min()), float(volume.max())
    if np.allclose(volume, np.round(volume)) and -32768 <= lo and hi <= 32767:
        return np.round(volume).astype(np.int16), 1.0, 0.0
    slope = max(hi - lo, 1e-6) / 65000.0
    intercept = (hi + lo) / 2
    return np.round((volume - intercept) / slope).astype(np.int16), slope, intercept


def write_series(
    volume: np.ndarray,
    geometry: ImageGeometry,
    folder: str | os.PathLike,
    modality: str = "CT",
    patient_id: str = "ANONYMOUS",
    description: str = "lnnode: image written from a volume",
) -> list[Dataset]:
    """Write an index-ordered volume as a DICOM image series (one file per k); the datasets written."""
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    pixels, slope, intercept = _stored(np.asarray(volume, dtype=np.float64))
    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    shared = _shared(geometry, modality, patient_id, description)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # the series appears whole, or not
    datasets = []
    for k in range(geometry.shape[2]):
        ds = _slice(shared, geometry, k, pixels[:, :, k].T, slope, intercept)
        ds.save_as(staging / f"{k + 1:04d}.dcm", write_like_original=False)
        datasets.append(ds)
    if out.exists():
        shutil.rmtree(out)  # an earlier series of another grid: none of its files may stay beside the new ones
    os.replace(staging, out)
    return datasets


def _shared(geometry: ImageGeometry, modality: str, patient_id: str, description: str) -> Dataset:
    now = datetime.now()
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.Modality, ds.ImageType = modality, ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, person_name(patient_id), "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.SeriesDescription, ds.Manufacturer = 1, description, "lnnode"
    ds.PositionReferenceIndicator = ""
    d = geometry.direction_matrix
    ds.ImageOrientationPatient = [round(float(v), 8) for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [float(geometry.spacing[1]), float(geometry.spacing[0])]  # row spacing (j), column spacing (i)
    ds.SliceThickness = ds.SpacingBetweenSlices = float(geometry.spacing[2])
    ds.Rows, ds.Columns = int(geometry.shape[1]), int(geometry.shape[0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if modality == "CT":
        ds.KVP = ""
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
        ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
    return ds


def _slice(shared: Dataset, geometry: ImageGeometry, k: int, frame: np.ndarray, slope: float, intercept: float):
    ds = Dataset()
    ds.update(shared)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    position = geometry.index_to_world([0.0, 0.0, float(k)])
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.SliceLocation = round(float(np.dot(position, geometry.direction_matrix[:, 2])), 6)
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
    if shared.Modality == "CT":
        ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(frame, dtype=np.int16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds
