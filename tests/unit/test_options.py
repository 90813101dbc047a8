"""The app's --conf options: parsed once at start-up, a bad value stops the server naming the option."""

from __future__ import annotations

import pytest

from lib.options import AppOptions


def test_defaults(tmp_path):
    o = AppOptions.from_conf({}, str(tmp_path))
    assert o.model_dir == str((tmp_path / "model").resolve()) and o.demo_dir == str(tmp_path / "model" / "demo")
    assert o.models is None and o.max_image_voxels is None
    assert o.max_upload_bytes == 2048 * 2**20 and o.auto_train_every == 0 and o.auto_train_params == {}


def test_values(tmp_path):
    conf = {
        "models": "lymph_node_detection, ",
        "demo_weights": "false",
        "max_upload_mb": "1.5",
        "max_image_voxels": "1000000",
        "auto_train_every": "3",
        "auto_train_models": "lymph_node_classification",
        "auto_train_params": '{"max_epochs": 5}',
    }
    o = AppOptions.from_conf(conf, str(tmp_path))
    assert o.models == ["lymph_node_detection"] and o.demo_dir is None
    assert o.max_upload_bytes == int(1.5 * 2**20) and o.max_image_voxels == 1_000_000
    assert (o.auto_train_every, o.auto_train_models, o.auto_train_params) == (
        3, ["lymph_node_classification"], {"max_epochs": 5}
    )  # fmt: skip


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("max_upload_mb", "lots", "--conf max_upload_mb: a number"),
        ("al_novelty_weight", "1", "--conf al_novelty_weight was removed"),
        ("auto_train_every", "often", "--conf auto_train_every"),
        ("auto_train_params", "{max_epochs: 5}", "--conf auto_train_params"),
        ("auto_train_params", "[5]", "must be a JSON object"),
    ],
)
def test_a_bad_value_names_the_option(tmp_path, key, value, words):
    with pytest.raises(ValueError) as caught:
        AppOptions.from_conf({key: value}, str(tmp_path))
    assert words in str(caught.value)
