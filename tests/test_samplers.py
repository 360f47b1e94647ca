"""Tests for imbalance.samplers: draw frequencies against n_c**alpha, schedule, determinism, DDP."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.samplers import SAMPLERS, ClassAwareSampler, make_sampler

COUNTS = np.array([2000, 600, 150, 40, 10])
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
DRAWS = 200_000


def expected_probs(counts, alpha):
    """Independent: class probability n_c**alpha / sum (0 for empty classes)."""
    w = np.array([c ** alpha if c > 0 else 0.0 for c in counts], dtype=float)
    return w / w.sum()


def observed_freqs(sampler, labels, k):
    idx = sampler.epoch_indices().numpy()
    return np.bincount(labels[idx], minlength=k) / len(idx)


def assert_close_to(p_obs, p_exp, n):
    # 5 binomial standard deviations (plus a floor) per class.
    sd = np.sqrt(p_exp * (1 - p_exp) / n)
    assert np.all(np.abs(p_obs - p_exp) <= 5 * sd + 1e-4), (p_obs, p_exp)


@pytest.mark.parametrize(
    "method, alpha",
    [("inv_freq", 0.0), ("class_balanced", 0.0), ("class_uniform", 0.0), ("sqrt", 0.5),
     ("power", 0.3), ("power", 1.0), ("power", 0.0)],
)
def test_class_frequencies_follow_power_law(method, alpha):
    s = make_sampler(LABELS, method, alpha=alpha, num_samples=DRAWS, seed=3)
    assert isinstance(s, torch.utils.data.Sampler)
    assert s.alpha == pytest.approx(alpha)
    np.testing.assert_allclose(s.class_probabilities(), expected_probs(COUNTS, alpha), rtol=1e-12)
    assert_close_to(observed_freqs(s, LABELS, len(COUNTS)), expected_probs(COUNTS, alpha), DRAWS)


def test_none_returns_none_and_registry_names():
    assert make_sampler(LABELS, "none") is None
    assert set(SAMPLERS.names()) == {"none", "inv_freq", "class_balanced", "sqrt", "power",
                                     "progressive_power"}
    assert "class_uniform" in SAMPLERS


def test_progressive_power_first_middle_last_epoch():
    total = 21
    s = make_sampler(LABELS, "progressive_power", alpha_start=0.8, alpha_end=0.0,
                     total_epochs=total, num_samples=DRAWS, seed=1)
    for epoch, alpha in [(0, 0.8), (10, 0.4), (20, 0.0), (35, 0.0)]:
        s.set_epoch(epoch)
        assert s.alpha == pytest.approx(alpha)
        assert_close_to(observed_freqs(s, LABELS, len(COUNTS)), expected_probs(COUNTS, alpha),
                        DRAWS)
    # Before set_epoch is ever called it behaves as at epoch 0; one epoch -> alpha_start.
    assert make_sampler(LABELS, "progressive_power", alpha_start=0.7, total_epochs=5).alpha == 0.7
    assert make_sampler(LABELS, "progressive_power", alpha_start=0.7, alpha_end=0.1,
                        total_epochs=1).alpha == 0.7


def test_uniform_within_class():
    # Class 4 has 10 samples; each must be drawn about equally often.
    s = make_sampler(LABELS, "class_balanced", num_samples=DRAWS, seed=5)
    idx = s.epoch_indices().numpy()
    members = np.flatnonzero(LABELS == 4)
    hits = np.array([(idx == m).sum() for m in members])
    n_cls = (LABELS[idx] == 4).sum()
    p = 1 / len(members)
    sd = np.sqrt(n_cls * p * (1 - p))
    assert np.all(np.abs(hits - n_cls * p) <= 5 * sd)


def test_default_length_iter_and_dtype():
    s = make_sampler(torch.as_tensor(LABELS), "sqrt")
    assert len(s) == len(LABELS)
    idx = s.epoch_indices()
    assert idx.dtype == torch.int64 and idx.shape == (len(LABELS),)
    assert list(iter(s)) == idx.tolist()
    assert idx.min() >= 0 and idx.max() < len(LABELS)


def test_deterministic_in_seed_and_epoch_and_resumable():
    a = make_sampler(LABELS, "progressive_power", total_epochs=10, seed=7)
    b = make_sampler(LABELS, "progressive_power", total_epochs=10, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    assert torch.equal(a.epoch_indices(), b.epoch_indices())
    assert torch.equal(a.epoch_indices(), a.epoch_indices())  # pure function of (seed, epoch)
    b.set_epoch(5)
    assert not torch.equal(a.epoch_indices(), b.epoch_indices())
    c = make_sampler(LABELS, "progressive_power", total_epochs=10, seed=8)
    c.set_epoch(4)
    assert not torch.equal(a.epoch_indices(), c.epoch_indices())
    # Resume: a fresh sampler loaded from a's state reproduces a's epoch.
    state = a.state_dict()
    assert all(type(v) is int for v in state.values())
    r = make_sampler(LABELS, "progressive_power", total_epochs=10, seed=7)
    r.load_state_dict(state)
    assert r.epoch == 4 and torch.equal(r.epoch_indices(), a.epoch_indices())


def test_ddp_shards_are_disjoint_slices_of_one_draw():
    n, world = 1001, 4
    full = make_sampler(LABELS, "sqrt", num_samples=n, seed=2, num_replicas=1)
    shards = [make_sampler(LABELS, "sqrt", num_samples=n, seed=2, num_replicas=world, rank=r)
              for r in range(world)]
    per = -(-n // world)
    assert all(len(s) == per for s in shards)
    glob = shards[0].global_indices()
    assert glob.numel() == per * world
    got = [s.epoch_indices() for s in shards]
    for r in range(world):
        assert torch.equal(got[r], glob[r::world])
    # Positions partition the global draw.
    inter = torch.stack(got, dim=1).reshape(-1)
    assert torch.equal(inter, glob)
    assert full.epoch_indices().numel() == n


def test_empty_class_gets_zero_probability():
    labels = np.array([0] * 50 + [2] * 5)  # class 1 and class 3 have no samples
    s = make_sampler(labels, "class_balanced", num_samples=20_000, num_classes=4)
    np.testing.assert_allclose(s.class_probabilities(), [0.5, 0.0, 0.5, 0.0])
    drawn = np.bincount(labels[s.epoch_indices().numpy()], minlength=4)
    assert drawn[1] == 0 and drawn[3] == 0 and drawn[0] > 0 and drawn[2] > 0


def test_alpha_validation_and_unknown_name():
    with pytest.raises(ConfigError, match=r"1\.5.*\[0, 1\]"):
        make_sampler(LABELS, "power", alpha=1.5)
    with pytest.raises(ConfigError, match="alpha_end"):
        make_sampler(LABELS, "progressive_power", alpha_end=-0.1)
    with pytest.raises(ConfigError):
        make_sampler(LABELS, "power", num_samples=0)
    with pytest.raises(UnknownNameError, match="progressive_power") as ei:
        make_sampler(LABELS, "balanced_ish")
    assert "\n" not in str(ei.value)


def test_vectorised_draw_is_fast():
    labels = np.random.default_rng(1).integers(0, 100, size=1_000_000)
    s = make_sampler(labels, "progressive_power", total_epochs=5, seed=0)
    s.epoch_indices()
    t0 = time.perf_counter()
    for e in range(3):
        s.set_epoch(e)
        s.epoch_indices()
    # Tens of milliseconds per epoch normally; a per-sample Python loop would take seconds.
    assert (time.perf_counter() - t0) / 3 < 1.0
    assert isinstance(s, ClassAwareSampler)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alias_table_is_exact(seed):
    # The alias table's implied distribution, (keep[c] + sum_{j: alias[j]=c} (1-keep[j])) / K,
    # must equal the class probabilities, including classes of probability 0.
    from imbalance.samplers import _alias_table

    rng = np.random.default_rng(seed)
    p = rng.pareto(1.0, size=37)
    p[rng.choice(37, size=6, replace=False)] = 0.0
    p /= p.sum()
    keep, alias = _alias_table(p)
    k = len(p)
    implied = keep.copy()
    np.add.at(implied, alias, 1.0 - keep)
    np.testing.assert_allclose(implied / k, p, atol=1e-12)
    assert np.all(keep[p == 0] == 0) and np.all(p[alias[p == 0]] > 0)


def test_ddp_shards_together_are_the_single_process_draw_when_n_is_not_divisible():
    labels = np.repeat(np.arange(4), [50, 20, 7, 2])  # N = 79, not divisible by 2 or 3
    for world in (2, 3):
        single = make_sampler(labels, "progressive_power", total_epochs=4, seed=5)
        single.set_epoch(2)
        ref = single.epoch_indices()
        shards = []
        for r in range(world):
            s = make_sampler(labels, "progressive_power", total_epochs=4, seed=5, num_replicas=world, rank=r)
            s.set_epoch(2)
            shards.append(s.epoch_indices())
        merged = torch.stack([torch.cat([sh, sh.new_full((1,), -1)])[: len(shards[0])] for sh in shards], 1).flatten()
        assert torch.equal(merged[: len(ref)], ref)
