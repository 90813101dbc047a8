"""Our result writer: the result contract JSON plus a Slicer markups file of the boxes.

MONAI Label's stock DetectionWriter keeps only boxes and labels; lnnode keeps each node's
detection score (and, in the pipeline, probability, uncertainty, measurements and rules).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from typing import Any

from lnnode.contracts import RESULT_SCHEMA
from lnnode.contracts.markups import markups_from_nodes

from .keys import RESULT

__all__ = ["make_result", "ResultWriter"]


def make_result(
    image: str,
    nodes: list[dict],
    detector: str | None = None,
    classifier: str | None = None,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result document (``lnnode.result/1``) for ``nodes`` (ids, world boxes, scores...)."""
    return {
        "schema": RESULT_SCHEMA,
        "image": image,
        "model": {"detector": detector, "classifier": classifier},
        "coordinate_system": "LPS",
        "units": "mm",
        "nodes": nodes,
        "summary": {"n_nodes": len(nodes), **(summary or {})},
    }


class ResultWriter:
    """Writer for infer tasks: ``data[RESULT]`` is the result document; returns (markups file, result)."""

    def __init__(self, result_key: str = RESULT):
        self.result_key = result_key

    def __call__(self, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        result = dict(data[self.result_key])
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="lnnode_markups_", delete=False) as f:
            json.dump(markups_from_nodes(result["nodes"]), f, indent=1)
        return f.name, result
