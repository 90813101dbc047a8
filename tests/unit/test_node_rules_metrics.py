"""Rule baselines, N-stage hint and node-level classification metrics against hand-computed values."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lnnode.measure.rules import morphology_rule, n_stage_hint, node_rules, size_rule
from lnnode.metrics.classification import (
    apply_temperature,
    binary_metrics,
    bootstrap_auc_ci,
    classification_report,
    cohen_kappa,
    expected_calibration_error,
    fit_temperature,
    roc_auc,
    roc_curve,
    rule_scores,
    youden_point,
)


def test_size_rule_boundary_is_ten_millimetres():
    assert size_rule(9.99) == "not_suspicious"
    assert size_rule(10.0) == "suspicious"
    assert size_rule(None) == "indeterminate"


@pytest.mark.parametrize(
    ("short", "features", "expected"),
    [
        (4.9, (True, True, False), "not_suspicious"),  # < 5 mm needs all three
        (4.9, (True, True, True), "suspicious"),
        (5.0, (True, False, False), "not_suspicious"),  # 5-9 mm needs two
        (5.0, (False, True, True), "suspicious"),
        (8.99, (True, False, True), "suspicious"),
        (9.0, (False, False, False), "suspicious"),  # >= 9 mm always
        (None, (True, True, True), "indeterminate"),
    ],
)
def test_morphology_rule_follows_the_esgar_size_bands(short, features, expected):
    assert morphology_rule(short, *features) == expected


def test_node_rules_and_stage_hint():
    m = SimpleNamespace(short_axis_mm=6.0, features={"round": True, "irregular_border": True, "heterogeneous": False})
    assert node_rules(m) == {"size_10mm": "not_suspicious", "morphology": "suspicious"}
    assert node_rules(None) == {"size_10mm": "indeterminate", "morphology": "indeterminate"}
    assert [n_stage_hint(n) for n in (0, 1, 3, 4, 9)] == ["N0", "N1", "N1", "N2", "N2"]
    with pytest.raises(ValueError):
        n_stage_hint(-1)


def test_auc_with_ties_by_hand():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5/4
    y, s = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    assert roc_auc(y, s) == pytest.approx(0.875)
    fpr, tpr, thr = roc_curve(y, s)
    assert np.allclose(fpr, [0, 0, 0.5, 1]) and np.allclose(tpr, [0, 0.5, 1, 1])
    assert np.isinf(thr[0]) and np.allclose(thr[1:], [0.9, 0.5, 0.1])
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_auc_equals_the_trapezoid_area_on_random_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes ties
    fpr, tpr, _ = roc_curve(y, s)
    assert roc_auc(y, s) == pytest.approx(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def test_bootstrap_ci_contains_the_auc_and_is_deterministic():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(60, int)]
    s = rng.normal(y, 1.0)
    ci = bootstrap_auc_ci(y, s, n_boot=300, seed=1)
    assert ci[0] <= roc_auc(y, s) <= ci[1] and ci[1] - ci[0] < 0.4
    assert ci == bootstrap_auc_ci(y, s, n_boot=300, seed=1)


def test_youden_point_and_binary_metrics_by_hand():
    y, s = [0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.7, 0.9]
    # at 0.7: sens 2/3, spec 1 -> J 0.667; at 0.4: sens 1, spec 1/2 -> J 0.5
    assert youden_point(y, s) == pytest.approx(0.7)
    m = binary_metrics(y, [0, 0, 0, 1, 1])
    assert (m["sensitivity"], m["specificity"], m["ppv"], m["npv"]) == (2 / 3, 1.0, 1.0, pytest.approx(2 / 3))
    none = binary_metrics([0, 1], [0, 0])
    assert none["ppv"] is None and none["sensitivity"] == 0.0


def test_ece_by_hand_and_temperature_recovery():
    # bins: [0.1, 0.1] observed 0 -> 0.1; [0.9, 0.9] observed 1/2 -> 0.4; ECE = 0.5*0.1 + 0.5*0.4
    assert expected_calibration_error([0, 0, 1, 0], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)
    rng = np.random.default_rng(5)
    z = rng.normal(0, 4, 20000)
    y = (rng.random(z.size) < apply_temperature(z, 2.5)).astype(int)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.08)


def test_kappa_by_hand():
    # confusion (rows a, cols b) [[2,1,0],[0,2,1],[0,0,2]]: po 6/8; pe (3*2 + 3*3 + 2*3)/64 = 21/64
    a = ["N0", "N0", "N0", "N1", "N1", "N1", "N2", "N2"]
    b = ["N0", "N0", "N1", "N1", "N1", "N2", "N2", "N2"]
    k = cohen_kappa(a, b, labels=["N0", "N1", "N2"])
    assert k["kappa"] == pytest.approx((6 / 8 - 21 / 64) / (1 - 21 / 64))
    assert k["confusion"] == [[2, 1, 0], [0, 2, 1], [0, 0, 2]]
    assert cohen_kappa(["N0", "N0"], ["N0", "N0"])["kappa"] == 1.0
    assert cohen_kappa(a, b, labels=["N0", "N1", "N2"], weights="linear")["kappa"] > k["kappa"]


def test_report_covers_the_classifier_and_each_rule_and_serialises():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(20, int), np.zeros(30, int)]
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    size = ["suspicious" if v else "not_suspicious" for v in rng.random(50) < 0.3 + 0.4 * y]
    size[0] = "indeterminate"
    report = classification_report(y, p, rules={"size_10mm": size}, n_boot=100)
    json.dumps(report)
    assert set(report["scorers"]) == {"classifier", "size_10mm"}
    assert report["scorers"]["size_10mm"]["auc"] == pytest.approx(roc_auc(y, rule_scores(size)))
    assert report["scorers"]["size_10mm"]["indeterminate"] == 1
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
