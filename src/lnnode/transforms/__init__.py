"""Dictionary transforms (MONAI style) that the infer and train tasks compose."""

from lnnode.transforms.boxes import (
    DETECTOR_OFFSET,
    LabelToBoxesd,
    RandFocusCropd,
    boxes_to_nodes,
    load_label,
    nodes_to_boxes,
    suppress_nested,
)
from lnnode.transforms.intensity import BODY_THRESHOLD, DEFAULT_INTENSITY, NormalizeIntensityd, normalize_intensity
from lnnode.transforms.planar import PlaneGridd, nodes_to_planar_boxes, planar_boxes_to_nodes, plane_grid
from lnnode.transforms.spatial import CropToBodyd, LoadVolumed, ResampleToGridd, body_box, grid_for, resample_to_grid

__all__ = [
    "BODY_THRESHOLD",
    "DEFAULT_INTENSITY",
    "DETECTOR_OFFSET",
    "CropToBodyd",
    "LabelToBoxesd",
    "LoadVolumed",
    "NormalizeIntensityd",
    "PlaneGridd",
    "RandFocusCropd",
    "ResampleToGridd",
    "body_box",
    "boxes_to_nodes",
    "grid_for",
    "load_label",
    "nodes_to_boxes",
    "nodes_to_planar_boxes",
    "normalize_intensity",
    "planar_boxes_to_nodes",
    "plane_grid",
    "resample_to_grid",
    "suppress_nested",
]
