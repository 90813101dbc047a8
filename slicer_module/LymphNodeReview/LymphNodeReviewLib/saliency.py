"""Per-node saliency maps from a pipeline result (``saliency``: a gzipped NIfTI as a data URI) to files
Slicer can load and overlay (they are world-aligned and sit where the node is)."""

from __future__ import annotations

import base64
import os
from typing import Any

__all__ = ["PREFIX", "write_saliency_maps"]

PREFIX = "data:application/x-nifti-gz;base64,"


def write_saliency_maps(result: dict[str, Any], folder: str) -> dict[str, str]:
    """Write each node's map to ``folder/<node id>_saliency.nii.gz``; returns the paths by node id."""
    paths = {}
    for node in result.get("nodes", []):
        uri = node.get("saliency")
        if not uri:
            continue
        if not uri.startswith(PREFIX):
            raise ValueError(f"node {node.get('id')}: saliency is not a gzipped NIfTI data URI")
        path = os.path.join(folder, f"{node['id']}_saliency.nii.gz")
        with open(path, "wb") as f:
            f.write(base64.b64decode(uri[len(PREFIX) :]))
        paths[node["id"]] = path
    return paths
