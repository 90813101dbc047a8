"""Train task of ``lymph_node_detection``: RetinaNet on node-centred and random patches.

Training data: every image with a label (tag ``final`` by default) — a label JSON or an instance
mask. The reader's corrections count more: rejected false positives become hard negatives (patches
are centred on them) and added, moved or relabelled nodes are sampled ``changed_weight`` times as
often (:class:`RandFocusCropd`, for a ``focus_prob`` share of the images that have any).
Box-aware augmentation (crops that keep whole boxes, flips, in-plane 90-degree rotations,
intensity jitter). Validation: whole-volume sliding-window inference, key metric CPM. The best
epoch is published to the infer task's model path when training completes (the previous model is
kept for rollback), so the next infer request uses it without a restart.

With ``planar`` the task trains ``lymph_node_detection_2d`` on the 2D images of the datastore (volumes are left
out): a 2D RetinaNet on each image's pixel grid (:mod:`lnnode.transforms.planar`), anchors fitted to the
training boxes in pixels, left-right flips only (an ultrasound image's depth axis has a direction).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.dictionary import (
    ClipBoxToImaged,
    RandCropBoxByPosNegLabeld,
    RandFlipBoxd,
    RandRotateBox90d,
)
from monai.data import DataLoader, ThreadDataLoader
from monai.data.utils import no_collation
from monai.handlers import LrScheduleHandler
from monai.transforms import (
    DeleteItemsd,
    EnsureTyped,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monailabel.tasks.train.basic_train import Context

from lnnode.io.image import read_geometry
from lnnode.networks.anchors import anchor_coverage, design_anchor_shapes
from lnnode.networks.detector import DetectorSpec, build_detector, build_detector_network, clamp_roi
from lnnode.transforms import (
    BODY_THRESHOLD,
    DEFAULT_INTENSITY,
    CropToBodyd,
    LabelToBoxesd,
    LoadVolumed,
    NormalizeIntensityd,
    PlaneGridd,
    RandFocusCropd,
    ResampleToGridd,
    boxes_to_nodes,
    load_label,
    nodes_to_planar_boxes,
    planar_boxes_to_nodes,
    plane_grid,
    suppress_nested,
)

from .base import LnnodeTrainTask, shard, unwrap
from .datalist import corrections_in
from .handlers import DetectionCPM

logger = logging.getLogger(__name__)

__all__ = ["NodeDetectionTrainer"]

METRIC = "val_cpm"


class NodeDetectionTrainer(LnnodeTrainTask):
    """Detection training as a MONAI Label train task (request options in ``config``)."""

    checkpoint_task = "detection"
    metric_name = METRIC
    custom_iterations = True

    def __init__(
        self,
        name: str,
        model_dir: str,
        publish_path: str,
        served_paths: list[str],
        spec: DetectorSpec | None = None,
        modality: str = "ct",
        planar: bool = False,
        config: dict[str, Any] | None = None,
    ):
        self.name = name
        self.planar = planar
        self.spec = spec or (DetectorSpec.planar() if planar else DetectorSpec())
        self._check_dims(self.spec)
        self.modality = modality
        defaults = {
            "max_epochs": 50,
            "train_batch_size": 1,
            "val_batch_size": 1,
            "patches_per_image": 4,
            "focus_prob": 0.5,  # share of images with corrections whose patches centre on them
            "dataset": "CacheDataset",
            "dataloader": "ThreadDataLoader",
        }
        defaults.update(config or {})
        super().__init__(
            name,
            model_dir=model_dir,
            publish_path=publish_path,
            served_paths=served_paths,
            find_unused_parameters=True,  # a patch without a node leaves the box-regression head without gradient
            description=f"Train the lymph-node detector from labelled {'2D images' if planar else 'volumes'}",
            labels=["lymph_node"],
            config=defaults,
        )

    def _check_dims(self, spec: DetectorSpec) -> None:
        """A spec of the other kind is refused by name, not by a shape error deep in training."""
        dims = 2 if self.planar else 3
        if spec.spatial_dims != dims:
            raise ValueError(f"{self.name} trains a {dims}D detector; the spec given is {spec.spatial_dims}D")

    def _node_sizes(self, context: Context, spec: DetectorSpec) -> np.ndarray:
        """The training nodes' box sizes on the model grid (voxels; pixels of a 2D model's grid)."""
        sizes = []
        for item in context.train_datalist:
            nodes = load_label(item["label"], item["id"])["nodes"]
            if not nodes:
                continue
            if self.planar:  # on each image's own grid (its pixel spacing, its orientation)
                first = item["image"][0] if isinstance(item["image"], list) else item["image"]
                boxes = nodes_to_planar_boxes(nodes, plane_grid(read_geometry(first, allow_2d=True), spec.spacing))
                sizes.append(boxes[:, 2:] - boxes[:, :2])
            else:
                sizes.append(np.asarray([n["size"] for n in nodes], dtype=float) / np.asarray(spec.spacing))
        return np.concatenate(sizes) if sizes else np.zeros((0, spec.spatial_dims))

    def _spec_for(self, context: Context) -> DetectorSpec:
        """The served model's spec when fine-tuning, else this task's spec with anchors fitted to the data."""
        request = context.request
        served = self._served_checkpoint(request)
        if served is not None:
            context.init_state = served.state_dict
            context.preprocessing = served.meta["preprocessing"]
            return DetectorSpec.from_dict(served.meta["network"])
        suffixes = self._channel_suffixes(request)
        context.init_state = None
        context.preprocessing = {
            "modality": self.modality,
            "intensity": DEFAULT_INTENSITY[self.modality],
            "channel_suffixes": suffixes,
        }
        spec = DetectorSpec.from_dict(
            {**self.spec.to_dict(), **request.get("spec", {}), "in_channels": 1 + len(suffixes)}
        )
        self._check_dims(spec)
        if not request.get("spec", {}).get("anchor_shapes"):
            voxels = self._node_sizes(context, spec)
            if len(voxels) >= len(spec.anchor_shapes):
                spec.anchor_shapes = tuple(tuple(a) for a in design_anchor_shapes(voxels, len(spec.anchor_shapes)))
                scales = [2**level for level in range(len(spec.returned_layers) + 1)]
                context.anchor_coverage = anchor_coverage(voxels, np.asarray(spec.anchor_shapes), scales)
                logger.info(f"anchors from {len(voxels)} nodes: {spec.anchor_shapes} {context.anchor_coverage}")
        return spec

    def _base_transforms(self, context: Context, crop_to_body: bool) -> list:
        spec: DetectorSpec = context.spec
        transforms = [
            LoadVolumed(keys="image", allow_2d=self.planar),
            (PlaneGridd if self.planar else ResampleToGridd)(keys="image", spacing=spec.spacing),
            NormalizeIntensityd(keys="image", spec=context.preprocessing["intensity"]),
        ]
        if crop_to_body and not self.planar:
            transforms.append(CropToBodyd(keys="image", threshold=BODY_THRESHOLD))
        weight = float(context.request.get("changed_weight", 2.0))
        transforms.append(LabelToBoxesd(keys="label", changed_weight=weight, planar=self.planar))
        return transforms

    def _flips(self) -> list:
        """Box-aware flips (and in-plane quarter turns) of a patch; a 2D image is flipped left-right only."""

        def flip(axis: int) -> RandFlipBoxd:
            return RandFlipBoxd(
                image_keys="image", box_keys="boxes", box_ref_image_keys="image", prob=0.5, spatial_axis=axis
            )

        if self.planar:
            return [flip(0)]
        rotate = RandRotateBox90d(
            image_keys="image", box_keys="boxes", box_ref_image_keys="image", prob=0.5, max_k=3, spatial_axes=(0, 1)
        )
        return [flip(0), flip(1), flip(2), rotate]

    def train_pre_transforms(self, context: Context):
        spec: DetectorSpec = context.spec
        request = context.request
        patches = int(request.get("patches_per_image", 4))
        nodes_and_background = RandCropBoxByPosNegLabeld(
            image_keys="image",
            box_keys="boxes",
            label_keys="box_labels",
            spatial_size=list(spec.patch_size),
            whole_box=True,
            num_samples=patches,
            pos=1,
            neg=1,
            allow_smaller=True,
        )
        return [
            *self._base_transforms(context, crop_to_body=False),
            DeleteItemsd(keys=["label", "image_geometry", "grid"]),
            # the reader's corrections: patches on rejected false positives (hard negatives) and on
            # nodes added, moved or relabelled, for a share of the images that have any
            RandFocusCropd(
                nodes_and_background,
                spatial_size=spec.patch_size,
                num_samples=patches,
                prob=float(request.get("focus_prob", 0.5)),
            ),
            *self._flips(),
            ClipBoxToImaged(box_keys="boxes", label_keys=["box_labels"], box_ref_image_keys="image", remove_empty=True),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            RandGaussianNoised(keys="image", std=0.02, prob=0.3),
            EnsureTyped(keys=["image", "boxes"], dtype=torch.float32, track_meta=False),
            EnsureTyped(keys="box_labels", dtype=torch.long, track_meta=False),
        ]

    def val_pre_transforms(self, context: Context):
        return [
            *self._base_transforms(context, crop_to_body=True),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]

    def _loader(self, context, datalist, batch_size, shuffle):
        dataset, _ = self._dataset(context, datalist, is_train=shuffle)
        loader = ThreadDataLoader if context.dataloader_type == "ThreadDataLoader" else DataLoader
        return loader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, collate_fn=no_collation)

    def train_data_loader(self, context, num_workers=0, shuffle=True):
        return self._loader(context, shard(context.train_datalist), context.train_batch_size, True)

    def val_data_loader(self, context, num_workers=0):
        return self._loader(context, context.val_datalist, context.val_batch_size, False)

    # -- model --------------------------------------------------------------------------------------
    def network(self, context: Context):
        context.spec = self._spec_for(context)
        network = build_detector_network(context.spec)
        if context.init_state is not None:
            network.load_state_dict(context.init_state)
        return network

    def optimizer(self, context: Context):
        lr = float(context.request.get("learning_rate", 1e-3))
        return torch.optim.AdamW(context.network.parameters(), lr=lr, weight_decay=1e-4)

    def lr_scheduler_handler(self, context: Context):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(context.optimizer, T_max=max(context.max_epochs, 1))
        return LrScheduleHandler(scheduler, print_lr=False)

    def loss_function(self, context: Context):
        return None  # the detector computes its own classification and box-regression losses

    def train_key_metric(self, context: Context):
        return None

    def val_key_metric(self, context: Context):
        context.val_metric = DetectionCPM()
        return {METRIC: context.val_metric}

    # -- iterations ---------------------------------------------------------------------------------
    def train_iteration_update(self, context: Context):
        detector = build_detector(context.spec, context.network, training=True, device=context.device)
        scaler = torch.amp.GradScaler("cuda") if context.device.type == "cuda" and self._amp else None

        def step(engine, batch):
            samples = [s for item in batch for s in (item if isinstance(item, list) else [item])]
            images = [s["image"].to(context.device) for s in samples]
            targets = [
                {"boxes": s["boxes"].to(context.device), "labels": s["box_labels"].to(context.device)} for s in samples
            ]
            detector.train()
            context.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=scaler is not None):
                losses = detector(images, targets)
                loss = losses[detector.cls_key] + losses[detector.box_reg_key]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(context.optimizer)
                scaler.update()
            else:
                loss.backward()
                context.optimizer.step()
            return {"loss": float(loss.detach()), "cls_loss": float(losses[detector.cls_key].detach())}

        return step

    def val_iteration_update(self, context: Context):
        spec: DetectorSpec = context.spec

        def step(engine, batch):
            outputs = []
            for sample in batch:
                image = sample["image"].to(context.device)
                roi = clamp_roi(spec.roi_size, image.shape[1:], spec.size_divisible)
                detector = build_detector(spec, unwrap(context.network), device=context.device, score_thresh=0.02)
                detector.set_sliding_window_inferer(roi_size=roi, overlap=spec.overlap, device=context.device)
                detector.eval()
                with torch.no_grad(), torch.autocast("cuda", enabled=context.device.type == "cuda" and self._amp):
                    pred = detector([image], use_inferer=True)[0]
                scores = pred["labels_scores"].float().cpu().numpy()
                order = np.argsort(-scores, kind="stable")  # the infer task's post-processing, as served
                to_nodes = planar_boxes_to_nodes if self.planar else boxes_to_nodes
                nodes = to_nodes(pred["boxes"].float().cpu().numpy()[order], sample["grid"])
                for node, score in zip(nodes, scores[order], strict=True):
                    node["detection_score"] = float(score)
                outputs.append({"pred": suppress_nested(nodes), "gt": sample["label"]["nodes"]})
            return outputs

        return step

    def _meta(self, context: Context) -> dict[str, Any]:
        spec = context.spec.to_dict()
        metric: DetectionCPM | None = getattr(context, "val_metric", None)
        operating = metric.operating_point(max_fp_per_volume=1.0) if metric is not None else None
        if operating is not None and context.request.get("pick_threshold", True):
            # the default score threshold a reader sees: the validation point with <= 1 FP per volume
            spec["score_thresh"] = float(np.clip(operating["score_threshold"], 0.05, 0.95))
        return {
            "name": self.name,
            "network": spec,
            "preprocessing": context.preprocessing,
            "classes": ["lymph_node"],
            "training": {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "init": "fine-tuned" if context.init_state is not None else "scratch",
                "n_train": len(context.train_datalist),
                "n_val": len(context.val_datalist),
                "label_tag": context.request.get("label_tag"),
                "anchor_coverage": getattr(context, "anchor_coverage", None),
                "corrections": corrections_in(context.train_datalist),
                "operating_point": operating,
                "request": {k: v for k, v in context.request.items() if isinstance(v, (int, float, str, bool))},
            },
        }
