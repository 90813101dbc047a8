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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import SimpleITK as sitk
from dicomweb_client.api import DICOMwebClient
from filelock import FileLock, Timeout
from monailabel.interfaces.datastore import DefaultLabelTag

from lnnode.contracts.ids import InvalidName, check_name
from lnnode.dicom.web import MODALITY, SERIES_UID, STUDY_UID, dicomweb_client, fetch_series, tag_value
from lnnode.io.atomic import TEMP_DIR_NAME
from lnnode.io.image import ImageError, read_sitk

from ..server.errors import PacsError, RequestError
from .local import LnnodeDatastore
from .writeback import WriteBack

logger = logging.getLogger(__name__)

__all__ = ["DicomwebDatastore", "PacsError", "dicomweb_datastore"]

_INFO_FIELDS = {"00100020": "PatientID", "00080020": "StudyDate", "0008103E": "SeriesDescription"}
SOURCE_DIR = ".dicom"  # <cache>/.dicom/<series uid>/: the series as fetched, which a SEG and an SR reference
FINAL = DefaultLabelTag.FINAL.value


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
        self.client = client if client is not None else dicomweb_client(self.url, timeout_s)
        self.timeout_s = timeout_s
        self._synced_at = 0.0
        os.makedirs(cache, exist_ok=True)
        # file locks, not thread locks: server replicas sharing one cache fetch a series once, store a review once
        self._sync_lock = FileLock(os.path.join(cache, ".sync.lock"))
        self._writeback = WriteBack(self, os.path.join(cache, ".writeback.lock"))
        super().__init__(cache, auto_reload=False)
        self.sync(required=False)

    def name(self) -> str:
        return self.url

    # -- the PACS -----------------------------------------------------------------------------------
    @contextmanager
    def pacs(self, what: str) -> Iterator[None]:
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
            status = getattr(e.response, "status_code", None)
            transient = status is None or status >= 500
            raise PacsError(f"the PACS at {self.url} answered {status} ({what})", 502, transient) from None
        except requests.exceptions.RequestException as e:  # a broken answer (truncated, bad encoding...)
            raise PacsError(f"the PACS at {self.url} failed ({what}): {type(e).__name__}", 502) from None

    def remote_series(self) -> dict[str, dict[str, Any]]:
        """SeriesInstanceUID -> its QIDO attributes, for every series the search matches."""
        found: dict[str, dict[str, Any]] = {}
        for modality in self.modalities:
            with self.pacs(f"searching {modality} series"):
                datasets = self.client.search_for_series(search_filters={**self.search, "Modality": modality})
            for ds in datasets:
                uid = tag_value(ds, SERIES_UID)
                if uid:
                    found[uid] = ds
        return found

    def _info(self, ds: dict[str, Any]) -> dict[str, Any]:
        info = {"SeriesInstanceUID": tag_value(ds, SERIES_UID), "StudyInstanceUID": tag_value(ds, STUDY_UID)}
        info.update(Modality=tag_value(ds, MODALITY), source=self.url)
        info.update({name: tag_value(ds, tag) for tag, name in _INFO_FIELDS.items() if tag_value(ds, tag)})
        return info

    def scratch(self) -> str:
        """A folder for work in progress inside the cache (never scanned as images or labels)."""
        scratch = os.path.join(self._datastore_path, TEMP_DIR_NAME)
        os.makedirs(scratch, exist_ok=True)
        return scratch

    def _retrieve(self, uid: str, study_uid: str | None, folder: str) -> None:
        with self.pacs(f"fetching series {uid}"):
            fetch_series(self.client, study_uid, uid, folder)  # as stored: SimpleITK decodes it here

    def _fetch(self, uid: str, study_uid: str | None, info: dict[str, Any] | None) -> None:
        """Fetch one series (WADO-RS) and keep its instances; with ``info``, also add it to the cache as a volume
        (without: a series cached before the instances were kept)."""
        with tempfile.TemporaryDirectory(prefix="series-", dir=self.scratch()) as tmp:
            folder = os.path.join(tmp, "dicom")
            os.makedirs(folder)
            self._retrieve(uid, study_uid, folder)
            if info is not None:
                volume = os.path.join(tmp, f"{uid}.nii.gz")
                sitk.WriteImage(read_sitk(folder), volume, useCompression=True)  # its own voxel type and geometry
                self.add_image(uid, volume, info)
            dest = os.path.join(self._datastore_path, SOURCE_DIR, uid)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(folder, dest)

    def source_folder(self, uid: str) -> str:
        """The folder of the series' DICOM instances, which the SEG and SR reference."""
        folder = os.path.join(self._datastore_path, SOURCE_DIR, check_name(uid, "series id"))
        with self._sync_lock:
            if not os.path.isdir(folder):
                self._fetch(uid, self.get_image_info(uid).get("StudyInstanceUID"), None)
        return folder

    def sync(self, required: bool = True) -> list[str]:
        """Fetch the series the PACS has and the cache has not; the ids fetched. ``required``: a PACS that
        fails is an error (502/504), else it is logged and the cache is served as it is."""
        with self._sync_lock:
            self.reload()  # what another replica cached meanwhile is not fetched again
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
                    self._fetch(uid, tag_value(ds, STUDY_UID), self._info(ds))
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
        self._writeback.retry_pending()
        return fetched

    def _refresh(self) -> None:
        if time.monotonic() - self._synced_at < self.refresh_s:
            return
        try:  # another replica is syncing the shared cache: serve it as it is rather than wait for its fetches
            self._sync_lock.acquire(timeout=0)
        except Timeout:
            self._synced_at = time.monotonic()
            return
        try:
            self.sync(required=False)
        finally:
            self._sync_lock.release()

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

    # -- results back to the PACS (lib/datastore/writeback.py) -----------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """As the folder's; a new ``final`` version is pending for the PACS until :meth:`write_back` has stored it
        (a server killed in between tries again at the next refresh), and keeps the record of what is there."""
        if (label_tag or FINAL) == FINAL and (label_info is None or isinstance(label_info, dict)):
            obj = self._datastore.objects.get(image_id)
            final = obj.labels.get(FINAL) if obj is not None else None
            previous = final.info.get("pacs") if final is not None else None
            label_info = {**(label_info or {}), "pacs": WriteBack.pending_record(previous)}
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def write_back(self, image_id: str) -> dict[str, Any]:
        """Store the SEG + SR of the case's ``final`` label on the PACS; the label info's ``pacs`` record. A PACS
        that is away or refuses: PacsError (502/504), the label staying saved."""
        return self._writeback.run(image_id)


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
