"""Infer request parameters: one table, typed values back, a 400 naming the parameter for anything else."""

from __future__ import annotations

import pytest

from lib.server.errors import RequestError
from lib.server.params import INFER_PARAMS, check_infer_params


def test_values_come_back_typed_and_empty_ones_mean_the_default():
    typed = check_infer_params(
        {"score_thresh": "0.25", "max_boxes": "12", "tta": 4, "amp": "false", "saliency": True, "device": "cuda:1",
         "nms_thresh": "", "p_thresh": None, "image": "ct_000"}
    )  # fmt: skip
    expected = {"score_thresh": 0.25, "max_boxes": 12, "tta": 4, "amp": False, "saliency": True, "device": "cuda:1"}
    assert typed == expected
    assert isinstance(typed["max_boxes"], int) and isinstance(typed["score_thresh"], float)


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("score_thresh", "abc", "must be a number"),
        ("score_thresh", 1.5, "between 0.0 and 1.0"),
        ("max_boxes", 2.5, "an integer"),
        ("max_boxes", 0, "between 1"),
        ("tta", 9, "between 1 and 8"),
        ("amp", "maybe", "true or false"),
        ("crop_to_body", 2, "true or false"),
        ("device", "gpu please", "'cpu', 'cuda' or 'cuda:N'"),
        ("max_boxes", True, "an integer"),
        ("p_thresh", float("inf"), "between"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_parameter(name, value, words):
    with pytest.raises(RequestError) as caught:
        check_infer_params({name: value})
    assert caught.value.status_code == 400
    assert str(caught.value).startswith(f"{name}: ") and words in str(caught.value)


def test_every_parameter_in_the_table_has_a_kind_that_is_checked():
    assert {spec[0] for spec in INFER_PARAMS.values()} <= {"float", "int", "bool", "device"}
