"""``lymph_node_classification``: a calibrated metastasis probability for each box the client gives.

Request: ``image`` and ``nodes`` (a list of ``{"center", "size"}`` in world LPS mm, optionally with
an ``id``; the nodes of a detection result can be sent back as they are). Each node is cropped on a
world-aligned isotropic grid around its centre, classified under flips of the crop (test-time
augmentation), and the logits are divided by the temperature fitted on the validation set at
training. ``p_metastasis`` is the mean probability over the flips, ``uncertainty`` their spread. With
``embeddings: true`` (an in-process caller: :meth:`run_for`) the data also hold ``EMBEDDINGS`` (N, D): what the
network's last layer reads per node, mean over the flips, which active learning compares cases by.

``lymph_node_classification_2d`` is the same task on 2D images: crops in the image's plane, left-right flips
only by default (an ultrasound image's depth axis has a direction: shadows fall below a lesion). Its
checkpoint names the positive class it was trained on (``classes``: [negative, positive]); the result says
it as ``positive_class`` when it is not ``metastatic``.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from monailabel.interfaces.tasks.infer_v2 import InferType

from lnnode.contracts import POSITIVE_CLASS, ContractError, check_label_in_image, validate_query_nodes
from lnnode.io.checkpoint import Checkpoint
from lnnode.io.image import write_image
from lnnode.measure.features import shape_features
from lnnode.metrics.classification import fused_logits
from lnnode.networks.classifier import (
    ClassifierSpec,
    build_classifier_network,
    grad_cam,
    predict_embeddings,
    predict_logits,
)
from lnnode.transforms import LoadVolumed, NormalizeIntensityd
from lnnode.transforms.crops import NodeCropsd, crop_geometry

from ..server.errors import Unprocessable
from .base import CheckImageKindd, CheckpointInferTask
from .detection import model_version
from .keys import (
    EMBEDDINGS,
    IMAGE,
    IMAGE_GEOMETRY,
    IMAGE_ID,
    LOGITS,
    NODES,
    P_METASTASIS,
    RESULT,
    SALIENCY,
    SHAPE,
    UNCERTAINTY,
)
from .writer import ResultWriter, make_result

__all__ = ["NodeClassification", "CheckNodesd", "ClassificationToResultd", "probabilities", "saliency_data_uri"]

SALIENCY_MIME = "data:application/x-nifti-gz;base64,"

# fields of a request node that are carried into the result (a detection result sent back keeps its scores)
_KEPT = ("detection_score",)


def _truthy(value: Any, default: bool) -> bool:
    return default if value is None or value == "" else str(value).lower() not in ("false", "0", "no")


class CheckNodesd(MapTransform):
    """Validate the request's ``nodes`` against the image (422 naming the field) and give them ids."""

    def __init__(self, nodes_key: str = NODES, image_key: str = IMAGE):
        super().__init__(keys=[nodes_key])
        self.nodes_key = nodes_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        nodes = d.get(self.nodes_key)
        if nodes is None:
            raise Unprocessable("no nodes given: pass params {'nodes': [{'center': [x, y, z], 'size': [dx, dy, dz]}]}")
        try:
            validate_query_nodes(nodes)
            check_label_in_image({"nodes": nodes}, d[f"{self.image_key}_geometry"])
        except ContractError as e:
            raise Unprocessable(f"nodes: {e}") from None
        d[self.nodes_key] = [{"id": n.get("id", f"n{i + 1}"), **n} for i, n in enumerate(nodes)]
        return d


def probabilities(logits: torch.Tensor, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probability (mean over the TTA columns) and its spread (std) per node."""
    p = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float32) / float(temperature)).numpy()
    if p.ndim == 1:
        p = p[:, None]
    return p.mean(axis=1), p.std(axis=1)


def saliency_data_uri(cam: np.ndarray, center: Sequence[float], spacing: float) -> str:
    """A Grad-CAM map (X, Y, Z in [0, 1], on the crop grid around ``center``) as a small gzipped NIfTI
    data URI: half the crop's resolution, uint8 0..255, world-aligned so a viewer overlays it in place."""
    c = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    half = torch.nn.functional.avg_pool3d(c, 2)[0, 0].numpy()  # pooled voxel centres sit on a 2*spacing grid
    geometry = crop_geometry(center, half.shape, 2.0 * spacing)
    with tempfile.TemporaryDirectory(prefix="lnnode_saliency_") as tmp:
        path = write_image(np.rint(255 * np.clip(half, 0, 1)).astype(np.uint8), geometry, Path(tmp) / "s.nii.gz")
        return SALIENCY_MIME + base64.b64encode(path.read_bytes()).decode("ascii")


class ShapeFeaturesd(MapTransform):
    """Each request node's measured shape (:func:`shape_features`, (N, F)) under ``SHAPE``, from the loaded image
    (unless the request brought it, one row per node)."""

    def __init__(self, modality: str, nodes_key: str = NODES, image_key: str = IMAGE):
        super().__init__(keys=[nodes_key])
        self.modality, self.nodes_key, self.image_key = modality, nodes_key, image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        given = d.get(SHAPE)  # the pipeline's, from its own delineation of the same boxes
        if given is None or len(given) != len(d[self.nodes_key]):
            d[SHAPE] = shape_features(d[self.image_key][0], d[IMAGE_GEOMETRY], d[self.nodes_key], self.modality)
        return d


class ClassificationToResultd(MapTransform):
    """Probabilities next to the request's nodes, as a result document (world LPS)."""

    def __init__(
        self, classifier_name: str, nodes_key: str = NODES, result_key: str = RESULT, positive: str = POSITIVE_CLASS
    ):
        super().__init__(keys=[nodes_key])
        self.classifier_name = classifier_name
        self.nodes_key = nodes_key
        self.result_key = result_key
        self.positive = positive

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        nodes = []
        for node, p, u in zip(d[self.nodes_key], d[P_METASTASIS], d[UNCERTAINTY], strict=True):
            out = {"id": str(node["id"]), "center": list(node["center"]), "size": list(node["size"])}
            out.update({k: node[k] for k in _KEPT if k in node})
            out["p_metastasis"] = round(float(np.clip(p, 0.0, 1.0)), 4)
            out["uncertainty"] = round(float(u), 4)
            nodes.append(out)
        for out, uri in zip(nodes, d.get(SALIENCY) or [], strict=False):
            out["saliency"] = uri
        d[self.result_key] = make_result(d.get(IMAGE_ID) or "upload", nodes, classifier=self.classifier_name)
        if self.positive != POSITIVE_CLASS:
            d[self.result_key]["positive_class"] = self.positive
        return d


class NodeClassification(CheckpointInferTask):
    """Metastasis probability per node. Request params: ``nodes`` (required), ``tta`` (flips, 1..8, default 8;
    2D: 1 or 2, the left-right flip only, default 2), ``saliency`` (default false: a Grad-CAM map per node as a
    NIfTI data URI; 3D only), ``device``, ``amp``."""

    checkpoint_task = "classification"

    def __init__(self, name: str, paths: Sequence[str], config: dict[str, Any] | None = None, planar: bool = False):
        super().__init__(
            name=name,
            paths=paths,
            type=InferType.CLASSIFICATION,
            description=f"Lymph-node metastasis probability for given boxes{' on 2D images' if planar else ''} "
            "(world LPS mm), with uncertainty",
            config=config,
            labels=("benign", "metastatic"),
            planar=planar,
        )

    @staticmethod
    def spatial_dims(checkpoint: Checkpoint) -> int:
        return ClassifierSpec.from_dict(checkpoint.meta["network"]).spatial_dims

    def positive_class(self) -> str:
        """The class the probability is of (the checkpoint's second class)."""
        classes = self.checkpoint().meta.get("classes") or []
        return str(classes[1]) if len(classes) == 2 else POSITIVE_CLASS

    def spec(self) -> ClassifierSpec:
        return ClassifierSpec.from_dict(self.checkpoint().meta["network"])

    def channel_suffixes(self) -> list[str]:
        return list(self.checkpoint().meta["preprocessing"].get("channel_suffixes", []))

    def temperature(self) -> float:
        return float(self.checkpoint().meta.get("calibration", {}).get("temperature", 1.0))

    def build_network(self, checkpoint: Checkpoint) -> torch.nn.Module:
        return build_classifier_network(ClassifierSpec.from_dict(checkpoint.meta["network"]))

    def fusion(self) -> dict[str, Any] | None:
        """The checkpoint's fusion of the CNN logit with the nodes' measured shape (None: the logit alone)."""
        return self.checkpoint().meta.get("calibration", {}).get("fusion")

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        meta = self.checkpoint().meta
        spec = self.spec()
        measure = [ShapeFeaturesd(meta["preprocessing"].get("modality", "ct"))] if self.fusion() else []
        return [
            LoadVolumed(keys=IMAGE, allow_2d=True),
            CheckImageKindd(self.name, self.planar),
            CheckNodesd(),
            *measure,  # on the image's own units, before normalisation
            NormalizeIntensityd(keys=IMAGE, spec=meta["preprocessing"]["intensity"]),
            NodeCropsd(
                keys=IMAGE,
                shape=spec.crop_shape,
                spacing=spec.crop_spacing,
                nodes_key=NODES,
                spacing_for=spec.crop_spacings_for if spec.spatial_dims == 2 else None,
            ),
        ]

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        network = self._get_network(device, data)
        tta = min(int(data.get("tta") or 2), 2) if self.planar else int(data.get("tta") or 8)
        if _truthy(data.get("embeddings"), False):
            logits, embeddings = predict_embeddings(network, data[IMAGE], tta=tta, device=device)
            data[EMBEDDINGS] = embeddings.numpy()
        else:
            logits = predict_logits(network, data[IMAGE], tta=tta, device=device, amp=_truthy(data.get("amp"), True))
        fusion = self.fusion()
        if fusion is not None:
            logits = torch.from_numpy(fused_logits(fusion, logits.numpy(), data[SHAPE]).astype(np.float32))
        data[LOGITS] = logits
        data[P_METASTASIS], data[UNCERTAINTY] = probabilities(logits, self.temperature())
        if _truthy(data.get("saliency"), False) and len(data[NODES]):
            try:
                cams = grad_cam(self._get_network(device, data), data[IMAGE], device=device).numpy()
            except ValueError as e:
                raise Unprocessable(f"saliency: {e}") from None
            spacing = self.spec().crop_spacing
            data[SALIENCY] = [
                saliency_data_uri(cam, node["center"], spacing) for cam, node in zip(cams, data[NODES], strict=True)
            ]
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [ClassificationToResultd(model_version(self.checkpoint(), self.name), positive=self.positive_class())]

    def writer(self, data, extension=None, dtype=None):
        return ResultWriter()(data)
