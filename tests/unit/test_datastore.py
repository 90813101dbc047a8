"""The studies folder on its own (no server): label JSON checked against the image from its header alone,
versions kept, ids that are paths refused, and the geometry read from the header equal to the full read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from lib.datastore import LnnodeDatastore
from lib.server.errors import NotFound, RequestError, Unprocessable
from lnnode.contracts import make_label
from lnnode.geometry import ImageGeometry
from lnnode.io.image import read_geometry, read_sitk
from lnnode.phantoms import synthesize


@pytest.fixture
def studies(tmp_path):
    out = tmp_path / "studies"
    synthesize(out, 1, modality="ct", seed=5, shape=(48, 40, 12), spacing=(0.8, 1.1, 3.0), direction="oblique",
               label_tag="ground_truth")  # fmt: skip
    return out


def _label(tmp_path, geometry: ImageGeometry, shift_mm: float = 0.0, name: str = "label.json") -> str:
    centre = (geometry.index_to_world(np.array(geometry.shape) / 2) + shift_mm).tolist()
    path = tmp_path / name
    path.write_text(json.dumps(make_label("ct_000", [{"center": centre, "size": [6.0, 6.0, 9.0]}])))
    return str(path)


@pytest.mark.parametrize("suffix", ["nii.gz", "nrrd", "mha"])
def test_header_geometry_equals_the_full_read(tmp_path, suffix):
    image = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    path = tmp_path / f"x.{suffix}"
    sitk.WriteImage(image, str(path))
    assert read_geometry(path) == ImageGeometry.from_sitk(read_sitk(path))


def test_a_label_is_checked_against_the_image_header_without_decoding_it(studies, tmp_path, monkeypatch):
    ds = LnnodeDatastore(str(studies))
    geometry = read_geometry(ds.get_image_uri("ct_000"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("saving a label decoded the whole image")

    monkeypatch.setattr(sitk, "ReadImage", no_decoding)
    ds.save_label("ct_000", _label(tmp_path, geometry), "final", {})
    with pytest.raises(Unprocessable, match="outside the image"):
        ds.save_label("ct_000", _label(tmp_path, geometry, shift_mm=500.0, name="far.json"), "final", {})
    stored = json.loads((studies / "labels" / "final" / "ct_000.json").read_text())
    assert len(stored["nodes"]) == 1, "the refused label replaced nothing"


def test_a_second_label_keeps_the_first_as_a_version(studies, tmp_path):
    ds = LnnodeDatastore(str(studies))
    geometry = read_geometry(ds.get_image_uri("ct_000"))
    ds.save_label("ct_000", _label(tmp_path, geometry), "final", {"reviewer": "a"})
    ds.save_label("ct_000", _label(tmp_path, geometry, shift_mm=2.0, name="second.json"), "final", {})
    history = list((studies / "labels" / "final" / ".history").glob("*.ct_000.json"))
    assert len(history) == 1


@pytest.mark.parametrize("image_id", ["../x", "a/b", ".hidden", "..", ""])
def test_ids_that_are_paths_are_refused(studies, tmp_path, image_id):
    ds = LnnodeDatastore(str(studies))
    with pytest.raises(RequestError) as caught:
        ds.save_label(image_id, _label(tmp_path, read_geometry(ds.get_image_uri("ct_000"))), "final", {})
    assert caught.value.status_code in (400, 404)


def test_an_unknown_image_is_a_404(studies, tmp_path):
    ds = LnnodeDatastore(str(studies))
    with pytest.raises(NotFound):
        ds.save_label("ct_999", _label(tmp_path, read_geometry(ds.get_image_uri("ct_000"))), "final", {})
