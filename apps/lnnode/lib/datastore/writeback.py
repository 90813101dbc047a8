"""A final review's DICOM SEG + SR stored back on the PACS (STOW-RS), superseding the earlier version's.

The label info's ``pacs`` record says where the case stands. ``status``: ``pending`` (the latest label version is
not on the PACS yet: just saved, or the PACS was away), ``stored``, ``refused`` (the PACS refused the instances:
not tried again), ``failed`` (lnnode could not make them: not tried again), ``not_stored`` (a mask label: only
lnnode JSON labels are written back); ``error`` why. ``study``, ``seg_series``, ``sr_series``, ``sr_instance``,
``nodes`` (node id -> tracking UID), ``stored_at``, ``seconds``: the report that is current on the PACS;
``superseded``: the earlier ones, oldest first.

Files, under ``labels/final/<series uid>.dicom/``: ``seg.dcm`` + ``sr.dcm``, what the PACS holds as current (the
next report names that SR as its predecessor); ``.pending-<label ts>/``: the instances built for a label version
the PACS has not stored yet. A retry sends those same instances (same UIDs: a PACS that stored them before its
answer was lost stores nothing twice); a newer label version builds new ones.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pydicom
from filelock import FileLock, Timeout
from monailabel.interfaces.datastore import DefaultLabelTag

import lnnode
from lnnode.contracts import parse_label
from lnnode.dicom.export import RESULTS_SUFFIX, SEG_FILE, SR_FILE, export_label

from ..server.errors import PacsError

if TYPE_CHECKING:
    from .dicomweb import DicomwebDatastore

logger = logging.getLogger(__name__)

__all__ = ["WriteBack"]

FINAL = DefaultLabelTag.FINAL.value
PENDING, STORED, REFUSED, FAILED, NOT_STORED = "pending", "stored", "refused", "failed", "not_stored"
_CURRENT = ("study", "seg_series", "sr_series", "sr_instance", "nodes", "stored_at", "seconds")


class WriteBack:
    """Writes back the final labels of one :class:`DicomwebDatastore`; one write-back at a time, over every server
    replica that shares the cache (``lock_path``: a file lock in it)."""

    def __init__(self, store: DicomwebDatastore, lock_path: str):
        self.store = store
        self._lock = FileLock(lock_path)

    @staticmethod
    def pending_record(record: dict[str, Any] | None) -> dict[str, Any]:
        """The record a new label version starts with: what is current on the PACS, and pending."""
        kept = {k: v for k, v in (record or {}).items() if k in (*_CURRENT, "superseded")}
        return {**kept, "status": PENDING}

    def run(self, image_id: str, blocking: bool = True) -> dict[str, Any] | None:
        """Store the case's final label on the PACS; its record. None: another write-back is running and
        ``blocking`` is off. A PACS that is away: the record stays pending and PacsError is raised."""
        try:
            self._lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            return None
        try:
            return self._run(image_id)
        finally:
            self._lock.release()

    def retry_pending(self) -> None:
        """Try the pending write-backs again (the PACS was away); stop at the first that still fails."""
        for image_id, obj in list(self.store._datastore.objects.items()):
            label = obj.labels.get(FINAL)
            if label is None or (label.info.get("pacs") or {}).get("status") != PENDING:
                continue
            try:
                if self.run(image_id, blocking=False) is None:
                    return  # a write-back is running (a save): it goes on without us
                logger.info(f"stored the SEG and SR of {image_id} on {self.store.url} (they were pending)")
            except PacsError as e:
                logger.warning(e.detail)
                return

    # -- one write-back -------------------------------------------------------------------------------
    def _run(self, image_id: str) -> dict[str, Any]:
        info = self.store.get_label_info(image_id, FINAL)
        record = dict(info.get("pacs") or {})
        if record.get("status") == STORED and record.get("label_ts") == info.get("ts"):
            return record  # this version is there already (a retry that lost the race with a save)
        if not str(info.get("name", "")).endswith(".json"):
            return self._save(image_id, {**record, "status": NOT_STORED, "error": "mask labels are not written back"})
        began = time.perf_counter()
        try:
            pending = self._instances(image_id, info["ts"])
            self._stow(pending)
        except PacsError as e:
            status = PENDING if e.transient else REFUSED
            self._save(image_id, {**record, "status": status, "error": e.detail})
            then = "tried again at the next refresh" if e.transient else "not tried again: see the PACS's log"
            raise PacsError(
                f"the label of {image_id} is saved in lnnode, but its SEG and SR are not on the PACS: {e.detail} "
                f"({then})",
                status_code=e.status_code,
            ) from None
        except Exception as e:  # noqa: BLE001 - whatever stops the SEG/SR being made, the label stays saved
            logger.exception(f"the SEG and SR of {image_id} were not made")
            return self._save(image_id, {**record, "status": FAILED, "error": f"{type(e).__name__}: {e}"})
        current = self._promote(image_id, pending)
        superseded = list(record.get("superseded", []))
        if record.get("sr_series"):
            superseded.append({k: record[k] for k in ("seg_series", "sr_series", "stored_at") if k in record})
        current.update(seconds=round(time.perf_counter() - began, 2), superseded=superseded, label_ts=info["ts"])
        return self._save(image_id, current)

    def _save(self, image_id: str, record: dict[str, Any]) -> dict[str, Any]:
        self.store.update_label_info(image_id, FINAL, {"pacs": record})
        return record

    def _results(self, image_id: str) -> str:
        return os.path.join(self.store._datastore.label_path(FINAL), f"{image_id}{RESULTS_SUFFIX}")

    def _instances(self, image_id: str, label_ts: Any) -> str:
        """The folder of this label version's SEG + SR: built once (on the cached source series)."""
        results = self._results(image_id)
        pending = os.path.join(results, f".pending-{label_ts}")
        if os.path.isfile(os.path.join(pending, SR_FILE)):
            return pending
        for stale in glob.glob(os.path.join(results, ".pending-*")):
            shutil.rmtree(stale, ignore_errors=True)  # an older version's: superseded before it was stored
        with open(self.store.get_label_uri(image_id, FINAL), "rb") as f:
            label = parse_label(f.read())
        source = self.store.source_folder(image_id)
        build = os.path.join(self.store.scratch(), f"results-{image_id}-{time.time_ns()}")
        os.makedirs(build)
        if os.path.isfile(os.path.join(results, SR_FILE)):
            shutil.copyfile(os.path.join(results, SR_FILE), os.path.join(build, SR_FILE))  # the predecessor
        export_label(label, self.store.original_result(image_id), source, build, dicom=source,
                     version=f"lnnode {lnnode.__version__}")  # fmt: skip
        os.makedirs(results, exist_ok=True)
        os.replace(build, pending)  # complete, or not there
        return pending

    def _stow(self, folder: str) -> None:
        datasets = [pydicom.dcmread(os.path.join(folder, n)) for n in (SEG_FILE, SR_FILE) if os.path.isfile(
            os.path.join(folder, n))]  # fmt: skip
        with self.store.pacs("storing the SEG and SR"):
            answer = self.store.client.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(f"the PACS at {self.store.url} refused {len(failed)} instance(s) (failure reasons "
                            f"{reasons})", status_code=502, transient=False)  # fmt: skip

    def _promote(self, image_id: str, pending: str) -> dict[str, Any]:
        """The stored instances become the current ones; what they are."""
        results = self._results(image_id)
        seg_path = os.path.join(pending, SEG_FILE)
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True) if os.path.isfile(seg_path) else None
        sr = pydicom.dcmread(os.path.join(pending, SR_FILE))
        for name in (SEG_FILE, SR_FILE):
            if os.path.exists(os.path.join(pending, name)):
                os.replace(os.path.join(pending, name), os.path.join(results, name))
            elif os.path.exists(os.path.join(results, name)):
                os.remove(os.path.join(results, name))  # a review without nodes: no current SEG
        shutil.rmtree(pending, ignore_errors=True)
        nodes = {str(s.TrackingID): str(s.TrackingUID) for s in (seg.SegmentSequence if seg is not None else [])}
        return {
            "status": STORED,
            "study": str(sr.StudyInstanceUID),
            "seg_series": str(seg.SeriesInstanceUID) if seg is not None else None,
            "sr_series": str(sr.SeriesInstanceUID),
            "sr_instance": str(sr.SOPInstanceUID),
            "nodes": nodes,
            "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
