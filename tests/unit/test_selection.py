"""Batch selection for active learning (lnnode.selection) and the classifier embeddings it reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnnode.networks.classifier import ClassifierSpec, build_classifier_network, predict_embeddings, predict_logits
from lnnode.selection import badge, badge_embedding, binary_entropy, k_center, representative, top_uncertain


def _blobs(rng: np.random.Generator, centres: list[list[float]], n: int, spread: float = 0.05) -> np.ndarray:
    return np.concatenate([np.asarray(c) + spread * rng.standard_normal((n, len(c))) for c in centres])


def test_binary_entropy():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])) == pytest.approx([0.0, 0.0], abs=1e-5)


def test_top_uncertain_skips_labelled_cases():
    scores = np.array([0.9, 0.1, 0.8, 0.95, 0.2])
    labelled = np.array([False, False, False, True, False])
    assert top_uncertain(scores, labelled, 2) == [0, 2]
    assert top_uncertain(scores, np.ones(5, bool), 2) == []


def test_k_center_covers_the_pool_and_leaves_the_labelled_cluster_alone():
    rng = np.random.default_rng(0)
    x = _blobs(rng, [[0, 0], [10, 0], [0, 10], [10, 10]], 20)  # four clusters of 20
    cluster = np.repeat(np.arange(4), 20)
    labelled = np.zeros(80, bool)
    labelled[:3] = True  # three cases of cluster 0 are read already
    chosen = k_center(x, labelled, 3)
    assert sorted(cluster[chosen]) == [1, 2, 3], "one case from each cluster not yet read"
    assert not labelled[chosen].any()
    # a cold pool: the first pick is the most central case, then each the farthest: one per cluster
    first = k_center(x, np.zeros(80, bool), 4)
    assert sorted(cluster[first]) == [0, 1, 2, 3]


def test_badge_prefers_doubtful_cases_and_spreads_the_batch():
    rng = np.random.default_rng(1)
    features = _blobs(rng, [[0, 0], [6, 0], [0, 6]], 30)
    cluster = np.repeat(np.arange(3), 30)
    sure = np.where(cluster == 0, 0.99, 0.5)  # the model is sure of cluster 0, unsure of the other two
    labelled = np.zeros(90, bool)
    picks = [badge(features, sure, labelled, 2, np.random.default_rng(s)) for s in range(20)]
    assert all(cluster[p[0]] != 0 for p in picks), "the first pick is a doubtful case"
    assert np.mean([cluster[p[0]] != cluster[p[1]] for p in picks]) >= 0.8, "a batch of two spans the clusters"
    g = badge_embedding(features, sure)
    assert g.shape == (90, 3)
    assert np.linalg.norm(g[cluster == 0], axis=1).max() < np.linalg.norm(g[cluster == 1], axis=1).min()


def test_representative_takes_a_typical_case_per_cluster():
    rng = np.random.default_rng(2)
    x = _blobs(rng, [[0, 0], [8, 0], [0, 8]], 25)
    x = np.vstack([x, [[30.0, 30.0]]])  # one outlier
    cluster = np.r_[np.repeat(np.arange(3), 25), 3]
    chosen = representative(x, np.zeros(len(x), bool), 3)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    assert 75 not in chosen, "the outlier is not typical"
    assert sorted(cluster[chosen]) == [0, 1, 2]


def test_representative_one_case_per_call_is_the_batch_and_skips_read_kinds():
    rng = np.random.default_rng(3)
    x = _blobs(rng, [[0, 0], [8, 0], [0, 8], [8, 8]], 15)
    cluster = np.repeat(np.arange(4), 15)
    labelled = np.zeros(len(x), bool)
    labelled[[15, 16]] = True  # two cases of one kind read already
    batch = representative(x, labelled, 3, seed=5)
    assert 1 not in cluster[batch] and sorted(cluster[batch]) == [0, 2, 3]
    served, taken = [], labelled.copy()
    for _ in range(3):  # the server: one case per request, the served one counts as taken
        (pick,) = representative(x, taken, 1, seed=5)
        served.append(pick)
        taken[pick] = True
    assert served == batch
    assert representative(x, np.ones(len(x), bool), 2) == []


def test_representative_past_many_read_cases_takes_the_farthest_case():
    rng = np.random.default_rng(4)
    x = np.vstack([rng.standard_normal((3000, 32)), np.full((1, 32), 9.0)])  # one case unlike all
    labelled = np.zeros(len(x), bool)
    labelled[:500] = True  # many read, no model yet: no k-means into 501 clusters under the server's lock
    assert representative(x, labelled, 1) == [3000]


@pytest.mark.parametrize(
    "spec", [ClassifierSpec.planar(), ClassifierSpec(crop_mm=16.0, crop_spacing=2.0, widths=(4, 8))]
)
def test_predict_embeddings_match_the_logits_and_tell_crops_apart(spec):
    torch.manual_seed(0)
    network = build_classifier_network(spec).eval()
    shape = (5, spec.network_channels, *spec.crop_shape)
    crops = torch.rand(shape)
    logits, embeddings = predict_embeddings(network, crops, tta=2, batch_size=3)
    assert torch.allclose(logits, predict_logits(network, crops, tta=2, batch_size=3, amp=False), atol=1e-5)
    assert embeddings.shape == (5, spec.widths[-1])
    # the embedding is what the last layer reads: the head applied to it gives the mean logit over the flips
    last = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert torch.allclose(last(embeddings).squeeze(1), logits.mean(1), atol=1e-4)
    assert torch.cdist(embeddings, embeddings)[~torch.eye(5, dtype=torch.bool)].min() > 0
