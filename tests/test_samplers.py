"""Tests for imbalance.samplers: draw frequencies against n_c**alpha, the progressively-balanced
mixture and deferred re-sampling, schedules, determinism, DDP."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.samplers import SAMPLERS, ClassAwareSampler, make_sampler, sampling_prior
from scipy import stats

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
                                     "progressive_power", "progressive_balanced", "drs"}
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


# ---------------------------------------------------------------- class probabilities per epoch
def chi_square_ok(sampler, labels, p_exp):
    """Pearson chi-square of the drawn class counts against p_exp (classes with p > 0); the draw
    is a fixed function of (seed, epoch), so the test is deterministic; 1e-6 false-alarm level."""
    idx = sampler.epoch_indices().numpy()
    obs = np.bincount(labels[idx], minlength=len(p_exp))
    assert np.all(obs[p_exp == 0] == 0)
    keep = p_exp > 0
    stat = stats.chisquare(obs[keep], p_exp[keep] * len(idx)).statistic
    return stat <= stats.chi2.ppf(1 - 1e-6, keep.sum() - 1), stat


def mixture(counts, lam):
    """Independent reference: (1 - lam) n_c / N + lam / K over the classes that have samples."""
    counts = np.asarray(counts, dtype=float)
    present = (counts > 0).astype(float)
    return (1 - lam) * counts / counts.sum() + lam * present / present.sum()


def effective_number(counts, beta):
    """Independent reference: p_c ∝ n_c (1 - beta) / (1 - beta**n_c), plain float64 arithmetic."""
    w = np.array([n * (1 - beta) / (1 - beta ** n) if n > 0 else 0.0 for n in counts], dtype=float)
    return w / w.sum()


def test_progressive_balanced_mixture_hand_computed():
    # n = (3, 1), T = 3: lam = 0, 1/2, 1 -> (3/4, 1/4), (5/8, 3/8), (1/2, 1/2); clipped after T-1.
    labels = np.array([0, 0, 0, 1])
    s = make_sampler(labels, "progressive_balanced", total_epochs=3)
    for epoch, want in [(0, [0.75, 0.25]), (1, [0.625, 0.375]), (2, [0.5, 0.5]), (7, [0.5, 0.5])]:
        np.testing.assert_allclose(s.class_probabilities_at(epoch), want, rtol=0, atol=1e-15)
    assert s.alpha_at(0) == 1.0 and s.alpha_at(1) is None and s.alpha_at(2) == 0.0
    # Before set_epoch: epoch 0 (instance-balanced); one epoch: instance-balanced throughout.
    np.testing.assert_allclose(s.class_probabilities(), [0.75, 0.25])
    np.testing.assert_allclose(make_sampler(labels, "progressive_balanced", total_epochs=1)
                               .class_probabilities_at(0), [0.75, 0.25])
    # An empty class gets 0 and K counts only the classes that have samples.
    e = make_sampler(np.array([0] * 6 + [2] * 2), "progressive_balanced", total_epochs=3, num_classes=4)
    np.testing.assert_allclose(e.class_probabilities_at(1), [0.625, 0.0, 0.375, 0.0], atol=1e-15)


def test_progressive_balanced_draws_first_middle_last_epoch():
    total = 21
    s = make_sampler(LABELS, "progressive_balanced", total_epochs=total, num_samples=DRAWS, seed=4)
    for epoch, lam in [(0, 0.0), (10, 0.5), (20, 1.0)]:
        s.set_epoch(epoch)
        want = mixture(COUNTS, lam)
        np.testing.assert_allclose(s.class_probabilities(), want, rtol=1e-12)
        ok, stat = chi_square_ok(s, LABELS, want)
        assert ok, (epoch, stat)
        assert_close_to(observed_freqs(s, LABELS, len(COUNTS)), want, DRAWS)
    # The middle epoch is a mixture, not the seed's exponent interpolation (alpha = 0.5): the
    # same draw rejects n_c**0.5 by a wide margin.
    s.set_epoch(10)
    ok, stat = chi_square_ok(s, LABELS, expected_probs(COUNTS, 0.5))
    assert not ok and stat > 1000


def test_drs_hand_computed_and_default_start():
    labels = np.array([0, 0, 0, 1])
    # beta = 1/2: per-sample weights (1 - b)/(1 - b**n) = 4/7 (n=3), 1 (n=1); class weights 12/7, 1.
    s = make_sampler(labels, "drs", total_epochs=10, drs_start=4, drs_beta=0.5)
    np.testing.assert_allclose(s.class_probabilities_at(3), [0.75, 0.25], atol=1e-15)
    np.testing.assert_allclose(s.class_probabilities_at(4), [12 / 19, 7 / 19], atol=1e-15)
    np.testing.assert_allclose(s.class_probabilities_at(9), [12 / 19, 7 / 19], atol=1e-15)
    assert s.shuffles_at(3) and not s.shuffles_at(4)
    # Default switch epoch: the official 160 of 200 (0-based), i.e. floor(0.8 T).
    for total, start in [(200, 160), (10, 8), (7, 5), (1, 0)]:
        d = make_sampler(labels, "drs", total_epochs=total)
        assert d.drs_start == start and d.beta == 0.9999
    d = make_sampler(LABELS, "drs", total_epochs=200)
    np.testing.assert_allclose(d.class_probabilities_at(159), COUNTS / COUNTS.sum(), rtol=1e-12)
    np.testing.assert_allclose(d.class_probabilities_at(160), effective_number(COUNTS, 0.9999), rtol=1e-9)
    # beta = 1 is exactly class-balanced (the limit 1/n_c), beta = 0 instance-balanced.
    np.testing.assert_allclose(make_sampler(LABELS, "drs", drs_start=0, drs_beta=1.0).class_probabilities(),
                               np.full(5, 0.2), atol=1e-15)
    np.testing.assert_allclose(make_sampler(LABELS, "drs", drs_start=0, drs_beta=0.0).class_probabilities(),
                               COUNTS / COUNTS.sum(), atol=1e-15)


def test_drs_shuffles_then_resamples():
    n = len(LABELS)
    s = make_sampler(LABELS, "drs", total_epochs=10, num_samples=n, seed=6)
    assert s.drs_start == 8
    # Before drs_start: a plain shuffle, every sample exactly once (the official shuffle=True).
    s.set_epoch(7)
    idx = s.epoch_indices()
    assert torch.equal(torch.sort(idx).values, torch.arange(n)) and not torch.equal(idx, torch.arange(n))
    # More draws than samples: whole permutations, so every sample 2 or 3 times in 2.5 N draws.
    many = make_sampler(LABELS, "drs", total_epochs=10, num_samples=5 * n // 2, seed=6)
    hits = np.bincount(many.epoch_indices().numpy(), minlength=n)
    assert set(np.unique(hits)) == {2, 3} and (hits == 3).sum() == 5 * n // 2 - 2 * n
    # From drs_start: effective-number re-sampling with replacement.
    r = make_sampler(LABELS, "drs", total_epochs=10, num_samples=DRAWS, seed=6)
    r.set_epoch(8)
    want = effective_number(COUNTS, 0.9999)
    np.testing.assert_allclose(r.class_probabilities(), want, rtol=1e-9)
    ok, stat = chi_square_ok(r, LABELS, want)
    assert ok, stat
    assert_close_to(observed_freqs(r, LABELS, len(COUNTS)), want, DRAWS)


def test_drs_and_mixture_arguments_are_validated(caplog):
    with pytest.raises(ConfigError, match="drs_start"):
        make_sampler(LABELS, "drs", drs_start=-1, total_epochs=5)
    with pytest.raises(ConfigError, match="drs_start"):
        make_sampler(LABELS, "drs", drs_start=2.5, total_epochs=5)
    with pytest.raises(ConfigError, match=r"drs_beta.*\[0, 1\]"):
        make_sampler(LABELS, "drs", drs_beta=1.5)
    with pytest.raises(ConfigError, match="total_epochs"):
        make_sampler(LABELS, "progressive_balanced", total_epochs=0)
    with caplog.at_level("WARNING", logger="imbalance.samplers"):
        make_sampler(LABELS, "sqrt", drs_start=3)
    assert "drs_start" in caplog.text and "ignored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="imbalance.samplers"):
        make_sampler(LABELS, "drs", drs_start=5, total_epochs=5)
    assert "never re-samples" in caplog.text


SCHEDULED = [n for n in SAMPLERS.names() if n != "none"]


@pytest.mark.parametrize("method", SCHEDULED)
def test_every_sampler_exposes_per_epoch_probabilities_and_resumes(method):
    total = 6
    kw = dict(total_epochs=total, seed=11, num_samples=500, alpha_start=0.9, alpha_end=0.1)
    s = make_sampler(LABELS, method, **kw)
    table = np.stack([s.class_probabilities_at(e) for e in range(total)])
    np.testing.assert_allclose(table.sum(1), 1.0, rtol=1e-12)
    assert table.shape == (total, len(COUNTS)) and np.all(table >= 0)
    for e in range(total):
        s.set_epoch(e)
        np.testing.assert_array_equal(s.class_probabilities(), table[e])
        np.testing.assert_array_equal(sampling_prior(s, COUNTS), table[e])
        np.testing.assert_array_equal(sampling_prior(s, COUNTS, epoch=0), table[0])
        # Resume: a fresh sampler loaded from the state reproduces the epoch, on every rank.
        r = make_sampler(LABELS, method, **kw)
        r.load_state_dict(s.state_dict())
        assert torch.equal(r.epoch_indices(), s.epoch_indices())
        shards = [make_sampler(LABELS, method, num_replicas=3, rank=k, **kw) for k in range(3)]
        for sh in shards:
            sh.set_epoch(e)
        glob = shards[0].global_indices()
        assert torch.equal(glob[:500], s.epoch_indices())
        assert torch.equal(torch.stack([sh.epoch_indices() for sh in shards], 1).reshape(-1), glob)
    s.set_epoch(2)
    other = make_sampler(LABELS, method, **{**kw, "seed": 12})
    other.set_epoch(2)
    assert not torch.equal(s.epoch_indices(), other.epoch_indices())
    assert repr(s).startswith(type(s).__name__)


def test_sampling_prior_without_sampler_is_the_natural_distribution():
    np.testing.assert_allclose(sampling_prior(None, [3, 0, 1]), [0.75, 0.0, 0.25], atol=1e-15)
