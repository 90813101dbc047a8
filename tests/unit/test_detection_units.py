"""Detector pieces on their own: anchors, spec, box conversions on the model grid, resampling, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnnode.contracts import label_from_instance_mask
from lnnode.geometry import ImageGeometry
from lnnode.io.checkpoint import CheckpointError, load_checkpoint, previous_path, publish, rollback, save_checkpoint
from lnnode.metrics.detection import average_precision, cpm, evaluate_detection, froc, match_volume
from lnnode.networks.anchors import anchor_coverage, centred_iou, design_anchor_shapes
from lnnode.networks.detector import DetectorSpec, build_detector, build_detector_network, feature_strides
from lnnode.transforms import LabelToBoxesd, ResampleToGridd, boxes_to_nodes, grid_for, nodes_to_boxes


def test_anchor_design_recovers_the_node_shapes():
    rng = np.random.default_rng(0)
    shapes = np.array([[3, 3, 2], [6, 4, 3], [5, 5, 5]], dtype=float)
    sizes = np.concatenate([s * rng.uniform(0.9, 1.1, (40, 3)) for s in shapes])
    designed = np.asarray(design_anchor_shapes(sizes, 3, scales=(1,)))
    best = centred_iou(shapes, designed).max(axis=1)
    assert np.all(best > 0.8), designed
    coverage = anchor_coverage(sizes, designed, (1,))
    assert coverage["iou_ge_0.5"] > 0.95


def test_anchor_design_uses_the_feature_map_scales():
    sizes = np.array([[2, 2, 2]] * 20 + [[8, 8, 8]] * 20, dtype=float)  # one shape, two octaves apart
    designed = design_anchor_shapes(sizes, 1, scales=(1, 4))
    assert designed == [[2, 2, 2]]
    with pytest.raises(ValueError, match="at least 3"):
        design_anchor_shapes(sizes[:2], 3)


def test_spec_round_trips_and_checks_sizes():
    spec = DetectorSpec(anchor_shapes=((2, 2, 1), (3, 3, 3), (5, 5, 4)))
    assert DetectorSpec.from_dict(spec.to_dict()) == spec
    assert spec.size_divisible == (16, 16, 8)
    assert feature_strides(spec) == [(4, 4, 2), (8, 8, 4), (16, 16, 8)]
    with pytest.raises(ValueError, match="divisible"):
        DetectorSpec(roi_size=(100, 96, 48))
    with pytest.raises(ValueError, match="unknown detector spec"):
        DetectorSpec.from_dict({"depth": 3})
    reference = DetectorSpec.reference_lung_nodule()
    assert reference.fpn_channels == 256 and reference.block == "bottleneck"


def test_compact_network_forward_and_detector_losses():
    spec = DetectorSpec(patch_size=(32, 32, 16))
    net = build_detector_network(spec)
    detector = build_detector(spec, net, training=True)
    detector.train()
    images = [torch.rand(1, 32, 32, 16)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 4.0, 16.0, 14.0, 9.0]]), "labels": torch.tensor([0])}]
    losses = detector(images, targets)
    loss = losses[detector.cls_key] + losses[detector.box_reg_key]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_grid_boxes_convert_exactly_and_match_resampled_voxels(oblique_geometry):
    """A node's world box survives: world -> model-grid detector box -> world, and the resampled
    image puts the node's bright voxels inside that box."""
    g = oblique_geometry
    mask = np.zeros(g.shape, np.int32)
    mask[12:20, 10:16, 4:7] = 1
    label = label_from_instance_mask(mask, g, "c")
    data = {"image": mask[None].astype(np.float32), "image_geometry": g, "label": label}
    data = ResampleToGridd(keys="image", spacing=(1.5, 1.5, 2.0))(data)
    data = LabelToBoxesd(keys="label")(data)
    grid: ImageGeometry = data["grid"]
    assert grid.is_axis_aligned() and grid.spacing == (1.5, 1.5, 2.0)
    (node,) = boxes_to_nodes(data["boxes"], grid)
    np.testing.assert_allclose(node["center"], label["nodes"][0]["center"], atol=2e-3)
    np.testing.assert_allclose(node["size"], label["nodes"][0]["size"], atol=2e-3)
    bright = np.argwhere(data["image"][0] > 0.5)
    box = data["boxes"][0]
    assert np.all(bright + 0.5 >= box[:3] - 1e-3) and np.all(bright + 0.5 <= box[3:] + 1e-3)
    np.testing.assert_allclose(nodes_to_boxes(label["nodes"], grid), data["boxes"], atol=1e-4)


def test_grid_covers_the_image():
    g = ImageGeometry((10, 10, 4), (1.0, 1.0, 5.0), (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    grid = grid_for(g, (2.0, 2.0, 2.0))
    lo, hi = g.world_bounds()
    glo, ghi = grid.world_bounds()
    assert np.all(glo <= lo + 1e-9) and np.all(ghi >= hi - 1e-9)
    assert grid.shape == (5, 5, 10)


def _node(c, s, score=None):
    n = {"center": list(c), "size": list(s)}
    if score is not None:
        n["detection_score"] = score
    return n


def test_froc_cpm_and_ap_against_a_hand_computed_case():
    gt = [[_node((0, 0, 0), (10, 10, 10)), _node((50, 0, 0), (6, 6, 6))], [_node((0, 0, 0), (8, 8, 8))]]
    pred = [
        [_node((1, 0, 0), (10, 10, 10), 0.9), _node((100, 0, 0), (5, 5, 5), 0.8), _node((50, 1, 0), (6, 6, 6), 0.3)],
        [_node((0, 0, 0), (8, 8, 8), 0.5), _node((0, 1, 0), (8, 8, 8), 0.4)],
    ]
    # by score: 0.9 TP, 0.8 FP, 0.5 TP, 0.4 FP (a duplicate), 0.3 TP; 3 nodes, 2 volumes
    matches = [match_volume(p, g) for p, g in zip(pred, gt, strict=True)]
    curve = froc(matches)
    np.testing.assert_allclose(curve["sensitivity"], [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve["fp_per_volume"], [0, 0, 0.5, 0.5, 1.0, 1.0])
    score, at = cpm(curve)
    assert at == pytest.approx({"0.125": 1 / 3, "0.25": 1 / 3, "0.5": 2 / 3, "1": 1, "2": 1, "4": 1, "8": 1})
    assert score == pytest.approx((1 / 3 + 1 / 3 + 2 / 3 + 4) / 7)
    # precision envelope: 1 at recall 1/3, 2/3 at recall 2/3, 3/5 at recall 1
    assert average_precision(matches) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    metrics = evaluate_detection(pred, gt, short_axes=[[9.0, 4.0], [12.0]])
    assert metrics["criterion"] == "IoU >= 0.1"
    bins = metrics["per_size_sensitivity"]["bins"]
    assert bins["<5mm"] == {"n": 1, "sensitivity": 1.0} and bins[">=10mm"]["n"] == 1


def test_hit_criteria_differ_as_documented():
    gt = [[_node((0, 0, 0), (10, 10, 10))]]
    off = [[_node((4, 4, 4), (30, 30, 30), 0.9)]]  # centre inside, IoU 0.037
    assert evaluate_detection(off, gt)["cpm"] == 0.0
    assert evaluate_detection(off, gt, criterion="center")["cpm"] == 1.0
    with pytest.raises(ValueError, match="criterion"):
        match_volume(off[0], gt[0], criterion="distance")


def test_checkpoints_publish_rollback_and_refuse_code(tmp_path):
    net = torch.nn.Linear(2, 1)
    a = save_checkpoint(tmp_path / "a.pt", "detection", net.state_dict(), {"v": 1})
    b = save_checkpoint(tmp_path / "b.pt", "detection", net.state_dict(), {"v": 2})
    served = tmp_path / "models" / "m.pt"
    publish(a, served)
    publish(b, served)
    assert load_checkpoint(served).meta == {"v": 2} and load_checkpoint(previous_path(served)).meta == {"v": 1}
    rollback(served)
    assert load_checkpoint(served).meta == {"v": 1} and load_checkpoint(previous_path(served)).meta == {"v": 2}
    with pytest.raises(CheckpointError, match="expected 'classification'"):
        load_checkpoint(served, task="classification")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "lnnode.checkpoint/1", "task": "detection", "state_dict": {}, "meta": Evil()}, evil)
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="not a loadable"):
        publish(evil, served)
    assert load_checkpoint(served).meta == {"v": 1}, "a refused checkpoint is never published"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


def test_nested_boxes_are_suppressed_but_neighbours_kept():
    from lnnode.transforms import suppress_nested

    big = _node((0, 0, 0), (20, 20, 20), 0.9)
    inner = _node((3, 3, 3), (6, 6, 6), 0.5)  # IoU with big is 0.027: NMS keeps it, we do not
    neighbour = _node((14, 0, 0), (8, 8, 8), 0.4)  # overlaps big, but its centre is outside it
    assert suppress_nested([big, inner, neighbour]) == [big, neighbour]


def test_operating_point_is_read_off_the_validation_froc():
    from lib.trainers.handlers import DetectionCPM

    gt = [_node((0, 0, 0), (10, 10, 10)), _node((50, 0, 0), (6, 6, 6))]
    metric = DetectionCPM()
    metric.reset()
    pred = [
        _node((0, 0, 0), (10, 10, 10), 0.9),
        _node((90, 0, 0), (5, 5, 5), 0.7),
        _node((50, 0, 0), (6, 6, 6), 0.6),
        _node((-90, 0, 0), (5, 5, 5), 0.2),
    ]
    metric.update([{"pred": pred, "gt": gt}])
    assert metric.operating_point(1.0) == {"score_threshold": 0.6, "sensitivity": 1.0, "fp_per_volume": 1.0}
    assert metric.operating_point(0.5) == {"score_threshold": 0.9, "sensitivity": 0.5, "fp_per_volume": 0.0}


def test_a_2d_spec_builds_a_2d_detector_that_trains_and_detects():
    spec = DetectorSpec.planar()
    assert spec.spatial_dims == 2 and DetectorSpec.from_dict(spec.to_dict()) == spec
    assert spec.size_divisible == (16, 16)
    with pytest.raises(ValueError, match="anchor_shapes\\[0\\] has 3 values; a 2D spec"):
        DetectorSpec(spacing=(1.0, 1.0), conv1_size=(7, 7), conv1_stride=(2, 2), roi_size=(64, 64),
                     patch_size=(64, 64))  # fmt: skip
    net = build_detector_network(spec)
    detector = build_detector(spec, net, training=True)
    detector.train()
    images = [torch.rand(1, 64, 64)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 26.0]]), "labels": torch.tensor([0])}]
    losses = detector(images, targets)
    loss = losses[detector.cls_key] + losses[detector.box_reg_key]
    loss.backward()
    assert torch.isfinite(loss)
    detector.eval()
    with torch.no_grad():
        (found,) = detector([torch.rand(1, 96, 80)], use_inferer=False)
    assert found[detector.target_box_key].shape[1] == 4, "2D boxes: x0, y0, x1, y1"


def test_body_box_leaves_out_the_table_and_keeps_both_legs():
    from lnnode.transforms import body_box

    image = np.zeros((200, 180, 40), np.float32)
    image[40:160, 30:120, :] = 1.0  # the patient
    image[20:180, 140:150, :] = 1.0  # the table below, not touching
    image[5, 5, 5] = 1.0  # a speck of noise in the air
    start, stop = body_box(image, 0.5, margin=2)
    assert start.tolist() == [38, 28, 0] and stop.tolist() == [162, 122, 40]
    legs = np.zeros((200, 100, 30), np.float32)
    legs[20:80, 20:80, :] = legs[120:180, 20:80, :] = 1.0
    start, stop = body_box(legs, 0.5, margin=0)
    assert start.tolist() == [20, 20, 0] and stop.tolist() == [180, 80, 30]


def test_whole_image_in_one_window_up_to_the_voxel_budget():
    from lnnode.networks.detector import WHOLE_IMAGE_VOXELS, clamp_roi

    assert clamp_roi((192, 192, 96), (334, 230, 141), (16, 16, 8)) == [336, 240, 144]
    big = (600, 600, 200)
    assert np.prod(big) > WHOLE_IMAGE_VOXELS
    assert clamp_roi((192, 192, 96), big, (16, 16, 8)) == [192, 192, 96]
    assert clamp_roi((192, 192), (100, 90), (16, 16)) == [112, 96]
