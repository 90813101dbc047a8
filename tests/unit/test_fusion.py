"""The classifier's fusion of its CNN logit with measured shape: a logistic model fitted on validation nodes."""

from __future__ import annotations

import numpy as np

from lnnode.metrics.classification import fit_fusion, fused_logits, roc_auc


def _nodes(rng, n):
    y = rng.integers(0, 2, n)
    logit = 0.5 * (2 * y - 1) + rng.normal(0, 2.0, n)  # a weak CNN
    ratio = np.clip(0.55 + 0.25 * y + rng.normal(0, 0.08, n), 0.2, 1.0)  # roundness that carries the class
    size = rng.normal(8, 2, n)  # size-matched: no information
    return y, logit, np.column_stack([size, ratio])


def test_a_feature_that_carries_the_class_lifts_a_weak_logit_on_new_nodes():
    rng = np.random.default_rng(0)
    y, logit, feats = _nodes(rng, 200)
    fusion = fit_fusion(logit, feats, y)
    assert fusion["weights"][1] > 0.5 and abs(fusion["weights"][0]) < fusion["weights"][1], fusion
    y2, logit2, feats2 = _nodes(rng, 400)  # nodes the fit never saw
    fused = fused_logits(fusion, logit2, feats2)
    assert roc_auc(y2, fused) > roc_auc(y2, logit2) + 0.15


def test_flips_keep_their_spread_and_a_missing_measurement_counts_as_the_mean():
    rng = np.random.default_rng(1)
    y, logit, feats = _nodes(rng, 100)
    fusion = fit_fusion(logit, feats, y)
    columns = np.column_stack([logit, logit + 1.0])  # two test-time flips of each node
    out = fused_logits(fusion, columns, feats)
    assert out.shape == (100, 2)
    np.testing.assert_allclose(out[:, 1] - out[:, 0], fusion["logit_weight"] / fusion["logit_std"], rtol=1e-9)
    missing = feats.copy()
    missing[0] = np.nan
    at_mean = fusion["logit_weight"] * (logit[0] - fusion["logit_mean"]) / fusion["logit_std"] + fusion["bias"]
    assert np.isclose(fused_logits(fusion, logit[:1], missing[:1])[0], at_mean)
    assert fused_logits(fusion, np.zeros((0, 8)), np.zeros((0, 2))).shape == (0, 8), "a request without nodes"


def test_a_trained_classifier_carries_the_fusion_and_its_infer_applies_it(tmp_path):
    import json

    from lib.infers.classification import NodeClassification
    from lnnode.contracts import CLASSIFICATION
    from lnnode.io.checkpoint import load_checkpoint, save_checkpoint
    from lnnode.phantoms import synthesize
    from lnnode.training import train_model

    studies = tmp_path / "studies"
    synthesize(studies, 24, modality="ct", seed=11, shape=(64, 64, 24), spacing=(1.5, 1.2, 3.0), direction="oblique")
    train_model(CLASSIFICATION, studies, tmp_path / "fused", epochs=2, init="scratch", val_split=0.5, seed=0,
                spec={"crop_mm": 24.0, "crop_spacing": 1.5}, extra={"publish": "always"})  # fmt: skip
    path = tmp_path / "fused" / f"{CLASSIFICATION}.pt"
    fusion = load_checkpoint(path).meta["calibration"]["fusion"]
    assert fusion["features"] == ["short_axis_mm", "axis_ratio", "solidity", "heterogeneity"]
    assert 0.0 <= fusion["val_auc_cnn"] <= 1.0 and fusion["val_auc_fused"] >= 0.7

    label = json.loads((studies / "labels" / "final" / "ct_000.json").read_text())
    request = {"image": str(studies / "ct_000.nii.gz"), "device": "cpu",
               "nodes": [{"center": n["center"], "size": n["size"]} for n in label["nodes"]]}  # fmt: skip
    # the same network without its fusion: the infer must give other probabilities, from the logit alone
    checkpoint = load_checkpoint(path)
    calibration = {k: v for k, v in checkpoint.meta["calibration"].items() if k != "fusion"}
    meta = {**checkpoint.meta, "calibration": calibration}
    plain = save_checkpoint(tmp_path / "plain" / f"{CLASSIFICATION}.pt", "classification", checkpoint.state_dict, meta)
    p = {}
    for name, served in (("fused", path), ("plain", plain)):
        _, result = NodeClassification(CLASSIFICATION, [str(served)], config={"device": "cpu"})(request)
        assert len(result["nodes"]) == len(label["nodes"])
        p[name] = np.array([n["p_metastasis"] for n in result["nodes"]])
        assert np.all((p[name] >= 0) & (p[name] <= 1))
    assert np.abs(p["fused"] - p["plain"]).max() > 0.01
