"""Tests for imbalance.losses: each loss against its paper's formula, computed independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.losses import (LOSSES, COST_STRATEGIES, class_weights, create_loss,
                              effective_number_weights, ldam_margins)

COUNTS = [500, 120, 40, 9, 3]
K = len(COUNTS)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, K, generator=g, dtype=torch.float64).float() * 2
    t = torch.randint(0, K, (64,), generator=g)
    return z, t


def naive_ce(z, t):
    """-log softmax_y computed from exp/sum (independent of F.cross_entropy)."""
    p = torch.exp(z.double()) / torch.exp(z.double()).sum(1, keepdim=True)
    return -torch.log(p[torch.arange(len(t)), t])


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# ---------------------------------------------------------------- registry-wide
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_forward_backward_finite(name, batch):
    z, t = batch
    loss = create_loss(name, class_counts=COUNTS)
    assert hasattr(loss, "set_epoch") and loss.epoch == 0
    zz = z.clone().requires_grad_(True)
    v = loss(zz, t)
    assert v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v)
    v.backward()
    assert zz.grad is not None and torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0
    loss.set_epoch(3)
    assert loss.epoch == 3 and torch.isfinite(loss(z, t))
    # bf16 logits (autocast) are computed in float32 internally.
    vb = loss(z.bfloat16(), t)
    assert vb.dtype == torch.float32 and torch.isfinite(vb)
    # Every loss accepts total_epochs (the pipeline passes it uniformly).
    assert torch.isfinite(create_loss(name, class_counts=COUNTS, total_epochs=5)(z, t))


def test_registry_names():
    assert set(LOSSES.names()) == {
        "CrossEntropy", "FocalLoss", "ClassBalancedLoss", "LDAMLoss", "ProgressiveLoss",
        "BalancedSoftmaxLoss", "LogitAdjustmentLoss", "CostSensitiveCE", "CostSensitiveExpected",
        "CostSensitiveFocal", "CombinedLoss", "VSLoss", "CDTLoss", "LabelAwareSmoothing"}
    assert set(COST_STRATEGIES.names()) == {"auto", "sqrt", "log", "uniform", "manual"}


# ---------------------------------------------------------------- CE / focal
def test_cross_entropy_label_smoothing(batch):
    z, t = batch
    eps = 0.1
    logp = torch.log_softmax(z.double(), 1)
    ref = (-(1 - eps) * logp[torch.arange(len(t)), t] - eps / K * logp.sum(1)).mean()
    assert close(create_loss("CrossEntropy", label_smoothing=eps)(z, t), ref)
    assert close(create_loss("CrossEntropy")(z, t), naive_ce(z, t).mean())


def test_focal_gamma0_is_ce_and_formula(batch):
    z, t = batch
    assert close(create_loss("FocalLoss", gamma=0.0)(z, t), naive_ce(z, t).mean())
    p = torch.softmax(z.double(), 1)[torch.arange(len(t)), t]
    gamma = 2.0
    ref = (-(1 - p) ** gamma * torch.log(p)).mean()
    assert close(create_loss("FocalLoss", gamma=gamma)(z, t), ref)
    alpha = [0.1, 0.2, 0.3, 0.4, 0.5]
    ref_a = (-torch.tensor(alpha, dtype=torch.float64)[t] * (1 - p) ** gamma * torch.log(p)).mean()
    assert close(create_loss("FocalLoss", gamma=gamma, alpha=alpha)(z, t), ref_a)
    assert close(create_loss("FocalLoss", gamma=gamma, alpha=0.25)(z, t), 0.25 * ref)


# ---------------------------------------------------------------- class-balanced
def cb_weights_ref(counts, beta):
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    s = sum(w)
    return torch.tensor([x * len(w) / s for x in w], dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.9999])
def test_class_balanced_weights_follow_effective_number(beta, batch):
    z, t = batch
    w = cb_weights_ref(COUNTS, beta)
    assert close(effective_number_weights(COUNTS, beta), w, 1e-9)
    assert close(w.sum(), K)
    ref = (w[t] * naive_ce(z, t)).mean()
    assert close(create_loss("ClassBalancedLoss", beta=beta, class_counts=COUNTS)(z, t), ref)


def test_class_balanced_beta0_is_ce(batch):
    z, t = batch
    assert close(create_loss("ClassBalancedLoss", beta=0.0, class_counts=COUNTS)(z, t),
                 naive_ce(z, t).mean())


def test_class_balanced_sigmoid_and_focal(batch):
    z, t = batch
    beta, gamma = 0.999, 1.5
    w = cb_weights_ref(COUNTS, beta)
    y = F.one_hot(t, K).double()
    zt = torch.where(y > 0, z.double(), -z.double())
    pt = torch.sigmoid(zt)
    ref_sig = (w[t] * (-torch.log(pt)).sum(1)).mean()
    ref_focal = (w[t] * (-(1 - pt) ** gamma * torch.log(pt)).sum(1)).mean()
    mk = lambda **kw: create_loss("ClassBalancedLoss", beta=beta, class_counts=COUNTS, **kw)
    assert close(mk(base="sigmoid")(z, t), ref_sig)
    assert close(mk(base="focal", gamma=gamma)(z, t), ref_focal)
    assert close(mk(base="focal", gamma=0.0)(z, t), ref_sig)


# ---------------------------------------------------------------- LDAM-DRW
def test_ldam_margins_and_loss(batch):
    z, t = batch
    m = torch.tensor([n ** -0.25 for n in COUNTS], dtype=torch.float64)
    m = m * 0.5 / m.max()
    assert close(ldam_margins(COUNTS, 0.5), m, 1e-9)
    assert close(m.max(), 0.5) and m.argmax() == int(np.argmin(COUNTS))
    s = 30.0
    zm = z.double().clone()
    zm[torch.arange(len(t)), t] -= m[t]
    ref = naive_ce(s * zm, t).mean()
    loss = create_loss("LDAMLoss", class_counts=COUNTS, max_margin=0.5, scale=s)
    assert close(loss(z, t), ref, 1e-4)


def test_ldam_drw_switches_on_at_drw_start(batch):
    z, t = batch
    m = torch.tensor([n ** -0.25 for n in COUNTS], dtype=torch.float64)
    m = m * 0.3 / m.max()
    zm = z.double().clone()
    zm[torch.arange(len(t)), t] -= m[t]
    per = naive_ce(10.0 * zm, t)
    w = cb_weights_ref(COUNTS, 0.9999)
    unweighted = per.mean()
    weighted = (w[t] * per).sum() / w[t].sum()  # official code: F.cross_entropy(weight=w)
    loss = create_loss("LDAMLoss", class_counts=COUNTS, max_margin=0.3, scale=10.0, drw_start=5)
    assert close(loss(z, t), unweighted, 1e-4)  # before set_epoch: epoch 0
    loss.set_epoch(4)
    assert close(loss(z, t), unweighted, 1e-4)
    loss.set_epoch(5)
    assert close(loss(z, t), weighted, 1e-4)
    assert not close(unweighted, weighted, 1e-3)
    never = create_loss("LDAMLoss", class_counts=COUNTS, max_margin=0.3, scale=10.0)
    never.set_epoch(1000)
    assert close(never(z, t), unweighted, 1e-4)


# ---------------------------------------------------------------- prior-adjusted
def test_balanced_softmax_is_ce_on_logits_plus_log_n(batch):
    z, t = batch
    ref = naive_ce(z.double() + torch.log(torch.tensor(COUNTS, dtype=torch.float64)), t).mean()
    assert close(create_loss("BalancedSoftmaxLoss", class_counts=COUNTS)(z, t), ref)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjustment_is_ce_on_logits_plus_tau_log_prior(tau, batch):
    z, t = batch
    n = torch.tensor(COUNTS, dtype=torch.float64)
    ref = naive_ce(z.double() + tau * torch.log(n / n.sum()), t).mean()
    assert close(create_loss("LogitAdjustmentLoss", tau=tau, class_counts=COUNTS)(z, t), ref)


# ---------------------------------------------------------------- progressive
def test_progressive_loss_power_schedule(batch):
    z, t = batch
    n = torch.tensor(COUNTS, dtype=torch.float64)
    loss = create_loss("ProgressiveLoss", class_counts=COUNTS, power_end=1.0, total_epochs=11)
    assert close(loss(z, t), naive_ce(z, t).mean())  # epoch 0: p = 0, plain CE
    for epoch, p in [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)]:
        loss.set_epoch(epoch)
        w = n ** (-p)
        w = w * K / w.sum()
        assert close(loss.weight, w, 1e-6)
        assert close(loss(z, t), (w[t] * naive_ce(z, t)).mean())


# ---------------------------------------------------------------- cost-sensitive
def test_cost_sensitive_ce_uniform_is_exactly_ce(batch):
    z, t = batch
    for cc in (COUNTS, None):
        cs = create_loss("CostSensitiveCE", cost_strategy="uniform", class_counts=cc)
        assert torch.equal(cs(z, t), create_loss("CrossEntropy")(z, t))


@pytest.mark.parametrize("strategy, raw", [
    ("auto", lambda n: 1.0 / n),
    ("sqrt", lambda n: 1.0 / math.sqrt(n)),
    ("log", lambda n: 1.0 + math.log(max(COUNTS) / n)),
])
def test_cost_strategies_weights_and_ce(strategy, raw, batch):
    z, t = batch
    w = torch.tensor([raw(n) for n in COUNTS], dtype=torch.float64)
    w = w * K / w.sum()
    assert close(class_weights(COUNTS, strategy), w, 1e-9)
    # rarer class -> larger cost
    assert torch.all(w[1:] >= w[:-1])
    ref = (w[t] * naive_ce(z, t)).mean()
    assert close(create_loss("CostSensitiveCE", cost_strategy=strategy, class_counts=COUNTS)(z, t), ref)
    p = torch.softmax(z.double(), 1)[torch.arange(len(t)), t]
    ref_f = (w[t] * -(1 - p) ** 2.0 * torch.log(p)).mean()
    assert close(create_loss("CostSensitiveFocal", cost_strategy=strategy, class_counts=COUNTS)(z, t),
                 ref_f)
    ref_e = (w[t] * (1 - p)).mean()
    assert close(create_loss("CostSensitiveExpected", cost_strategy=strategy,
                             class_counts=COUNTS)(z, t), ref_e)


def test_cost_sensitive_focal_gamma0_is_cost_sensitive_ce(batch):
    z, t = batch
    a = create_loss("CostSensitiveFocal", gamma=0.0, class_counts=COUNTS)(z, t)
    b = create_loss("CostSensitiveCE", class_counts=COUNTS)(z, t)
    assert close(a, b)


def test_manual_cost_vector_and_matrix(batch):
    z, t = batch
    vec = [1.0, 2.0, 3.0, 4.0, 10.0]
    w = torch.tensor(vec, dtype=torch.float64) * K / sum(vec)
    ce = create_loss("CostSensitiveCE", cost_strategy="manual", cost_matrix=vec, class_counts=COUNTS)
    assert close(ce(z, t), (w[t] * naive_ce(z, t)).mean())

    rng = np.random.default_rng(1)
    C = rng.uniform(0.5, 3.0, size=(K, K))
    np.fill_diagonal(C, 0.0)
    Ct = torch.tensor(C)
    row = Ct.sum(1) / (K - 1)
    wr = row * K / row.sum()
    ce_m = create_loss("CostSensitiveCE", cost_strategy="manual", cost_matrix=C.tolist())
    assert close(ce_m(z, t), (wr[t] * naive_ce(z, t)).mean())
    # Expected cost sum_j p_j C[y, j], C scaled so that its row means sum to K.
    p = torch.softmax(z.double(), 1)
    ref = (p * (Ct * K / row.sum())[t]).sum(1).mean()
    ex = create_loss("CostSensitiveExpected", cost_strategy="manual", cost_matrix=C,
                     class_counts=COUNTS)
    assert close(ex(z, t), ref)


# ---------------------------------------------------------------- combined
def test_combined_loss_seed_example_and_schedule_forwarding(batch):
    z, t = batch
    losses = {"ce": create_loss("CrossEntropy"), "focal": create_loss("FocalLoss", gamma=2.0)}
    comb = create_loss("CombinedLoss", losses=losses, weights={"ce": 0.7, "focal": 0.3})
    p = torch.softmax(z.double(), 1)[torch.arange(len(t)), t]
    ref = 0.7 * (-torch.log(p)).mean() + 0.3 * (-(1 - p) ** 2 * torch.log(p)).mean()
    assert close(comb(z, t), ref)
    assert close(create_loss("CombinedLoss", class_counts=COUNTS)(z, t), ref)  # default = SEED's

    byname = create_loss("CombinedLoss", losses=["CrossEntropy", "LDAMLoss"], weights=[1.0, 2.0],
                         class_counts=COUNTS)
    ldam = byname.losses["LDAMLoss"]
    assert ldam.drw_start is None
    comb2 = create_loss("CombinedLoss", class_counts=COUNTS,
                        losses={"a": "CrossEntropy", "b": {"name": "LDAMLoss", "drw_start": 2}})
    comb2.set_epoch(2)
    assert comb2.losses["b"].epoch == 2 and comb2.losses["b"].drw_active
    assert close(byname(z, t), create_loss("CrossEntropy")(z, t)
                 + 2.0 * create_loss("LDAMLoss", class_counts=COUNTS)(z, t))


# ---------------------------------------------------------------- bad input
def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_unknown_names_list_valid_ones():
    with pytest.raises(UnknownNameError) as ei:
        create_loss("FocalLos", class_counts=COUNTS)
    assert "FocalLoss" in one_line(ei) and "CostSensitiveCE" in one_line(ei)
    with pytest.raises(UnknownNameError) as ei:
        create_loss("CostSensitiveCE", cost_strategy="inverse", class_counts=COUNTS)
    assert all(s in one_line(ei) for s in ("auto", "sqrt", "log", "uniform", "manual"))
    with pytest.raises(UnknownNameError) as ei:
        create_loss("ClassBalancedLoss", base="hinge", class_counts=COUNTS)
    assert "softmax" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        create_loss("FocalLoss", gama=2.0)
    assert "gamma" in one_line(ei)


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5])
def test_beta_out_of_range(beta):
    with pytest.raises(ConfigError) as ei:
        create_loss("ClassBalancedLoss", beta=beta, class_counts=COUNTS)
    assert "[0, 1)" in one_line(ei)
    with pytest.raises(ConfigError):
        create_loss("LDAMLoss", drw_beta=beta, class_counts=COUNTS)


@pytest.mark.parametrize("matrix", [
    [1.0, 2.0],                                   # wrong length
    np.ones((K, K + 1)).tolist(),                 # not square
    np.ones((K - 1, K - 1)).tolist(),             # K mismatch
    [1.0, -1.0, 1.0, 1.0, 1.0],                   # negative
    (np.ones((K, K)) - 2 * np.eye(K)).tolist(),   # negative diagonal
])
@pytest.mark.parametrize("name", ["CostSensitiveCE", "CostSensitiveExpected", "CostSensitiveFocal"])
def test_bad_manual_cost_matrix(matrix, name):
    with pytest.raises(ConfigError) as ei:
        create_loss(name, cost_strategy="manual", cost_matrix=matrix, class_counts=COUNTS)
    assert "cost_matrix" in one_line(ei)


def test_manual_without_matrix():
    with pytest.raises(ConfigError) as ei:
        create_loss("CostSensitiveCE", cost_strategy="manual", class_counts=COUNTS)
    assert "cost_matrix" in one_line(ei)


@pytest.mark.parametrize("name", ["ClassBalancedLoss", "LDAMLoss", "ProgressiveLoss",
                                  "BalancedSoftmaxLoss", "LogitAdjustmentLoss", "CostSensitiveCE",
                                  "CostSensitiveExpected", "CostSensitiveFocal"])
def test_zero_count_class_and_missing_counts(name):
    with pytest.raises(ConfigError) as ei:
        create_loss(name, class_counts=[100, 0, 5])
    assert "[1]" in one_line(ei) and "0 training samples" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        create_loss(name)
    assert "class_counts" in one_line(ei)


def test_ce_and_focal_need_no_counts(batch):
    z, t = batch
    for name in ("CrossEntropy", "FocalLoss"):
        assert torch.isfinite(create_loss(name)(z, t))
        assert torch.isfinite(create_loss(name, class_counts=[10, 0, 3, 4, 5])(z, t))


def test_focal_scalar_alpha_range():
    with pytest.raises(ConfigError) as ei:
        create_loss("FocalLoss", alpha=1.5)
    assert "[0, 1]" in one_line(ei)
