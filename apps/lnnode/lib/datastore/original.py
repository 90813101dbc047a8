"""The model's result for a case, kept as its ``original`` label: a reader's review is compared with it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

logger = logging.getLogger(__name__)

__all__ = ["keep_original"]


def keep_original(datastore: Datastore, image_id: str, result: Any) -> None:
    """Store a result document as ``image_id``'s ``original`` label; anything else is ignored.

    A failure is logged, not raised: the reader still gets the result, only the comparison is lost.
    """
    if not isinstance(result, dict) or result.get("schema") is None:
        return
    with tempfile.TemporaryDirectory(prefix="lnnode-original-") as tmp:
        path = os.path.join(tmp, f"{image_id}.json")
        try:
            with open(path, "w") as f:
                json.dump(result, f)
            datastore.save_label(image_id, path, DefaultLabelTag.ORIGINAL.value, {"model": result.get("model")})
        except Exception as e:
            logger.warning(f"{image_id}: model result not kept as 'original': {e}")
