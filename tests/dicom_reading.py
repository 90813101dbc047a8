"""Reading lnnode's SEG + SR back with highdicom, as a PACS viewer would: what the tests compare with the label."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from lnnode.geometry import ImageGeometry


def read_nodes(sr: Dataset, seg: Dataset | None, sources: Sequence[Dataset], geometry: ImageGeometry) -> list[dict]:
    """One dict per SR measurement group: id, uid, axes, probability, evaluations, and its segment's mask on the
    image grid (i, j, k), found through the SEG's source references (not through lnnode's code)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    segmentation = hd.seg.Segmentation.from_dataset(seg) if seg is not None else None
    by_k = {int(round(geometry.world_to_index([float(v) for v in ds.ImagePositionPatient])[2])): ds for ds in sources}
    uids = [by_k[k].SOPInstanceUID for k in range(geometry.shape[2])]
    nodes = []
    for group in groups:
        ref = group.referenced_segment
        number = int(np.ravel(ref.referenced_segment_numbers)[0])
        node = {"id": group.tracking_identifier, "uid": group.tracking_uid, "segment": number}
        node["seg_uid"] = ref.referenced_sop_instance_uid
        node["source_series"] = ref.source_series_for_segmentation.value
        for m in group.get_measurements():
            node[m.name.meaning] = float(m.value)
        for q in group.get_qualitative_evaluations():
            node[q.name.meaning] = q.value.meaning
        if segmentation is not None:
            description = segmentation.get_segment_description(number)
            node["segment_uid"], node["segment_id"] = description.tracking_uid, description.tracking_id
            pixels = segmentation.get_pixels_by_source_instance(
                source_sop_instance_uids=uids, segment_numbers=[number], assert_missing_frames_are_empty=True
            )
            node["mask"] = pixels[..., 0].transpose(2, 1, 0).astype(bool)  # (k, row, col) -> (i, j, k)
        nodes.append(node)
    return nodes


def delineation_mask(measurement, geometry: ImageGeometry) -> np.ndarray:
    """A :class:`lnnode.measure.delineation.NodeMeasurement`'s node (occupancy >= 0.5 of its block) placed on the
    image grid by the block's world position: what its SEG segment must hold."""
    start = np.round(geometry.world_to_index(measurement.geometry.origin)).astype(int)
    mask = np.zeros(geometry.shape, bool)
    window = tuple(slice(s, s + n) for s, n in zip(start, measurement.occupancy.shape, strict=True))
    mask[window] = measurement.occupancy >= 0.5
    return mask


def predecessors(sr: Dataset) -> list[str]:
    """The SOP Instance UIDs an SR names as the documents it supersedes."""
    return [
        ref.ReferencedSOPInstanceUID
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
