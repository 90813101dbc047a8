"""``lnnode infer``: the server's pipeline on image files, without a server.

An image file, a folder of them, or a folder holding one DICOM series goes in; per case a result JSON
(``<case>.json``, the result contract) and a Slicer markups file of the boxes (``<case>.mrk.json``) come
out, and with ``dicom`` a DICOM SEG + SR of the result (``<case>.dicom/``, :mod:`lnnode.dicom.export`).
The models, the parameters and their checks are the server's (the app's own tasks and parameter
table); a case that cannot be read is reported with the reason and the others go on.
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
from lnnode.contracts import CLASSIFICATION, DETECTION, PIPELINE, dumps
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.contracts.markups import markups_from_nodes
from lnnode.dicom.export import RESULTS_SUFFIX
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import IMAGE_SUFFIXES, ImageError, image_suffix

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
    """(case id, path) for an image file, each image file in a folder, or a folder holding a DICOM series."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_file():
        return [(_case_id(src), src)]
    images = sorted(p for p in src.iterdir() if p.is_file() and image_suffix(p) in IMAGE_SUFFIXES)
    if images:
        return [(_case_id(p), p) for p in images]
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns "No Series were found" on stderr: we say it
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(src))  # headers only: the pipeline reads the voxels
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if len(series) != 1:
        found = "no DICOM series" if not series else f"{len(series)} DICOM series (give one per folder)"
        raise ValueError(f"{src}: no image files (.nii.gz, .nii, .nrrd, .mha) and {found}")
    return [(src.name, src)]


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit="case", file=sys.stderr)


def build_pipeline(model_dir: str | os.PathLike, demo_dir: str | os.PathLike | None, config: dict[str, Any]):
    """The app's pipeline task with the models the server would serve from ``model_dir`` (else the demo's)."""
    infers = app_module("infers")

    def paths(name: str) -> list[str]:
        candidates = [Path(demo_dir) / f"{name}.pt"] if demo_dir else []
        return [str(p) for p in (*candidates, Path(model_dir) / f"{name}.pt")]  # the last existing one is served

    detection = infers.NodeDetection(DETECTION, paths(DETECTION), config=config)
    classification = infers.NodeClassification(CLASSIFICATION, paths(CLASSIFICATION), config=config)
    return infers.NodePipeline(PIPELINE, detection, classification, config=config)


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
    cases = find_cases(source)
    pipeline = build_pipeline(model_dir, demo_dir, config={"device": params.get("device", "cpu")})
    errors = app_module("server.errors")
    try:
        pipeline.detection.checkpoint()  # no detector: say so once, not once per case
    except errors.RequestError as e:
        raise ValueError(str(e.detail)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = InferReport()
    for case, path in _progress(list(_cases_to_run(cases, report)), progress):
        start = time.perf_counter()
        try:
            result = pipeline.result_for({**params, "image": str(path), "image_id": case})
        except errors.RequestError as e:  # 4xx/503 on the server: the same words here
            report.failed[case] = str(e.detail)
            continue
        atomic_write_text(out / f"{case}.json", dumps(result))
        atomic_write_text(out / f"{case}.mrk.json", json.dumps(markups_from_nodes(result["nodes"]), indent=1))
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
