"""``lnnode infer``: the server's pipeline on image files, without a server.

An image file, a folder of them, or a folder holding one DICOM series goes in (2D images go to the 2D
pipeline); per case a result JSON (``<case>.json``, the result contract) and a Slicer markups file of the
boxes (``<case>.mrk.json``) come out, and with ``dicom`` a DICOM SEG + SR of the result (``<case>.dicom/``,
:mod:`lnnode.dicom.export`). The models, the parameters and their checks are the server's (the app's own
tasks and parameter table); a case that cannot be read is reported with the reason and the others go on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from lnnode.appdir import app_module
from lnnode.contracts import (
    CLASSIFICATION,
    CLASSIFICATION_2D,
    DETECTION,
    DETECTION_2D,
    PIPELINE,
    PIPELINE_2D,
    dumps,
)
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.contracts.markups import markups_from_nodes
from lnnode.dicom.export import RESULTS_SUFFIX
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import ImageError, image_suffix, is_planar, read_geometry, read_header

__all__ = ["InferReport", "find_cases", "infer_files"]


@dataclass
class InferReport:
    """What an ``lnnode infer`` run did: cases written (with their node counts) and cases refused (why)."""

    written: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{len(self.written)} case(s) written, {sum(self.written.values())} node(s)"
        if self.failed:
            text += f"; {len(self.failed)} failed: " + "; ".join(f"{k} ({v})" for k, v in self.failed.items())
        return text


def _case_id(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.is_file() else path.name


def find_cases(source: str | os.PathLike) -> list[tuple[str, Path]]:
    """(case id, path) for an image file, each image file in a folder (a 2D image too: PNG, JPEG...), a folder
    holding one DICOM series (a volume), or a folder of DICOM images (each file of an ultrasound series, and each
    series of one file, is a case)."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_file():
        return [(_case_id(src), src)]
    images = sorted(p for p in src.iterdir() if p.is_file() and image_suffix(p) and image_suffix(p) != ".dcm")
    if images:
        return [(_case_id(p), p) for p in images]
    series = _dicom_series(src)
    # an ultrasound series holds images, not the slices of a volume: each file is a case, as is a lone file
    images = [files for files in series.values() if len(files) == 1 or _modality(files[0]) == "US"]
    if series and len(images) == len(series):
        return sorted((_case_id(Path(f)), Path(f)) for files in images for f in files)
    if len(series) == 1:
        return [(src.name, src)]
    found = "no DICOM series" if not series else f"{len(series)} DICOM series (give one per folder)"
    raise ValueError(f"{src}: no image files (.nii.gz, .nii, .nrrd, .mha, .png, .jpg) and {found}")


def _modality(path: str) -> str:
    reader = read_header(path)
    return reader.GetMetaData("0008|0060").strip() if reader is not None and reader.HasMetaDataKey("0008|0060") else ""


def _dicom_series(folder: Path) -> dict[str, list[str]]:
    """The DICOM series of a folder and their files, from the headers (the pipeline reads the pixels)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns "No Series were found" on stderr: we say it
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit="case", file=sys.stderr)


def build_pipeline(
    model_dir: str | os.PathLike, demo_dir: str | os.PathLike | None, config: dict[str, Any], planar: bool = False
):
    """The app's pipeline task (the 2D one with ``planar``) with the models the server would serve from
    ``model_dir`` (else the demo's)."""
    infers = app_module("infers")

    def paths(name: str) -> list[str]:
        candidates = [Path(demo_dir) / f"{name}.pt"] if demo_dir else []
        return [str(p) for p in (*candidates, Path(model_dir) / f"{name}.pt")]  # the last existing one is served

    det, cls, pipe = (DETECTION_2D, CLASSIFICATION_2D, PIPELINE_2D) if planar else (DETECTION, CLASSIFICATION, PIPELINE)
    detection = infers.NodeDetection(det, paths(det), config=config, planar=planar)
    classification = infers.NodeClassification(cls, paths(cls), config=config, planar=planar)
    return infers.NodePipeline(pipe, detection, classification, config=config)


def _is_planar(path: Path) -> bool | str:
    """Whether a case is a 2D image, or why it cannot be read."""
    try:
        return is_planar(read_geometry(path, allow_2d=True))
    except ImageError as e:  # the server's words
        return f"image {str(path)!r} cannot be used: {e.reason}"


def _checked_params(params: dict[str, Any]) -> dict[str, Any]:
    """The server's parameter checks: typed values, or a ValueError naming the parameter."""
    server_params = app_module("server.params")
    errors = app_module("server.errors")
    try:
        return {**params, **server_params.check_infer_params(params)}
    except errors.RequestError as e:
        raise ValueError(str(e.detail)) from None


def _cases_to_run(cases: list[tuple[str, Path]], report: InferReport) -> Iterator[tuple[str, Path]]:
    for case, path in cases:
        try:
            check_name(case, "case id")
        except InvalidName as e:
            report.failed[case] = str(e)
            continue
        yield case, path


def _export(result: dict[str, Any], image: Path, out: Path, pipeline, params: dict[str, Any]) -> None:
    from lnnode.dicom import export_result

    modality = pipeline.detection.checkpoint().meta["preprocessing"].get("modality", "ct").upper()
    p_thresh = params.get("p_thresh")
    export_result(result, image, out, modality=modality, p_thresh=0.5 if p_thresh is None else float(p_thresh))


def _pipelines(kinds: set[bool], model_dir, demo_dir, params: dict[str, Any]) -> dict[bool, Any]:
    """The pipeline per kind of case (2D: True), each with a detector (else a ValueError, once, not per case)."""
    errors = app_module("server.errors")
    pipelines = {}
    for planar in sorted(kinds):
        pipeline = build_pipeline(model_dir, demo_dir, {"device": params.get("device", "cpu")}, planar=planar)
        try:
            pipeline.detection.checkpoint()
        except errors.RequestError as e:
            raise ValueError(str(e.detail)) from None
        pipelines[planar] = pipeline
    return pipelines


def infer_files(
    source: str | os.PathLike,
    out: str | os.PathLike,
    model_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    verbose: bool = False,
    dicom: bool = False,
) -> InferReport:
    """Run the pipeline on every case of ``source``; write ``<case>.json`` and ``<case>.mrk.json`` to ``out``
    (and ``<case>.dicom/`` with ``dicom``)."""
    # MONAI Label's infer tasks log every transform at the level a request names (and dump the request when
    # that is the root logger's level): quiet unless asked
    params = {"logging": "INFO" if verbose else "ERROR", **_checked_params(dict(params or {}))}
    report = InferReport()
    kinds: dict[str, bool] = {}
    cases = []
    for case, path in _cases_to_run(find_cases(source), report):
        kind = _is_planar(path)
        if isinstance(kind, str):
            report.failed[case] = kind
            continue
        kinds[case] = kind
        cases.append((case, path))
    pipelines = _pipelines(set(kinds.values()), model_dir, demo_dir, params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    errors = app_module("server.errors")
    for case, path in _progress(cases, progress):
        start = time.perf_counter()
        pipeline = pipelines[kinds[case]]
        try:
            result = pipeline.result_for({**params, "image": str(path), "image_id": case})
        except errors.RequestError as e:  # 4xx/503 on the server: the same words here
            report.failed[case] = str(e.detail)
            continue
        atomic_write_text(out / f"{case}.json", dumps(result))
        atomic_write_text(out / f"{case}.mrk.json", json.dumps(markups_from_nodes(result["nodes"]), indent=1))
        if dicom and kinds[case]:
            report.failed[case] = "result written; DICOM SEG + SR of 2D images are not written yet"
            continue
        if dicom:
            try:
                _export(result, path, out / f"{case}{RESULTS_SUFFIX}", pipeline, params)
            except Exception as e:  # noqa: BLE001 - the result is written; the other cases go on
                reason = str(e) if isinstance(e, (ImageError, ValueError)) else f"{type(e).__name__}: {e}"
                report.failed[case] = f"result written, DICOM SEG + SR not: {reason}"
                continue
        report.written[case] = len(result["nodes"])
        report.seconds[case] = round(time.perf_counter() - start, 2)
    return report
