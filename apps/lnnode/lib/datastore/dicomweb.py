"""A PACS over DICOMweb (QIDO-RS, WADO-RS) as lnnode's datastore: the series are cached as a local studies folder.

Every series the search matches (``--conf dicomweb_modalities``, default CT and MR, plus the QIDO filters in
``--conf dicomweb_search``) is fetched once into the cache folder and read as a volume there; the cache is an
:class:`~lib.datastore.local.LnnodeDatastore`, so every lnnode guarantee holds for PACS images as for a folder:
JSON labels validated and versioned in the local ``labels/`` folder (never passed to a SEG converter, never
deleted because the PACS has no SEG), reviews compared, training and the strategies reading them. Image ids are
SeriesInstanceUIDs, checked like any id. New series are picked up on the next refresh (``--conf
dicomweb_refresh_s``). Nothing is downloaded from anywhere else at start-up.

A PACS that cannot be reached, answers with an error or takes longer than ``--conf dicomweb_timeout_s`` to answer
is logged, named with the reason, and the cached series keep being served (no request waits longer than the
timeout); :meth:`DicomwebDatastore.sync` with ``required`` raises it as a 502 / 504.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pydicom
import requests
import SimpleITK as sitk
from dicomweb_client.api import DICOMwebClient
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

import lnnode
from lnnode.contracts import parse_label
from lnnode.contracts.ids import InvalidName, check_name
from lnnode.dicom.export import RESULTS_SUFFIX, SEG_FILE, SR_FILE, export_label
from lnnode.io.atomic import TEMP_DIR_NAME
from lnnode.io.image import ImageError, read_sitk

from ..server.errors import RequestError
from .local import LnnodeDatastore

logger = logging.getLogger(__name__)

__all__ = ["DicomwebDatastore", "PacsError", "dicomweb_datastore"]

_SERIES_UID, _STUDY_UID, _MODALITY = "0020000E", "0020000D", "00080060"
_AS_STORED = (("application/dicom", "*"),)
_INFO_FIELDS = {"00100020": "PatientID", "00080020": "StudyDate", "0008103E": "SeriesDescription"}
SOURCE_DIR = ".dicom"  # <cache>/.dicom/<series uid>/: the series as fetched, which a SEG and an SR reference
FINAL = DefaultLabelTag.FINAL.value


class PacsError(RequestError):
    """The PACS did not answer as it should: 502 (unreachable, an error) or 504 (too slow)."""


class _TimeoutSession(requests.Session):
    """A requests session whose every request has a timeout (DICOMwebClient sets none: a PACS could hang us)."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


def _value(ds: dict[str, Any], tag: str) -> str | None:
    values = (ds.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


class DicomwebDatastore(LnnodeDatastore):
    """``url``: the DICOMweb root (e.g. Orthanc's ``http://host:8042/dicom-web``); ``cache``: the local folder."""

    def __init__(
        self,
        url: str,
        cache: str,
        modalities: tuple[str, ...] = ("CT", "MR"),
        search: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
        refresh_s: float = 60.0,
        client: DICOMwebClient | None = None,
    ):
        self.url = url.rstrip("/")
        self.modalities = tuple(modalities)
        self.search = dict(search or {})
        self.refresh_s = refresh_s
        if client is None:
            client = DICOMwebClient(url=self.url, session=_TimeoutSession(timeout_s))
            client.set_http_retry_params(retry=False)  # its default: 5 tries over 30 s on any error, a silent stall
        self.client = client
        self.timeout_s = timeout_s
        self._synced_at = 0.0
        self._sync_lock = threading.Lock()
        os.makedirs(cache, exist_ok=True)
        super().__init__(cache, auto_reload=False)
        self.sync(required=False)

    def name(self) -> str:
        return self.url

    # -- the PACS -----------------------------------------------------------------------------------
    @contextmanager
    def _pacs(self, what: str) -> Iterator[None]:
        """Turn the PACS's failures into a 502/504 naming it and what was asked."""
        try:
            yield
        except requests.exceptions.Timeout:
            raise PacsError(
                f"the PACS at {self.url} did not answer within {self.timeout_s:g} s ({what})", status_code=504
            ) from None
        except requests.exceptions.ConnectionError as e:
            reason = str(e).split("Caused by")[-1].strip(" ()'\"")[:160]
            raise PacsError(f"the PACS at {self.url} cannot be reached ({what}): {reason}", status_code=502) from None
        except requests.exceptions.HTTPError as e:
            status = getattr(e.response, "status_code", "?")
            raise PacsError(f"the PACS at {self.url} answered {status} ({what})", status_code=502) from None

    def remote_series(self) -> dict[str, dict[str, Any]]:
        """SeriesInstanceUID -> its QIDO attributes, for every series the search matches."""
        found: dict[str, dict[str, Any]] = {}
        for modality in self.modalities:
            with self._pacs(f"searching {modality} series"):
                datasets = self.client.search_for_series(search_filters={**self.search, "Modality": modality})
            for ds in datasets:
                uid = _value(ds, _SERIES_UID)
                if uid:
                    found[uid] = ds
        return found

    def _info(self, ds: dict[str, Any]) -> dict[str, Any]:
        info = {"SeriesInstanceUID": _value(ds, _SERIES_UID), "StudyInstanceUID": _value(ds, _STUDY_UID)}
        info.update(Modality=_value(ds, _MODALITY), source=self.url)
        info.update({name: _value(ds, tag) for tag, name in _INFO_FIELDS.items() if _value(ds, tag)})
        return info

    def _retrieve(self, uid: str, study_uid: str | None, folder: str) -> None:
        with self._pacs(f"fetching series {uid}"):
            # as stored (transfer syntax "*"): no transcoding on the PACS, where Orthanc's GDCM plugin has
            # crashed decoding JPEG 2000 for a WADO-RS request; SimpleITK decodes it here
            instances = self.client.retrieve_series(study_uid, uid, media_types=_AS_STORED)
        for instance in instances:
            Dataset.save_as(instance, os.path.join(folder, f"{instance.SOPInstanceUID}.dcm"))

    def _scratch(self) -> str:
        scratch = os.path.join(self._datastore_path, TEMP_DIR_NAME)  # not scanned as images
        os.makedirs(scratch, exist_ok=True)
        return scratch

    def _keep_source(self, uid: str, folder: str) -> None:
        dest = os.path.join(self._datastore_path, SOURCE_DIR, uid)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(folder, dest)

    def _fetch(self, uid: str, ds: dict[str, Any]) -> None:
        """Fetch one series (WADO-RS), read it as a volume and add it to the cache; keep its instances."""
        with tempfile.TemporaryDirectory(prefix="series-", dir=self._scratch()) as tmp:
            folder = os.path.join(tmp, "dicom")
            os.makedirs(folder)
            self._retrieve(uid, _value(ds, _STUDY_UID), folder)
            volume = os.path.join(tmp, f"{uid}.nii.gz")
            sitk.WriteImage(read_sitk(folder), volume, useCompression=True)  # its own voxel type and geometry
            self.add_image(uid, volume, self._info(ds))
            self._keep_source(uid, folder)

    def source_series(self, uid: str) -> str:
        """The folder of the series' DICOM instances (fetched again for a series cached without them)."""
        folder = os.path.join(self._datastore_path, SOURCE_DIR, check_name(uid, "series id"))
        if not os.path.isdir(folder):
            with tempfile.TemporaryDirectory(prefix="series-", dir=self._scratch()) as tmp:
                fetched = os.path.join(tmp, "dicom")
                os.makedirs(fetched)
                self._retrieve(uid, self.get_image_info(uid).get("StudyInstanceUID"), fetched)
                self._keep_source(uid, fetched)
        return folder

    def sync(self, required: bool = True) -> list[str]:
        """Fetch the series the PACS has and the cache has not; the ids fetched. ``required``: a PACS that
        fails is an error (502/504), else it is logged and the cache is served as it is."""
        with self._sync_lock:
            try:
                remote = self.remote_series()
            except PacsError as e:
                self._synced_at = time.monotonic()  # the next try waits for the next refresh
                if required:
                    raise
                logger.warning(f"{e.detail}; serving the {len(self._datastore.objects)} cached series")
                return []
            fetched = []
            for uid, ds in remote.items():
                if uid in self._datastore.objects:
                    continue
                try:
                    check_name(uid, "series id")
                    self._fetch(uid, ds)
                    fetched.append(uid)
                except PacsError as e:  # the PACS went away: the rest waits for the next refresh
                    logger.warning(f"{e.detail}; {len(fetched)} new series cached before")
                    break
                except (InvalidName, ImageError, RequestError) as e:  # one bad series does not stop the others
                    reason = getattr(e, "detail", None) or getattr(e, "reason", None) or str(e)
                    logger.warning(f"series {uid} from {self.url} not cached: {reason}")
            self._synced_at = time.monotonic()
            if fetched:
                logger.info(f"cached {len(fetched)} new series from {self.url}")
        self._retry_pending()
        return fetched

    def _refresh(self) -> None:
        if time.monotonic() - self._synced_at >= self.refresh_s:
            self.sync(required=False)

    # -- what the strategies and the endpoints ask ---------------------------------------------------
    def list_images(self) -> list[str]:
        self._refresh()
        return super().list_images()

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._refresh()
        return super().get_unlabeled_images(label_tag, labels)

    def json(self):
        self._refresh()
        return super().json()

    def status(self):
        self._refresh()
        return super().status()

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if not os.path.realpath(image_filename).startswith(os.path.realpath(self._datastore_path) + os.sep):
            raise RequestError(f"images come from the PACS at {self.url}: store the series there", status_code=405)
        return super().add_image(image_id, image_filename, image_info)


    # -- results back to the PACS -------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """As the folder's, and a new ``final`` version carries the record of what is on the PACS (the
        write-back that follows supersedes it)."""
        obj = self._datastore.objects.get(image_id)
        final = obj.labels.get(FINAL) if obj is not None and (label_tag or FINAL) == FINAL else None
        if final is not None and final.info.get("pacs") and (label_info is None or isinstance(label_info, dict)):
            label_info = {**(label_info or {}), "pacs": final.info["pacs"]}
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def write_back(self, image_id: str) -> dict[str, Any]:
        """Store the SEG + SR of the case's ``final`` label on the PACS; the label info's ``pacs`` record.

        A PACS that fails: the record says ``pending`` (tried again at the next refresh) and PacsError is
        raised; the label stays saved. The SEG and SR are built in a scratch folder and kept (as the current
        ones, which the next version supersedes) only once the PACS has stored them."""
        info = self.get_label_info(image_id, FINAL)
        record = dict(info.get("pacs") or {})
        if not str(info.get("name", "")).endswith(".json"):
            return {"status": "not_stored", "error": "only lnnode JSON labels are written back, not masks"}
        try:
            stored = self._store_results(image_id, record)
        except PacsError as e:
            record.update(status="pending", error=e.detail)
            self.update_label_info(image_id, FINAL, {"pacs": record})
            raise PacsError(
                f"the label of {image_id} is saved in lnnode, but its SEG and SR are not on the PACS yet: {e.detail}"
                " (tried again at the next refresh)",
                status_code=e.status_code,
            ) from None
        except (ImageError, ValueError, OSError) as e:  # the SEG or SR could not be made: said, never half-stored
            logger.exception(f"SEG and SR of {image_id} not made")
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
            self.update_label_info(image_id, FINAL, {"pacs": record})
            return record
        superseded = list(record.get("superseded", []))
        if record.get("status") == "stored":
            superseded.append({k: record[k] for k in ("seg_series", "sr_series", "stored_at") if k in record})
        stored["superseded"] = superseded
        self.update_label_info(image_id, FINAL, {"pacs": stored})
        return stored

    def _store_results(self, image_id: str, record: dict[str, Any]) -> dict[str, Any]:
        with open(self.get_label_uri(image_id, FINAL), "rb") as f:
            label = parse_label(f.read())
        source = self.source_series(image_id)
        # labels/final/<series uid>.dicom/: the SEG + SR last stored on the PACS (the next one's predecessor)
        results = os.path.join(self._datastore.label_path(FINAL), f"{image_id}{RESULTS_SUFFIX}")
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="results-", dir=self._scratch()) as tmp:
            if os.path.isfile(os.path.join(results, SR_FILE)) and record.get("status") == "stored":
                shutil.copyfile(os.path.join(results, SR_FILE), os.path.join(tmp, SR_FILE))  # its predecessor
            exported = export_label(label, self.original_result(image_id), source, tmp, dicom=source,
                                    version=f"lnnode {lnnode.__version__}")  # fmt: skip
            datasets = [pydicom.dcmread(p) for p in (exported.seg, exported.sr) if p is not None]
            with self._pacs("storing the SEG and SR"):
                answer = self.client.store_instances(datasets)
            failed = answer.get("FailedSOPSequence") if answer is not None else None
            if failed:
                reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
                raise PacsError(f"the PACS at {self.url} refused {len(failed)} instance(s) (reasons {reasons})", 502)
            os.makedirs(results, exist_ok=True)
            for name in (SEG_FILE, SR_FILE):
                if os.path.exists(os.path.join(tmp, name)):
                    os.replace(os.path.join(tmp, name), os.path.join(results, name))
                elif os.path.exists(os.path.join(results, name)):
                    os.remove(os.path.join(results, name))  # a review without nodes: no current SEG
        seg, sr = exported.report.seg, exported.report.sr
        return {
            "status": "stored",
            "study": str(sr.StudyInstanceUID),
            "seg_series": str(seg.SeriesInstanceUID) if seg is not None else None,
            "sr_series": str(sr.SeriesInstanceUID),
            "sr_instance": str(sr.SOPInstanceUID),
            "nodes": exported.report.tracking_uids,
            "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - began, 2),
        }

    def _retry_pending(self) -> None:
        """Write back the final labels whose SEG and SR the PACS has not stored yet (it was down)."""
        for image_id, obj in list(self._datastore.objects.items()):
            label = obj.labels.get(FINAL)
            if label is None or (label.info.get("pacs") or {}).get("status") != "pending":
                continue
            try:
                self.write_back(image_id)
                logger.info(f"stored the SEG and SR of {image_id} on {self.url} (they were pending)")
            except PacsError as e:
                logger.warning(e.detail)
                return  # the PACS is still away: the others wait for the next refresh


def dicomweb_datastore(url: str, options: Any) -> DicomwebDatastore:
    """The datastore of ``--studies <DICOMweb URL>`` with the app's ``--conf dicomweb_*`` options."""
    cache = options.dicomweb_cache or os.path.join(
        os.path.expanduser("~"), ".cache", "lnnode", "dicomweb", hashlib.sha1(url.encode()).hexdigest()[:16]
    )
    return DicomwebDatastore(
        url,
        cache,
        modalities=options.dicomweb_modalities,
        search=options.dicomweb_search,
        timeout_s=options.dicomweb_timeout_s,
        refresh_s=options.dicomweb_refresh_s,
    )
