"""Units of the correction loop: review statistics, patches on corrections, the publish gate, the
uncertainty score's parts and the ``uncertain`` ranking."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from lib.activelearning.uncertain import IN_REVIEW_SECONDS, SERVED_KEY, Uncertain, cold_start, rank_key
from lib.scoring.appearance import APPEARANCE_KEY, appearance, appearance_distance
from lib.scoring.uncertainty import SCORE_KEY, detection_disagreement, mirror_nodes
from lib.trainers.handlers import PublishBestModel
from lnnode.corrections import review_stats, summarise_reviews
from lnnode.geometry import ImageGeometry
from lnnode.transforms import RandFocusCropd


def result_node(i: int, p: float, center=(0.0, 0.0, 0.0)) -> dict:
    return {"id": f"n{i}", "center": list(center), "size": [8.0, 8.0, 6.0], "detection_score": 0.9, "p_metastasis": p}


def test_review_stats_against_the_model_result():
    original = {"model": {"detector": "d@1", "classifier": "c@1"}, "nodes": [
        result_node(1, 0.9), result_node(2, 0.2, (20, 0, 0)), result_node(3, 0.7, (40, 0, 0)),
        result_node(4, 0.1, (60, 0, 0)), result_node(5, 0.5, (80, 0, 0)),
    ]}  # fmt: skip
    label = {"nodes": [
        {"center": [0, 0, 0], "size": [8, 8, 6], "class": "metastatic", "origin": "model", "from_node": "n1"},
        {"center": [20, 0, 0], "size": [8, 8, 6], "class": "metastatic", "origin": "model", "from_node": "n2"},
        {"center": [41.5, 0, 0], "size": [8, 8, 6], "class": "metastatic", "origin": "model", "from_node": "n3"},
        {"center": [0, 30, 0], "size": [5, 5, 5], "class": "benign", "origin": "added"},
    ], "rejected": [{"center": [60, 0, 0], "size": [8, 8, 6], "from_node": "n4"}]}  # fmt: skip
    stats = review_stats(label, original)
    assert (stats["accepted"], stats["relabelled"], stats["edited"]) == (1, 1, 1)  # n1 kept, n2 relabelled, n3 moved
    assert (stats["rejected"], stats["added"], stats["unreviewed"]) == (1, 1, 1)  # n4 rejected, n5 left
    assert stats["corrections"] == 4 and stats["n_model_nodes"] == 5
    assert stats["compared_with"] == original["model"]

    alone = review_stats(label, None)  # no model result: only what the label says by itself
    assert alone["relabelled"] is None and alone["added"] == 1 and alone["rejected"] == 1

    summary = summarise_reviews(
        [{"image": f"c{i}", "ts": i, "stats": {"corrections": c, "added": 1}} for i, c in enumerate([4, 2, 1])],
        window=2,
    )
    assert summary["n_cases"] == 3 and summary["totals"]["added"] == 3
    assert [t["mean_corrections"] for t in summary["trend"]] == [3.0, 1.0]


def test_focus_crop_centres_patches_on_rejected_boxes_and_changed_nodes():
    image = torch.zeros((1, 64, 64, 32))
    image[0, 53, 13, 23] = 1.0  # the rejected box's centre
    image[0, 43, 43, 13] = 2.0  # the second node's centre
    boxes = np.array([[5, 5, 5, 11, 11, 9], [40, 40, 10, 46, 46, 16]], np.float32)
    fallback_calls = []

    def fallback(d):
        fallback_calls.append(d)
        return [d]

    crop = RandFocusCropd(fallback, spatial_size=(24, 24, 16), num_samples=6, prob=1.0, jitter=0.1)
    crop.set_random_state(0)
    rejected = np.array([[50, 10, 20, 56, 16, 26]], np.float32)
    d = {"image": image, "boxes": boxes, "box_labels": np.zeros(2, np.int64),
         "box_weights": np.array([1.0, 1.0], np.float32), "rejected_boxes": rejected}  # fmt: skip
    patches = crop(d)
    assert len(patches) == 6 and not fallback_calls
    for p in patches:
        assert tuple(p["image"].shape) == (1, 24, 24, 16)
        assert "rejected_boxes" not in p and "box_weights" not in p
        assert len(p["boxes"]) == len(p["box_labels"])
        assert (p["image"] == 1.0).sum() == 1, "every patch holds the rejected false positive"

    d2 = {**d, "rejected_boxes": np.zeros((0, 6), np.float32), "box_weights": np.array([1.0, 3.0], np.float32)}
    for p in crop(d2):  # the changed node (weight 3) is in every patch, with its box
        assert (p["image"] == 2.0).sum() == 1 and len(p["boxes"]) >= 1

    d3 = {**d, "rejected_boxes": np.zeros((0, 6), np.float32)}
    crop(d3)
    assert len(fallback_calls) == 1 and "rejected_boxes" not in fallback_calls[0]


def _publisher_run(tmp_path, new_metric: float, served: float | None, gate: bool = True) -> dict:
    trainer = Engine(lambda engine, batch: {"loss": 0.0})
    evaluator = Engine(lambda engine, batch: None)
    context = SimpleNamespace(
        network=torch.nn.Linear(2, 1), evaluator=evaluator, output_dir=str(tmp_path), run_id="r1", start_ts=time.time()
    )
    publisher = PublishBestModel(
        context, task="classification", model_path=str(tmp_path / "model.pt"), stats_path=str(tmp_path / "stats.json"),
        make_meta=lambda c: {"network": {}}, metric_name="val_auc", served_metric=lambda: (served, "same images"),
        gate=gate,
    )  # fmt: skip

    @trainer.on(Events.EPOCH_STARTED)  # before the publisher's EPOCH_COMPLETED handler reads it
    def validate(engine):
        evaluator.state.metrics = {"val_auc": new_metric}

    publisher.attach(trainer, evaluator)
    trainer.run([0], max_epochs=1)
    return json.loads((tmp_path / "stats.json").read_text())


@pytest.mark.parametrize(
    "new, served, gate, published",
    [(0.6, 0.7, True, False), (0.7, 0.7, True, True), (0.8, 0.7, True, True), (0.6, 0.7, False, True),
     (0.6, None, True, True)],
)  # fmt: skip
def test_new_model_is_published_only_if_not_worse_than_the_served_one(tmp_path, new, served, gate, published):
    stats = _publisher_run(tmp_path, new, served, gate)
    assert (tmp_path / "model.pt").exists() == published
    assert stats["status"] == ("published" if published else "kept_previous")
    assert stats["compared_with_served"]["served_metric"] == served
    if not published:
        assert "served model stays" in stats["reason"]


def test_uncertainty_parts():
    a = [{"center": [0, 0, 0], "size": [10, 10, 10], "detection_score": 0.8}]
    assert detection_disagreement(a, [dict(a[0], center=[1, 0, 0])]) == 0.0
    assert detection_disagreement(a, []) == 1.0
    assert detection_disagreement([], []) == 0.0
    half = detection_disagreement(a, [dict(a[0], detection_score=0.4)])
    assert half == pytest.approx(0.4 / 1.2)

    # mirroring twice along an index axis is the identity, for an oblique anisotropic grid
    direction = np.array([[0.9, -0.1, 0.42], [0.2, 0.97, -0.1], [-0.38, 0.18, 0.9]])
    q, _ = np.linalg.qr(direction)
    g = ImageGeometry((40, 30, 12), (0.7, 0.9, 5.0), (10.0, -20.0, 5.0), tuple(q.ravel()))
    node = {"center": list(g.index_to_world(np.array([3.0, 7.0, 2.0]))), "size": [5, 5, 5]}
    once = mirror_nodes([node], g)[0]
    assert np.allclose(g.world_to_index(np.array(once["center"])), [36.0, 7.0, 2.0])
    assert np.allclose(mirror_nodes([once], g)[0]["center"], node["center"])


def test_uncertain_ranking_prefers_high_scores_then_the_least_recently_served():
    infos = {
        "a": {SCORE_KEY: {"score": 0.3}, SERVED_KEY: 5.0},
        "b": {SCORE_KEY: {"score": 0.9}, SERVED_KEY: 9.0},
        "c": {SCORE_KEY: {"score": 0.9}, SERVED_KEY: 2.0},
        "d": {},
    }
    order = sorted(infos, key=lambda i: rank_key(i, infos[i], now=1e6))
    assert order == ["c", "b", "a", "d"]


def _tissue(seed: int, mean: float, noise: float, shape=(32, 28, 12)) -> np.ndarray:
    """A (1, X, Y, Z) normalised 'body': smooth blobs of one mean intensity plus noise, air at the border."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, mean, np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    image[:3], image[-3:] = 0.0, 0.0
    return np.clip(image, 0, 1)[None]


def test_appearance_tells_kinds_of_case_apart_and_a_case_from_itself():
    soft, soft2, fatty, noisy = (
        _tissue(0, 0.5, 0.02),
        _tissue(1, 0.5, 0.02),
        _tissue(0, 0.2, 0.02),
        _tissue(0, 0.5, 0.1),
    )
    a = appearance(soft)
    assert a.shape == (2, 16) and np.allclose((a**2).sum(axis=1), 1.0)  # root histograms: unit rows
    assert appearance_distance(a, a) == 0.0
    same_kind = appearance_distance(a, appearance(soft2))
    assert same_kind < 0.1, "another draw of the same tissue looks the same"
    assert appearance_distance(a, appearance(fatty)) > 0.4, "another intensity mix"
    assert appearance_distance(a, appearance(noisy)) > 0.3, "another texture (noise)"
    assert appearance_distance(a, appearance(fatty)) == appearance_distance(appearance(fatty), a) <= 1.0
    two_channels = appearance(np.concatenate([soft, fatty]))
    assert two_channels.shape == (4, 16) and appearance_distance(a, two_channels) is None
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        appearance(soft[0])


def test_cold_start_serves_a_typical_case_of_a_kind_not_read_and_ranking_by_score_after():
    now = 1e6
    us = {"version": 2, "modality": "us"}

    def look(seed: int, mean: float, noise: float, preprocessing=us) -> dict:
        histograms = appearance(_tissue(seed, mean, noise)).tolist()
        return {APPEARANCE_KEY: {"histograms": histograms, "preprocessing": preprocessing}}

    soft = {f"soft{i}": look(i, 0.5, 0.02) for i in range(6)}
    fatty = {f"fatty{i}": look(10 + i, 0.2, 0.02) for i in range(4)}
    bright = {f"bright{i}": look(20 + i, 0.8, 0.02) for i in range(3)}
    candidates = {**soft, **fatty, **bright, "outlier": look(30, 0.5, 0.2), "undescribed": {}}
    first = cold_start(candidates, {}, now)
    assert first.startswith("soft"), "the largest kind first, a typical case of it"
    # a kind read (labelled) or in review is not served again while another kind is unread
    labelled = {i: candidates.pop(i) for i in list(soft)[:2]}
    candidates["fatty0"] = {**candidates["fatty0"], SERVED_KEY: now - 60}  # in review
    assert cold_start(candidates, labelled, now).startswith("bright")
    candidates["fatty0"][SERVED_KEY] = now - 2 * IN_REVIEW_SECONDS  # served long ago, never read: free again
    assert cold_start(candidates, labelled, now).startswith("fatty")
    candidates["fatty0"][SERVED_KEY] = now - 60
    # what the strategy answers: the typical case, not the id order; an odd appearance is no appearance
    pick, said = Uncertain().pick(candidates, labelled, now)
    assert pick.startswith("bright") and said["cold_start"] is True
    nothing_found = {i: {**info, SCORE_KEY: {"score": 0.0}} for i, info in candidates.items()}
    assert Uncertain().pick(nothing_found, labelled, now)[1]["cold_start"], "scores of 0 everywhere: still cold"
    odd = {"ragged": {APPEARANCE_KEY: {"histograms": [[0.1, 0.2], [0.3]]}}, "nan": {APPEARANCE_KEY: "x"}}
    assert cold_start(odd, {}, now) is None
    assert Uncertain().pick(odd, {}, now)[0] == "nan", "no appearance: id order"
    # other preprocessing (e.g. CT volumes beside 2D ultrasound): the more common kind of the candidates is served
    mixed = {**bright, "ct0": look(0, 0.5, 0.02, {"version": 2, "modality": "ct"})}
    assert cold_start(mixed, {}, now).startswith("bright")

    # once one candidate has a score, the ranking is by score: highest first, a case in review after
    # every other, and what a reader may have written into the info does not break it
    infos = {"a": {SCORE_KEY: {"score": 0.2}}, "b": {SCORE_KEY: {"score": 0.9}}, "c": {}}
    assert Uncertain().pick(infos, {}, now)[0] == "b"
    infos["b"][SERVED_KEY] = now - 60
    assert min(infos, key=lambda i: rank_key(i, infos[i], now)) == "a"
    odd = {"ragged": {SCORE_KEY: {"score": "high"}}, "not_a_dict": {SCORE_KEY: 7, SERVED_KEY: "yesterday"},
           "nan": {SCORE_KEY: {"score": float("nan")}}}  # fmt: skip
    assert all(rank_key(i, info, now)[1] for i, info in odd.items()), "no usable score: ranked as unscored"


def test_badge_falls_back_to_uncertainty_and_counts_only_the_current_models_batch():
    from lib.activelearning import Badge

    now = time.time()
    old, new = {"lymph_node_detection": "d@1"}, {"lymph_node_detection": "d@2"}

    def info(score, embedding=None, p=0.5, models=new, ts=now - 100, served=0.0):
        entry = {"score": score, "models": models, "ts": ts}
        if embedding is not None:
            entry.update(embedding=embedding, p_doubt=p)
        return {SCORE_KEY: entry, SERVED_KEY: served}

    badge = Badge(seed=0)
    # no embeddings anywhere (no classifier weights, no nodes): the uncertain ranking
    best, said = badge.pick({"a": info(0.2), "b": info(0.9)}, {}, now)
    assert best == "b" and said["uncertainty"] == 0.9
    # the most doubtful case opens a batch: p near 0.5 and an embedding far from the mean
    pool = {"sure": info(0.1, [0.0, 0.0], p=0.98), "doubt": info(1.0, [3.0, 1.0], p=0.5), "mid": info(0.5, [1, 2], 0.7)}
    best, said = badge.pick(pool, {}, now)
    assert best == "doubt" and said["batch"] == 0
    # a case read since the scores is in the batch; one scored by older models or read before is not
    labelled = {
        "read": info(1.0, [3.0, 1.0], p=0.5, served=now - 50),  # a copy of "doubt": doubt is then never chosen
        "before": info(1.0, [1.0, 2.0], p=0.7, served=now - 500),
        "older": info(1.0, [1.0, 2.0], p=0.7, models=old, ts=now - 1000, served=now - 50),
    }
    picks = {badge.pick(pool, labelled, now)[0] for _ in range(20)}
    assert "doubt" not in picks and badge.pick(pool, labelled, now)[1]["batch"] == 1
