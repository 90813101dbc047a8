"""``lymph_node_detection``: 3D boxes of every lymph node, in world LPS mm, with detection scores; and
``lymph_node_detection_2d``, the same task on 2D images (boxes one slice thick)."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from monailabel.interfaces.tasks.infer_v2 import InferType

from lnnode.geometry import ImageGeometry
from lnnode.io.checkpoint import Checkpoint
from lnnode.networks.detector import DetectorSpec, build_detector, build_detector_network, clamp_roi
from lnnode.transforms import (
    BODY_THRESHOLD,
    CropToBodyd,
    LoadVolumed,
    NormalizeIntensityd,
    PlaneGridd,
    ResampleToGridd,
    planar_boxes_to_nodes,
)
from lnnode.transforms.boxes import boxes_to_nodes, suppress_nested

from .base import CheckImageKindd, CheckpointInferTask
from .keys import BOX_SCORES, BOXES, GRID, IMAGE, IMAGE_GEOMETRY, IMAGE_ID, RESULT
from .writer import ResultWriter, make_result

__all__ = ["NodeDetection", "DetectionToResultd", "model_version"]


def model_version(checkpoint: Checkpoint, name: str) -> str:
    """A readable model identifier for results: name + training date (or the file name)."""
    created = checkpoint.meta.get("training", {}).get("created")
    return f"{name}@{created}" if created else f"{name}:{os.path.basename(checkpoint.path)}"


class DetectionToResultd(MapTransform):
    """Detector output (``boxes``, ``labels_scores`` on the grid) to a result document in world LPS;
    ``planar``: a 2D detector's boxes (N, 4) on a 2D image's grid."""

    def __init__(self, grid_key: str = GRID, result_key: str = RESULT, detector_name: str = "", planar: bool = False):
        super().__init__(keys=[BOXES])
        self.grid_key = grid_key
        self.result_key = result_key
        self.detector_name = detector_name
        self.planar = planar

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid: ImageGeometry = d[self.grid_key]
        to_nodes = planar_boxes_to_nodes if self.planar else boxes_to_nodes
        boxes = torch.as_tensor(d[BOXES]).detach().float().cpu().numpy().reshape(-1, 4 if self.planar else 6)
        scores = torch.as_tensor(d[BOX_SCORES]).detach().float().cpu().numpy().reshape(-1)
        order = np.argsort(-scores, kind="stable")
        ranked = [
            {**node, "detection_score": round(float(score), 4)}
            for node, score in zip(to_nodes(boxes[order], grid), scores[order], strict=True)
        ]
        source: ImageGeometry | None = d.get(IMAGE_GEOMETRY)
        if source is not None:
            # an oblique image's world-aligned grid has corners outside the image: a box centred there
            # is not in the image (and a label or a classification request would be refused for it)
            ranked = [n for n in ranked if source.contains_index(source.world_to_index(n["center"]))]
        nodes = [{"id": f"n{rank + 1}", **node} for rank, node in enumerate(suppress_nested(ranked))]
        d[self.result_key] = make_result(d.get(IMAGE_ID) or "upload", nodes, detector=self.detector_name)
        return d


class NodeDetection(CheckpointInferTask):
    """RetinaNet node detection: load -> world-aligned grid -> normalise -> body crop -> sliding
    window -> boxes back to world LPS. Request params: ``score_thresh``, ``nms_thresh``,
    ``max_boxes`` (defaults from ``--conf`` or the checkpoint), ``device``, ``amp``, ``crop_to_body``
    (default true: the sliding window skips the air around the patient).

    A multi-sequence model (e.g. T2 + DWI) gets ``image`` as the list of the case's sequences; the
    app finds them in the datastore by the checkpoint's ``channel_suffixes``.

    ``planar``: a 2D detector on 2D images, on the image's own pixel grid (:mod:`lnnode.transforms.planar`),
    no body crop (an ultrasound sector is the whole image)."""

    checkpoint_task = "detection"

    def __init__(self, name: str, paths: Sequence[str], config: dict[str, Any] | None = None, planar: bool = False):
        kind = "2D boxes on 2D images (one slice thick" if planar else "3D boxes ("
        super().__init__(
            name=name,
            paths=paths,
            type=InferType.DETECTION,
            description=f"Lymph-node detection: {kind}, world LPS mm) with detection scores",
            config=config,
            planar=planar,
        )

    @staticmethod
    def spatial_dims(checkpoint: Checkpoint) -> int:
        return DetectorSpec.from_dict(checkpoint.meta["network"]).spatial_dims

    def channel_suffixes(self) -> list[str]:
        """Suffixes of the extra sequences the model reads (``case_001`` + ``_dwi``); [] for one channel."""
        return list(self.checkpoint().meta["preprocessing"].get("channel_suffixes", []))

    def spec(self) -> DetectorSpec:
        return DetectorSpec.from_dict(self.checkpoint().meta["network"])

    def build_network(self, checkpoint: Checkpoint) -> torch.nn.Module:
        return build_detector_network(DetectorSpec.from_dict(checkpoint.meta["network"]))

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        meta = self.checkpoint().meta
        to_grid = PlaneGridd if self.planar else ResampleToGridd
        transforms = [
            LoadVolumed(keys=IMAGE, allow_2d=True),
            CheckImageKindd(self.name, self.planar),
            to_grid(keys=IMAGE, spacing=meta["network"]["spacing"], grid_key=GRID),
            NormalizeIntensityd(keys=IMAGE, spec=meta["preprocessing"]["intensity"]),
        ]
        if self.planar:
            return transforms
        if str((data or {}).get("crop_to_body", True)).lower() not in ("false", "0", "no"):
            transforms.append(CropToBodyd(keys=IMAGE, threshold=BODY_THRESHOLD))
        return transforms

    def detector(self, data=None):
        spec = self.spec()
        data = data or {}

        def param(key: str) -> Any:
            value = data.get(key)
            return None if value is None or value == "" else value

        score, nms, max_boxes = param("score_thresh"), param("nms_thresh"), param("max_boxes")
        device = data.get("device") or "cpu"
        detector = build_detector(
            spec,
            network=self._get_network(device, data),
            device=device,
            score_thresh=None if score is None else float(score),
            nms_thresh=None if nms is None else float(nms),
            max_boxes=None if max_boxes is None else int(max_boxes),
        )
        if data.get(IMAGE) is not None:
            roi = clamp_roi(spec.roi_size, np.shape(data[IMAGE])[1:], spec.size_divisible)
            detector.set_sliding_window_inferer(
                roi_size=roi, overlap=spec.overlap, sw_batch_size=1, mode="constant", device=device
            )
        return detector

    def run_detector(self, data, convert_to_batch=True, device="cuda"):
        amp = str(data.get("amp", True)).lower() not in ("false", "0", "no")
        if device.startswith("cuda") and amp:
            with torch.autocast("cuda", dtype=torch.float16):
                return super().run_detector(data, convert_to_batch, device)
        return super().run_detector(data, convert_to_batch, device)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [DetectionToResultd(detector_name=model_version(self.checkpoint(), self.name), planar=self.planar)]

    def writer(self, data, extension=None, dtype=None):
        return ResultWriter()(data)
