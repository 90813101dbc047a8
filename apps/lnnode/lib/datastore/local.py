"""The studies folder as MONAI Label's LocalDatastore, made safe for lnnode.

What it adds to the stock datastore:

* label JSON files (``labels/<tag>/<id>.json``) are labels; JSON files beside the images
  (``datastore_v2.json``, manifests) are not images;
* image ids and label tags are checked, so no request can read or write outside the studies folder
  (stock MONAI Label 0.8.5 writes ``PUT /datastore/?image=../../x`` outside it);
* uploads are checked before anything is stored: an image must be a readable 3D volume or 2D image (PNG,
  JPEG, a single-frame DICOM file, a 2D NIfTI/NRRD), a label
  JSON must pass the contract (the ``original`` tag holds model results, every other tag reviews),
  and its boxes must lie in the image; the client gets a 4xx naming the problem;
* a Slicer markups JSON of ROI boxes (what the stock MONAI Label Slicer plugin saves for a detection
  model) is turned into a label first, compared with the case's ``original`` result
  (:func:`lnnode.contracts.markups.label_from_markups`);
* files are written to a temp file and renamed, and a replaced label is kept under
  ``labels/<tag>/.history/`` instead of being overwritten (its label info lists the versions);
* the datastore file (``datastore_v2.json``) is written atomically, and every change re-reads it
  under the lock first: the server, its scoring/training processes and other server replicas on the
  same folder each hold a copy in memory, and a write from a stale copy would drop the others' changes
  (a label's info, an image's scores); every read re-reads it too when it changed (an image uploaded or
  a label saved through another replica is served at once);
* a reviewed label (any tag but ``original``) is compared with the model's ``original`` result of
  the case, and what the reader changed is kept in its info (``review``, see :mod:`lnnode.corrections`);
* unknown ids answer 404 instead of 500;
* ``groups.csv`` (``image,group``, written by ``lnnode import --table``) gives images their ``group``: one patient's
  or near-duplicate images stay on one side of a training run's validation split.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag

from lnnode.contracts import ContractError, check_label_in_image, dumps, ids, parse_label, parse_result
from lnnode.contracts.markups import is_markups, label_from_markups
from lnnode.corrections import review_stats
from lnnode.data.table import GROUPS_FILE, read_groups
from lnnode.geometry import ImageGeometry
from lnnode.io.atomic import TEMP_DIR_NAME, atomic_copy, atomic_write_text
from lnnode.io.image import STORED_SUFFIXES, ImageError, image_suffix, read_geometry, read_image, read_sitk

from ..server.errors import NotFound, RequestError, Unprocessable

logger = logging.getLogger(__name__)

IMAGE_PATTERNS = tuple(f"*{suffix}" for suffix in STORED_SUFFIXES)  # 2D: .png, .jpg, .jpeg, .dcm
LABEL_PATTERNS = (*IMAGE_PATTERNS, "*.json")
HISTORY_DIR = ".history"
MAX_LABEL_JSON_BYTES = 5_000_000  # a review of even thousands of nodes is far smaller


def check_name(name: Any, what: str) -> str:
    """An image id or label tag that is a plain file-name stem (no path, no '..'); else 400."""
    try:
        return ids.check_name(name, what)
    except ids.InvalidName as e:
        raise RequestError(str(e)) from None


def _info_object(info: Any) -> dict[str, Any]:
    """A copy of the info MONAI Label passes on from a request's ``params`` (any JSON the client sent)."""
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise RequestError(f"params must be a JSON object, not {type(info).__name__}: nothing was stored")
    return dict(info)


class LnnodeDatastore(LocalDatastore):
    """LocalDatastore with label JSON support, name checks, upload validation and atomic writes."""

    def __init__(self, datastore_path: str, auto_reload: bool = False, read_only: bool = False):
        self._reviewed: dict[str, tuple[str, dict[str, Any] | None]] = {}  # image id -> (tag, review) just saved
        # one lock object, re-entrant within a thread: a whole read-modify-write (a save, a rescan) holds
        # it while the steps inside take it again. Two FileLock objects on the same file in one process
        # would block each other (separate flocks); other threads and processes wait, as they should.
        self._file_lock = FileLock(os.path.join(datastore_path, ".lock"))
        super().__init__(datastore_path, extensions=LABEL_PATTERNS, auto_reload=auto_reload, read_only=read_only)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self, older_than_s: float = 3600.0) -> None:
        """Temp files a killed writer left behind (never seen as images or labels: hidden folders).
        Only old ones go: another process may be writing a fresh one right now."""
        now = time.time()
        for folder, _, files in os.walk(self._datastore_path):
            if os.path.basename(folder) != TEMP_DIR_NAME:
                continue
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if now - os.stat(path).st_mtime > older_than_s:
                        os.remove(path)
                except OSError:
                    pass  # gone already, or not ours to remove

    def pop_review(self, image_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(tag, review stats or None) of the label just saved for ``image_id`` (once), for the app's save hook."""
        return self._reviewed.pop(image_id, None)

    # -- listing ------------------------------------------------------------------------------------
    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        is_image_dir = os.path.realpath(path) == os.path.realpath(self._datastore.image_path())
        return {k: v for k, v in files.items() if not k.startswith(".") and not (is_image_dir and k.endswith(".json"))}

    # -- the datastore file: read-modify-write under the lock, atomic writes -------------------------
    @staticmethod
    def _identity(st: os.stat_result) -> tuple[int, int, int]:
        # writes replace the file (atomic rename): a new inode, whatever the clock's resolution
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        """Re-read the datastore file when another process (a scoring or training process, another server
        replica) wrote it. Under the lock: a read never swaps the copy that a save in progress is changing."""
        path = self._datastore_config_path
        try:  # unchanged (the common case): no lock, so reads do not queue behind a writer's long copy
            if self._identity(os.stat(path)) == getattr(self, "_seen", None):
                return
        except FileNotFoundError:
            return
        with self._file_lock:
            try:
                f = open(path)  # noqa: SIM115 - closed below; identity and content from the same open file
            except FileNotFoundError:
                return
            with f:
                seen = self._identity(os.fstat(f.fileno()))
                if seen == getattr(self, "_seen", None):
                    return
                fresh = LocalDatastoreModel.model_validate_json(f.read())
            fresh.base_path = self._datastore_path
            self._datastore = fresh
            self._seen = seen

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            doc = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, doc)
            st = os.stat(self._datastore_config_path)
            self._config_ts, self._seen = st.st_mtime, self._identity(st)

        if lock:
            with self._file_lock:
                write()
        else:
            write()

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        # MONAI Label's version compares mtimes (coarse on some file systems); ours the file's identity
        try:
            with self._file_lock:
                self._reload_if_changed()
        except ValueError as e:
            logger.error(f"datastore file not read: {e}")
            if throw_exception:
                raise

    def _reconcile_datastore(self) -> None:
        """MONAI Label's rescan (at start, on ``refresh()``, and from the file watcher with auto-reload on)
        re-reads, edits and writes the datastore file in separate lock holds; here it holds the lock
        throughout, so a label saved or a score written meanwhile by another thread or process is not
        undone by the rescan's stale copy."""
        with self._file_lock:
            super()._reconcile_datastore()

    # reads see what other processes wrote: an image uploaded or a label saved through another replica
    def json(self):
        self._reload_if_changed()
        return super().json()

    def datalist(self, full_path=True):
        self._reload_if_changed()
        return super().datalist(full_path)

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._reload_if_changed()
        return super().get_unlabeled_images(label_tag, labels)

    def status(self):
        self._reload_if_changed()
        return super().status()

    def list_images(self) -> list[str]:
        self._reload_if_changed()
        return super().list_images()

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._reload_if_changed()
        return super().get_labeled_images(label_tag, labels)

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        self._reload_if_changed()
        return super().get_labels_by_image_id(image_id)

    # -- helpers ------------------------------------------------------------------------------------
    def _object(self, image_id: str) -> ImageLabelModel:
        """The current entry of an image (re-read if another process changed the file); 404 if there is none."""
        self._reload_if_changed()
        obj = self._datastore.objects.get(check_name(image_id, "image id"))
        if not obj:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        return obj

    def _image_geometry(self, image_id: str) -> ImageGeometry:
        return read_geometry(self.get_image_uri(image_id), allow_2d=True)  # the header is enough

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
        info = _info_object(image_info)
        try:
            read_image(image_filename, require_content=True, allow_2d=True)
        except ImageError as e:
            raise Unprocessable(f"image {image_id!r} was not stored: {e.reason}") from None

        name = self._filename(image_id, suffix)
        dest = self._inside(os.path.join(self._datastore.image_path(), name), f"image {image_id!r}")
        with self._file_lock:
            self._reload_if_changed()
            # under the lock: an upload of the same id through another server replica is seen, not overwritten
            if self._is_stored(image_id, suffix, image_filename):
                return image_id  # the same upload again: nothing to do
            atomic_copy(image_filename, dest)
            info.update(ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))
            self._update_datastore_file(lock=False)
        return image_id

    def _is_stored(self, image_id: str, suffix: str, image_filename: str) -> bool:
        """True when the datastore has this image under ``image_id`` already, False when the id is free; 409 when
        the id holds other content."""
        existing = self._datastore.objects.get(image_id)
        if not existing:
            return False
        if existing.image.ext == suffix and filecmp.cmp(self.get_image_uri(image_id), image_filename, shallow=False):
            return True
        raise RequestError(
            f"image {image_id!r} already exists with other content; remove it first or use another id",
            status_code=409,
        )

    def remove_image(self, image_id: str) -> None:
        self._object(image_id)
        self.get_image_uri(image_id)  # a symlink leading out of the studies folder is not followed: 403
        for tag in self._object(image_id).labels:
            self.get_label_uri(image_id, tag)
        super().remove_image(image_id)

    def _inside(self, path: str, what: str) -> str:
        """``path`` when it resolves inside the studies folder; a symlink pointing out is refused."""
        if path and os.path.commonpath([os.path.realpath(path), self._root]) != self._root:
            raise RequestError(f"{what} resolves outside the studies folder (a symlink?): refused", status_code=403)
        return path

    @property
    def _root(self) -> str:
        return os.path.realpath(self._datastore_path)

    def get_image_uri(self, image_id: str) -> str:
        check_name(image_id, "image id")
        self._reload_if_changed()
        return self._inside(super().get_image_uri(image_id), f"image {image_id!r}")

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info; ``group`` from the folder's ``groups.csv`` (``lnnode import --table``) unless the info
        has its own (an upload's ``group`` param)."""
        self._reload_if_changed()
        self._object(image_id)
        info = super().get_image_info(image_id)
        group = self._groups().get(image_id)
        return {"group": group, **info} if group else info

    def _groups(self) -> dict[str, str]:
        path = os.path.join(self._datastore_path, GROUPS_FILE)
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return {}
        if getattr(self, "_groups_cache", (None,))[0] != stamp:
            self._groups_cache = (stamp, read_groups(self._datastore_path))
        return self._groups_cache[1]

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._object(image_id)
        with self._file_lock:
            self._reload_if_changed()
            self._object(image_id).image.info.update(info)
            self._update_datastore_file(lock=False)

    def update_image_infos(self, infos: dict[str, dict[str, Any]]) -> None:
        """Update many images' info with one write of the datastore file (a pool of thousands)."""
        for image_id in infos:
            self._object(image_id)
        with self._file_lock:
            self._reload_if_changed()
            for image_id, info in infos.items():
                self._object(image_id).image.info.update(info)
            self._update_datastore_file(lock=False)

    # -- labels -------------------------------------------------------------------------------------
    @staticmethod
    def _read_label_json(image_id: str, label_filename: str) -> bytes:
        size = os.path.getsize(label_filename)
        if size > MAX_LABEL_JSON_BYTES:
            raise RequestError(
                f"label for {image_id!r} was not stored: {size:,} bytes, over the limit of "
                f"{MAX_LABEL_JSON_BYTES:,} for a label JSON",
                status_code=413,
            )
        with open(label_filename, "rb") as f:
            return f.read()

    def _converted_markups(self, image_id: str, label_filename: str, tag: str, suffix: str) -> str | None:
        """A Slicer markups file (what the stock MONAI Label plugin saves) as a label file in lnnode's contract,
        compared with the case's ``original`` result; None for anything else."""
        if suffix != ".json" or tag == DefaultLabelTag.ORIGINAL.value:
            return None
        try:
            doc = json.loads(self._read_label_json(image_id, label_filename))
        except ValueError:
            return None  # not JSON: the label check says so
        if not is_markups(doc):
            return None
        try:
            label = label_from_markups(doc, image_id, self.original_result(image_id))
        except ContractError as e:
            raise Unprocessable(f"markups label for {image_id!r} was not stored: {e}") from None
        fd, path = tempfile.mkstemp(prefix="lnnode-markups-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(dumps(label))
        return path

    def _validate_label_file(self, image_id: str, label_filename: str, tag: str, suffix: str) -> None:
        if suffix == ".json":
            data = self._read_label_json(image_id, label_filename)
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
            label = read_sitk(label_filename, allow_2d=True)
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
        self._object(image_id)  # 404 before anything else
        suffix = image_suffix(label_filename) or os.path.splitext(label_filename)[1].lower()
        if suffix not in {p[1:] for p in LABEL_PATTERNS}:
            raise RequestError(
                f"unsupported label file {os.path.basename(label_filename)!r}: use .json (the label "
                f"contract) or an image mask ({', '.join(p[1:] for p in IMAGE_PATTERNS)})"
            )
        info = _info_object(label_info)
        converted = self._converted_markups(image_id, label_filename, tag, suffix)
        if converted is None:
            return self._store_label(image_id, label_filename, tag, suffix, info)
        try:
            return self._store_label(image_id, converted, tag, suffix, {**info, "converted_from": "slicer_markups"})
        finally:
            os.remove(converted)

    def _store_label(self, image_id: str, label_filename: str, tag: str, suffix: str, info: dict[str, Any]) -> str:
        """Check the label, compare a review with the model's result, keep the earlier version, store it."""
        self._validate_label_file(image_id, label_filename, tag, suffix)
        if suffix == ".json" and tag != DefaultLabelTag.ORIGINAL.value:
            with open(label_filename, "rb") as f:
                info["review"] = review_stats(parse_label(f.read()), self.original_result(image_id))

        label_dir = self._datastore.label_path(tag)
        name = self._filename(image_id, suffix)
        self._inside(os.path.join(label_dir, name), f"label folder {tag!r}")
        with self._file_lock:
            self._reload_if_changed()
            obj = self._object(image_id)
            os.makedirs(label_dir, exist_ok=True)
            previous = obj.labels.get(tag)
            if previous:
                # a copy, then the atomic replace: a failed or killed write leaves the current label in place
                self._archive(label_dir, self._filename(image_id, previous.ext), previous.info.get("ts"), keep=True)
            atomic_copy(label_filename, os.path.join(label_dir, name))
            info.update(ts=int(time.time()), name=name)
            obj.labels[tag] = DataModel(info=info, ext=suffix)
            self._update_datastore_file(lock=False)
        self._reviewed[image_id] = (tag, info.get("review"))
        return image_id

    @staticmethod
    def _archive(label_dir: str, name: str, ts: Any, keep: bool = False) -> None:
        """Put a label into the tag's hidden history folder (nothing is overwritten): a copy with
        ``keep`` (it is about to be replaced), else moved there (it is being removed)."""
        src = os.path.join(label_dir, name)
        if not os.path.exists(src):
            return
        history = os.path.join(label_dir, HISTORY_DIR)
        os.makedirs(history, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts if isinstance(ts, (int, float)) else None))
        dest = os.path.join(history, f"{stamp}.{time.time_ns()}.{name}")
        if keep:
            atomic_copy(src, dest)
        else:
            os.replace(src, dest)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        obj = self._object(label_id)
        tag = check_name(label_tag, "label tag")
        if tag not in obj.labels:
            raise NotFound(f"image {label_id!r} has no label with tag {tag!r}")
        name = self._filename(label_id, obj.labels[tag].ext)
        with self._file_lock:
            self._archive(self._datastore.label_path(tag), name, None)
        self.refresh()

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_name(label_id, "label id")
        check_name(label_tag, "label tag")
        self._reload_if_changed()
        return self._inside(super().get_label_uri(label_id, label_tag), f"label {label_id!r} ({label_tag})")

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        self._reload_if_changed()
        obj = self._object(label_id)
        if check_name(label_tag, "label tag") not in obj.labels:
            raise NotFound(f"image {label_id!r} has no label with tag {label_tag!r}")
        return {**super().get_label_info(label_id, label_tag), "history": self.label_history(label_id, label_tag)}

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self.get_label_info(label_id, label_tag)
        with self._file_lock:
            self._reload_if_changed()
            self._object(label_id).labels[label_tag].info.update(info)
            self._update_datastore_file(lock=False)

    def reload(self) -> None:
        """Pick up what other processes wrote (scores, labels) without rescanning the folders."""
        with self._file_lock:
            self._reload_if_changed()

    def claim_image(
        self,
        choose: Callable[[dict[str, dict[str, Any]], dict[str, dict[str, Any]]], str | None],
        served_key: str,
    ) -> str | None:
        """Pick an image and stamp it as served in one step under the lock, so that two readers asking at
        once are not served the same case. ``choose`` gets ``{image id: image info}`` of the images without
        a ``final`` label and of those with one (current copies) and returns one unlabelled id or None."""
        with self._file_lock:
            self._reload_if_changed()
            final = DefaultLabelTag.FINAL.value
            objects = self._datastore.objects
            unlabelled = {i: o.image.info for i, o in objects.items() if final not in o.labels}
            labelled = {i: o.image.info for i, o in objects.items() if final in o.labels}
            chosen = choose(unlabelled, labelled)
            if chosen is not None:
                self._datastore.objects[chosen].image.info[served_key] = time.time()
                self._update_datastore_file(lock=False)
        return chosen

    # -- versions and reviews -----------------------------------------------------------------------
    def label_history(self, image_id: str, label_tag: str) -> list[dict[str, str]]:
        """Earlier versions of a label, oldest first: ``{"file", "replaced"}`` (file relative to the studies)."""
        obj = self._object(image_id)
        history = os.path.join(self._datastore.label_path(check_name(label_tag, "label tag")), HISTORY_DIR)
        if not os.path.isdir(history):
            return []
        stems = {self._filename(image_id, m.ext) for m in obj.labels.values()} | {f"{image_id}.json"}
        versions = []
        for name in sorted(os.listdir(history)):
            stamp, _, rest = name.partition(".")
            _, _, original_name = rest.partition(".")  # <stamp>.<ns>.<name>
            if original_name in stems:
                rel = os.path.relpath(os.path.join(history, name), self._datastore_path)
                versions.append({"file": rel, "replaced": stamp})
        return versions

    def original_result(self, image_id: str) -> dict[str, Any] | None:
        """The model's stored result for an image (label tag ``original``), or None."""
        obj = self._object(image_id)
        model = obj.labels.get(DefaultLabelTag.ORIGINAL.value)
        if not model or model.ext != ".json":
            return None
        tag = DefaultLabelTag.ORIGINAL.value
        path = os.path.join(self._datastore.label_path(tag), self._filename(image_id, ".json"))
        try:
            with open(path, "rb") as f:
                return parse_result(f.read())
        except (OSError, ContractError) as e:
            logger.warning(f"{image_id}: stored model result unreadable ({e}); review not compared")
            return None

    def reviews(self, label_tag: str = DefaultLabelTag.FINAL.value) -> list[dict[str, Any]]:
        """Per reviewed case: ``{"image", "ts", "stats"}`` from the labels' info."""
        self._reload_if_changed()
        out = []
        for image_id, obj in sorted(self._datastore.objects.items()):
            label = obj.labels.get(label_tag)
            if label and isinstance(label.info.get("review"), dict):
                out.append({"image": image_id, "ts": label.info.get("ts"), "stats": label.info["review"]})
        return out
