"""A small client for the lnnode MONAI Label server, on the standard library only (urllib).

Every failure becomes a :class:`ServerError` whose message is the server's own explanation (its
``detail``) or says the server cannot be reached: the module shows it to the reader as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from .schema import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D, PIPELINE, PIPELINE_2D

__all__ = [
    "DEFAULT_STRATEGY",
    "LymphNodeServer",
    "ServerError",
    "PIPELINE",
    "DETECTION",
    "CLASSIFICATION",
    "models_for",
]

DEFAULT_STRATEGY = "badge"  # the server's default too: what its benchmark supports (docs/loop.md, section 6)


def models_for(planar: bool) -> tuple[str, str, str]:
    """(pipeline, detector, classifier) of volumes, or of 2D images with ``planar``."""
    return (PIPELINE_2D, DETECTION_2D, CLASSIFICATION_2D) if planar else (PIPELINE, DETECTION, CLASSIFICATION)


class ServerError(RuntimeError):
    """A request that did not succeed: ``status`` is the HTTP status (0: no answer at all)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


def _detail(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")[:500]
    if isinstance(doc, dict) and "detail" in doc:
        return str(doc["detail"])
    return json.dumps(doc)[:500]


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class LymphNodeServer:
    """The endpoints the review module uses. ``url``: e.g. ``http://127.0.0.1:8000``."""

    def __init__(self, url: str, timeout: float = 600.0, token: str | None = None):
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"server URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    # -- plumbing -----------------------------------------------------------------------------------
    def _open(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None):
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise ServerError(f"{method} {path.split('?')[0]}: {_detail(e.read())} (HTTP {e.code})", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"the lnnode server at {self.url} cannot be reached: {reason}") from None

    def _json(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None) -> Any:
        with self._open(method, path, data, content_type) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(f"{method} {path.split('?')[0]}: the answer is not JSON") from None

    @staticmethod
    def _q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    # -- what the module needs ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Models, trainers, strategies, train stats, review statistics."""
        return self._json("GET", "/info/")

    def next_case(self, strategy: str = DEFAULT_STRATEGY) -> dict[str, Any] | None:
        """The case the strategy serves next (``{"id", "path", ...}``), or None when none is left."""
        answer = self._json("POST", f"/activelearning/{self._q(strategy)}", b"{}", "application/json")
        return answer if answer.get("id") else None

    def download_image(self, image_id: str, folder: str) -> str:
        """Download a datastore image into ``folder``; returns the file path (its name as served)."""
        with self._open("GET", f"/datastore/image?image={self._q(image_id)}") as response:
            disposition = response.headers.get("content-disposition", "")
            name = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else ""
            name = os.path.basename(name) or f"{image_id}.nii.gz"
            path = os.path.join(folder, name)
            with open(path + ".part", "wb") as f:
                shutil.copyfileobj(response, f)
        os.replace(path + ".part", path)
        return path

    def upload_image(self, path: str, image_id: str) -> str:
        """Add a local image file to the datastore (the server checks it is a volume or a 2D image)."""
        with open(path, "rb") as f:
            body, content_type = _multipart({"params": "{}"}, {"file": (os.path.basename(path), f.read())})
        return self._json("PUT", f"/datastore/image?image={self._q(image_id)}", body, content_type)["image"]

    def run_pipeline(self, image_id: str, params: dict[str, Any] | None = None, planar: bool = False) -> dict[str, Any]:
        """``lymph_node_pipeline`` (``_2d`` with ``planar``) on a datastore image: the result contract (validated by
        the caller)."""
        body, content_type = _multipart({"params": json.dumps(params or {})}, {})
        path = f"/infer/{models_for(planar)[0]}?image={self._q(image_id)}&output=json"
        return self._json("POST", path, body, content_type)

    def submit_label(self, image_id: str, label: dict[str, Any], tag: str = "final") -> dict[str, Any]:
        """``PUT /datastore/label``: the server validates and versions it; returns its answer (``review``)."""
        content = json.dumps(label).encode()
        body, content_type = _multipart({"params": "{}"}, {"label": (f"{image_id}.json", content)})
        return self._json("PUT", f"/datastore/label?image={self._q(image_id)}&tag={self._q(tag)}", body, content_type)

    def start_training(self, model: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._json("POST", f"/train/{self._q(model)}", json.dumps(params or {}).encode(), "application/json")

    def training_status(self) -> dict[str, Any]:
        try:
            return self._json("GET", "/train/")
        except ServerError as e:
            if e.status == 404:  # MONAI Label answers 404 before the first training
                return {"status": "NONE"}
            raise

    def models(self) -> list[str]:
        return sorted(self.info().get("models", {}))

    def channel_suffixes(self, info: dict[str, Any] | None = None) -> list[str]:
        """The extra sequences a case is read with (``case`` + ``_dwi``...); [] for single-sequence models."""
        models = (info or self.info()).get("models", {})
        return list(models.get(PIPELINE, {}).get("channel_suffixes", []))


def describe_server(info: dict[str, Any]) -> str:
    """One line for the panel: the server's models and the state of their last training."""
    models = ", ".join(sorted(info.get("models", {})))
    stats = info.get("train_stats", {})
    # a model never trained on this server (demo weights) has no stats yet
    training = "; ".join(f"{m}: {s['status']}" for m, s in stats.items() if isinstance(s, dict) and s.get("status"))
    return f"connected: {models}" + (f" (training {training})" if training else "")
