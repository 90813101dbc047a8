"""Train task of ``lymph_node_classification``: node crops from labelled images, benign vs metastatic.

Training data: every node with a ``class`` in the labels of the tag (``final`` by default). Each
image is read once and each node cropped once, a little larger than the network's crop, on the
classifier's world-aligned grid; augmentation then takes random sub-crops (a few mm of centring
error, as a detector makes), flips, in-plane 90-degree rotations and intensity jitter. Classes are
balanced by sampling. Validation (images held out whole, so no case is on both sides): ROC AUC; the
temperature that calibrates the best epoch is fitted on the same validation nodes and stored in the
checkpoint.

With ``planar`` the task trains ``lymph_node_classification_2d`` on the 2D images of the datastore: crops in
each image's plane, left-right flips only. The request's ``positive_class`` names what a label's ``metastatic``
stands for in that data (default ``metastatic``; a breast-lesion set: ``malignant``): the checkpoint's classes are
``["benign", positive_class]`` and results say it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.metrics import Metric
from monai.handlers import LrScheduleHandler
from monailabel.tasks.train.basic_train import Context
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lnnode.contracts import POSITIVE_CLASS
from lnnode.measure.features import SHAPE_FEATURES, shape_features
from lnnode.metrics.classification import (
    expected_calibration_error,
    fit_fusion,
    fit_temperature,
    fused_logits,
    roc_auc,
)
from lnnode.networks.classifier import ClassifierSpec, build_classifier_network
from lnnode.transforms import DEFAULT_INTENSITY, LoadVolumed, NormalizeIntensityd, load_label
from lnnode.transforms.crops import extract_crops, planar_views

from .base import LnnodeTrainTask, is_distributed
from .datalist import corrections_in

logger = logging.getLogger(__name__)

__all__ = ["NodeClassificationTrainer", "NodeCropDataset", "node_crops", "ClassificationAUC"]

METRIC = "val_auc"
CLASS_INDEX = {"benign": 0, "metastatic": 1}
JITTER_MM = 4.0  # sub-crop offsets up to this much: the centring error of a detector's box
# validation nodes of each class a shape fusion needs (fewer: the CNN logit alone, temperature-scaled)
MIN_FUSION = 10


def changed_by_reader(node: dict[str, Any]) -> bool:
    """A node the reader added, moved or relabelled (the label contract's ``origin`` / ``edited``)."""
    return node.get("origin") == "added" or bool(node.get("edited"))


def node_crops(
    datalist: list[dict[str, Any]],
    spec: ClassifierSpec,
    intensity: dict[str, Any],
    margin_vox: int,
    measure: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor, np.ndarray | None]:
    """Crops (N, C, L, L, L) with L = crop + 2 * margin ((N, C, L, L) for a 2d spec, on 2D images), labels (N,),
    case ids, reader-changed flags (N,) of every classed node, and with ``measure`` (the modality) each node's
    measured :data:`SHAPE_FEATURES` (N, F) (else None). Rejected boxes are not nodes: the classifier never sees
    them."""
    planar = spec.spatial_dims == 2
    load = LoadVolumed(keys="image", allow_2d=planar)
    normalise = NormalizeIntensityd(keys="image", spec=intensity)
    shape = [s + 2 * margin_vox for s in spec.crop_shape]
    crops, labels, cases, changed, features = [], [], [], [], []
    for item in datalist:
        nodes = [n for n in load_label(item["label"], item["id"])["nodes"] if n.get("class") in CLASS_INDEX]
        if not nodes:
            continue
        d = load({"image": item["image"]})
        if measure:  # on the image's own units (HU), before normalisation
            features.append(shape_features(d["image"][0], d["image_geometry"], nodes, measure))
        d = normalise(d)
        centers = [n["center"] for n in nodes]
        if planar:
            crops.append(planar_views(d["image"], d["image_geometry"], nodes, shape[0], spec.crop_spacings_for))
        else:
            crops.append(extract_crops(d["image"], d["image_geometry"], centers, shape, spec.crop_spacing))
        labels += [CLASS_INDEX[n["class"]] for n in nodes]
        cases += [item["id"]] * len(nodes)
        changed += [changed_by_reader(n) for n in nodes]
    measured = np.zeros((0, len(SHAPE_FEATURES)), np.float32) if measure else None
    if features:
        measured = np.concatenate(features)
    if not crops:
        empty = torch.zeros((0, spec.network_channels, *shape))
        return empty, torch.zeros(0), [], torch.zeros(0, dtype=torch.bool), measured
    labels_t = torch.tensor(labels, dtype=torch.float32)
    return torch.from_numpy(np.concatenate(crops)), labels_t, cases, torch.tensor(changed, dtype=torch.bool), measured


class NodeCropDataset(Dataset):
    """Node crops with augmentation (random sub-crop, flips, axial 90-degree rotations, intensity); 2D crops
    (N, C, L, L) are flipped left-right only (an ultrasound image's depth axis has a direction)."""

    def __init__(self, crops: torch.Tensor, labels: torch.Tensor, size: int, augment: bool):
        self.crops, self.labels, self.size, self.augment = crops, labels, int(size), augment
        self.margin = (crops.shape[-1] - self.size) // 2
        self.dims = crops.ndim - 2

    def __len__(self) -> int:
        return len(self.labels)

    def _window(self, crop: torch.Tensor, offsets: list[int]) -> torch.Tensor:
        return crop[(slice(None), *(slice(o, o + self.size) for o in offsets))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        crop = self.crops[index]
        m = self.margin
        if not self.augment:
            return {"image": self._window(crop, [m] * self.dims).clone(), "label": self.labels[index]}
        x = self._window(crop, torch.randint(0, 2 * m + 1, (self.dims,)).tolist())
        for dim in (1, 2, 3) if self.dims == 3 else (1,):
            if torch.rand(()) < 0.5:
                x = torch.flip(x, (dim,))
        if self.dims == 3:
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(1, 2))  # in the axial plane only
        x = x * (1.0 + 0.1 * (2 * torch.rand(()) - 1)) + 0.05 * (2 * torch.rand(()) - 1)
        if torch.rand(()) < 0.3:
            x = x + 0.02 * torch.randn_like(x)
        return {"image": x.contiguous(), "label": self.labels[index]}


class ClassificationAUC(Metric):
    """ROC AUC of the logits over the validation nodes; keeps the logits for temperature fitting."""

    def __init__(self, output_transform: Callable = lambda out: (out["pred"], out["label"])):
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, output) -> None:
        pred, label = output
        self.logits.append(torch.as_tensor(pred).detach().float().cpu().reshape(-1).numpy())
        self.labels.append(torch.as_tensor(label).detach().float().cpu().reshape(-1).numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.logits or [np.zeros(0)]), np.concatenate(self.labels or [np.zeros(0)])

    def compute(self) -> float:
        logits, labels = self.arrays()
        if len(np.unique(labels)) < 2:
            return float("nan")
        return float(roc_auc(labels.astype(int), logits))


class NodeClassificationTrainer(LnnodeTrainTask):
    """Classifier training as a MONAI Label train task (request options in ``config``)."""

    checkpoint_task = "classification"
    metric_name = METRIC

    def __init__(
        self,
        name: str,
        model_dir: str,
        publish_path: str,
        served_paths: list[str],
        spec: ClassifierSpec | None = None,
        modality: str = "ct",
        planar: bool = False,
        config: dict[str, Any] | None = None,
    ):
        self.name = name
        self.planar = planar
        self.spec = spec or (ClassifierSpec.planar() if planar else ClassifierSpec())
        self._check_dims(self.spec)
        self.modality = modality
        defaults = {
            "max_epochs": 40,
            "train_batch_size": 16,
            "val_batch_size": 32,
            "dataset": "Dataset",
            "dataloader": "DataLoader",
        }
        defaults.update(config or {})
        super().__init__(
            name,
            model_dir=model_dir,
            publish_path=publish_path,
            served_paths=served_paths,
            description=f"Train the lymph-node metastasis classifier from labelled nodes{' on 2D images' * planar}",
            labels=list(CLASS_INDEX),
            config=defaults,
        )

    def _check_dims(self, spec: ClassifierSpec) -> None:
        """A spec of the other kind is refused by name, not by a shape error deep in training."""
        dims = 2 if self.planar else 3
        if spec.spatial_dims != dims:
            raise ValueError(
                f"{self.name} trains on {dims}D crops; a {spec.architecture!r} spec is {spec.spatial_dims}D"
            )

    # -- data ---------------------------------------------------------------------------------------
    def partition_datalist(self, context: Context, shuffle: bool = True):
        train, val = super().partition_datalist(context, shuffle)
        classes = {n.get("class") for item in val for n in load_label(item["label"], item["id"])["nodes"]}
        if val and not set(CLASS_INDEX) <= classes:
            # an AUC needs both classes; rather no validation (the last epoch is published) than a meaningless one
            logger.warning(f"validation images hold classes {sorted(c for c in classes if c)}: training on all")
            train, val = list(context.datalist), []
        return train, val

    def _margin(self, context: Context) -> int:
        return int(round(JITTER_MM / context.spec.crop_spacing))

    def _fuses_shape(self, context: Context) -> bool:
        """Whether the checkpoint gets a shape fusion (request ``shape_features``, default on for 3D)."""
        return not self.planar and str(context.request.get("shape_features", True)).lower() not in ("false", "0", "no")

    def _crops(self, context: Context, datalist, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(context, "node_crops"):
            context.node_crops, context.node_features = {}, {}
        if name not in context.node_crops:
            measure = context.preprocessing["modality"] if name == "val" and self._fuses_shape(context) else None
            crops, labels, _, changed, features = node_crops(
                datalist, context.spec, context.preprocessing["intensity"], self._margin(context), measure
            )
            context.node_crops[name] = (crops, labels, changed)
            context.node_features[name] = features
            logger.info(f"{name}: {len(labels)} nodes, {int(labels.sum())} metastatic, {int(changed.sum())} changed")
        return context.node_crops[name]

    def train_data_loader(self, context, num_workers=0, shuffle=True):
        crops, labels, changed = self._crops(context, context.train_datalist, "train")
        if len(labels) == 0:
            raise ValueError("no labelled node has a class (benign or metastatic): nothing to train the classifier on")
        dataset = NodeCropDataset(crops, labels, context.spec.crop_shape[0], augment=True)
        # balanced classes: each class is drawn equally often, whatever its share of the nodes; within a
        # class, a node the reader added, moved or relabelled is drawn changed_weight times as often
        boost = torch.where(changed, float(context.request.get("changed_weight", 2.0)), 1.0).double()
        n_pos = float((labels * boost).sum())
        counts = {1.0: max(n_pos, 1e-6), 0.0: max(float(((1 - labels) * boost).sum()), 1e-6)}
        weights = torch.tensor([1.0 / counts[float(y)] for y in labels], dtype=torch.double) * boost
        # distributed: every rank draws its share of the samples (the same count, so the same number of steps)
        per_rank = -(-len(labels) // dist.get_world_size()) if is_distributed() else len(labels)
        sampler = WeightedRandomSampler(weights, num_samples=per_rank, replacement=True)
        return DataLoader(dataset, batch_size=context.train_batch_size, sampler=sampler, num_workers=0)

    def val_data_loader(self, context, num_workers=0):
        crops, labels, _ = self._crops(context, context.val_datalist, "val")
        dataset = NodeCropDataset(crops, labels, context.spec.crop_shape[0], augment=False)
        return DataLoader(dataset, batch_size=context.val_batch_size, shuffle=False, num_workers=0)

    def train_pre_transforms(self, context: Context):
        return []  # crops are made once (node_crops) and augmented by NodeCropDataset

    def val_pre_transforms(self, context: Context):
        return []

    # -- model --------------------------------------------------------------------------------------
    def network(self, context: Context):
        request = context.request
        served = self._served_checkpoint(request)
        if served is not None:
            context.spec = ClassifierSpec.from_dict(served.meta["network"])
            context.preprocessing = served.meta["preprocessing"]
            context.init = "fine-tuned"
            classes = served.meta.get("classes") or []
            context.positive = str(classes[1]) if len(classes) == 2 else POSITIVE_CLASS
            asked = request.get("positive_class")
            if asked and asked != context.positive:
                logger.warning(f"fine-tuning a model of {context.positive!r}: positive_class {asked!r} ignored "
                               "(init: scratch trains a new one)")  # fmt: skip
            network = build_classifier_network(context.spec)
            network.load_state_dict(served.state_dict)
            return network
        suffixes = self._channel_suffixes(request)
        context.spec = ClassifierSpec.from_dict(
            {**self.spec.to_dict(), **request.get("spec", {}), "in_channels": 1 + len(suffixes)}
        )
        self._check_dims(context.spec)
        context.preprocessing = {
            "modality": self.modality,
            "intensity": DEFAULT_INTENSITY[self.modality],
            "channel_suffixes": suffixes,
        }
        context.init = "scratch" + (" (ImageNet backbone)" if context.spec.pretrained_path else "")
        context.positive = str(request.get("positive_class") or POSITIVE_CLASS)
        return build_classifier_network(context.spec, load_pretrained=True)

    def optimizer(self, context: Context):
        lr = float(context.request.get("learning_rate", 1e-3))
        return torch.optim.AdamW(context.network.parameters(), lr=lr, weight_decay=1e-4)

    def lr_scheduler_handler(self, context: Context):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(context.optimizer, T_max=max(context.max_epochs, 1))
        return LrScheduleHandler(scheduler, print_lr=False)

    def loss_function(self, context: Context):
        return torch.nn.BCEWithLogitsLoss()

    def train_key_metric(self, context: Context):
        return None

    def val_key_metric(self, context: Context):
        context.val_metric = ClassificationAUC()
        return {METRIC: context.val_metric}

    # -- checkpoint ---------------------------------------------------------------------------------
    def _calibration(self, context: Context) -> dict[str, Any]:
        """Temperature fitted on the validation logits of the network as it is now (the epoch being saved)."""
        metric: ClassificationAUC | None = getattr(context, "val_metric", None)
        logits, labels = metric.arrays() if metric is not None else (np.zeros(0), np.zeros(0))
        if len(np.unique(labels)) < 2:
            return {"temperature": 1.0, "fitted": False, "reason": "no validation nodes of both classes"}
        fusion = self._fusion(context, logits, labels)
        if fusion is not None:
            logits = fused_logits(fusion, logits, context.node_features["val"])
        t = float(fit_temperature(logits, labels.astype(int)))
        before = expected_calibration_error(labels.astype(int), 1.0 / (1.0 + np.exp(-logits)))
        after = expected_calibration_error(labels.astype(int), 1.0 / (1.0 + np.exp(-logits / t)))
        calibration = {
            "temperature": t,
            "fitted": True,
            "n_val_nodes": int(len(labels)),
            "ece_before": float(before),
            "ece_after": float(after),
        }
        return {**calibration, "fusion": fusion} if fusion is not None else calibration

    def _fusion(self, context: Context, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
        """The CNN logit fused with the validation nodes' measured shape (:func:`fit_fusion`), or None."""
        features = getattr(context, "node_features", {}).get("val")
        if features is None or len(features) != len(logits) or min(labels.sum(), (1 - labels).sum()) < MIN_FUSION:
            return None
        fusion = fit_fusion(logits, features, labels.astype(int))
        fused = fused_logits(fusion, logits, features)
        return {"features": list(SHAPE_FEATURES), **fusion, "val_auc_cnn": float(roc_auc(labels.astype(int), logits)),
                "val_auc_fused": float(roc_auc(labels.astype(int), fused))}  # fmt: skip

    def _meta(self, context: Context) -> dict[str, Any]:
        crops = getattr(context, "node_crops", {})
        return {
            "name": self.name,
            "network": context.spec.to_dict(),
            "preprocessing": context.preprocessing,
            "classes": ["benign", context.positive],
            "calibration": self._calibration(context),
            "training": {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "init": context.init,
                "n_train": len(context.train_datalist),
                "n_val": len(context.val_datalist),
                "n_train_nodes": int(len(crops["train"][1])) if "train" in crops else None,
                "n_val_nodes": int(len(crops["val"][1])) if "val" in crops else None,
                "label_tag": context.request.get("label_tag"),
                "corrections": corrections_in(context.train_datalist),
                "request": {k: v for k, v in context.request.items() if isinstance(v, (int, float, str, bool))},
            },
        }
