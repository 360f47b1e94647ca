"""Tests for imbalance.prototypes: NCM (Kang et al.'s official KNNClassifier) and cosine kNN,
against hand-computed cases and float64 references."""
from __future__ import annotations

import math

import pytest
import torch

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.prototypes import (KNN_LOG_FLOOR, PROTOTYPE_CLASSIFIERS, class_centroids,
                                  create_prototype_classifier)

TRAIN = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
LAB = torch.tensor([0, 0, 1])


def test_registry():
    assert set(PROTOTYPE_CLASSIFIERS.names()) == {"ncm", "knn"}
    with pytest.raises(UnknownNameError, match="ncm"):
        create_prototype_classifier("svm")
    with pytest.raises(ConfigError, match="accepted: feat_type, distance"):
        create_prototype_classifier("ncm", k=3)


def test_centroids_of_each_feature_type_hand_computed():
    un, mean, counts = class_centroids(TRAIN, LAB, 2, feat_type="un")
    assert torch.allclose(un, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(mean, torch.tensor([4 / 3, 2 / 3])) and counts.tolist() == [2, 1]
    l2n, _, _ = class_centroids(TRAIN, LAB, 2, feat_type="l2n")
    assert torch.allclose(l2n, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    cl2n, _, _ = class_centroids(TRAIN, LAB, 2, feat_type="cl2n")
    c = TRAIN.double() - TRAIN.double().mean(0)
    c = c / c.norm(dim=1, keepdim=True)
    want = torch.stack([c[:2].mean(0), c[2]])          # means of unit vectors, not re-normalised
    assert torch.allclose(cl2n.double(), want, atol=1e-6)
    assert cl2n[0].norm() < 1.0


def test_ncm_l2_scores_hand_computed():
    ncm = create_prototype_classifier("ncm", feat_type="un", distance="l2").fit(TRAIN, LAB, 2)
    s = ncm(torch.tensor([[1.5, 1.0]]))
    # centroids (2, 0) and (0, 2): squared distances 0.25 + 1 and 2.25 + 1
    assert torch.allclose(s, torch.tensor([[-1.25, -3.25]]))
    ncm2 = create_prototype_classifier("ncm", feat_type="l2n", distance="l2").fit(TRAIN, LAB, 2)
    q = torch.tensor([1.5, 1.0]) / math.hypot(1.5, 1.0)
    want = [-(2 - 2 * float(q[0])), -(2 - 2 * float(q[1]))]
    assert torch.allclose(ncm2(torch.tensor([[1.5, 1.0]])), torch.tensor([want]), atol=1e-6)


@pytest.mark.parametrize("feat_type", ["cl2n", "l2n", "un"])
@pytest.mark.parametrize("distance", ["l2", "cos"])
def test_ncm_scores_match_float64_reference(feat_type, distance):
    g = torch.Generator().manual_seed(0)
    d, k = 6, 4
    feats = torch.randn(40, d, generator=g) + torch.arange(40)[:, None] % k
    labels = torch.arange(40) % k
    test = torch.randn(9, d, generator=g)
    ncm = create_prototype_classifier("ncm", feat_type=feat_type, distance=distance).fit(feats, labels, k)
    f, t = feats.double(), test.double()
    mean = f.mean(0)
    if feat_type == "cl2n":
        f, t = f - mean, t - mean
    if feat_type != "un":
        f, t = f / f.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    c = torch.stack([f[labels == j].mean(0) for j in range(k)])
    want = -torch.cdist(t, c) ** 2 if distance == "l2" else t @ c.t() / d
    assert torch.allclose(ncm(test).double(), want, atol=1e-4)


def test_ncm_defaults_are_the_official_ones_and_empty_class_never_wins(caplog):
    ncm = create_prototype_classifier("ncm")
    assert ncm.feat_type == "cl2n" and ncm.distance == "l2"
    with pytest.raises(RuntimeError, match="fit"):
        ncm(torch.zeros(1, 2))
    ncm.fit(TRAIN, LAB, 3)                                # class 2 has no training sample
    assert "never be predicted" in caplog.text
    s = ncm(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))      # zero vector: finite, not NaN
    assert torch.isneginf(s[:, 2]).all() and torch.isfinite(s[:, :2]).all()
    assert (s.argmax(1) != 2).all()


def test_knn_majority_and_weighted_votes_hand_computed():
    # unit vectors at angles 0, 10, 20 degrees (class 0) and 90, 100 degrees (class 1)
    ang = torch.tensor([0.0, 10.0, 20.0, 90.0, 100.0]) * math.pi / 180
    bank = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * torch.tensor([[1.0], [2.0], [3.0], [1.0], [5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    q = torch.tensor([[math.cos(math.radians(60)), math.sin(math.radians(60))]])
    # cosines to the query: cos 60, cos 50, cos 40, cos 30, cos 40 -> top-3: 90 deg (30), 20 and 100 deg (40)
    maj = create_prototype_classifier("knn", k=3, vote="majority").fit(bank, labels, 2)
    assert torch.allclose(maj.votes(q), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(maj(q).softmax(1), torch.tensor([[1 / 3, 2 / 3]]), atol=1e-6)
    wk = create_prototype_classifier("knn", k=3, temperature=0.5).fit(bank, labels, 2)
    c30, c40 = math.cos(math.radians(30)), math.cos(math.radians(40))
    want = torch.tensor([[math.exp(c40 / 0.5), math.exp(c30 / 0.5) + math.exp(c40 / 0.5)]])
    assert torch.allclose(wk.votes(q), want, rtol=1e-5)
    assert torch.allclose(wk(q), torch.log(want / want.sum()), atol=1e-5)


def test_knn_defaults_chunking_and_large_k():
    knn = create_prototype_classifier("knn")
    assert knn.k == 20 and knn.vote == "weighted" and knn.temperature == 0.07
    g = torch.Generator().manual_seed(1)
    bank, labels = torch.randn(30, 5, generator=g), torch.arange(30) % 3
    q = torch.randn(7, 5, generator=g)
    a = create_prototype_classifier("knn", k=5, chunk_size=1).fit(bank, labels, 4)(q)
    b = create_prototype_classifier("knn", k=5, chunk_size=1000).fit(bank, labels, 4)(q)
    assert torch.allclose(a, b)
    assert torch.all(a[:, 3] == KNN_LOG_FLOOR)            # class 3 has no sample: floor, not -inf
    every = create_prototype_classifier("knn", k=100, vote="majority").fit(bank, labels, 3)
    assert torch.allclose(every.votes(q), torch.full((7, 3), 10.0))


def test_both_classify_separated_clusters_perfectly():
    g = torch.Generator().manual_seed(2)
    centers = torch.eye(4, 8) * 10
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 8, generator=g)
    yt = torch.arange(40) % 4
    xt = centers[yt] + torch.randn(40, 8, generator=g)
    for name in ("ncm", "knn"):
        clf = create_prototype_classifier(name).fit(x, y, 4)
        s = clf(xt)
        assert s.shape == (40, 4) and torch.equal(s.argmax(1), yt)


@pytest.mark.parametrize("name, kw", [("ncm", {"feat_type": "l1n"}), ("ncm", {"distance": "dot"}),
                                      ("knn", {"k": 0}), ("knn", {"vote": "soft"}), ("knn", {"temperature": 0})])
def test_bad_values(name, kw):
    with pytest.raises(ConfigError):
        create_prototype_classifier(name, **kw)


def test_fit_input_checks():
    with pytest.raises(ValueError, match="0..1"):
        create_prototype_classifier("ncm").fit(TRAIN, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="features"):
        create_prototype_classifier("knn").fit(TRAIN[0], LAB, 2)
