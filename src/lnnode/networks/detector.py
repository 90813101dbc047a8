"""The node detector: MONAI's RetinaNet (ResNet + FPN) with node-sized anchors, ATSS matching
and hard-negative sampling. One builder for the network and one for the detector around it, both
driven by a :class:`DetectorSpec` that every checkpoint carries.

The defaults are the compact lnnode detector (ResNet10-like with narrow widths, a 32-channel FPN,
2-layer heads, 1.5 x 1.5 x 2 mm): MONAI's reference lung-nodule recipe is the same builder with
``DetectorSpec.reference_lung_nodule()``. A spec with two spacing values is a 2D detector (images of
shape (C, W, H), boxes (x0, y0, x1, y1)); ``DetectorSpec.planar()`` is the compact one for 2D images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.nets import resnet
from torch import nn

__all__ = ["DetectorSpec", "build_detector_network", "build_detector", "feature_strides"]


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector and run it as it was trained."""

    in_channels: int = 1
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    block: str = "basic"  # "basic" (ResNet10/18/34) or "bottleneck" (ResNet50+)
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    inplanes: tuple[int, int, int, int] = (16, 32, 64, 128)
    conv1_size: tuple[int, int, int] = (5, 5, 3)
    conv1_stride: tuple[int, int, int] = (2, 2, 1)
    returned_layers: tuple[int, ...] = (1, 2)
    fpn_channels: int = 32
    head_layers: int = 2
    anchor_shapes: tuple[tuple[int, int, int], ...] = ((4, 4, 3), (6, 6, 4), (8, 8, 6))
    # inference
    roi_size: tuple[int, int, int] = (192, 192, 96)
    overlap: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.22
    max_boxes: int = 100
    topk_per_level: int = 1000
    # training
    patch_size: tuple[int, int, int] = (96, 96, 48)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(v) for v in self.spacing)
        if len(self.spacing) not in (2, 3):
            raise ValueError(f"spacing has 2 (a 2D detector) or 3 values, got {len(self.spacing)}")
        for name in (
            "layers",
            "inplanes",
            "conv1_size",
            "conv1_stride",
            "returned_layers",
            "roi_size",
            "patch_size",
        ):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self.anchor_shapes = tuple(tuple(int(v) for v in a) for a in self.anchor_shapes)
        self._check_axes()
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.fpn_channels % 8:
            raise ValueError(f"fpn_channels must be a multiple of 8 (GroupNorm), got {self.fpn_channels}")
        if not 1 <= self.head_layers <= 4:
            raise ValueError(f"head_layers must be 1..4, got {self.head_layers}")
        divisible = np.asarray(self.size_divisible)
        for name in ("roi_size", "patch_size"):
            if np.any(np.asarray(getattr(self, name)) % divisible):
                raise ValueError(f"{name} {getattr(self, name)} must be divisible by {tuple(divisible)}")

    def _check_axes(self) -> None:
        """Every per-axis field has one value per spatial dimension (a 2D spec is not half a 3D one)."""
        per_axis = {name: getattr(self, name) for name in ("conv1_size", "conv1_stride", "roi_size", "patch_size")}
        per_axis.update({f"anchor_shapes[{i}]": a for i, a in enumerate(self.anchor_shapes)})
        for name, values in per_axis.items():
            if len(values) != self.spatial_dims:
                raise ValueError(f"{name} has {len(values)} values; a {self.spatial_dims}D spec needs that many")

    @property
    def spatial_dims(self) -> int:
        return len(self.spacing)

    @property
    def size_divisible(self) -> tuple[int, ...]:
        """Input size multiple so that every feature map level has whole cells."""
        coarsest = np.asarray(feature_strides(self)[-1])
        return tuple(int(v) for v in coarsest)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {
            k: (list(map(list, v)) if k == "anchor_shapes" else list(v) if isinstance(v, tuple) else v)
            for k, v in d.items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown detector spec fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def planar(cls, in_channels: int = 1) -> DetectorSpec:
        """The compact detector for 2D images (ultrasound, key slices), on every 4th image pixel (the spacing of a 2D
        spec counts image pixels, see :mod:`lnnode.transforms.planar`): 512-pixel training patches, 768-pixel
        windows, for lesions and nodes of about 30 to 600 pixels on images of 400 to 1000 (training fits the
        anchors to the data)."""
        return cls(
            in_channels=in_channels,
            spacing=(4.0, 4.0),
            conv1_size=(7, 7),
            conv1_stride=(2, 2),
            anchor_shapes=((8, 8), (12, 10), (16, 12)),
            roi_size=(192, 192),
            patch_size=(128, 128),
        )

    @classmethod
    def reference_lung_nodule(cls, in_channels: int = 1) -> DetectorSpec:
        """MONAI's lung-nodule detection recipe (LUNA16): ResNet50-FPN, 256-channel FPN, 4-layer heads."""
        return cls(
            in_channels=in_channels,
            spacing=(0.703125, 0.703125, 1.25),
            block="bottleneck",
            layers=(3, 4, 6, 3),
            inplanes=(64, 128, 256, 512),
            conv1_size=(7, 7, 7),
            conv1_stride=(2, 2, 1),
            returned_layers=(1, 2),
            fpn_channels=256,
            head_layers=4,
            anchor_shapes=((6, 8, 4), (8, 6, 5), (10, 10, 6)),
            roi_size=(512, 512, 192),
            overlap=0.25,
            score_thresh=0.02,
            nms_thresh=0.22,
            max_boxes=100,
            patch_size=(192, 192, 80),
        )


def feature_strides(spec: DetectorSpec) -> list[tuple[int, ...]]:
    """Voxel stride of each feature map level, finest first (conv1, max-pool, then x2 per level)."""
    base = np.asarray(spec.conv1_stride) * 2  # max-pool halves every axis; layer1 keeps the size
    strides = [base * 2 ** (layer - 1) for layer in spec.returned_layers]
    strides.append(strides[-1] * 2)  # LastLevelMaxPool
    return [tuple(int(v) for v in s) for s in strides]


def build_detector_network(spec: DetectorSpec) -> RetinaNet:
    """RetinaNet network: ResNet backbone, FPN with ``fpn_channels``, heads with ``head_layers`` convs."""
    block = resnet.ResNetBlock if spec.block == "basic" else resnet.ResNetBottleneck
    backbone = resnet.ResNet(
        block=block,
        layers=list(spec.layers),
        block_inplanes=list(spec.inplanes),
        spatial_dims=spec.spatial_dims,
        n_input_channels=spec.in_channels,
        conv1_t_size=spec.conv1_size,
        conv1_t_stride=spec.conv1_stride,
        num_classes=1,
        feed_forward=False,
    )
    expansion = block.expansion
    feature_extractor = BackboneWithFPN(
        backbone,
        return_layers={f"layer{layer}": str(i) for i, layer in enumerate(spec.returned_layers)},
        in_channels_list=[spec.inplanes[layer - 1] * expansion for layer in spec.returned_layers],
        out_channels=spec.fpn_channels,
        spatial_dims=spec.spatial_dims,
    )
    network = RetinaNet(
        spatial_dims=spec.spatial_dims,
        num_classes=1,
        num_anchors=len(spec.anchor_shapes),
        feature_extractor=feature_extractor,
        size_divisible=spec.size_divisible,
    )
    # MONAI's heads have 4 conv+norm+relu stages; fewer keep the detector fast on a CPU
    for head in (network.classification_head, network.regression_head):
        head.conv = nn.Sequential(*list(head.conv.children())[: 3 * spec.head_layers])
    return network


def build_detector(
    spec: DetectorSpec,
    network: nn.Module | None = None,
    training: bool = False,
    device: str | torch.device = "cpu",
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    max_boxes: int | None = None,
    sw_batch_size: int = 1,
) -> RetinaNetDetector:
    """The RetinaNetDetector around ``network`` (built from ``spec`` when None): anchors from the
    spec, ATSS matching and hard-negative sampling for training, a sliding-window inferer and box
    selection for inference (thresholds from the spec unless overridden)."""
    network = network if network is not None else build_detector_network(spec)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(spec.returned_layers) + 1)],
        base_anchor_shapes=[list(a) for a in spec.anchor_shapes],
    )
    # attributes given explicitly: a DistributedDataParallel wrapper hides them on the network
    detector = RetinaNetDetector(
        network=network,
        anchor_generator=anchors,
        spatial_dims=spec.spatial_dims,
        num_classes=1,
        size_divisible=spec.size_divisible,
        debug=False,
    )
    detector.set_target_keys(box_key="boxes", label_key="labels")
    if training:
        detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
        detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_box_selector_parameters(
        score_thresh=spec.score_thresh if score_thresh is None else score_thresh,
        topk_candidates_per_level=spec.topk_per_level,
        nms_thresh=spec.nms_thresh if nms_thresh is None else nms_thresh,
        detections_per_img=spec.max_boxes if max_boxes is None else max_boxes,
    )
    detector.set_sliding_window_inferer(
        roi_size=list(spec.roi_size),
        overlap=spec.overlap,
        sw_batch_size=sw_batch_size,
        mode="constant",
        device=device,
    )
    return detector


# an image (after the body crop) up to this many voxels, padded, is run in one window: overlapping windows
# compute the overlap twice (a 334 x 230 x 141 chest on 192 x 192 x 96 windows: about 2.5 times the voxels);
# peak memory on the CPU is then about 1.7 GB for the default network
WHOLE_IMAGE_VOXELS = 16_000_000


def clamp_roi(roi: Sequence[int], shape: Sequence[int], divisible: Sequence[int]) -> list[int]:
    """The sliding-window size for an image: the whole (padded) image when it has at most
    ``WHOLE_IMAGE_VOXELS`` voxels, else ``roi``, no larger than the padded image on any axis."""
    padded = [int(np.ceil(s / d)) * d for s, d in zip(shape, divisible, strict=True)]
    if int(np.prod(padded)) <= WHOLE_IMAGE_VOXELS:
        return padded
    return [int(min(r, p)) for r, p in zip(roi, padded, strict=True)]
