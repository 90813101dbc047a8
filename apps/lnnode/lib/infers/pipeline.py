"""``lymph_node_pipeline``: detect, classify, measure and apply the rules, in one call.

The image is read once and handed to each stage as an array (the way MONAI Label's radiology app
chains the stages of its vertebra pipeline). Stages:

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

import logging
import time
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..contracts import ContractError, validate_result
from ..delineation import measure_node
from ..errors import ModelNotReady, RequestError, Unprocessable
from ..imageio import ImageError
from ..rules import n_stage_hint, node_rules
from ..transforms import LoadVolumed
from .classification import NodeClassification
from .detection import NodeDetection, model_version
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
            dimension=3,
            description="Lymph nodes: boxes, metastasis probability, short/long axis, rule categories, N-stage hint",
            config=config,
        )
        self.name = name
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

    def _classify(self, request: dict, nodes: list[dict], warnings: list[str]) -> tuple[list[dict], str | None]:
        if self.classification is None:
            return nodes, None
        try:
            checkpoint = self.classification.checkpoint()
        except ModelNotReady as e:
            warnings.append(f"no metastasis probabilities: {e.detail}")
            return nodes, None
        if not nodes:  # nothing to classify; the result still names the classifier in service
            return nodes, model_version(checkpoint, self.classification.name)
        if list(checkpoint.meta["preprocessing"].get("channel_suffixes", [])) != self.channel_suffixes():
            raise Unprocessable(
                f"the classifier reads sequences {self.classification.channel_suffixes()} but the detector "
                f"{self.channel_suffixes()}: retrain one of them on the same sequences"
            )
        _, data = self.classification({**request, "nodes": nodes, "skip_writer": True})
        result = data["result"]
        return result["nodes"], result["model"]["classifier"]

    def __call__(self, request, callbacks=None):
        begin = time.perf_counter()
        req = {**self._config, **request}
        by = str(req.get("suspicious_by") or "classifier")
        if by not in SUSPICIOUS_BY:
            raise RequestError(f"suspicious_by must be one of {', '.join(SUSPICIOUS_BY)}; got {by!r}")
        p_thresh = float(req.get("p_thresh") or 0.5)
        self.detection.checkpoint()  # 503 before reading the image when there is no detector
        try:
            loaded = LoadVolumed(keys="image")({"image": req["image"]})
        except ImageError as e:
            raise Unprocessable(f"image {req.get('image')!r} cannot be used: {e.reason}") from None
        image, geometry = loaded["image"], loaded["image_geometry"]
        stage = {**req, "image": image, "image_geometry": geometry, "skip_writer": True}
        latencies = {"load": time.perf_counter() - begin}

        t = time.perf_counter()
        _, detected = self.detection(stage)
        detection = detected["result"]
        latencies["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        warnings: list[str] = []
        nodes, classifier = self._classify(stage, detection["nodes"], warnings)
        latencies["classify"] = time.perf_counter() - t

        t = time.perf_counter()
        modality = self.detection.checkpoint().meta["preprocessing"].get("modality", "ct")
        if classifier is None and by == "classifier":
            by = "morphology"
        for node in nodes:
            m = measure_node(image[0], geometry, node["center"], node["size"], modality)
            if m is not None:
                node["short_axis_mm"] = round(float(m.short_axis_mm), 1)
                node["long_axis_mm"] = round(float(max(m.long_axis_mm, m.short_axis_mm)), 1)
            node["rules"] = node_rules(m)
        n_suspicious = sum(_suspicious(n, by, p_thresh) for n in nodes)
        latencies["measure"] = time.perf_counter() - t

        result = make_result(
            detection["image"],
            nodes,
            detector=detection["model"]["detector"],
            classifier=classifier,
            summary={"n_suspicious": n_suspicious, "n_stage_hint": n_stage_hint(n_suspicious)},
        )
        latencies["total"] = time.perf_counter() - begin
        result["latencies"] = {k: round(v, 3) for k, v in latencies.items()}
        if warnings:
            result["warnings"] = warnings
        try:
            validate_result(result)
        except ContractError as e:  # a bug of ours, never the client's
            raise RuntimeError(f"lnnode produced an invalid result: {e}") from e
        return ResultWriter()({"result": result})
