"""``lymph_node_pipeline``: detect, classify, measure and apply the rules, in one call.

The image is read once and handed to each stage as a loaded volume, and each stage's checkpoint is
resolved once for the whole request (the way MONAI Label's radiology app chains the stages of its
vertebra pipeline, each stage an infer task of its own). Stages:

1. ``lymph_node_detection``: boxes with detection scores;
2. ``lymph_node_classification`` on those boxes: ``p_metastasis`` and ``uncertainty`` (skipped,
   with a warning in the result, while the classifier has no weights);
3. per node, a delineation in the box and its short/long axis in the axial plane (mm);
4. the rule baselines on those measurements (``size_10mm``, ``morphology``);
5. the summary: suspicious nodes and an N-stage hint (N0 / N1: 1-3 / N2: >= 4). A node counts as
   suspicious when ``p_metastasis >= p_thresh`` (default 0.5, calibrated probabilities); without
   a classifier, when the morphology rule says so. ``suspicious_by`` picks another criterion.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lnnode.contracts import POSITIVE_CLASS, ContractError, validate_result
from lnnode.io.image import ImageError, pixel_spacing_known
from lnnode.measure.delineation import NodeMeasurement, measure_node
from lnnode.measure.features import shape_row
from lnnode.measure.planar import measure_lesion
from lnnode.measure.rules import n_stage_hint, node_rules, planar_rules
from lnnode.transforms import LoadVolumed

from ..server.errors import ModelNotReady, RequestError, Unprocessable
from .base import image_kind_error
from .classification import NodeClassification
from .detection import NodeDetection, model_version
from .keys import IMAGE, IMAGE_GEOMETRY, NODES, RESULT, SHAPE
from .writer import ResultWriter, make_result

logger = logging.getLogger(__name__)

__all__ = ["NodePipeline", "SUSPICIOUS_BY"]

SUSPICIOUS_BY = ("classifier", "size_10mm", "morphology")


def _suspicious(node: dict[str, Any], by: str, p_thresh: float) -> bool:
    if by == "classifier":
        return node.get("p_metastasis", 0.0) >= p_thresh
    return node.get("rules", {}).get(by) == "suspicious"


class NodePipeline(BasicInferTask):
    """Detection + classification + measurement + rules. Request params: those of the two models
    (``score_thresh``, ``nms_thresh``, ``max_boxes``, ``tta``, ``device``, ``amp``...), ``p_thresh``,
    ``suspicious_by`` (``classifier`` | ``size_10mm`` | ``morphology``)."""

    def __init__(
        self,
        name: str,
        detection: NodeDetection,
        classification: NodeClassification | None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(
            path=[],
            network=None,
            type=InferType.DETECTION,
            labels=["lymph_node"],
            dimension=2 if detection.planar else 3,
            description=f"Lymph nodes{' on 2D images' if detection.planar else ''}: boxes, metastasis probability, "
            "short/long axis, rule categories, N-stage hint",
            config=config,
        )
        if classification is not None and classification.planar != detection.planar:
            raise ValueError(f"{name}: a {detection.name} detector with a {classification.name} classifier")
        self.name = name
        self.planar = detection.planar
        self.detection = detection
        self.classification = classification

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None):
        return []  # each stage runs its own; __call__ chains the stages

    def post_transforms(self, data=None):
        return []

    def channel_suffixes(self) -> list[str]:
        """The sequences the stages read (the detector's; the classifier must read the same)."""
        return self.detection.channel_suffixes()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["stages"] = {"detector": self.detection.name, "classifier": getattr(self.classification, "name", None)}
        info["channel_suffixes"] = self.detection.info().get("channel_suffixes", [])
        return info

    def _classify(
        self, request: dict, nodes: list[dict], volume, geometry, warnings: list[str]
    ) -> tuple[list[dict], dict[str, Any]]:
        """The nodes with their probabilities, and the classifier's name and positive class (``{}``: not
        classified)."""
        if self.classification is None:
            return nodes, {}
        if not nodes:  # nothing to classify; the result still names the classifier in service
            named = {"classifier": model_version(self.classification.checkpoint(), self.classification.name)}
            return nodes, {**named, "positive_class": self.classification.positive_class()}
        if self.classification.channel_suffixes() != self.channel_suffixes():
            raise Unprocessable(
                f"the classifier reads sequences {self.classification.channel_suffixes()} but the detector "
                f"{self.channel_suffixes()}: retrain one of them on the same sequences"
            )
        result = self.classification.result_for({**request, NODES: nodes}, volume, geometry)
        return result["nodes"], {"classifier": result["model"]["classifier"], **self._positive(result)}

    @staticmethod
    def _positive(result: dict[str, Any]) -> dict[str, str]:
        return {"positive_class": result["positive_class"]} if "positive_class" in result else {}

    def _load(self, request: dict) -> tuple[Any, Any]:
        try:
            loaded = LoadVolumed(keys=IMAGE, allow_2d=True)({IMAGE: request[IMAGE]})
        except ImageError as e:
            raise Unprocessable(f"image {request.get(IMAGE)!r} cannot be used: {e.reason}") from None
        error = image_kind_error(self.name, self.planar, loaded[IMAGE_GEOMETRY])
        if error is not None:
            raise error
        return loaded[IMAGE], loaded[IMAGE_GEOMETRY]

    def __call__(self, request, callbacks=None):
        return ResultWriter()({RESULT: self.result_for(request)})

    def result_for(self, request: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's result document for ``request``, without writing a markups file.

        Both stages' checkpoints are resolved once for the whole request; the detector's 503 comes before
        the image is read, a classifier without weights leaves the nodes unclassified (said in ``warnings``).
        """
        req = {**self._config, **request}
        by = str(req.get("suspicious_by") or "classifier")
        if by not in SUSPICIOUS_BY:
            raise RequestError(f"suspicious_by must be one of {', '.join(SUSPICIOUS_BY)}; got {by!r}")
        warnings: list[str] = []
        with contextlib.ExitStack() as stages:
            stages.enter_context(self.detection.pinned())
            classification = self.classification
            if classification is not None:
                try:
                    stages.enter_context(classification.pinned())
                except ModelNotReady as e:
                    warnings.append(f"no metastasis probabilities: {e.detail}")
                    classification = None
            return self._run(req, by, classification is not None, warnings)

    def _run(self, req: dict, by: str, classify: bool, warnings: list[str]) -> dict[str, Any]:
        begin = time.perf_counter()
        p_thresh = float(req.get("p_thresh") or 0.5)
        volume, geometry = self._load(req)
        latencies = {"load": time.perf_counter() - begin}

        t = time.perf_counter()
        detection = self.detection.result_for(req, volume, geometry)
        latencies["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        nodes, classified = detection["nodes"], {}
        modality = self.detection.checkpoint().meta["preprocessing"].get("modality", "ct")
        # one delineation per box: its measurements give the axes and rules, and the classifier's shape fusion
        measured = [] if self.planar else [self._delineate(n, volume[0], geometry, modality) for n in nodes]
        latencies["measure"] = time.perf_counter() - t

        t = time.perf_counter()
        if classify:
            stage = req if self.planar else {**req, SHAPE: np.array([shape_row(m) for m in measured], np.float32)}
            nodes, classified = self._classify(stage, nodes, volume, geometry, warnings)
        latencies["classify"] = time.perf_counter() - t

        t = time.perf_counter()
        if not classified and by == "classifier":
            by = "morphology"
        if self.planar:
            image = req[IMAGE][0] if isinstance(req[IMAGE], (list, tuple)) else req[IMAGE]
            in_mm = not isinstance(image, str) or pixel_spacing_known(image)
            for node in nodes:
                self._measure_planar(node, volume[0], geometry, in_mm)
        else:
            for node, m in zip(nodes, measured, strict=True):
                self._measure(node, m)
        n_suspicious = sum(_suspicious(n, by, p_thresh) for n in nodes)
        latencies["measure"] += time.perf_counter() - t

        result = make_result(
            detection["image"],
            nodes,
            detector=detection["model"]["detector"],
            classifier=classified.get("classifier"),
            summary={"n_suspicious": n_suspicious, "n_stage_hint": n_stage_hint(n_suspicious)},
        )
        if classified.get("positive_class", POSITIVE_CLASS) != POSITIVE_CLASS:
            result["positive_class"] = classified["positive_class"]
        latencies["total"] = time.perf_counter() - begin
        result["latencies"] = {k: round(v, 3) for k, v in latencies.items()}
        if warnings:
            result["warnings"] = warnings
        try:
            return validate_result(result)
        except ContractError as e:  # a bug of ours, never the client's
            raise RuntimeError(f"lnnode produced an invalid result: {e}") from e

    @staticmethod
    def _delineate(node: dict[str, Any], volume, geometry, modality: str) -> NodeMeasurement | None:
        return measure_node(volume, geometry, node["center"], node["size"], modality)

    @staticmethod
    def _measure(node: dict[str, Any], m: NodeMeasurement | None) -> None:
        """Short and long axis (mm) and the rule categories of a delineation, into ``node``."""
        if m is not None:
            node["short_axis_mm"] = round(float(m.short_axis_mm), 1)
            node["long_axis_mm"] = round(float(max(m.long_axis_mm, m.short_axis_mm)), 1)
        node["rules"] = node_rules(m)

    @staticmethod
    def _measure_planar(node: dict[str, Any], image, geometry, in_mm: bool) -> None:
        """Short and long axis in the image's plane (mm, or px without a pixel spacing) and the 2D rules."""
        m = measure_lesion(image, geometry, node["center"], node["size"])
        if m is not None:
            unit = "mm" if in_mm else "px"
            node[f"short_axis_{unit}"] = round(float(m.short_axis), 1)
            node[f"long_axis_{unit}"] = round(float(m.long_axis), 1)
        node["rules"] = planar_rules(m, spacing_known=in_mm)
