"""DICOMweb (QIDO-RS, WADO-RS) clients: the series of a study list, and one series fetched into a folder.

The server's PACS datastore (``lib.datastore.dicomweb``) and ``lnnode infer`` on a DICOMweb study list use them.
Every request has a timeout (DICOMwebClient sets none: a PACS could hang a run) and no silent retries.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

__all__ = ["AS_STORED", "MODALITIES", "dicomweb_client", "fetch_series", "is_dicomweb", "study_series", "tag_value"]

SERIES_UID, STUDY_UID, MODALITY = "0020000E", "0020000D", "00080060"
AS_STORED = (("application/dicom", "*"),)  # no transcoding on the PACS (Orthanc's GDCM plugin has crashed on it)
MODALITIES = ("CT", "MR")


class _TimeoutSession(requests.Session):
    """A requests session whose every request has a timeout."""

    def __init__(self, timeout_s: float):
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


def is_dicomweb(source: Any) -> bool:
    """Whether ``source`` is a DICOMweb root URL (http or https)."""
    return str(source).startswith(("http://", "https://"))


def dicomweb_client(url: str, timeout_s: float = 30.0) -> DICOMwebClient:
    client = DICOMwebClient(url=url.rstrip("/"), session=_TimeoutSession(timeout_s))
    client.set_http_retry_params(retry=False)  # its default: 5 tries over 30 s on any error, a silent stall
    return client


def tag_value(ds: dict[str, Any], tag: str) -> str | None:
    """The first value of a tag of a QIDO answer (DICOM JSON), or None."""
    values = (ds.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def study_series(
    client: DICOMwebClient, studies: list[str], modalities: tuple[str, ...] = MODALITIES
) -> list[tuple[str, str]]:
    """(study UID, series UID) of every series of ``modalities`` in ``studies``, in the order of the studies."""
    found = []
    for study in studies:
        for modality in modalities:
            datasets = client.search_for_series(search_filters={"StudyInstanceUID": study, "Modality": modality})
            found += [(study, uid) for ds in datasets if (uid := tag_value(ds, SERIES_UID))]
    return found


def fetch_series(client: DICOMwebClient, study: str | None, series: str, folder: str | os.PathLike) -> None:
    """Every instance of a series (WADO-RS), as stored, into ``folder`` as ``<SOPInstanceUID>.dcm``."""
    for instance in client.retrieve_series(study, series, media_types=AS_STORED):
        Dataset.save_as(instance, os.path.join(folder, f"{instance.SOPInstanceUID}.dcm"))
