"""Tests for imbalance.mixing: each mix against its definition (coefficient distribution, the
convex combination / replaced segment, Remix's label rule) and mixed_loss against hand
computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.losses import create_loss
from imbalance.mixing import (MIXES, CutMix1d, MixedTarget, check_loss_compatible, create_mix,
                              mixed_correct, mixed_loss, remix_label_weights)


def distinct_batch(b=8, c=2, length=32):
    """Samples that are all different, labels 0..b-1 (so y_b reveals the permutation)."""
    x = torch.arange(b * c * length, dtype=torch.float32).reshape(b, c, length) / 100.0
    return x, torch.arange(b)


def seed(s):
    np.random.seed(s)
    torch.manual_seed(s)


def test_registry_names():
    assert set(MIXES.names()) == {"mixup", "remix", "balanced_mixup", "cutmix1d"}
    assert create_mix("none") is None and create_mix(None) is None
    with pytest.raises(UnknownNameError, match="mixup"):
        create_mix("manifold_mixup")


# ------------------------------------------------------------------------------------- mixup
def test_mixup_is_a_convex_combination_with_the_permuted_batch():
    x, y = distinct_batch()
    seed(3)
    mixed, tgt = create_mix("mixup", alpha=1.0)(x, y)
    perm = tgt.y_b                       # labels are 0..B-1
    lam = tgt.lam
    assert 0 < lam < 1 and tgt.label_lam == lam and not tgt.per_sample
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert torch.equal(tgt.y_a, y) and torch.allclose(tgt.weight_a, torch.full((8,), lam))
    # the same draws as the official code: lam from numpy's Beta, then torch.randperm
    seed(3)
    assert lam == float(np.random.beta(1.0, 1.0))
    assert torch.equal(perm, torch.randperm(8))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    np.random.seed(0)
    mix = create_mix("mixup", alpha=alpha)
    x, y = torch.zeros(2, 1, 4), torch.tensor([0, 1])
    lams = np.array([mix(x, y)[1].lam for _ in range(1500)])
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # and not another Beta (the test can fail)
    other = 1.0 if alpha != 1.0 else 0.3
    assert stats.kstest(lams, stats.beta(other, other).cdf).pvalue < 1e-3


def test_prob_controls_the_share_of_mixed_batches():
    x, y = distinct_batch()
    never = create_mix("mixup", prob=0.0)
    out, tgt = never(x, y)
    assert out is x and torch.equal(tgt.y_b, y) and tgt.label_lam == 1.0
    np.random.seed(1)
    half = create_mix("cutmix1d", prob=0.5)
    mixed = sum(half(x, y)[1].lam < 1.0 for _ in range(600))
    assert 240 < mixed < 360


# ------------------------------------------------------------------------------------- remix
COUNTS = [300, 100, 30, 10]


@pytest.mark.parametrize("lam, pairs, expected", [
    # lam < tau: a majority a (n_a >= 3 n_b) mixed in with little weight -> label all b (0)
    (0.3, [(0, 1), (0, 3), (2, 3), (1, 2), (1, 0), (2, 1), (0, 0)], [0, 0, 0, 0, 0.3, 0.3, 0.3]),
    # 1 - lam < tau: a minority a (n_a <= n_b / 3) dominating the input -> label all a (1)
    (0.8, [(1, 0), (3, 0), (2, 1), (0, 1), (0, 3), (2, 2)], [1, 1, 1, 0.8, 0.8, 0.8]),
    # lam == tau: the strict inequality keeps mixup's weight
    (0.5, [(0, 1), (1, 0)], [0.5, 0.5]),
])
def test_remix_label_rule_on_constructed_counts(lam, pairs, expected):
    n = torch.tensor(COUNTS, dtype=torch.float64)
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    w = remix_label_weights(n[a], n[b], lam, kappa=3.0, tau=0.5)
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float32))


def test_remix_ratio_just_below_kappa_keeps_mixup_weight():
    w = remix_label_weights(torch.tensor([29.0, 30.0]), torch.tensor([10.0, 10.0]), 0.2, kappa=3.0, tau=0.5)
    assert torch.allclose(w, torch.tensor([0.2, 0.0]))


def test_remix_batch_uses_the_rule_and_mixup_inputs():
    x = torch.randn(16, 2, 8)
    y = torch.tensor([0, 3] * 8)
    mix = create_mix("remix", class_counts=COUNTS)
    assert mix.kappa == 3.0 and mix.tau == 0.5 and mix.alpha == 1.0
    seed(5)
    mixed, tgt = mix(x, y)
    seed(5)
    lam = float(np.random.beta(1.0, 1.0))
    perm = torch.randperm(16)
    assert tgt.per_sample and tgt.label_lam is None and tgt.lam == lam
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    assert torch.equal(tgt.weight_a, remix_label_weights(n[y], n[y[perm]], lam))


def test_remix_bad_values():
    with pytest.raises(ConfigError, match="class_counts"):
        create_mix("remix")
    with pytest.raises(ConfigError, match="kappa"):
        create_mix("remix", class_counts=COUNTS, kappa=0.5)
    with pytest.raises(ConfigError, match="tau"):
        create_mix("remix", class_counts=COUNTS, tau=1.5)
    with pytest.raises(ConfigError, match="accepted: alpha, prob"):
        create_mix("mixup", kappa=3)


@pytest.mark.parametrize("name, kw", [("mixup", {"alpha": 0}), ("cutmix1d", {"alpha": -1}),
                                      ("mixup", {"prob": 1.5})])
def test_bad_alpha_prob(name, kw):
    with pytest.raises(ConfigError):
        create_mix(name, **kw)


# ---------------------------------------------------------------------------- balanced mixup
def test_balanced_mixup_mixes_the_two_streams():
    seed(2)
    x, y = torch.randn(6, 2, 10), torch.tensor([0, 0, 0, 0, 1, 2])
    xb, yb = torch.randn(6, 2, 10), torch.tensor([0, 1, 2, 3, 0, 1])
    mix = create_mix("balanced_mixup")
    assert mix.alpha == 0.2 and mix.needs_second_batch
    mixed, tgt = mix(x, y, xb, yb)
    seed(2)
    lam = float(np.random.beta(0.2, 1.0))
    assert torch.allclose(mixed, (1 - lam) * x + lam * xb, atol=1e-6)
    assert torch.equal(tgt.y_a, y) and torch.equal(tgt.y_b, yb)
    assert tgt.label_lam == pytest.approx(1 - lam) and torch.allclose(tgt.weight_a, torch.full((6,), 1 - lam))
    with pytest.raises(ValueError, match="same shape"):
        mix(x, y, xb[:5], yb[:5])


def test_balanced_mixup_lambda_is_beta_alpha_1():
    np.random.seed(4)
    mix = create_mix("balanced_mixup", alpha=0.3)
    x, y = torch.zeros(2, 1, 4), torch.tensor([0, 1])
    lams = np.array([1 - mix(x, y, x, y)[1].lam for _ in range(1500)])  # lam of the balanced batch
    assert stats.kstest(lams, stats.beta(0.3, 1.0).cdf).pvalue > 1e-3
    assert stats.kstest(lams, stats.beta(0.3, 0.3).cdf).pvalue < 1e-3


# ------------------------------------------------------------------------------------ cutmix
def test_cutmix_replaces_one_segment_and_recomputes_lambda():
    x, y = distinct_batch(b=6, c=2, length=40)
    before = x.clone()
    seed(7)
    mixed, tgt = create_mix("cutmix1d", alpha=1.0)(x, y)
    assert torch.equal(x, before)                      # not in place
    seed(7)
    lam0 = float(np.random.beta(1.0, 1.0))
    perm = torch.randperm(6)
    x1, x2 = CutMix1d.segment(40, lam0)
    assert torch.equal(tgt.y_b, perm)
    inside = torch.zeros(40, dtype=torch.bool)
    inside[x1:x2] = True
    assert torch.equal(mixed[..., inside], x[perm][..., inside])
    assert torch.equal(mixed[..., ~inside], x[..., ~inside])
    assert tgt.lam == pytest.approx(1 - (x2 - x1) / 40) and tgt.label_lam == tgt.lam


def test_cutmix_segment_hand_cases(monkeypatch):
    # lam = 0.5, L = 40: cut = 20; centre 20 -> [10, 30); centre 3 -> clipped [0, 13); centre 39 -> [29, 40)
    for centre, want in [(20, (10, 30)), (3, (0, 13)), (39, (29, 40))]:
        monkeypatch.setattr(np.random, "randint", lambda n, c=centre: c)
        assert CutMix1d.segment(40, 0.5) == want
    monkeypatch.setattr(np.random, "randint", lambda n: 5)
    assert CutMix1d.segment(40, 1.0) == (5, 5)        # lam = 1: nothing replaced
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        create_mix("cutmix1d")(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long))


def test_cutmix_lambda_matches_the_segment_over_many_draws():
    np.random.seed(11)
    torch.manual_seed(11)
    mix = create_mix("cutmix1d")
    x, y = distinct_batch(b=4, c=1, length=64)
    checked = 0
    for _ in range(50):
        mixed, tgt = mix(x, y)
        for i in range(4):
            if tgt.y_b[i] == i:
                continue  # paired with itself: nothing visibly replaced
            cols = torch.nonzero((mixed[i] != x[i]).any(0)).flatten()
            # one contiguous run whose length is (1 - lam) L
            assert cols.numel() == round((1 - tgt.lam) * 64)
            if cols.numel():
                assert int(cols[-1] - cols[0] + 1) == cols.numel()
            checked += 1
    assert checked > 100


# ------------------------------------------------------------------------------- mixed loss
def ref_ce(z, t):
    z = z.double()
    return -(z - torch.logsumexp(z, 1, keepdim=True))[torch.arange(len(t)), t]


def test_mixed_loss_scalar_lambda_hand_computed():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    tgt = MixedTarget(torch.tensor([0, 2]), torch.tensor([1, 0]), torch.full((2,), 0.7), 0.7, 0.7)
    ce = create_loss("CrossEntropy")
    want = 0.7 * ref_ce(z, tgt.y_a).mean() + 0.3 * ref_ce(z, tgt.y_b).mean()
    assert torch.allclose(mixed_loss(ce, z, tgt).double(), want, atol=1e-6)
    # for CE this is the soft-target CE of the mixed one-hot labels (Balanced-MixUp's loss)
    q = 0.7 * torch.eye(3)[tgt.y_a] + 0.3 * torch.eye(3)[tgt.y_b]
    soft = -(q.double() * (z.double() - torch.logsumexp(z.double(), 1, keepdim=True))).sum(1).mean()
    assert torch.allclose(mixed_loss(ce, z, tgt).double(), soft, atol=1e-6)
    # a plain label tensor and an unmixed target are the loss itself
    assert torch.equal(mixed_loss(ce, z, tgt.y_a), ce(z, tgt.y_a))
    assert torch.equal(mixed_loss(ce, z, MixedTarget.unmixed(tgt.y_a)), ce(z, tgt.y_a))


def test_mixed_loss_per_sample_weights_hand_computed():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, -2.0, 0.0]])
    ya, yb = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 2])
    w = torch.tensor([0.0, 1.0, 0.3])
    tgt = MixedTarget(ya, yb, w, 0.3, None)
    la, lb = ref_ce(z, ya), ref_ce(z, yb)
    want = (lb[0] + la[1] + 0.3 * la[2] + 0.7 * lb[2]) / 3
    ce = create_loss("CrossEntropy")
    assert torch.allclose(mixed_loss(ce, z, tgt).double(), want, atol=1e-6)
    # a weighted loss: per-sample class weights times the mixed terms
    counts = [50, 10, 5]
    cs = create_loss("CostSensitiveCE", class_counts=counts)
    cw = cs.weight.double()
    want_w = ((1 - w.double()) * cw[yb] * lb + w.double() * cw[ya] * la).mean()
    assert torch.allclose(mixed_loss(cs, z, tgt).double(), want_w, atol=1e-6)


def test_remix_refuses_a_loss_without_per_sample_form():
    z = torch.randn(3, 3)
    tgt = MixedTarget(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), torch.tensor([0.0, 1.0, 0.5]), 0.5, None)
    ldam = create_loss("LDAMLoss", class_counts=[50, 10, 5], drw_start=0)
    with pytest.raises(ConfigError, match="remix.*LDAMLoss"):
        mixed_loss(ldam, z, tgt)
    with pytest.raises(ConfigError, match="per-sample"):
        check_loss_compatible(create_mix("remix", class_counts=[50, 10, 5]), ldam)
    # scalar-lambda mixes work with it, and a per-sample loss passes the check
    check_loss_compatible(create_mix("mixup"), ldam)
    check_loss_compatible(create_mix("remix", class_counts=[50, 10, 5]), create_loss("FocalLoss"))
    scalar = MixedTarget(tgt.y_a, tgt.y_b, torch.full((3,), 0.4), 0.4, 0.4)
    assert torch.isfinite(mixed_loss(ldam, z, scalar))


def test_mixed_correct_weights_each_label():
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])      # predicts 0, 1, 0
    tgt = MixedTarget(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), torch.tensor([0.8, 0.6, 0.1]), 0.5, None)
    # 0.8*1 + 0.2*0, 0.6*0 + 0.4*1, 0.1*0 + 0.9*1
    assert float(mixed_correct(z, tgt)) == pytest.approx(0.8 + 0.4 + 0.9)
    assert float(mixed_correct(z, torch.tensor([0, 1, 1]))) == 2.0


def test_mixing_gradients_flow_and_keep_dtype():
    x, y = torch.randn(4, 2, 16), torch.tensor([0, 1, 0, 1])
    for name in ("mixup", "cutmix1d"):
        mixed, _ = create_mix(name)(x, y)
        assert mixed.dtype == x.dtype and mixed.shape == x.shape
    mixed, _ = create_mix("mixup")(x.bfloat16(), y)
    assert mixed.dtype == torch.bfloat16
