"""Classifier pieces without the server: crops on oblique grids, networks, TTA, calibration, node data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.infers.classification import probabilities
from lnnode.contracts import ContractError, validate_query_nodes
from lnnode.geometry import ImageGeometry
from lnnode.networks.classifier import (
    FLIPS,
    ClassifierSpec,
    CoordinateAttention3d,
    build_classifier_network,
    predict_logits,
)
from lnnode.transforms.crops import crop_geometry, extract_crops


def ball_image(geometry: ImageGeometry, center: np.ndarray, radius: float) -> np.ndarray:
    """1 inside a world-space ball, 0 outside, sampled at voxel centres of ``geometry``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = geometry.index_to_world(idx.astype(float))
    return (np.linalg.norm(world - center, axis=1) <= radius).reshape(geometry.shape).astype(np.float32)


@pytest.mark.parametrize("which", ["oblique_geometry", "flipped_geometry"])
def test_crop_is_centred_on_the_world_point_whatever_the_direction(which, request):
    geometry: ImageGeometry = request.getfixturevalue(which)
    center = geometry.index_to_world(np.asarray(geometry.shape) / 2.0 - 0.5)
    image = ball_image(geometry, center, radius=6.0)
    crops = extract_crops(image[None], geometry, [center], shape=(15, 15, 15), spacing=1.0)
    assert crops.shape == (1, 1, 15, 15, 15)
    crop = crops[0, 0]
    mass = np.argwhere(crop > 0.5).mean(axis=0)
    # the ball's centre of mass sits at the crop centre (index 7) within the source's coarse sampling
    assert np.allclose(mass, 7.0, atol=1.0), mass
    g = crop_geometry(center, (15, 15, 15), 1.0)
    assert np.allclose(g.index_to_world([7, 7, 7]), center)
    assert np.allclose(g.direction_matrix, np.eye(3))


def test_crop_outside_the_image_is_filled():
    g = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.ones((1, 10, 10, 10), np.float32)
    crop = extract_crops(image, g, [[0.0, 0.0, 0.0]], shape=(8, 8, 8), spacing=1.0, fill=-1.0)[0, 0]
    assert crop.min() == -1.0 and crop.max() == 1.0
    assert extract_crops(image, g, [], shape=(8, 8, 8), spacing=1.0).shape == (0, 1, 8, 8, 8)


@pytest.mark.parametrize("architecture", ["3d", "2.5d", "2d"])
@pytest.mark.parametrize("channels", [1, 2])
def test_networks_give_one_logit_per_crop(architecture, channels):
    spec = ClassifierSpec(in_channels=channels, architecture=architecture, crop_mm=24.0, widths=(4, 8))
    net = build_classifier_network(spec).eval()
    x = torch.randn(3, channels, *spec.crop_shape)
    assert net(x).shape == (3,) and len(spec.crop_shape) == (2 if architecture == "2d" else 3)
    if architecture == "2d":  # a one-slice volume's crop too
        assert torch.allclose(net(x[..., None]), net(x))


def test_coordinate_attention_gates_vary_along_each_axis():
    torch.manual_seed(0)
    att = CoordinateAttention3d(8).eval()
    x = torch.rand(1, 8, 6, 5, 4) + 0.5
    y = att(x)
    assert y.shape == x.shape
    gate = (y / x)[0, 0]  # the product of the three axis gates: position-dependent, unlike SE attention
    for axis in range(3):
        profile = gate.mean(dim=tuple(a for a in range(3) if a != axis))
        assert profile.std() > 1e-4, axis


def test_imagenet_weights_come_from_a_local_file_only(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(source.state_dict(), path)
    spec = ClassifierSpec(architecture="2.5d", crop_mm=24.0, pretrained_path=str(path))
    net = build_classifier_network(spec, load_pretrained=True)
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    # infer rebuilds without the file (the checkpoint's weights replace it)
    spec.pretrained_path = str(tmp_path / "gone.pth")
    build_classifier_network(spec)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_classifier_network(spec, load_pretrained=True)


def test_tta_logits_use_every_flip_and_the_identity_first():
    spec = ClassifierSpec(crop_mm=16.0, widths=(4,))
    net = build_classifier_network(spec).eval()
    crops = torch.randn(5, 1, *spec.crop_shape)
    logits = predict_logits(net, crops, tta=8, batch_size=2)
    assert logits.shape == (5, 8) and len(FLIPS) == 8
    with torch.no_grad():
        assert torch.allclose(logits[:, 0], net(crops), atol=1e-5)
        assert torch.allclose(logits[:, 3], net(torch.flip(crops, (4,))), atol=1e-5)
    assert predict_logits(net, crops, tta=1).shape == (5, 1)


def test_probabilities_use_the_temperature_and_report_the_spread():
    logits = torch.tensor([[2.0, 2.0], [0.0, 4.0]])
    p, u = probabilities(logits, temperature=2.0)
    assert p[0] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert u[0] == pytest.approx(0.0) and u[1] > 0.1
    assert np.all((p >= 0) & (p <= 1))


def test_query_nodes_are_validated_with_the_field_named():
    ok = [{"center": [1, 2, 3], "size": [4, 5, 6], "id": "n1", "detection_score": 0.9}]
    assert validate_query_nodes(ok) is ok
    with pytest.raises(ContractError, match=r"nodes\[0\]\.size\[1\]"):
        validate_query_nodes([{"center": [1, 2, 3], "size": [4, -5, 6]}])
    with pytest.raises(ContractError, match=r"nodes\[1\]\.center"):
        validate_query_nodes([ok[0], {"size": [1, 1, 1]}])
    with pytest.raises(ContractError, match=r"nodes\[0\]\.center\[2\]"):
        validate_query_nodes([{"center": [1, 2, float("nan")], "size": [1, 1, 1]}])
    with pytest.raises(ContractError, match="unique"):
        validate_query_nodes([ok[0], dict(ok[0])])
    with pytest.raises(ContractError, match="list"):
        validate_query_nodes({"center": [1, 2, 3]})


def test_node_crop_dataset_augments_within_the_margin():
    from lib.trainers.classification import NodeCropDataset

    crops = torch.arange(2 * 1 * 12**3, dtype=torch.float32).reshape(2, 1, 12, 12, 12)
    labels = torch.tensor([0.0, 1.0])
    plain = NodeCropDataset(crops, labels, size=8, augment=False)
    assert torch.equal(plain[1]["image"], crops[1, :, 2:10, 2:10, 2:10]) and plain[1]["label"] == 1.0
    torch.manual_seed(0)
    augmented = NodeCropDataset(crops, labels, size=8, augment=True)
    shapes = {tuple(augmented[i % 2]["image"].shape) for i in range(10)}
    assert shapes == {(1, 8, 8, 8)}


def test_saliency_is_a_small_world_aligned_nifti_around_the_node(tmp_path):
    import base64

    from lib.infers.classification import SALIENCY_MIME, saliency_data_uri
    from lnnode.io.image import read_image
    from lnnode.networks.classifier import grad_cam

    spec = ClassifierSpec(crop_mm=16.0, widths=(4, 8))
    net = build_classifier_network(spec)
    cams = grad_cam(net, torch.randn(2, 1, *spec.crop_shape))
    assert cams.shape == (2, *spec.crop_shape)
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0 + 1e-6
    center = [12.5, -40.0, 230.0]
    uri = saliency_data_uri(cams[0].numpy(), center, spec.crop_spacing)
    assert uri.startswith(SALIENCY_MIME) and len(uri) < 20_000
    path = tmp_path / "s.nii.gz"
    path.write_bytes(base64.b64decode(uri[len(SALIENCY_MIME) :]))
    array, g = read_image(path)
    assert array.shape == (8, 8, 8) and g.spacing == (2.0, 2.0, 2.0)
    lo, hi = g.world_bounds()
    assert np.allclose((lo + hi) / 2, center)
    with pytest.raises(ValueError, match="3d"):
        grad_cam(
            build_classifier_network(ClassifierSpec(architecture="2.5d", crop_mm=16.0)), torch.zeros(1, 1, 16, 16, 16)
        )


def test_the_2d_classifier_starts_from_local_imagenet_weights_and_flips_in_the_plane(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    spec = ClassifierSpec(architecture="2d", crop_mm=32.0, pretrained_path=str(tmp_path / "resnet18.pth"))
    net = build_classifier_network(spec, load_pretrained=True).eval()
    # a grey crop is R = G = B: the summed RGB filters give the ImageNet network's first layer response
    assert torch.allclose(net.backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(net.backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    crops = torch.randn(3, 1, *spec.crop_shape)
    logits = predict_logits(net, crops, tta=8)
    assert logits.shape == (3, 4), "four flips of a 2D crop"
    assert torch.allclose(predict_logits(net, crops[..., None], tta=8), logits), "a one-slice volume's crop too"
    with torch.no_grad():
        assert torch.allclose(logits[:, 3], net(torch.flip(crops, (2, 3))), atol=1e-5)


def test_the_3d_trainers_refuse_a_2d_spec_by_name(tmp_path):
    from lib.trainers import NodeClassificationTrainer, NodeDetectionTrainer
    from lnnode.networks.detector import DetectorSpec

    with pytest.raises(ValueError, match="3D detector; the spec given is 2D"):
        NodeDetectionTrainer("lymph_node_detection", str(tmp_path), str(tmp_path / "d.pt"), [],
                             spec=DetectorSpec.planar())  # fmt: skip
    with pytest.raises(ValueError, match="3D crops; a '2d' spec is 2D"):
        NodeClassificationTrainer("lymph_node_classification", str(tmp_path), str(tmp_path / "c.pt"), [],
                                  spec=ClassifierSpec(architecture="2d"))  # fmt: skip
