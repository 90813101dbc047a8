"""Training data from a datastore: every image with a label of a tag (and its other sequences)."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore

from lnnode.io.image import ImageError, is_planar, read_geometry

logger = logging.getLogger(__name__)

__all__ = ["companion_ids", "corrections_in", "labelled_datalist"]


def companion_ids(image_id: str, suffixes: list[str]) -> list[str]:
    """Image ids of the extra co-registered sequences of a case (``case_001`` + ``_dwi``...)."""
    return [f"{image_id}{suffix}" for suffix in suffixes]


def _is_kind(path: str, planar: bool) -> bool:
    try:
        return is_planar(read_geometry(path, allow_2d=True)) == planar
    except ImageError as e:
        logger.warning(f"{path}: left out ({e.reason})")
        return False


def labelled_datalist(
    datastore: Datastore, tag: str, channel_suffixes: list[str] | None = None, planar: bool = False
) -> list[dict[str, Any]]:
    """``{"image", "label", "id"}`` (and ``group`` where the image's info has one) for every volume (2D image with
    ``planar``) that has a label with ``tag``.

    With ``channel_suffixes`` the image is the list of the case's sequences (the labelled image
    first, then ``<id><suffix>`` for each suffix); a case missing a sequence is left out.
    """
    items = []
    suffixes = list(channel_suffixes or [])
    for image_id in sorted(datastore.list_images()):
        label = datastore.get_label_by_image_id(image_id, tag)
        if not label:
            continue
        paths = [datastore.get_image_uri(i) for i in [image_id, *companion_ids(image_id, suffixes)]]
        if not all(paths):
            logger.warning(f"{image_id}: left out, a sequence {suffixes} is missing")
            continue
        if not _is_kind(paths[0], planar):
            continue
        item = {"image": paths if suffixes else paths[0], "label": datastore.get_label_uri(label, tag), "id": image_id}
        group = (datastore.get_image_info(image_id) or {}).get("group")
        if group not in (None, ""):
            item["group"] = str(group)
        items.append(item)
    return items


def corrections_in(datalist: list[dict[str, Any]]) -> dict[str, int]:
    """How much reader correction a training set holds: rejected boxes, nodes added/moved/relabelled."""
    from lnnode.transforms import load_label

    rejected = changed = cases = 0
    for item in datalist:
        label = load_label(item["label"], item["id"])
        r = len(label.get("rejected", []))
        c = sum(n.get("origin") == "added" or bool(n.get("edited")) for n in label["nodes"])
        rejected, changed, cases = rejected + r, changed + c, cases + bool(r or c)
    return {"rejected": rejected, "changed": changed, "corrected_cases": cases}
