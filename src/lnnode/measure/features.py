"""The measured shape of each node, as numbers a classifier can use beside its CNN logit.

A node's delineation in its box (:func:`lnnode.measure.delineation.measure_node`) gives what the radiological
criteria read: the short axis, roundness (short / long axis in the axial plane), border solidity and internal
heterogeneity. A row of NaN is a node whose delineation found nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lnnode.geometry import ImageGeometry
from lnnode.measure.delineation import NodeMeasurement, measure_node

__all__ = ["SHAPE_FEATURES", "shape_features", "shape_row"]

SHAPE_FEATURES = ("short_axis_mm", "axis_ratio", "solidity", "heterogeneity")


def shape_row(m: NodeMeasurement | None) -> list[float]:
    """A delineation's :data:`SHAPE_FEATURES` (NaN where it found nothing)."""
    if m is None:
        return [float("nan")] * len(SHAPE_FEATURES)
    return [m.short_axis_mm, m.values["axis_ratio"], m.values["solidity"], m.values["heterogeneity"]]


def shape_features(
    image: np.ndarray, geometry: ImageGeometry, nodes: Sequence[dict[str, Any]], modality: str = "ct"
) -> np.ndarray:
    """(N, len(SHAPE_FEATURES)) float32 of the nodes (world LPS boxes) on ``image``, the (i, j, k) volume in its
    own units (HU for CT)."""
    rows = [shape_row(measure_node(image, geometry, n["center"], n["size"], modality)) for n in nodes]
    return np.asarray(rows, dtype=np.float32).reshape(len(nodes), len(SHAPE_FEATURES))
