"""Exemplar memory (imbalance.exemplars): herding against iCaRL's formula, budgets, the memory
round trip through a run folder, class means and the nearest-mean-of-exemplars classifier."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from imbalance.errors import ConfigError, DataError, UnknownNameError
from imbalance.exemplars import (
    MEMORY_FILE,
    SELECTORS,
    ExemplarMemory,
    NMEClassifier,
    NMEModel,
    build_memory,
    class_means,
    extract_features,
    herding_selection,
    per_class_quota,
    random_selection,
    select_exemplars,
    update_memory,
)


# ----------------------------------------------------------------------------- herding
def paper_herding(features: np.ndarray, m: int, max_iter: int = 1000) -> list:
    """iCaRL Algorithm 4 written as the paper's formula (float64, brute force):
    p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||, over all x (repeats counted in
    the sum, kept once), phi the L2-normalised features."""
    phi = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = phi.mean(axis=0)
    total = np.zeros_like(mu)
    kept = []
    k = 0
    for _ in range(max_iter):
        if len(kept) == min(m, len(phi)):
            break
        k += 1
        dist = np.linalg.norm(mu[None, :] - (total[None, :] + phi) / k, axis=1)
        i = int(np.argmin(dist))
        total = total + phi[i]
        if i not in kept:
            kept.append(i)
    return kept


def test_herding_hand_case_in_two_dimensions():
    # normalised: a=(1,0), b=(0,1), c=(-1,0); mu=(0,1/3).
    # pick 1: <mu,.> = (0, 1/3, 0) -> b.  w = 2mu - b = (0,-1/3): scores (0, -1/3, 0) -> a (tie, lowest index)
    # w = w + mu - a = (-1, 0): scores (-1, 0, 1) -> c.
    feats = np.array([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])
    assert herding_selection(feats, 3).tolist() == [1, 0, 2]
    assert herding_selection(feats, 1).tolist() == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_follows_the_paper_formula(seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(40, 8)) * rng.uniform(0.5, 3.0, size=(40, 1))  # norms differ: normalised first
    ours = herding_selection(feats, 12).tolist()
    assert ours == paper_herding(feats, 12)
    assert len(set(ours)) == 12
    # a torch float32 input gives the same order
    assert herding_selection(torch.tensor(feats, dtype=torch.float64), 12).tolist() == ours


def test_herding_running_mean_gets_close_to_the_class_mean():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(200, 16))
    phi = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    mu = phi.mean(0)
    order = herding_selection(feats, 20)
    herd_err = np.linalg.norm(phi[order].mean(0) - mu)
    rand_err = np.mean([np.linalg.norm(phi[rng.permutation(200)[:20]].mean(0) - mu) for _ in range(50)])
    assert herd_err < 0.5 * rand_err


def test_herding_fewer_samples_than_budget_keeps_all():
    feats = np.random.default_rng(0).normal(size=(4, 3))
    assert sorted(herding_selection(feats, 10).tolist()) == [0, 1, 2, 3]
    assert herding_selection(feats, 0).tolist() == []


def test_herding_repeated_pick_is_counted_not_kept_and_the_rest_filled(caplog):
    # x, x, x, y (x = e1, y = e2): mu = (3x + y)/4.  pick x (index 0); w = (x + y)/2 ties -> index 0
    # again (counted, not kept); w = (x + 3y)/4 -> y (index 3); w = x -> 0; w = mu -> 0; ... the
    # duplicates of x (indices 1, 2) never win the argmax, so the loop keeps only {0, 3}.
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert paper_herding(feats, 3, max_iter=50) == [0, 3]  # the formula alone keeps two
    with caplog.at_level(logging.WARNING, logger="imbalance.exemplars"):
        order = herding_selection(feats, 3, max_iter=50)
    assert order.tolist() == [0, 3, 1]  # the third place: nearest to the mean (1 and 2 tie: lowest index)
    assert any("herding stopped" in r.getMessage() for r in caplog.records)
    assert herding_selection(feats, 2, max_iter=50).tolist() == [0, 3]  # no fill needed


def test_random_selection_is_seeded_and_distinct():
    a = random_selection(100, 10, seed=5)
    assert a.tolist() == random_selection(100, 10, seed=5).tolist()
    assert a.tolist() != random_selection(100, 10, seed=6).tolist()
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    assert sorted(random_selection(3, 10, seed=0).tolist()) == [0, 1, 2]


def test_select_exemplars_per_class_and_tail_class():
    labels = np.array([7] * 10 + [3] * 2 + [5] * 6)
    feats = np.random.default_rng(0).normal(size=(18, 4))
    out = select_exemplars(labels, 5, features=feats, selection="herding")
    assert list(out) == [3, 5, 7]
    assert len(out[3]) == 2 and len(out[5]) == 5 and len(out[7]) == 5
    for c, idx in out.items():
        assert (labels[idx] == c).all()
        # herding inside the class = herding on that class's features alone
        members = np.flatnonzero(labels == c)
        assert idx.tolist() == members[herding_selection(feats[members], 5)].tolist()
    with pytest.raises(ConfigError, match="selection=random"):
        select_exemplars(labels, 5, features=None, selection="herding")
    with pytest.raises(UnknownNameError, match="herding, random"):
        select_exemplars(labels, 5, selection="kmeans")
    assert set(SELECTORS.names()) == {"herding", "random"}


# ----------------------------------------------------------------------------- budget
def test_per_class_quota():
    assert per_class_quota(6, memory_per_class=20) == 20
    assert per_class_quota(6, memory_total=20) == 3  # floor(20/6)
    assert per_class_quota(6, memory_per_class=20, memory_total=60) == 10  # the total wins
    assert per_class_quota(6, memory_total=6) == 1
    for kwargs in ({"memory_total": 5}, {"memory_per_class": 0}, {"memory_per_class": 2.5}, {}):
        with pytest.raises(ConfigError) as e:
            per_class_quota(6, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 6"):
        per_class_quota(6, memory_total=5)


# ----------------------------------------------------------------------------- memory
def _toy(labels, n_feat=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    x = rng.normal(size=(len(y), 2, 16)).astype(np.float32)
    f = rng.normal(size=(len(y), n_feat))
    return x, y, f


def test_memory_round_trip_through_the_folder(tmp_path):
    x, y, f = _toy([1.0] * 8 + [2.0] * 3 + [7.0] * 6)  # MATLAB-style float labels
    mem = build_memory(x, y, per_class=4, features=f, selection="herding", seed=3,
                       indices=np.arange(100, 117), session=0, meta={"source": "train.mat"})
    mem = mem.with_class_means(class_means(f[np.isin(np.arange(17), mem.indices - 100)],
                                           y[mem.indices - 100], list(mem.classes)))
    paths = mem.save(tmp_path / "memory")
    assert [p.name for p in paths] == [f"{MEMORY_FILE}.npz", f"{MEMORY_FILE}.json"]
    back = ExemplarMemory.load(tmp_path / "memory")
    for name in ("signals", "labels", "indices", "ranks", "sessions", "classes", "class_means"):
        a, b = getattr(mem, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert back.labels.dtype == np.float64 and back.classes.tolist() == [1.0, 2.0, 7.0]
    assert back.counts() == {1.0: 4, 2.0: 3, 7.0: 4}
    assert (back.per_class, back.selection, back.seed, back.meta) == (4, "herding", 3, {"source": "train.mat"})
    # the exemplars are the selected samples themselves
    np.testing.assert_array_equal(back.signals, x[back.indices - 100])
    info = json.loads((tmp_path / "memory" / f"{MEMORY_FILE}.json").read_text())
    assert info["num_exemplars"] == 11 and info["counts"] == {"1.0": 4, "2.0": 3, "7.0": 4}
    assert info["signal_shape"] == [2, 16] and info["feature_dim"] == 4


def test_memory_round_trip_string_labels_and_no_means(tmp_path):
    x, y, _ = _toy(["tx_b"] * 3 + ["tx_a"] * 5)
    mem = build_memory(x, y, per_class=2, selection="random", seed=1)
    mem.save(tmp_path)
    back = ExemplarMemory.load(tmp_path)
    assert back.classes.tolist() == ["tx_a", "tx_b"] and back.class_means is None
    np.testing.assert_array_equal(back.labels, mem.labels)
    assert back.class_indices().tolist() == [0, 0, 1, 1]


def test_memory_load_errors_are_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        ExemplarMemory.load(tmp_path / "nowhere")
    assert "no exemplar memory" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / f"{MEMORY_FILE}.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        ExemplarMemory.load(tmp_path)


def test_reduce_keeps_the_first_ranked_and_update_adds_new_classes():
    x, y, f = _toy([0] * 10 + [1] * 10)
    mem = build_memory(x, y, per_class=6, features=f)
    small = mem.reduce(2)
    for c in (0, 1):
        full = mem.indices[mem.labels == c]
        assert small.indices[small.labels == c].tolist() == full[:2].tolist()
    x2, y2, f2 = _toy([5] * 7 + [0] * 3, seed=1)  # class 0 again (seen): not added
    upd = update_memory(mem, x2, y2, memory_total=9, features=f2, session=1, indices=np.arange(10))
    assert upd.classes.tolist() == [0, 1, 5]
    assert upd.counts() == {0: 3, 1: 3, 5: 3}  # floor(9 / 3)
    assert upd.indices[upd.labels == 0].tolist() == mem.indices[mem.labels == 0][:3].tolist()
    assert (upd.sessions[upd.labels == 5] == 1).all() and (upd.sessions[upd.labels != 5] == 0).all()
    new_sel = np.flatnonzero(y2 == 5)
    assert upd.indices[upd.labels == 5].tolist() == new_sel[herding_selection(f2[new_sel], 3)].tolist()
    with pytest.raises(ConfigError):
        update_memory(mem, x2, y2, memory_total=2, features=f2)


# ----------------------------------------------------------------------------- NME
def test_class_means_are_normalised_means_of_normalised_features():
    feats = np.array([[3.0, 0.0], [0.0, 4.0], [-1.0, 0.0]])
    means = class_means(feats, [0, 0, 1], [0, 1, 2])
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(means[0], [s, s], rtol=0, atol=1e-15)
    np.testing.assert_allclose(means[1], [-1.0, 0.0], rtol=0, atol=0)
    assert np.isnan(means[2]).all()  # no sample


def test_nme_logits_are_minus_squared_distances():
    s = 1 / math.sqrt(2)
    nme = NMEClassifier(class_means=np.array([[s, s], [-1.0, 0.0], [np.nan, np.nan]]))
    f = torch.tensor([[2.0, 2.0], [-3.0, 0.1]], dtype=torch.float64)
    out = nme(f)
    assert out.dtype == torch.float64
    assert out[0, 0].item() == pytest.approx(0.0, abs=1e-15)
    assert out[0, 1].item() == pytest.approx(-(2 + math.sqrt(2)), abs=1e-12)
    assert torch.isneginf(out[:, 2]).all()
    fn = f / f.norm(dim=1, keepdim=True)
    ref = -((fn[1] - torch.tensor([s, s], dtype=torch.float64)) ** 2).sum()
    assert out[1, 0].item() == pytest.approx(ref.item(), abs=1e-12)
    assert out.argmax(1).tolist() == [0, 1]
    # bf16 features: computed in float32 at least
    assert nme(f.to(torch.bfloat16)).dtype == torch.float32


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.9)
        self.classifier = nn.Linear(3, 2)

    def forward_features(self, x):
        return self.drop(torch.relu(self.lin(x.flatten(1))))

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def test_extract_features_in_eval_mode_and_nme_model():
    torch.manual_seed(0)
    net = _Net().train()
    x = torch.randn(5, 2, 3)
    feats = extract_features(net, x.numpy(), batch_size=2)
    assert net.training  # restored
    net.eval()
    np.testing.assert_allclose(feats, net.forward_features(x).detach().numpy(), rtol=0, atol=1e-7)
    mem = ExemplarMemory(signals=x.numpy(), labels=np.array([4, 4, 9, 9, 9]), indices=np.arange(5),
                         ranks=np.array([0, 1, 0, 1, 2]), sessions=np.zeros(5), classes=np.array([4, 9]))
    mem = mem.compute_class_means(net)
    np.testing.assert_allclose(mem.class_means, class_means(feats, mem.labels, [4, 9]), atol=1e-7)
    model = NMEModel(net, mem.nme_classifier()).eval()
    out = model(x)
    assert out.shape == (5, 2)
    torch.testing.assert_close(out, mem.nme_classifier()(net.forward_features(x)))
