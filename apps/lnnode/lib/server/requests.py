"""Checks of a request against what the app has, before MONAI Label starts any work (it would answer a 500).

An unknown model, strategy or scoring method answers 404 listing what there is; an image must be a
datastore id or an upload in the temp folder (no other server path may be read); a multi-sequence model
needs the case's companion sequences (``<id><suffix>``) in the datastore.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from typing import Any

from monailabel.interfaces.datastore import Datastore

from .errors import NotFound, RequestError
from .params import check_infer_params

__all__ = ["check_known", "check_image", "is_upload", "sequences", "prepare_infer"]


def check_known(kind: str, name: Any, registry: Collection[str]) -> None:
    """404 unless ``name`` is one of ``registry`` (models, strategies, scoring methods)."""
    if not name or name not in registry:
        raise NotFound(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry)) or 'none'}")


def is_upload(image: str) -> bool:
    """An absolute path: the /infer endpoint's copy of an uploaded file (a datastore image is an id)."""
    return os.path.isabs(image)


def check_image(image: Any, datastore: Datastore) -> None:
    """400 for no image or a server path outside the temp folder; 404 for an id not in the datastore."""
    if not isinstance(image, str) or not image:
        raise RequestError("no image given: pass an image id from the datastore, or upload a file")
    if is_upload(image):
        tmp = os.path.realpath(tempfile.gettempdir())
        if os.path.commonpath([os.path.realpath(image), tmp]) != tmp or not os.path.isfile(image):
            raise RequestError(f"image {image!r}: give an image id or upload the file, not a server path")
        return
    uri = datastore.get_image_uri(image)
    if not uri or not os.path.exists(uri):
        raise NotFound(f"image {image!r} is not in the datastore")


def sequences(model: str, suffixes: list[str], image: str, datastore: Datastore) -> str | list[str]:
    """What the model reads for ``image``: the image itself, or with ``suffixes`` its sequences' paths."""
    if not suffixes:
        return image
    if is_upload(image):
        raise RequestError(f"model {model!r} reads several sequences {suffixes}: infer on a datastore image")
    paths = [datastore.get_image_uri(image)]
    for companion in (f"{image}{suffix}" for suffix in suffixes):
        uri = datastore.get_image_uri(companion)
        if not uri:
            raise NotFound(f"model {model!r} also needs image {companion!r} (sequence {companion[len(image) :]})")
        paths.append(uri)
    return paths


def prepare_infer(request: dict[str, Any], infers: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
    """An infer request checked and made ready for MONAI Label: typed parameters, ``image_id`` (the name
    results use), ``image`` as the path(s) the model reads, and no markups file kept as a label."""
    model, image = request.get("model"), request.get("image")
    check_known("model", model, infers)
    request = {**request, **check_infer_params(request)}
    check_image(image, datastore)
    # results name the image by its datastore id (an upload may pass params {"image_id": ...})
    request.setdefault("image_id", "upload" if is_upload(image) else image)
    suffixes = getattr(infers[model], "channel_suffixes", lambda: [])()
    request["image"] = sequences(model, suffixes, image, datastore)
    request["save_label"] = False  # MONAI Label would keep the markups file as "original": lnnode keeps results
    return request
