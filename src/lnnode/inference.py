"""``lnnode infer`` and ``lnnode score``: the server's pipeline and its uncertainty scoring on files, without a server.

Infer: an image file, a folder of them, or a folder holding one DICOM series goes in (2D images go to the 2D
pipeline); per case a result JSON (``<case>.json``, the result contract) and a Slicer markups file of the
boxes (``<case>.mrk.json``) come out, and with ``dicom`` a DICOM SEG + SR of the result (``<case>.dicom/``,
:mod:`lnnode.dicom.export`). The models, the parameters and their checks are the server's (the app's own
tasks and parameter table); a case that cannot be read is reported with the reason and the others go on. A case
whose outputs are complete already is skipped (``force`` redoes it), so a stopped run picks up where it was.

Score: the ``lymph_node_uncertainty`` score of every unlabelled image of a studies folder, stored in the image's
info as the server's scoring method stores it; an image the models in service scored already is skipped.

Both run here, a case after another, or on Ray (``ray``, :mod:`lnnode.distributed`) with a copy of the models per
worker. Either way one method does a case (:meth:`CaseRunner.run`, :meth:`ScoreRunner.run`) and the report says
the same things: cases done, skipped, failed (why), wall time and throughput.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
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
    parse_result,
)
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.contracts.markups import markups_from_nodes
from lnnode.dicom.export import RESULTS_SUFFIX, SEG_FILE, SR_FILE
from lnnode.dicom.web import dicomweb_client, fetch_series, is_dicomweb, study_series
from lnnode.distributed import RayOptions, Workers
from lnnode.io.atomic import atomic_write_text
from lnnode.io.image import ImageError, image_suffix, is_planar, read_geometry, read_header

__all__ = [
    "Case",
    "CaseRunner",
    "InferReport",
    "Outcome",
    "ScoreReport",
    "ScoreRunner",
    "find_cases",
    "infer_files",
    "is_done",
    "score_studies",
]

SCORE_BATCH = 32  # image infos per datastore write while scoring: one write per image would rewrite the file each time
SCORE_FLUSH_S = 30.0  # and at least this often, so a long run's scores show up in the server as they come


def _failures(failed: dict[str, str]) -> str:
    """The summary's failures part: how many, and each with its reason ('' when none)."""
    if not failed:
        return ""
    return f"; {len(failed)} failed: " + "; ".join(f"{k} ({v})" for k, v in failed.items())


def _pace(done: int, wall_s: float, workers: int | None, unit: str) -> str:
    where = "in this process" if workers is None else f"on {workers} Ray worker(s)"
    rate = f"{done / wall_s:.2f} {unit}/s" if wall_s > 0 else "-"
    return f"{done} {unit}(s) run in {wall_s:.1f} s ({rate}, {where})"


@dataclass
class InferReport:
    """What an ``lnnode infer`` run did: cases written (with their node counts and seconds), cases skipped (their
    outputs were complete), cases refused (why); its wall time and the Ray workers it ran on (None: none)."""

    written: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    workers: int | None = None

    def add(self, outcome: Outcome) -> None:
        if outcome.error is None:
            self.written[outcome.case] = int(outcome.nodes or 0)
            self.seconds[outcome.case] = outcome.seconds
        else:
            self.failed[outcome.case] = outcome.error

    def summary(self) -> str:
        text = f"{len(self.written)} case(s) written, {sum(self.written.values())} node(s)"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped, done before (--force redoes them)"
        pace = _pace(len(self.written) + len(self.failed), self.wall_s, self.workers, "case")
        return f"{text}{_failures(self.failed)}. {pace}"


@dataclass
class ScoreReport:
    """What an ``lnnode score`` run did: images scored, skipped (scored by the models in service, or no model of
    their kind), failed (why); its wall time and the Ray workers it ran on (None: none)."""

    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    workers: int | None = None

    def summary(self) -> str:
        text = f"{len(self.scored)} image(s) scored"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped, up to date or no model of their kind (--force rescores)"
        pace = _pace(len(self.scored) + len(self.failed), self.wall_s, self.workers, "image")
        return f"{text}{_failures(self.failed)}. {pace}"


@dataclass(frozen=True)
class Case:
    """A case to run: its id, its image (a file or a DICOM series folder) and whether it is 2D; a series on a PACS
    has ``remote`` (DICOMweb root, study UID, series UID) instead, and is fetched where the case runs."""

    id: str
    path: Path
    planar: bool
    remote: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of a case: its node count when its outputs were written, else why not (``error``)."""

    case: str
    nodes: int | None = None
    error: str | None = None
    seconds: float = 0.0


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


def _progress(items: Iterable, total: int, enabled: bool, unit: str = "case") -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit=unit, file=sys.stderr)


def _reason(error: Exception) -> str:
    """A failure in the user's words: the server's for a refused request, else the error (named if unexpected)."""
    if isinstance(error, app_module("server.errors").RequestError):
        return str(error.detail)  # 4xx/503 on the server: the same words here
    if isinstance(error, (ImageError, ValueError, CaseFailed)):
        return str(error)
    return f"{type(error).__name__}: {error}"


class CaseFailed(Exception):
    """A case whose outputs are not all written, in words for the report."""


def is_done(out: str | os.PathLike, case: str, dicom: bool = False) -> bool:
    """Whether a case's outputs in ``out`` are complete: its result (valid) and its markups parse, and with
    ``dicom`` its SR is there (and its SEG, if it has nodes). Each file is written atomically, the result first
    and the DICOM results last, so a run stopped in the middle of a case leaves it not done."""
    out = Path(out)
    try:
        result = parse_result((out / f"{case}.json").read_bytes())
        json.loads((out / f"{case}.mrk.json").read_bytes())
    except (OSError, ValueError):  # missing, or not a result and markups (a file of another tool's)
        return False
    folder = out / f"{case}{RESULTS_SUFFIX}"
    return not dicom or ((folder / SR_FILE).is_file() and (not result["nodes"] or (folder / SEG_FILE).is_file()))


class CaseRunner:
    """Does ``lnnode infer``'s work on one case at a time (:meth:`run`), with the pipeline of its kind built on
    first use. One per process: the sequential run has one, each Ray worker its own."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        demo_dir: str | os.PathLike | None,
        params: dict[str, Any],
        out: str | os.PathLike,
        dicom: bool = False,
    ):
        self.model_dir, self.demo_dir, self.params = model_dir, demo_dir, params
        self.out, self.dicom = Path(out), dicom
        self._pipelines: dict[bool, Any] = {}

    def pipeline(self, planar: bool):
        """The pipeline of a kind of case (2D: True), with its detector's weights, else a ValueError."""
        if planar not in self._pipelines:
            errors = app_module("server.errors")
            config = {"device": self.params.get("device", "cpu")}
            pipeline = build_pipeline(self.model_dir, self.demo_dir, config, planar=planar)
            try:
                pipeline.detection.checkpoint()
            except errors.RequestError as e:
                raise ValueError(str(e.detail)) from None
            self._pipelines[planar] = pipeline
        return self._pipelines[planar]

    def run(self, case: Case) -> Outcome:
        """Write the case's result and markups (and its DICOM results) to the output folder. Returns what became
        of it, never raises: one case must not stop the others."""
        begin = time.perf_counter()
        try:
            nodes = self._write(case)
        except Exception as e:  # noqa: BLE001 - reported with the case; the others go on
            return Outcome(case.id, error=_reason(e), seconds=round(time.perf_counter() - begin, 2))
        return Outcome(case.id, nodes=nodes, seconds=round(time.perf_counter() - begin, 2))

    def _write(self, case: Case) -> int:
        with _local_image(case) as path:
            return self._write_from(case, path)

    def _write_from(self, case: Case, path: Path) -> int:
        pipeline = self.pipeline(case.planar)
        result = pipeline.result_for({**self.params, "image": str(path), "image_id": case.id})
        # an earlier run's SEG + SR must not stand beside the new result (a failed export would leave them "done")
        shutil.rmtree(self.out / f"{case.id}{RESULTS_SUFFIX}", ignore_errors=True)
        atomic_write_text(self.out / f"{case.id}.json", dumps(result))
        atomic_write_text(self.out / f"{case.id}.mrk.json", json.dumps(markups_from_nodes(result["nodes"]), indent=1))
        if self.dicom and case.planar:
            raise CaseFailed("result written; DICOM SEG + SR of 2D images are not written yet")
        if self.dicom:
            try:
                self._export(result, case, path, pipeline)
            except Exception as e:  # noqa: BLE001 - the result is written; the other cases go on
                raise CaseFailed(f"result written, DICOM SEG + SR not: {_reason(e)}") from e
        return len(result["nodes"])

    def _export(self, result: dict[str, Any], case: Case, path: Path, pipeline) -> None:
        from lnnode.dicom import export_result

        modality = pipeline.detection.checkpoint().meta["preprocessing"].get("modality", "ct").upper()
        p_thresh = self.params.get("p_thresh")
        out = self.out / f"{case.id}{RESULTS_SUFFIX}"
        export_result(result, path, out, modality=modality, p_thresh=0.5 if p_thresh is None else float(p_thresh))


@contextlib.contextmanager
def _local_image(case: Case) -> Iterator[Path]:
    """The case's image on this machine: its path, or its series fetched from the PACS into a temp folder."""
    if case.remote is None:
        yield case.path
        return
    url, study, series = case.remote
    with tempfile.TemporaryDirectory(prefix="lnnode-series-") as folder:
        try:
            fetch_series(dicomweb_client(url), study, series, folder)
        except requests.exceptions.RequestException as e:
            raise CaseFailed(f"series {series} not fetched from {url}: {type(e).__name__}: {e}") from None
        yield Path(folder)


def _pacs_cases(url: str, studies: list[str]) -> list[tuple[str, Path, tuple[str, str, str]]]:
    """(case id = series UID, placeholder path, remote) of the CT and MR series of ``studies`` on the PACS."""
    if not studies:
        raise ValueError(f"{url} is a DICOMweb root: name the studies to read (--study UID, --study-list FILE)")
    try:
        series = study_series(dicomweb_client(url), studies)
    except requests.exceptions.RequestException as e:
        raise ValueError(f"the PACS at {url} could not be searched: {type(e).__name__}: {e}") from None
    if not series:
        raise ValueError(f"the PACS at {url} has no CT or MR series in the {len(studies)} given study(ies)")
    return [(uid, Path(uid), (url, study, uid)) for study, uid in series]


def _cases(
    source: str | os.PathLike, out: Path, force: bool, dicom: bool, report: InferReport, studies: list[str]
) -> list[Case]:
    """The cases of ``source`` to run: named well, not done (unless ``force``), of a kind that can be told (a
    header read; the pixels are read where the case runs). The others go to the report."""
    cases = []
    if is_dicomweb(source):
        found = _pacs_cases(str(source), studies)
    else:
        found = [(case, path, None) for case, path in find_cases(source)]
    for case, path, remote in found:
        try:
            check_name(case, "case id")
        except InvalidName as e:
            report.failed[case] = str(e)
            continue
        if not force and is_done(out, case, dicom):
            report.skipped.append(case)
            continue
        kind = False if remote else _is_planar(path)  # a PACS's CT and MR series are volumes
        if isinstance(kind, str):
            report.failed[case] = kind
            continue
        cases.append(Case(case, path, kind, remote))
    return cases


@contextlib.contextmanager
def _runs(runner: Any, make: Callable[[], Any], items: list[tuple], ray: RayOptions | None, verbose: bool):
    """``(workers, results)``: ``results`` yields ``(item, runner.run(*item))`` as each item finishes, here
    (workers None) or on Ray (each worker with ``make()``, a runner of its own; its failures as exceptions)."""
    if ray is None or not items:  # nothing to run: no Ray to start
        yield None, ((item, runner.run(*item)) for item in items)
        return
    with Workers(ray, make, len(items), verbose) as workers:
        yield workers.count, workers.map(items)


def infer_files(
    source: str | os.PathLike,
    out: str | os.PathLike,
    model_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    verbose: bool = False,
    dicom: bool = False,
    force: bool = False,
    ray: RayOptions | None = None,
    studies: list[str] | None = None,
) -> InferReport:
    """Run the pipeline on every case of ``source`` (a DICOMweb root: every CT and MR series of ``studies``, each
    fetched where it runs, its id the series UID); write ``<case>.json`` and ``<case>.mrk.json`` to ``out``
    (and ``<case>.dicom/`` with ``dicom``) as each case finishes. Cases done before are skipped unless ``force``;
    ``ray``: a :class:`lnnode.distributed.RayOptions` to run them on Ray. A bad parameter, or no detector for the
    cases' kind, is a ValueError before any case runs."""
    begin = time.perf_counter()
    # MONAI Label's infer tasks log every transform at the level a request names (and dump the request when
    # that is the root logger's level): quiet unless asked
    params = {"logging": "INFO" if verbose else "ERROR", **_checked_params(dict(params or {}))}
    out = Path(out)
    report = InferReport()
    cases = _cases(source, out, force, dicom, report, list(studies or []))
    make = functools.partial(CaseRunner, model_dir, demo_dir, params, out, dicom)
    runner = make()
    out.mkdir(parents=True, exist_ok=True)
    with _runs(runner, make, [(c,) for c in cases], ray, verbose) as (workers, results):  # a bad address: first
        for planar in sorted({c.planar for c in cases}):
            runner.pipeline(planar)  # no detector: said once, before any case runs
        report.workers = workers
        for (case,), outcome in _progress(results, len(cases), progress):
            report.add(outcome if isinstance(outcome, Outcome) else Outcome(case.id, error=_reason(outcome)))
    report.wall_s = round(time.perf_counter() - begin, 2)
    return report


class ScoreRunner:
    """Does ``lnnode score``'s work on one image at a time (:meth:`run`) with the app's scoring method and the
    models the server would serve from ``model_dir`` (else the demo's). One per process, as :class:`CaseRunner`."""

    def __init__(
        self, model_dir: str | os.PathLike, demo_dir: str | os.PathLike | None, device: str, verbose: bool = False
    ):
        scoring = app_module("scoring")
        config = {"device": device, "logging": "INFO" if verbose else "ERROR"}  # as infer_files: quiet unless asked
        volume, planar = (build_pipeline(model_dir, demo_dir, config, planar=p) for p in (False, True))
        # a worker scores cases only; appearances (the cold start) are the server's to add
        self.scoring = scoring.NodeUncertaintyScoring(volume, planar)

    def run(self, image_id: str, planar: bool, image: str | list[str], device: str, models: dict) -> dict | str:
        """The image's score info, as the server stores it, or why it has none."""
        try:
            return self.scoring.score_case(image_id, planar, image, device, models)
        except Exception as e:  # noqa: BLE001 - reported with the image; the others go on
            return _reason(e)


def score_studies(
    studies: str | os.PathLike,
    model_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None,
    device: str = "cpu",
    label_tag: str | None = None,
    force: bool = False,
    progress: bool = True,
    verbose: bool = False,
    ray: RayOptions | None = None,
) -> ScoreReport:
    """Score every image of ``studies`` without a ``label_tag`` (default final) label that the models in service
    have not scored yet (every one with ``force``) and store the scores in the datastore's image info, in batches
    as they come (a stopped run keeps what it stored). ``ray``: as :func:`infer_files`."""
    begin = time.perf_counter()
    make = functools.partial(ScoreRunner, model_dir, demo_dir, device, verbose)
    runner = make()
    datastore = app_module("datastore").LnnodeDatastore(str(studies))
    plan = runner.scoring.plan({"force": force, "label_tag": label_tag, "device": device}, datastore)
    if plan.reason is not None:
        raise ValueError(f"{studies}: {plan.reason} (train a detector or give --model-dir)")
    report = ScoreReport(skipped=list(plan.skipped), failed=dict(plan.failed))
    items = [(image_id, planar, image, device, plan.versions[planar]) for image_id, planar, image in plan.todo]
    key = app_module("scoring").SCORE_KEY
    with _runs(runner, make, items, ray, verbose) as (workers, results), _Infos(datastore) as infos:
        report.workers = workers
        for (image_id, *_), value in _progress(results, len(items), progress, unit="image"):
            if isinstance(value, dict):
                infos.add(image_id, {key: value})
                report.scored.append(image_id)
            else:
                report.failed[image_id] = value if isinstance(value, str) else _reason(value)
    report.wall_s = round(time.perf_counter() - begin, 2)
    return report


class _Infos:
    """Image infos to store, written in batches (and whatever is left on leaving, an interrupted run too)."""

    def __init__(self, datastore: Any, batch: int = SCORE_BATCH, every_s: float = SCORE_FLUSH_S):
        self.datastore, self.batch, self.every_s = datastore, batch, every_s
        self.pending: dict[str, dict[str, Any]] = {}
        self.last = time.monotonic()

    def __enter__(self) -> _Infos:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()

    def add(self, image_id: str, info: dict[str, Any]) -> None:
        self.pending[image_id] = info
        if len(self.pending) >= self.batch or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.datastore.update_image_infos(self.pending)
            self.pending = {}
        self.last = time.monotonic()


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
