"""The server's guards: bad requests answer a 4xx with a reason, refused uploads store nothing and leave no temp
file, the upload size limit, path traversal."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lnnode.contracts import dumps

from ..conftest import multipart
from .conftest import label_for

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    "method, path, expected",
    [
        ("POST", "/infer/no_such_model?image=preexisting", 404),
        ("POST", "/infer/lymph_node_detection?image=no_such_image", 404),
        ("POST", "/infer/lymph_node_detection?image=..%2F..%2Fetc%2Fpasswd", 400),
        ("POST", "/infer/lymph_node_detection?image=%2Fetc%2Fpasswd", 400),
        ("POST", "/activelearning/no_such_strategy", 404),
        ("POST", "/train/no_such_model", 404),
        ("GET", "/datastore/image/info?image=no_such_image", 404),
        ("GET", "/datastore/label?label=preexisting&tag=..%2F..%2Fx", 400),
        ("DELETE", "/datastore/image?id=..%2Fpreexisting", 400),
        ("POST", "/scoring/no_such_method", 404),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(server, method, path, expected):
    status, body = server.request(method, path)
    assert status == expected, body
    assert isinstance(body, dict) and body.get("detail")


@pytest.mark.parametrize("params", ["[1]", '"x"', "5", '[["score_thresh", 0.5], 7]'])
def test_params_that_are_not_a_json_object_get_a_400_and_nothing_is_stored(server, image_file, studies, params):
    path, g = image_file
    server_tmp = Path(server.env["TMPDIR"])
    tmp_before = {p for p in server_tmp.rglob("*") if p.is_file()}
    status, reply = server.request(
        "POST", "/infer/lymph_node_detection?image=preexisting", *multipart({"params": params}, {})
    )
    assert status == 400 and "params must be a JSON object" in reply["detail"], reply
    body, headers = multipart({"params": params}, {"file": ("x.nii.gz", path.read_bytes())})
    status, reply = server.request("PUT", "/datastore/?image=params_case", body, headers)
    assert status == 400 and "params must be a JSON object" in reply["detail"], reply
    assert not list(studies.glob("params_case*"))
    before = (studies / "labels" / "final" / "preexisting.json").read_bytes()
    label = dumps(label_for("preexisting", g, reviewer="dr.params")).encode()
    body, headers = multipart({"params": params}, {"label": ("preexisting.json", label)})
    status, reply = server.request("PUT", "/datastore/label?image=preexisting&tag=final", body, headers)
    assert status == 400 and "params must be a JSON object" in reply["detail"], reply
    assert (studies / "labels" / "final" / "preexisting.json").read_bytes() == before
    for what in ("image/info?image=preexisting", "label/info?label=preexisting&tag=final"):
        status, reply = server.request("PUT", f"/datastore/{what}", *multipart({"info": params}, {}))
        assert status == 400 and "must be a JSON object" in reply["detail"], (what, reply)
    assert {p for p in server_tmp.rglob("*") if p.is_file()} == tmp_before, "a refused upload left a temp file"


def test_refused_uploads_leave_no_temp_file(server, image_file, tmp_path):
    """MONAI Label copies an upload to a temp file and removes it only after a successful answer."""
    path, _ = image_file
    server_tmp = Path(server.env["TMPDIR"])
    before = {p for p in server_tmp.rglob("*") if p.is_file()}
    corrupt = path.read_bytes()[:300]
    for method, url, field, name in [
        ("PUT", "/datastore/?image=corrupt_upload", "file", "corrupt.nii.gz"),  # 422
        ("PUT", "/datastore/?image=preexisting", "file", "other.nii.gz"),  # 409 (other content)
        ("PUT", "/datastore/label?image=preexisting&tag=final", "label", "bad.json"),  # 422
        ("POST", "/infer/lymph_node_detection", "file", "corrupt.nii.gz"),  # 422 or 503
    ]:
        content = corrupt if name != "other.nii.gz" else gzip.compress(b"not the same image")
        status, reply = server.request(method, url, *multipart({"params": "{}"}, {field: (name, content)}))
        assert 400 <= status < 600 and status != 500, (url, status, reply)
    assert {p for p in server_tmp.rglob("*") if p.is_file()} == before


def test_uploads_over_the_size_limit_get_a_413_and_nothing_is_stored(server, studies):
    """``--conf max_upload_mb 1``: a bigger body is refused whether it declares its length or streams
    (chunked) -- before MONAI Label writes it anywhere -- and the server goes on serving."""
    import http.client
    import os

    big, headers = multipart({"params": "{}"}, {"file": ("too_big.nii.gz", os.urandom(1_500_000))})
    status, reply = server.request("PUT", "/datastore/?image=too_big", big, headers)
    assert status == 413 and "max_upload_mb 1" in reply["detail"], reply
    status, reply = server.request("PUT", "/datastore/label?image=preexisting&tag=final", big, headers)
    assert status == 413, reply
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    # a browser viewer (OHIF) reads the answer too: it carries MONAI Label's CORS headers
    conn.request("PUT", "/datastore/?image=too_big", body=big, headers={**headers, "Origin": "http://viewer.test"})
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("access-control-allow-origin"), response.getheaders()
    response.read()
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    conn.request("PUT", "/datastore/?image=too_big", body=chunks, headers=headers, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and b"max_upload_mb" in response.read()
    conn.close()
    assert not list(studies.rglob("too_big*"))
    server_tmp = Path(server.env["TMPDIR"])
    assert not [p for p in server_tmp.rglob("*") if p.is_file() and p.stat().st_size > 500_000], "no upload kept"
    status, _ = server.request("GET", "/info/")
    assert status == 200


def test_path_traversal_uploads_write_nothing_outside(server, image_file, studies):
    path, _ = image_file
    body, headers = multipart({"params": "{}"}, {"file": ("x.nii.gz", path.read_bytes())})
    for image_id in ("..%2F..%2Fescaped", "%2Ftmp%2Fescaped", "a%2Fb", ".hidden"):
        status, reply = server.request("PUT", f"/datastore/?image={image_id}", body, headers)
        assert status == 400, reply
        assert "invalid image id" in reply["detail"]
    assert not list(studies.parent.rglob("escaped*"))
    label_body, label_headers = multipart({"params": "{}"}, {"label": ("l.json", b"{}")})
    status, reply = server.request(
        "PUT", "/datastore/label?image=preexisting&tag=..%2F..%2Fevil", label_body, label_headers
    )
    assert status == 400 and "invalid label tag" in reply["detail"]
    assert not list(studies.parent.rglob("evil*"))


def test_bad_uploads_are_refused_and_nothing_is_stored(server, image_file, studies, tmp_path):
    path, g = image_file
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MONAILabelClientException, match="Status: 422.*was not stored"):
        client.upload_image(str(corrupt), image_id="corrupt")
    assert not list(studies.glob("corrupt*"))

    good = tmp_path / "good.json"
    good.write_text(dumps(label_for("preexisting", g)))
    client.save_label("preexisting", str(good), tag="final")
    cases = {
        "size": (label_for("preexisting", g), "nodes[0].size[1]", -3.0, "must be > 0"),
        "class": (label_for("preexisting", g), "nodes[1].class", "cancer", "must be one of"),
        "schema": (label_for("preexisting", g), "schema", "lnnode.label/9", "schema"),
        "image": (label_for("preexisting", g), "image", "another_case", "image"),
        "outside": (label_for("preexisting", g), "nodes[0].center", [9999.0, 0.0, 0.0], "outside the image"),
    }
    for name, (doc, field, value, message) in cases.items():
        target = doc
        keys = field.replace("[", ".").replace("]", "").split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
        bad = tmp_path / f"bad_{name}.json"
        bad.write_text(json.dumps(doc))
        with pytest.raises(MONAILabelClientException, match=f"Status: 422.*{message}"):
            client.save_label("preexisting", str(bad), tag="final")
    not_json = tmp_path / "bad.json"
    not_json.write_bytes(b"\x00\x01 not json")
    with pytest.raises(MONAILabelClientException, match="Status: 422.*not valid JSON"):
        client.save_label("preexisting", str(not_json), tag="final")
    with pytest.raises(MONAILabelClientException, match="Status: 404"):
        client.save_label("no_such_image", str(good), tag="final")
    # the stored label is still the good one
    assert Path(client.download_label("preexisting", "final")).read_bytes() == good.read_bytes()
    assert not list(studies.rglob("*.lnnode-tmp/*")), "no temp file left behind"
