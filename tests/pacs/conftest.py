"""A real Orthanc (Debian's ``orthanc``, ``orthanc-dicomweb``, ``orthanc-gdcm``) with a temporary configuration:
DICOMweb on, no authentication, storage in a temp folder. Orthanc 1.10 listens on every interface, so these
tests run only inside a network namespace that has nothing but loopback (``./run.sh test`` puts the suite in
one: ``unshare -n``, then ``ip link set lo up``); elsewhere they skip, saying so."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from lnnode.phantoms import default_real_data_dir

from ..conftest import Server, free_port

ORTHANC = shutil.which("Orthanc")
PLUGINS = Path("/usr/share/orthanc/plugins")
CT_STORAGE, MR_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
SERIES = default_real_data_dir() / "totalseg" / "example_ct_dicom"  # real CT, JPEG 2000, empty UIDs


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    names = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    return names == ["lo"]


class Orthanc:
    """An Orthanc process on 127.0.0.1 (in the namespace) with the DICOMweb and GDCM plugins."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        storage = root / "storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "lnnode-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": True,  # inside the namespace only loopback exists
            "AuthenticationEnabled": False,
            "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so"), str(PLUGINS / "libOrthancGdcm.so")],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = root / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
            if self.process.poll() is not None:
                break
        raise RuntimeError(f"Orthanc did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def upload(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.dcm")):
            req = urllib.request.Request(f"{self.url}/instances", data=path.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200, r.read()

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=60) as r:
            return json.loads(r.read())


def copy_series(source: Path, out: Path, modality: str = "CT", patient: str = "LNNODE-TEST") -> str:
    """A copy of a DICOM series with real UIDs (the shared TotalSegmentator series has empty ones); its
    SeriesInstanceUID."""
    out.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    for i, path in enumerate(sorted(source.iterdir())):
        ds = pydicom.dcmread(path)
        uid = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, uid
        ds.FrameOfReferenceUID, ds.SOPClassUID, ds.Modality = frame, sop_class, modality
        ds.PatientID, ds.PatientName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = patient, patient, "1", 1, i + 1
        ds.file_meta.MediaStorageSOPInstanceUID, ds.file_meta.MediaStorageSOPClassUID = uid, sop_class
        ds.save_as(out / f"{i:03d}.dcm")
    return series


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if ORTHANC is None or not (PLUGINS / "libOrthancDicomWeb.so").exists():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (./run.sh test installs it)")
    if not loopback_only():
        pytest.skip("Orthanc listens on every interface: run inside a loopback-only network namespace (./run.sh test)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pacs(orthanc, tmp_path_factory):
    if not SERIES.is_dir():
        pytest.skip(f"real DICOM series not found at {SERIES}")
    root = tmp_path_factory.mktemp("series")
    ct = copy_series(SERIES, root / "ct", "CT")
    mr = copy_series(SERIES, root / "mr", "MR", patient="LNNODE-MR")
    for folder in ("ct", "mr"):
        orthanc.upload(root / folder)
    return {"ct": ct, "mr": mr, "folder": root / "ct"}


@pytest.fixture(scope="module")
def server(orthanc, pacs, tmp_path_factory):
    root = tmp_path_factory.mktemp("lnnode")
    conf = {"device": "cpu", "dicomweb_cache": str(root / "cache"), "model_dir": str(root / "models")}
    conf.update(dicomweb_refresh_s="0", dicomweb_timeout_s="5")  # every listing asks the PACS
    start = time.perf_counter()
    server = Server(orthanc.dicomweb, conf, root / "server.log", cwd=root)
    server.wait_ready()
    server.start_seconds = time.perf_counter() - start
    server.cache, server.models = root / "cache", root / "models"
    yield server
    server.stop()
