"""Bad input on the real server: each bad image, label or request gets a 4xx naming the problem, nothing
is stored, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lnnode.geometry import ImageGeometry
from lnnode.io.image import write_image
from lnnode.phantoms import synthesize

from ..conftest import multipart

pytestmark = pytest.mark.server


def mha(path: Path, dims: tuple, spacing: tuple, data: bytes | None = None, channels: int = 1) -> Path:
    """A MetaImage file written by hand (so headers SimpleITK would never write can be tried)."""
    n = int(np.prod(dims)) * channels
    header = (
        f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
        f"ElementSpacing = {' '.join(map(str, spacing))}\nElementNumberOfChannels = {channels}\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + (data if data is not None else (np.arange(n) % 300).astype("<i2").tobytes()))
    return path


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the refusal must contain)."""
    d = tmp_path_factory.mktemp("bad")
    g = ImageGeometry((24, 20, 8), (0.8, 0.9, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    nan = np.full(g.shape, np.nan, np.float32)
    constant = np.full(g.shape, 40.0, np.float32)
    (d / "text.nii.gz").write_bytes(gzip.compress(b"this is not an image at all" * 20))
    return {
        "constant": (write_image(constant, g, d / "constant.nii.gz"), "everywhere"),
        "all_nan": (write_image(nan, g, d / "nan.nii.gz"), "nan"),
        "text_as_nifti": (d / "text.nii.gz", "nifti"),
        "spacing_zero": (mha(d / "zero.mha", (16, 16, 8), (0, 0, 0)), "spacing"),
        "spacing_1e6": (mha(d / "huge.mha", (16, 16, 8), (1e6, 1e6, 1e6)), "spacing"),
        "zero_size_axis": (mha(d / "flat.mha", (16, 16, 0), (1, 1, 1), data=b""), "size"),
        "four_d_3_frames": (mha(d / "frames.mha", (16, 16, 8, 3), (1, 1, 1, 1)), "4d"),
        "three_channels": (mha(d / "rgb.mha", (16, 16, 8), (1, 1, 1), channels=3), "components"),
        "over_size_limit": (mha(d / "big.mha", (128, 128, 64), (1, 1, 1)), "over the limit"),
    }


def put_image(server, image_id: str, path: Path):
    data, headers = multipart({"params": "{}"}, {"file": (path.name, path.read_bytes())})
    return server.request("PUT", f"/datastore/image?image={image_id}", data, headers)


def test_bad_images_labels_and_requests_are_refused_in_words(start_server, bad_images, tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=3, shape=(64, 64, 24), spacing=(1.5, 1.5, 2.5), label_tag="truth")
    server = start_server(studies, device="cpu", max_image_voxels="1000000")
    for name, (path, words) in bad_images.items():
        status, body = put_image(server, f"bad_{name}", path)
        assert status in (413, 415, 422), (name, status, body)
        assert words in str(body).lower(), (name, body)
    status, ds = server.request("GET", "/datastore/?output=all")
    assert sorted(ds["objects"]) == ["ct_000"], "nothing bad was stored"
    # a 2D image is an image (ultrasound, a key slice): stored, and the volume pipeline names the 2D one
    status, body = put_image(server, "a_slice", mha(tmp_path / "slice.mha", (16, 16), (1, 1)))
    assert status == 200, body
    status, body = server.request("POST", "/infer/lymph_node_pipeline?image=a_slice")
    assert status == 422 and "lymph_node_pipeline_2d" in body["detail"], body

    # labels: oversized, not JSON, for an image that does not exist, a box outside the image
    good = json.loads((studies / "labels" / "truth" / "ct_000.json").read_text())
    cases = {
        "oversized": (json.dumps({**good, "reviewer": "x" * 6_000_000}).encode(), "ct_000", 413, "limit"),
        "not_json": (b"{nodes: [", "ct_000", 422, "json"),
        "unknown_image": (json.dumps({**good, "image": "nope"}).encode(), "nope", 404, "not in the datastore"),
        "outside": (json.dumps({**good, "nodes": [{**good["nodes"][0], "center": [1e4, 0, 0]}]}).encode(), "ct_000",
                    422, "outside"),
    }  # fmt: skip
    for name, (body, image, expected, words) in cases.items():
        data, headers = multipart({"params": "{}"}, {"label": (f"{image}.json", body)})
        status, answer = server.request("PUT", f"/datastore/label?image={image}&tag=final", data, headers)
        assert status == expected and words in str(answer).lower(), (name, status, str(answer)[:300])
    assert not (studies / "labels" / "final").exists() or not list((studies / "labels" / "final").iterdir())

    # requests: bad params JSON, a bad parameter value, unknown strategy
    data, headers = multipart({"params": "{not json"}, {})
    status, answer = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000", data, headers)
    assert 400 <= status < 500, (status, answer)
    data, headers = multipart({"params": json.dumps({"suspicious_by": "astrology"})}, {})
    status, answer = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000", data, headers)
    assert status == 400 and "suspicious_by" in str(answer), answer
    bad_params = [{"score_thresh": "abc"}, {"tta": "x"}, {"tta": 9}, {"p_thresh": -1}, {"max_boxes": -3},
                  {"nms_thresh": 5}, {"saliency": "maybe"}, {"device": "gpu please"}, {"max_boxes": 2.5}]  # fmt: skip
    for params in bad_params:
        data, headers = multipart({"params": json.dumps(params)}, {})
        status, answer = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000", data, headers)
        assert status == 400 and next(iter(params)) in str(answer), (params, status, answer)
    status, answer = server.request("POST", "/activelearning/psychic", b"{}", {"Content-Type": "application/json"})
    assert status == 404 and "uncertain" in str(answer)

    status, result = server.request("POST", "/infer/lymph_node_pipeline?image=ct_000&output=json")
    assert status == 200 and result["schema"] == "lnnode.result/1", "the server keeps serving"


def test_symlinks_cannot_lead_out_of_the_studies_folder(start_server, tmp_path):
    studies = tmp_path / "studies"
    synthesize(studies, 1, modality="ct", seed=4, shape=(48, 48, 16), spacing=(1.5, 1.5, 2.5))
    outside = tmp_path / "outside"
    synthesize(outside, 1, modality="ct", seed=5, shape=(48, 48, 16), spacing=(1.5, 1.5, 2.5))
    (studies / "leak.nii.gz").symlink_to(outside / "ct_000.nii.gz")  # an image that lives elsewhere
    (studies / "labels" / "elsewhere").symlink_to(outside / "labels" / "final", target_is_directory=True)
    before = sorted(p.name for p in (outside / "labels" / "final").iterdir())
    server = start_server(studies, device="cpu")

    status, body = server.request("GET", "/datastore/image?image=leak")
    assert status == 403 and "outside the studies folder" in str(body), (status, str(body)[:200])
    status, body = server.request("POST", "/infer/lymph_node_detection?image=leak&output=json")
    assert status == 403, (status, str(body)[:200])
    label = (studies / "labels" / "final" / "ct_000.json").read_bytes()
    data, headers = multipart({"params": "{}"}, {"label": ("ct_000.json", label)})
    status, body = server.request("PUT", "/datastore/label?image=ct_000&tag=elsewhere", data, headers)
    assert status == 403, (status, body)
    assert sorted(p.name for p in (outside / "labels" / "final").iterdir()) == before, "nothing written outside"

    # nor written or deleted through one: an upload onto a dangling link, a delete of a linked image
    (studies / "drop.nii.gz").symlink_to(outside / "dropped.nii.gz")
    data, headers = multipart({"params": "{}"}, {"file": ("drop.nii.gz", (studies / "ct_000.nii.gz").read_bytes())})
    status, body = server.request("PUT", "/datastore/image?image=drop", data, headers)
    assert status == 403 and not (outside / "dropped.nii.gz").exists(), (status, body)
    status, body = server.request("DELETE", "/datastore/image?id=leak")
    assert status == 403 and (outside / "ct_000.nii.gz").exists(), (status, body)
