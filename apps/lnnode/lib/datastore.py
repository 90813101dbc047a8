"""The studies folder as MONAI Label's LocalDatastore, made safe for lnnode.

What it adds to the stock datastore:

* label JSON files (``labels/<tag>/<id>.json``) are labels; JSON files beside the images
  (``datastore_v2.json``, manifests) are not images;
* image ids and label tags are checked, so no request can read or write outside the studies folder
  (stock MONAI Label 0.8.5 writes ``PUT /datastore/?image=../../x`` outside it);
* uploads are checked before anything is stored: an image must be a readable 3D volume, a label
  JSON must pass the contract (the ``original`` tag holds model results, every other tag reviews),
  and its boxes must lie in the image; the client gets a 4xx naming the problem;
* files are written to a temp file and renamed, and a replaced label is kept under
  ``labels/<tag>/.history/`` instead of being overwritten;
* unknown ids answer 404 instead of 500.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import time
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from .atomic import atomic_copy
from .contracts import ContractError, check_label_in_image, parse_label, parse_result
from .errors import NotFound, RequestError, Unprocessable
from .geometry import ImageGeometry
from .imageio import ImageError, image_suffix, read_sitk

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha")
LABEL_PATTERNS = (*IMAGE_PATTERNS, "*.json")
HISTORY_DIR = ".history"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_name(name: Any, what: str) -> str:
    """An image id or label tag that is a plain file-name stem (no path, no '..'); else 400."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise RequestError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_', '+', '-' (no path separators or '..')"
        )
    return name


class LnnodeDatastore(LocalDatastore):
    """LocalDatastore with label JSON support, name checks, upload validation and atomic writes."""

    def __init__(self, datastore_path: str, auto_reload: bool = False, read_only: bool = False):
        super().__init__(datastore_path, extensions=LABEL_PATTERNS, auto_reload=auto_reload, read_only=read_only)

    # -- listing ------------------------------------------------------------------------------------
    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        is_image_dir = os.path.realpath(path) == os.path.realpath(self._datastore.image_path())
        return {k: v for k, v in files.items() if not k.startswith(".") and not (is_image_dir and k.endswith(".json"))}

    # -- helpers ------------------------------------------------------------------------------------
    def _object(self, image_id: str) -> ImageLabelModel:
        obj = self._datastore.objects.get(check_name(image_id, "image id"))
        if not obj:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        return obj

    def _image_geometry(self, image_id: str) -> ImageGeometry:
        return ImageGeometry.from_sitk(read_sitk(self.get_image_uri(image_id)))

    # -- images -------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        suffix = image_suffix(image_filename)
        if suffix not in {p[1:] for p in IMAGE_PATTERNS}:
            raise RequestError(
                f"unsupported image file {os.path.basename(image_filename)!r}: upload one of "
                f"{', '.join(p[1:] for p in IMAGE_PATTERNS)} (a DICOM series: convert it, or serve a PACS)"
            )
        image_id = image_id or os.path.basename(image_filename)[: -len(suffix)]
        check_name(image_id, "image id")
        try:
            read_sitk(image_filename)
        except ImageError as e:
            raise Unprocessable(f"image {image_id!r} was not stored: {e.reason}") from None

        existing = self._datastore.objects.get(image_id)
        if existing:
            current = self.get_image_uri(image_id)
            if existing.image.ext == suffix and filecmp.cmp(current, image_filename, shallow=False):
                return image_id  # the same upload again: nothing to do
            raise RequestError(
                f"image {image_id!r} already exists with other content; remove it first or use another id",
                status_code=409,
            )

        name = self._filename(image_id, suffix)
        dest = os.path.realpath(os.path.join(self._datastore.image_path(), name))
        with FileLock(self._lock_file):
            atomic_copy(image_filename, dest)
            info = dict(image_info or {})
            info.update(ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        self._object(image_id)
        super().remove_image(image_id)

    def get_image_uri(self, image_id: str) -> str:
        check_name(image_id, "image id")
        return super().get_image_uri(image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self._object(image_id)
        return super().get_image_info(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._object(image_id)
        super().update_image_info(image_id, info)

    # -- labels -------------------------------------------------------------------------------------
    def _validate_label_file(self, image_id: str, label_filename: str, tag: str, suffix: str) -> None:
        if suffix == ".json":
            with open(label_filename, "rb") as f:
                data = f.read()
            try:
                doc = parse_result(data) if tag == DefaultLabelTag.ORIGINAL.value else parse_label(data)
                if doc["image"] != image_id:
                    raise ContractError("image", f"is {doc['image']!r} but the label is for {image_id!r}")
                if tag != DefaultLabelTag.ORIGINAL.value:
                    check_label_in_image(doc, self._image_geometry(image_id))
            except ContractError as e:
                kind = "result" if tag == DefaultLabelTag.ORIGINAL.value else "label"
                raise Unprocessable(f"{kind} for {image_id!r} was not stored: {e}") from None
            return
        try:
            label = read_sitk(label_filename)
        except ImageError as e:
            raise Unprocessable(f"label for {image_id!r} was not stored: {e.reason}") from None
        geometry = self._image_geometry(image_id)
        if tuple(label.GetSize()) != geometry.shape:
            raise Unprocessable(
                f"label for {image_id!r} was not stored: its size {label.GetSize()} differs from the "
                f"image's {geometry.shape}"
            )

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        tag = check_name(label_tag or DefaultLabelTag.FINAL.value, "label tag")
        obj = self._object(image_id)
        suffix = image_suffix(label_filename) or os.path.splitext(label_filename)[1].lower()
        if suffix not in {p[1:] for p in LABEL_PATTERNS}:
            raise RequestError(
                f"unsupported label file {os.path.basename(label_filename)!r}: use .json (the label "
                f"contract) or an image mask ({', '.join(p[1:] for p in IMAGE_PATTERNS)})"
            )
        self._validate_label_file(image_id, label_filename, tag, suffix)

        label_dir = self._datastore.label_path(tag)
        name = self._filename(image_id, suffix)
        with FileLock(self._lock_file):
            os.makedirs(label_dir, exist_ok=True)
            previous = obj.labels.get(tag)
            if previous:
                self._archive(label_dir, self._filename(image_id, previous.ext), previous.info.get("ts"))
            atomic_copy(label_filename, os.path.join(label_dir, name))
            info = dict(label_info or {})
            info.update(ts=int(time.time()), name=name)
            obj.labels[tag] = DataModel(info=info, ext=suffix)
            self._update_datastore_file(lock=False)
        return image_id

    @staticmethod
    def _archive(label_dir: str, name: str, ts: Any) -> None:
        """Move the label being replaced to the tag's hidden history folder (nothing is overwritten)."""
        src = os.path.join(label_dir, name)
        if not os.path.exists(src):
            return
        history = os.path.join(label_dir, HISTORY_DIR)
        os.makedirs(history, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts if isinstance(ts, (int, float)) else None))
        dest = os.path.join(history, f"{stamp}.{time.time_ns()}.{name}")
        os.replace(src, dest)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        obj = self._object(label_id)
        tag = check_name(label_tag, "label tag")
        if tag not in obj.labels:
            raise NotFound(f"image {label_id!r} has no label with tag {tag!r}")
        name = self._filename(label_id, obj.labels[tag].ext)
        with FileLock(self._lock_file):
            self._archive(self._datastore.label_path(tag), name, None)
        self.refresh()

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_name(label_id, "label id")
        check_name(label_tag, "label tag")
        return super().get_label_uri(label_id, label_tag)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        obj = self._object(label_id)
        if check_name(label_tag, "label tag") not in obj.labels:
            raise NotFound(f"image {label_id!r} has no label with tag {label_tag!r}")
        return super().get_label_info(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self.get_label_info(label_id, label_tag)
        super().update_label_info(label_id, label_tag, info)
