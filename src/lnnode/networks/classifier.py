"""The node classifier: a metastasis logit from a node-centred crop of fixed physical size.

Two architectures, both built by :func:`build_classifier_network` from a :class:`ClassifierSpec`
that every checkpoint carries:

* ``3d`` (default): a small 3D ResNet on the whole crop, with an optional coordinate-attention
  block after each stage (the idea of the A-ResNet-W thyroid CT classifier: attention that is
  pooled along each axis separately keeps *where* in the crop a feature is, e.g. an eccentric
  necrosis or a border bump, which global channel attention throws away).
* ``2.5d``: three orthogonal slab images through the node centre (axial, coronal, sagittal; 3
  adjacent slices each as the RGB channels) through one shared 2D ResNet-18, features concatenated.
  It can start from ImageNet weights given as a local file (``pretrained_path``; nothing is ever
  downloaded) and trains from scratch without one.
* ``2d``: for 2D images (ultrasound, key slices): a 2D ResNet-18 on the node-centred crop, from the same
  optional local ImageNet weights (their RGB filters summed for a grey crop).
* ``2d_compact``: for 2D images too, a small 2D ResNet (one residual block per ``widths`` entry), trained from
  scratch: about a tenth of ResNet-18's weights (the shipped 2D demo model).

Crops are ``(C, X, Y, Z)`` on a world-aligned grid (LPS axes), see ``transforms/crops.py``; a ``2d``
crop is ``(C, X, Y)`` (or ``(C, X, Y, 1)``: a one-slice volume's).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "ClassifierSpec",
    "CoordinateAttention3d",
    "NodeClassifier3d",
    "NodeClassifier25d",
    "NodeClassifier2d",
    "NodeClassifier2dCompact",
    "build_classifier_network",
    "predict_logits",
    "predict_embeddings",
    "grad_cam",
    "FLIPS",
    "FLIPS_2D",
]


ARCHITECTURES = ("3d", "2.5d", "2d", "2d_compact")


@dataclass
class ClassifierSpec:
    """Everything needed to rebuild a classifier and feed it as it was trained."""

    in_channels: int = 1
    architecture: str = "3d"  # "3d", "2.5d"; 2D images: "2d" (ResNet-18) or "2d_compact"
    crop_mm: float = 48.0  # edge of the cubic crop, mm (2D: image pixels, as the 2D models work)
    crop_spacing: float = 1.0  # mm per crop voxel (2D: image pixels per crop pixel)
    widths: tuple[int, ...] = (16, 32, 64)  # 3d, 2d_compact: channels per stage (each stage halves the size)
    attention: bool = True  # 3d: coordinate attention after each stage
    dropout: float = 0.2
    pretrained_path: str = ""  # 2.5d: local torchvision ResNet-18 ImageNet weights (optional)
    # 2D: > 0 makes a crop's side this many times the node box's larger in-plane side (at least crop_mm), resampled
    # to the crop's pixels: lesions of 20 to 600 pixels (ultrasound) all fill the crop with some surroundings
    box_scale: float = 0.0
    # 2D: > 0 adds a second view per channel, a fixed crop of this size (what the box-relative view loses: the
    # lesion's absolute size and its surroundings)
    context_mm: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.crop_mm, self.crop_spacing, self.dropout = (
            float(self.crop_mm),
            float(self.crop_spacing),
            float(self.dropout),
        )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")
        if self.crop_spacing <= 0 or self.crop_mm < 4 * self.crop_spacing:
            raise ValueError(f"crop of {self.crop_mm} mm at {self.crop_spacing} mm is not a usable crop")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.box_scale, self.context_mm = float(self.box_scale), float(self.context_mm)
        for name in ("box_scale", "context_mm"):
            value = getattr(self, name)
            if value < 0 or (value and self.spatial_dims != 2):
                raise ValueError(f"{name} must be >= 0 and is for 2D crops only, got {value}")

    @property
    def spatial_dims(self) -> int:
        return 2 if self.architecture.startswith("2d") else 3

    @property
    def crop_shape(self) -> tuple[int, ...]:
        n = int(round(self.crop_mm / self.crop_spacing))
        return (n,) * self.spatial_dims

    @property
    def views(self) -> int:
        """Crops per image channel: 2 with a context view (``context_mm``), else 1."""
        return 2 if self.context_mm else 1

    @property
    def network_channels(self) -> int:
        """What the network reads: every view of every image channel."""
        return self.in_channels * self.views

    def crop_spacings_for(self, extent: float) -> list[float]:
        """Crop pixel spacing of each view for a node whose box's larger in-plane side is ``extent`` (see
        ``box_scale`` and ``context_mm``)."""
        first = self.crop_spacing
        if self.box_scale:
            first = max(self.crop_mm, self.box_scale * float(extent)) / self.crop_shape[0]
        return [first, self.context_mm / self.crop_shape[0]] if self.context_mm else [first]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def planar(cls, in_channels: int = 1) -> ClassifierSpec:
        """The compact classifier for 2D images: two 64 x 64 views, a crop of 1.5 times the box's larger side (at least
        96 image pixels) and a fixed 384-pixel crop around it."""
        return cls(
            in_channels=in_channels,
            architecture="2d_compact",
            crop_mm=96.0,
            crop_spacing=1.5,
            box_scale=1.5,
            context_mm=384.0,
            widths=(24, 48, 96, 192),
            attention=False,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown classifier spec fields {unknown}; known: {sorted(known)}")
        return cls(**d)


class CoordinateAttention3d(nn.Module):
    """Coordinate attention in 3D: per-axis profiles (average over the other two axes) share a
    bottleneck, then each axis gets its own sigmoid gate; the output is ``x * g_x * g_y * g_z``."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.squeeze = nn.Sequential(nn.Conv1d(channels, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU())
        self.gates = nn.ModuleList(nn.Conv1d(hidden, channels, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        profiles = [x.mean(dim=(3, 4)), x.mean(dim=(2, 4)), x.mean(dim=(2, 3))]  # (B, C, n_axis) each
        shared = self.squeeze(torch.cat(profiles, dim=2))
        out = x
        for axis, (part, gate) in enumerate(zip(torch.split(shared, list(sizes), dim=2), self.gates, strict=True)):
            g = torch.sigmoid(gate(part))
            shape = [g.shape[0], g.shape[1], 1, 1, 1]
            shape[2 + axis] = sizes[axis]
            out = out * g.reshape(shape)
        return out


class _ResBlock3d(nn.Module):
    conv, norm = nn.Conv3d, nn.BatchNorm3d

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        conv, norm = self.conv, self.norm
        self.body = nn.Sequential(
            conv(cin, cout, 3, stride=stride, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False),
            norm(cout),
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def _stem(conv, norm, channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(conv(channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU(inplace=True))


class NodeClassifier3d(nn.Module):
    """Stem + one residual block per width (stride 2 each) [+ coordinate attention] -> pooled -> logit."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        w0 = spec.widths[0]
        self.stem = _stem(nn.Conv3d, nn.BatchNorm3d, spec.in_channels, w0)
        stages = []
        cin = w0
        for w in spec.widths:
            block: list[nn.Module] = [_ResBlock3d(cin, w, stride=2)]
            if spec.attention:
                block.append(CoordinateAttention3d(w))
            stages.append(nn.Sequential(*block))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(spec.dropout), nn.Linear(cin, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (what Grad-CAM explains)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.adaptive_avg_pool3d(self.features(x), 1)).squeeze(1)


class _ResBlock2d(_ResBlock3d):
    conv, norm = nn.Conv2d, nn.BatchNorm2d


class NodeClassifier2dCompact(nn.Module):
    """Stem + one 2D residual block per width (stride 2 each) -> pooled -> logit, on (B, C, X, Y) crops."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        w0 = spec.widths[0]
        self.stem = _stem(nn.Conv2d, nn.BatchNorm2d, spec.network_channels, w0)
        widths = (w0, *spec.widths)
        self.stages = nn.Sequential(
            *(_ResBlock2d(a, b, stride=2) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(spec.dropout), nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., 0] if x.ndim == 5 and x.shape[-1] == 1 else x  # a one-slice volume's crop
        return self.head(torch.nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)).squeeze(1)


def _planes(x: torch.Tensor) -> list[torch.Tensor]:
    """Axial, coronal and sagittal slabs through the centre of (B, C, X, Y, Z): 3 slices x C channels each."""
    cx, cy, cz = (s // 2 for s in x.shape[2:])
    axial = x[:, :, :, :, cz - 1 : cz + 2].permute(0, 1, 4, 2, 3)  # (B, C, 3, X, Y)
    coronal = x[:, :, :, cy - 1 : cy + 2, :].permute(0, 1, 3, 2, 4)  # (B, C, 3, X, Z)
    sagittal = x[:, :, cx - 1 : cx + 2, :, :]  # (B, C, 3, Y, Z)
    return [p.reshape(p.shape[0], -1, p.shape[3], p.shape[4]) for p in (axial, coronal, sagittal)]


def _resnet18_trunk(spec: ClassifierSpec, load_pretrained: bool, first_layer) -> nn.Module:
    """torchvision's ResNet-18 without its fc layer, from ``spec.pretrained_path`` when asked. ``first_layer(rgb)``
    gives the first convolution's weights for this input from the RGB ones (None: keep the RGB layer)."""
    from torchvision.models import resnet18

    backbone = resnet18(weights=None)
    if load_pretrained and spec.pretrained_path:
        _load_imagenet(backbone, spec.pretrained_path)
    weight = first_layer(backbone.conv1.weight.detach())
    if weight is not None:
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 7, 2, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(weight)
        backbone.conv1 = conv
    backbone.fc = nn.Identity()
    return backbone


class NodeClassifier25d(nn.Module):
    """Three orthogonal slabs through a shared 2D ResNet-18; the features of the three are concatenated."""

    def __init__(self, spec: ClassifierSpec, load_pretrained: bool = False):
        super().__init__()
        c = spec.in_channels
        # 3 slices x C channels: the (pretrained) RGB filters spread over the channels
        spread = (lambda rgb: None) if c == 1 else (lambda rgb: rgb.repeat(1, c, 1, 1) / c)
        self.backbone = _resnet18_trunk(spec, load_pretrained, spread)
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(3 * 512, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = _planes(x)
        n = x.shape[0]
        feats = self.backbone(torch.cat(planes, dim=0))  # one pass for the three planes
        return self.head(torch.cat(torch.split(feats, n, dim=0), dim=1)).squeeze(1)


class NodeClassifier2d(nn.Module):
    """A 2D ResNet-18 on the node-centred crop of a 2D image -> logit."""

    def __init__(self, spec: ClassifierSpec, load_pretrained: bool = False):
        super().__init__()
        c = spec.network_channels
        # a grey image is R = G = B: the RGB filters summed see it as ImageNet's network did
        summed = lambda rgb: rgb.sum(1, keepdim=True).repeat(1, c, 1, 1) / c  # noqa: E731
        self.backbone = _resnet18_trunk(spec, load_pretrained, summed)
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(512, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., 0] if x.ndim == 5 and x.shape[-1] == 1 else x  # a one-slice volume's crop
        return self.head(self.backbone(x)).squeeze(1)


def _load_imagenet(backbone: nn.Module, path: str) -> None:
    """torchvision ResNet-18 ImageNet weights from a local file (a state dict); the fc layer is not used."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path!r} not found (nothing is downloaded: give a local file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(f"{path}: not ResNet-18 weights (missing {missing[:3]}, unexpected {unexpected[:3]})")


def build_classifier_network(spec: ClassifierSpec, load_pretrained: bool = False) -> nn.Module:
    """The network described by ``spec``: input (B, C, X, Y, Z) crops, output (B,) logits.

    ``load_pretrained`` (training from scratch only) starts a 2.5d backbone from ``spec.pretrained_path``;
    a checkpoint's own weights replace them anyway, so infer never needs that file.
    """
    if spec.architecture == "3d":
        return NodeClassifier3d(spec)
    if spec.architecture == "2d":
        return NodeClassifier2d(spec, load_pretrained=load_pretrained)
    if spec.architecture == "2d_compact":
        return NodeClassifier2dCompact(spec)
    return NodeClassifier25d(spec, load_pretrained=load_pretrained)


# the 8 flip combinations of the three crop axes; the identity first, so tta=1 is plain inference
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))
FLIPS_2D: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))  # of (N, C, X, Y) crops


def predict_logits(
    network: nn.Module,
    crops: torch.Tensor | Any,
    tta: int = 8,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    amp: bool = True,
) -> torch.Tensor:
    """Logits (N, tta) of crops (N, C, X, Y, Z), one column per flip of the crops (test-time augmentation);
    2D crops (N, C, X, Y) have 4 flips, so at most 4 columns.

    The spread over the flips is the node's uncertainty; flips are cheap (no resampling) and keep
    the crop's physical geometry, unlike rotations on an anisotropic source image.
    """
    return _predict(network, crops, tta, device, batch_size, amp, embed=False)[0]


def predict_embeddings(
    network: nn.Module,
    crops: torch.Tensor | Any,
    tta: int = 8,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, tta) as :func:`predict_logits`, and each crop's embedding (N, D): what the network's last linear
    layer reads (the pooled features), averaged over the flips. Active learning compares cases by it."""
    return _predict(network, crops, tta, device, batch_size, amp=False, embed=True)


@torch.no_grad()
def _predict(network, crops, tta, device, batch_size, amp, embed) -> tuple[torch.Tensor, torch.Tensor | None]:
    crops = torch.as_tensor(crops, dtype=torch.float32)
    if crops.ndim == 5 and crops.shape[-1] == 1:
        crops = crops[..., 0]  # 2D crops of a one-slice volume: flipping the single slice would count twice
    flips = FLIPS_2D if crops.ndim == 4 else FLIPS
    tta = int(min(max(tta, 1), len(flips)))
    device = torch.device(device)
    network.eval()
    out = torch.empty((crops.shape[0], tta), dtype=torch.float32)
    use_amp = amp and device.type == "cuda"
    seen: list[torch.Tensor] = []
    hook = None
    if embed:
        last = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
        hook = last.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().float().cpu()))
    try:
        for start in range(0, crops.shape[0], batch_size):
            batch = crops[start : start + batch_size].to(device)
            with torch.autocast("cuda", enabled=use_amp):
                for t, dims in enumerate(flips[:tta]):
                    out[start : start + batch.shape[0], t] = (
                        network(torch.flip(batch, dims) if dims else batch).float().cpu()
                    )
    finally:
        if hook is not None:
            hook.remove()
    if not embed:
        return out, None
    if not seen:
        return out, torch.zeros((0, 0))
    # per batch, tta blocks of that batch's crops, in flip order
    per_batch = [torch.stack(seen[i : i + tta]).mean(0) for i in range(0, len(seen), tta)]
    return out, torch.cat(per_batch)


def grad_cam(network: nn.Module, crops: torch.Tensor | Any, device: str | torch.device = "cpu") -> torch.Tensor:
    """Grad-CAM of the metastasis logit on the last 3D stage, upsampled to the crop: (N, X, Y, Z) in [0, 1].

    Only the 3d architecture has one feature volume to explain; a 2.5d network raises ValueError.
    """
    if not isinstance(network, NodeClassifier3d):
        raise ValueError("saliency maps need the 3d classifier architecture")
    x = torch.as_tensor(crops, dtype=torch.float32).to(device)
    network.eval()
    with torch.enable_grad():
        feats = network.features(x).detach().requires_grad_(True)
        logits = network.head(torch.nn.functional.adaptive_avg_pool3d(feats, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(logits.sum(), feats)
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
    return (cam / peak).cpu()
