"""lnnode on a real Orthanc over DICOMweb: it starts with no network and no dcmqi, lists CT and MR series, runs the
pipeline on a PACS series, stores reviews (lnnode JSON and the stock plugin's markups) as versioned local labels
that training reads, refuses uploads and bad ids, and names the PACS when it is down or too slow."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from lib.datastore import DicomwebDatastore, PacsError
from lnnode.contracts import dumps, make_label
from lnnode.contracts.markups import MARKUPS_SCHEMA, markups_from_nodes
from lnnode.io.image import read_geometry, read_sitk

pytestmark = pytest.mark.server


def test_the_server_starts_offline_and_lists_the_ct_and_mr_series(server, pacs):
    status, listing = server.request("GET", "/datastore/?output=all")
    assert status == 200 and {pacs["ct"], pacs["mr"]} <= set(listing["objects"]), listing
    info = listing["objects"][pacs["mr"]]["image"]["info"]
    assert info["Modality"] == "MR" and info["SeriesInstanceUID"] == pacs["mr"]
    assert not (Path(server.log).read_text().count("dcmqi")), "nothing downloaded at start-up"
    print(f"start against Orthanc (2 series cached): {server.start_seconds:.1f} s")


def test_the_pipeline_on_a_pacs_series_matches_the_same_series_from_a_folder(server, pacs, tmp_path):
    begin = time.perf_counter()
    status, result = server.request("POST", f"/infer/lymph_node_pipeline?image={pacs['ct']}&output=json")
    pacs_seconds = time.perf_counter() - begin
    assert status == 200 and result["image"] == pacs["ct"], result
    local = read_sitk(pacs["folder"])
    cached = read_geometry(server.cache / f"{pacs['ct']}.nii.gz")
    assert cached.shape == tuple(local.GetSize()) and np.allclose(cached.spacing, local.GetSpacing())
    for node in result["nodes"]:
        assert cached.contains_index(cached.world_to_index(node["center"])), "world LPS inside the series"
    print(f"pipeline on the DICOMweb series: {pacs_seconds:.1f} s (cached: {result['latencies']['total']:.1f} s)")


def test_reviews_are_versioned_local_labels_that_training_reads(server, pacs, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    g = read_geometry(server.cache / f"{pacs['ct']}.nii.gz")
    centre = g.index_to_world(np.array(g.shape) / 2).tolist()
    for reviewer in ("dr.a", "dr.b"):
        node = {"center": centre, "size": [9.0, 8.0, 6.0], "class": "benign"}
        label = make_label(pacs["ct"], [node], reviewer=reviewer)
        (tmp_path / "label.json").write_text(dumps(label))
        answer = client.save_label(pacs["ct"], str(tmp_path / "label.json"), tag="final")
        assert answer["label"] == pacs["ct"] and "review" in answer
    stored = json.loads((server.cache / "labels" / "final" / f"{pacs['ct']}.json").read_text())
    assert stored["reviewer"] == "dr.b"
    status, info = server.request("GET", f"/datastore/label/info?label={pacs['ct']}&tag=final")
    assert status == 200 and len(info["history"]) == 1

    # the stock MONAI Label plugin's boxes on the MR series
    markups = markups_from_nodes([{"id": "a", "center": centre, "size": [7.0, 7.0, 5.0]}])
    (tmp_path / "boxes.mrk.json").write_text(json.dumps({**markups, "@schema": MARKUPS_SCHEMA}))
    client.save_label(pacs["mr"], str(tmp_path / "boxes.mrk.json"), params={"label_info": [], "model": "x"})
    mr = json.loads((server.cache / "labels" / "final" / f"{pacs['mr']}.json").read_text())
    assert mr["schema"] == "lnnode.label/1" and len(mr["nodes"]) == 1

    # what a training process sees: the PACS series with their final labels
    again = DicomwebDatastore(server.studies, str(server.cache), refresh_s=3600)
    labelled = {item["image"].split("/")[-1].removesuffix(".nii.gz") for item in again.datalist()}
    assert {pacs["ct"], pacs["mr"]} <= labelled
    assert set(again.get_unlabeled_images()).isdisjoint({pacs["ct"], pacs["mr"]})


def test_uploads_and_ids_that_are_paths_are_refused(server, pacs, tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes((server.cache / f"{pacs['ct']}.nii.gz").read_bytes())
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    with pytest.raises(Exception, match="405|PACS"):
        client.upload_image(str(path), image_id="new_case")
    status, body = server.request("GET", "/datastore/image?image=..%2F..%2Fetc")
    assert status == 400, body


def test_a_pacs_that_is_down_or_too_slow_is_named(orthanc, pacs, tmp_path):
    cache = tmp_path / "cache"
    store = DicomwebDatastore(orthanc.dicomweb, str(cache), refresh_s=0)
    assert pacs["ct"] in store.list_images()

    dead = f"http://127.0.0.1:{_free_port()}/dicom-web"
    offline = DicomwebDatastore(dead, str(cache), refresh_s=0)  # starts, serving the cache
    assert pacs["ct"] in offline.list_images()
    with pytest.raises(PacsError) as caught:
        offline.sync(required=True)
    assert caught.value.status_code == 502 and dead in caught.value.detail
    assert "cannot be reached" in caught.value.detail

    with _silent_server() as port:
        slow = f"http://127.0.0.1:{port}/dicom-web"
        begin = time.perf_counter()
        stalled = DicomwebDatastore(slow, str(cache), timeout_s=1.0, refresh_s=3600)
        with pytest.raises(PacsError) as caught:
            stalled.sync(required=True)
        assert caught.value.status_code == 504 and "did not answer within 1 s" in caught.value.detail
        assert time.perf_counter() - begin < 10, "no hang"


def test_two_replicas_on_one_cache_fetch_each_series_once(orthanc, pacs, tmp_path):
    """Server replicas share a PACS cache: two datastores syncing it at once (as two replicas starting together)
    fetch each series once, and both serve every series."""
    fetched: list[str] = []

    class Counting(DicomwebDatastore):
        def _retrieve(self, uid, study_uid, folder):
            fetched.append(uid)
            super()._retrieve(uid, study_uid, folder)

    cache = str(tmp_path / "shared-cache")
    with ThreadPoolExecutor(2) as pool:
        stores = list(pool.map(lambda _: Counting(orthanc.dicomweb, cache, refresh_s=3600), range(2)))
    assert sorted(fetched) == sorted([pacs["ct"], pacs["mr"]]), "each series fetched once"
    for store in stores:
        assert {pacs["ct"], pacs["mr"]} <= set(store.list_images())


def test_lnnode_infer_reads_a_study_list_from_the_pacs(orthanc, pacs, tmp_path, capsys):
    """``lnnode infer <DICOMweb root> --study UID``: each CT/MR series of the study is a case named by its series
    UID, fetched where it runs; the result equals the same series read from a folder, and a re-run skips it."""
    import pydicom

    from lnnode.cli import main

    study = pydicom.dcmread(next(Path(pacs["folder"]).iterdir()), stop_before_pixels=True).StudyInstanceUID
    listed = tmp_path / "studies.txt"
    listed.write_text(f"# the CT study\n{study}\n")
    out, local = tmp_path / "pacs", tmp_path / "folder"
    common = ["--no-progress", "--tta", "1"]
    assert main(["infer", orthanc.dicomweb, "--study-list", str(listed), "--out", str(out), *common]) == 0
    assert main(["infer", str(pacs["folder"]), "--out", str(local), *common]) == 0
    from_pacs = json.loads((out / f"{pacs['ct']}.json").read_text())
    from_folder = json.loads(next(p for p in local.glob("*.json") if not p.name.endswith(".mrk.json")).read_text())
    assert from_pacs["image"] == pacs["ct"] and len(from_pacs["nodes"]) == len(from_folder["nodes"])
    for a, b in zip(from_pacs["nodes"], from_folder["nodes"], strict=True):
        assert np.allclose(a["center"], b["center"], atol=1e-3) and a["p_metastasis"] == b["p_metastasis"]
    capsys.readouterr()
    assert main(["infer", orthanc.dicomweb, "--study", study, "--out", str(out), *common]) == 0
    again = capsys.readouterr().out
    assert "0 case(s) written" in again and "1 skipped" in again, again
    assert main(["infer", orthanc.dicomweb, "--out", str(out), *common]) == 2, "a PACS root needs a study list"


def test_a_pacs_that_stops_while_serving_leaves_the_cached_series_served(server, orthanc, pacs):
    orthanc.stop()
    begin = time.perf_counter()
    status, listing = server.request("GET", "/datastore/?output=all")
    assert status == 200 and {pacs["ct"], pacs["mr"]} <= set(listing["objects"]), "the cache, not a 500"
    status, info = server.request("GET", "/info/")
    assert status == 200 and info["datastore"]["total"] >= 2, info.get("datastore")
    status, result = server.request("POST", f"/infer/lymph_node_detection?image={pacs['ct']}&output=json")
    assert status == 200 and result["image"] == pacs["ct"]
    assert time.perf_counter() - begin < 60
    assert "cannot be reached" in Path(server.log).read_text(), "the failure is logged, naming the PACS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _silent_server:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a PACS that hangs)."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def __exit__(self, *exc) -> None:
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()
