"""Faithfulness tests for imbalance.losses: numerics at large margins, label smoothing, shared
CombinedLoss arguments, sampled priors, class-balanced weight ratios.

Every reference is computed here in float64 from its formula, independently of the module."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import imbalance.losses as L
from imbalance.errors import ConfigError, UnknownNameError
from imbalance.losses import create_loss, loss_accepts

COUNTS = [480, 120, 30, 8, 3]
K = len(COUNTS)
N = torch.tensor(COUNTS, dtype=torch.float64)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(48, K, generator=g, dtype=torch.float64) * 2).float()
    t = torch.randint(0, K, (48,), generator=g)
    return z, t


def log_softmax64(z):
    """log p from exp / sum in float64 (shifted by the row max; independent of torch's op)."""
    z = z.double()
    s = z - z.max(1, keepdim=True).values
    return s - torch.log(torch.exp(s).sum(1, keepdim=True))


def smoothed_ce64(z, t, eps):
    """Per-sample label-smoothed CE: (1 - eps)(-log p_y) + eps/K sum_c (-log p_c)."""
    lp = log_softmax64(z)
    k = lp.shape[1]
    return -(1 - eps) * lp[torch.arange(len(t)), t] - eps / k * lp.sum(1)


def close(a, b, rtol=1e-5, atol=1e-6):
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    return torch.allclose(a, b, rtol=rtol, atol=atol)


def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def normalised(w):
    w = torch.as_tensor(w, dtype=torch.float64)
    return w * len(w) / w.sum()


def cb_w(beta, counts=COUNTS):
    return normalised([(1 - beta) / (1 - beta ** n) for n in counts])


# ====================================================================== 1. focal numerics
MARGINS = [-100.0, -30.0, -5.0, 0.0, 1.0, 5.0, 10.0, 17.0, 20.0, 30.0, 60.0, 100.0]


def margin_batch():
    """One row per margin: target logit = max(other logits) + margin (s=30 cosine-head scale)."""
    g = torch.Generator().manual_seed(2)
    rows = []
    targets = []
    for i, m in enumerate(MARGINS * 2):
        z = torch.randn(K, generator=g, dtype=torch.float64) * 3
        t = i % K
        others = torch.cat([z[:t], z[t + 1:]])
        z[t] = others.max() + m
        rows.append(z)
        targets.append(t)
    return torch.stack(rows), torch.tensor(targets)


def focal_ref64(z, t, gamma, w=None):
    """Focal loss in float64 via S = sum_{j != t} exp(z_j - z_t): -log p_t = log1p(S),
    log(1 - p_t) = log S - log1p(S). Stable for any margin float64 can represent."""
    z = z.double()
    zt = z[torch.arange(len(t)), t][:, None]
    mask = torch.nn.functional.one_hot(t, z.shape[1]).bool()
    S = torch.exp(torch.where(mask, torch.full_like(z, -math.inf), z - zt)).sum(1)
    nll = torch.log1p(S)
    per = nll if gamma == 0 else torch.exp(gamma * (torch.log(S) - torch.log1p(S))) * nll
    if w is not None:
        per = w[t] * per
    return per.mean()


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["FocalLoss", "CostSensitiveFocal"])
def test_focal_large_margins_match_float64_reference(name, dtype, gamma):
    z64, t = margin_batch()
    zq = z64.to(dtype)  # the logits the loss sees (bf16 rounding is part of the input)
    loss = create_loss(name, gamma=gamma, class_counts=COUNTS)
    w = normalised([1.0 / n for n in COUNTS]) if name == "CostSensitiveFocal" else None

    x = zq.clone().requires_grad_(True)
    v = loss(x, t)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad.float()).all()

    r = zq.double().clone().requires_grad_(True)
    ref = focal_ref64(r, t, gamma, w)
    ref.backward()
    assert torch.isfinite(ref) and torch.isfinite(r.grad).all()
    if dtype == torch.float32:
        assert close(v, ref, rtol=1e-6, atol=1e-8)
        assert close(x.grad, r.grad, rtol=2e-5, atol=5e-8)
    else:  # the gradient itself is rounded to bf16 (8-bit mantissa)
        assert close(v, ref, rtol=1e-5, atol=1e-5)
        assert close(x.grad, r.grad, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", ["FocalLoss", "CostSensitiveFocal"])
def test_focal_single_class_no_nan(name, gamma):
    # K = 1: p_t = 1 and 1 - p_t = 0 exactly: modulator 0 for gamma > 0, 1 for gamma = 0;
    # -log p_t = 0 either way, so the loss and its gradient are exactly 0.
    kw = {"cost_strategy": "uniform"} if name == "CostSensitiveFocal" else {}
    loss = create_loss(name, gamma=gamma, **kw)
    x = (torch.tensor([[0.0], [5.0], [-40.0], [100.0]])).requires_grad_(True)
    v = loss(x, torch.zeros(4, dtype=torch.long))
    v.backward()
    assert v.item() == 0.0
    assert torch.isfinite(x.grad).all() and torch.all(x.grad == 0)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 2.0])
def test_focal_masked_classes_no_nan(gamma):
    # Other classes masked with -inf: p_t = 1 exactly in that row, which contributes 0.
    z = torch.tensor([[3.0, -math.inf, -math.inf], [1.0, 2.0, 3.0], [0.5, -math.inf, 2.0]])
    t = torch.tensor([0, 2, 0])
    x = z.clone().requires_grad_(True)
    v = create_loss("FocalLoss", gamma=gamma)(x, t)
    v.backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[0] == 0)
    assert close(v, focal_ref64(z, t, gamma), rtol=1e-6, atol=1e-8)


def test_focal_gamma0_is_exactly_ce(batch):
    z, t = batch
    ce = create_loss("CrossEntropy")
    assert torch.equal(create_loss("FocalLoss", gamma=0.0)(z, t), ce(z, t))
    z30 = margin_batch()[0].float()
    t30 = margin_batch()[1]
    assert torch.equal(create_loss("FocalLoss", gamma=0.0)(z30, t30), ce(z30, t30))
    csf = create_loss("CostSensitiveFocal", gamma=0.0, cost_strategy="uniform")
    assert close(csf(z, t), ce(z, t), rtol=1e-6, atol=0)


# ====================================================================== 2. label smoothing
def ldam_logits64(z, t, max_margin, scale):
    m = N ** -0.25
    m = m * max_margin / m.max()
    zm = z.double().clone()
    zm[torch.arange(len(t)), t] -= m[t]
    return scale * zm


def smoothing_reference(name, z, t, eps):
    """float64 hand computation of each loss's label-smoothed form."""
    pi = N / N.sum()
    if name == "CrossEntropy":
        return smoothed_ce64(z, t, eps).mean()
    if name == "CostSensitiveCE":
        return (normalised(1.0 / N)[t] * smoothed_ce64(z, t, eps)).mean()
    if name == "ProgressiveLoss":  # epoch 0 of total_epochs=1: power_start = 0 -> weights 1
        return smoothed_ce64(z, t, eps).mean()
    if name == "ClassBalancedLoss":
        return (cb_w(0.9999)[t] * smoothed_ce64(z, t, eps)).mean()
    if name == "BalancedSoftmaxLoss":
        return smoothed_ce64(z.double() + torch.log(N), t, eps).mean()
    if name == "LogitAdjustmentLoss":  # official: log(pi**tau + 1e-12), tau = 1
        return smoothed_ce64(z.double() + torch.log(pi + 1e-12), t, eps).mean()
    if name == "LDAMLoss":
        return smoothed_ce64(ldam_logits64(z, t, 0.5, 30.0), t, eps).mean()
    raise AssertionError(name)


SMOOTHING_LOSSES = ["CrossEntropy", "CostSensitiveCE", "ProgressiveLoss", "ClassBalancedLoss",
                    "BalancedSoftmaxLoss", "LogitAdjustmentLoss", "LDAMLoss"]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("name", SMOOTHING_LOSSES)
def test_label_smoothing_matches_hand_computation(name, eps, batch):
    z, t = batch
    assert loss_accepts(name, "label_smoothing")
    loss = create_loss(name, label_smoothing=eps, class_counts=COUNTS)
    assert close(loss(z, t), smoothing_reference(name, z, t, eps), rtol=1e-5, atol=1e-5)
    if eps == 0.0:  # smoothing 0 is the unchanged loss
        assert torch.equal(loss(z, t), create_loss(name, class_counts=COUNTS)(z, t))
    else:
        assert not close(loss(z, t), smoothing_reference(name, z, t, 0.0), rtol=1e-4, atol=1e-4)


def test_progressive_loss_smoothing_uses_its_weights(batch):
    z, t = batch
    loss = create_loss("ProgressiveLoss", label_smoothing=0.2, total_epochs=11, class_counts=COUNTS)
    loss.set_epoch(5)  # power 0.5
    ref = (normalised(N ** -0.5)[t] * smoothed_ce64(z, t, 0.2)).mean()
    assert close(loss(z, t), ref)


def test_ldam_drw_smoothing_is_torch_weighted_smoothed_ce(batch):
    # F.cross_entropy(weight=w, label_smoothing=eps):
    # sum_i [(1-eps) w[y_i] (-log p_iy) + eps/K sum_c w[c] (-log p_ic)] / sum_i w[y_i]
    z, t = batch
    eps = 0.2
    loss = create_loss("LDAMLoss", label_smoothing=eps, drw_start=1, class_counts=COUNTS)
    loss.set_epoch(1)
    lp = log_softmax64(ldam_logits64(z, t, 0.5, 30.0))
    w = cb_w(0.9999)
    num = ((1 - eps) * w[t] * -lp[torch.arange(len(t)), t] + eps / K * -(lp * w).sum(1)).sum()
    assert close(loss(z, t), num / w[t].sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("name", SMOOTHING_LOSSES)
def test_label_smoothing_out_of_range(name, eps):
    with pytest.raises(ConfigError) as ei:
        create_loss(name, label_smoothing=eps, class_counts=COUNTS)
    assert "[0, 1)" in one_line(ei)


@pytest.mark.parametrize("name", ["FocalLoss", "CostSensitiveFocal", "CostSensitiveExpected",
                                  "CombinedLoss"])
def test_label_smoothing_refused_where_undefined(name):
    assert not loss_accepts(name, "label_smoothing")
    with pytest.raises(ConfigError) as ei:
        create_loss(name, label_smoothing=0.1, class_counts=COUNTS)
    msg = one_line(ei)
    assert "label_smoothing" in msg and "accepted" in msg


@pytest.mark.parametrize("base", ["sigmoid", "focal"])
def test_class_balanced_smoothing_only_for_softmax(base, batch):
    z, t = batch
    with pytest.raises(ConfigError) as ei:
        create_loss("ClassBalancedLoss", base=base, label_smoothing=0.1, class_counts=COUNTS)
    assert "base='softmax'" in one_line(ei) and base in one_line(ei)
    assert torch.isfinite(create_loss("ClassBalancedLoss", base=base, label_smoothing=0.0,
                                      class_counts=COUNTS)(z, t))


def test_loss_accepts():
    assert loss_accepts("FocalLoss", "gamma") and not loss_accepts("CrossEntropy", "gamma")
    assert loss_accepts("CombinedLoss", "shared") and not loss_accepts("FocalLoss", "self")
    with pytest.raises(UnknownNameError):
        loss_accepts("FocalLos", "gamma")


# ====================================================================== 3. CombinedLoss shared
def focal64(z, t, gamma):
    p = torch.exp(log_softmax64(z))[torch.arange(len(t)), t]
    return (-(1 - p) ** gamma * torch.log(p)).mean()


def test_combined_shared_reaches_parts_that_accept_it(batch):
    z, t = batch
    ref = 0.7 * smoothed_ce64(z, t, 0.0).mean() + 0.3 * focal64(z, t, 0.5)
    comb = create_loss("CombinedLoss", losses=["CrossEntropy", "FocalLoss"], weights=[0.7, 0.3],
                       shared={"gamma": 0.5})
    assert comb.losses["FocalLoss"].gamma == 0.5
    assert close(comb(z, t), ref)
    # The default (SEED's 0.7 CE + 0.3 Focal) also takes it.
    assert close(create_loss("CombinedLoss", shared={"gamma": 0.5})(z, t), ref)


def test_combined_part_spec_overrides_shared(batch):
    z, t = batch
    comb = create_loss("CombinedLoss", class_counts=COUNTS, weights={"ce": 0.5, "f": 2.0},
                       losses={"ce": "CrossEntropy", "f": {"name": "FocalLoss", "gamma": 2.0}},
                       shared={"gamma": 0.5, "label_smoothing": 0.1})
    assert comb.losses["f"].gamma == 2.0 and comb.losses["ce"].label_smoothing == 0.1
    ref = 0.5 * smoothed_ce64(z, t, 0.1).mean() + 2.0 * focal64(z, t, 2.0)
    assert close(comb(z, t), ref)


def test_combined_shared_unknown_key_is_an_error():
    with pytest.raises(ConfigError) as ei:
        create_loss("CombinedLoss", losses=["CrossEntropy", "FocalLoss"], shared={"gama": 0.5})
    assert "gama" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        create_loss("CombinedLoss", shared={"class_counts": COUNTS})
    assert "class_counts" in one_line(ei)


def test_combined_shared_keywords_filter_a_loss_section(batch):
    z, t = batch
    kws = L.CombinedLoss.shared_keywords(["CrossEntropy", {"name": "FocalLoss"}])
    assert {"gamma", "alpha", "label_smoothing"} <= kws
    assert not kws & {"tau", "beta", "class_counts", "total_epochs", "self"}
    assert "gamma" in L.CombinedLoss.shared_keywords(None)  # the default CE + Focal
    section = {"gamma": 0.5, "tau": 1.0, "beta": 0.9999, "label_smoothing": 0.0}
    shared = {k: v for k, v in section.items() if k in kws}
    comb = create_loss("CombinedLoss", losses=["CrossEntropy", {"name": "FocalLoss"}],
                       weights=[0.7, 0.3], shared=shared)
    assert close(comb(z, t), 0.7 * smoothed_ce64(z, t, 0.0).mean() + 0.3 * focal64(z, t, 0.5))


# ====================================================================== 4. sampled prior
P_SAMPLED = [0.3, 0.25, 0.2, 0.15, 0.1]


@pytest.mark.parametrize("name", ["BalancedSoftmaxLoss", "LogitAdjustmentLoss"])
def test_sampled_prior_vector(name, batch):
    z, t = batch
    p = torch.tensor(P_SAMPLED, dtype=torch.float64)
    loss = create_loss(name, prior="sampled", sampled_prior=P_SAMPLED, class_counts=COUNTS)
    if name == "BalancedSoftmaxLoss":
        adj = torch.log(p)
    else:
        adj = torch.log(p ** 1.0 + 1e-12)
    assert close(loss(z, t), smoothed_ce64(z + adj, t, 0.0).mean())
    # Not the train prior.
    assert not close(loss(z, t), create_loss(name, class_counts=COUNTS)(z, t), 1e-3, 1e-3)
    # Without class counts, K comes from the prior; scaling the prior changes nothing.
    alone = create_loss(name, prior="sampled", sampled_prior=[10 * x for x in P_SAMPLED])
    assert close(alone(z, t), loss(z, t), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["BalancedSoftmaxLoss", "LogitAdjustmentLoss"])
def test_uniform_sampled_prior_is_ce(name, batch):
    z, t = batch
    loss = create_loss(name, prior="sampled", sampled_prior=[1.0 / K] * K, class_counts=COUNTS)
    assert close(loss(z, t), smoothed_ce64(z, t, 0.0).mean())


def test_sampled_prior_per_epoch_rows(batch):
    z, t = batch
    rows = np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.3, 0.25, 0.2, 0.15, 0.1], [0.2] * 5])
    tau = 0.7
    la = create_loss("LogitAdjustmentLoss", tau=tau, prior="sampled", sampled_prior=rows,
                     class_counts=COUNTS)
    bs = create_loss("BalancedSoftmaxLoss", prior="sampled", sampled_prior=torch.tensor(rows))

    def refs(row):
        p = torch.tensor(rows[row], dtype=torch.float64)
        return (smoothed_ce64(z + torch.log(p ** tau + 1e-12), t, 0.0).mean(),
                smoothed_ce64(z + torch.log(p), t, 0.0).mean())

    r_la, r_bs = refs(0)  # before set_epoch: row 0
    assert close(la(z, t), r_la) and close(bs(z, t), r_bs)
    for epoch, row in [(0, 0), (1, 1), (2, 2), (7, 2)]:
        la.set_epoch(epoch)
        bs.set_epoch(epoch)
        r_la, r_bs = refs(row)
        assert close(la(z, t), r_la) and close(bs(z, t), r_bs)
        assert np.allclose(bs.class_prior, rows[row])


@pytest.mark.parametrize("name", ["BalancedSoftmaxLoss", "LogitAdjustmentLoss"])
def test_sampled_prior_errors(name):
    mk = lambda **kw: create_loss(name, class_counts=COUNTS, **kw)
    with pytest.raises(ConfigError) as ei:
        mk(prior="sampled")
    assert "sampled_prior" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        mk(prior="sampled", sampled_prior=[0.5, 0.5, 0.0, 0.0, 0.0])
    assert "[2, 3, 4]" in one_line(ei) and "probability 0" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        mk(prior="sampled", sampled_prior=[[0.2] * 5, [0.25, 0.25, 0.25, 0.25, 0.0]])
    assert "[4]" in one_line(ei) and "row 1" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        mk(prior="sampled", sampled_prior=[0.5, 0.5])
    assert "shape" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        mk(prior="sampled", sampled_prior=[0.5, 0.5, 0.1, -0.1, 0.0])
    assert ">= 0" in one_line(ei)
    with pytest.raises(ConfigError) as ei:
        mk(sampled_prior=P_SAMPLED)
    assert "prior='sampled'" in one_line(ei)
    with pytest.raises(UnknownNameError) as ei:
        mk(prior="balanced")
    assert "train" in one_line(ei) and "sampled" in one_line(ei)


# ====================================================================== 5. class-balanced beta
@pytest.mark.parametrize("beta", [0.0, 0.9, 0.998, 0.9999])
def test_class_balanced_weight_ratio(beta, caplog):
    with caplog.at_level(logging.INFO, logger="imbalance.losses"):
        loss = create_loss("ClassBalancedLoss", beta=beta, class_counts=COUNTS)
    ratio = 1.0 if beta == 0.0 else (1 - beta ** max(COUNTS)) / (1 - beta ** min(COUNTS))
    assert math.isclose(loss.weight_ratio, ratio, rel_tol=1e-9)
    assert f"{ratio:.4g}" in caplog.text
    if beta == 0.9999:  # effectively 1/n for n_max = 480 (the docstring's claim)
        assert 0.975 < loss.weight_ratio / (max(COUNTS) / min(COUNTS)) < 1.0
    if beta == 0.998:  # beta ~ 1 - 1/n_max: gentler, well below 1/n
        assert loss.weight_ratio < 0.7 * max(COUNTS) / min(COUNTS)


def test_ldam_drw_weight_ratio(caplog):
    with caplog.at_level(logging.INFO, logger="imbalance.losses"):
        loss = create_loss("LDAMLoss", drw_start=3, drw_beta=0.999, class_counts=COUNTS)
    ratio = (1 - 0.999 ** 480) / (1 - 0.999 ** 3)
    assert math.isclose(loss.drw_weight_ratio, ratio, rel_tol=1e-9)
    assert f"{ratio:.4g}" in caplog.text


# ====================================================================== 6. official code
def test_logit_adjustment_follows_official_epsilon(batch):
    # google-research logit_adjustment: logits + log(base_probs**tau + 1e-12). It differs from
    # tau * log(pi) only for tiny pi**tau; here pi_min**2 = 1e-18.
    z, t = batch
    counts = [1e9, 1e7, 1e5, 1e3, 1]
    pi = torch.tensor(counts, dtype=torch.float64)
    pi = pi / pi.sum()
    loss = create_loss("LogitAdjustmentLoss", tau=2.0, class_counts=counts)
    ref = smoothed_ce64(z + torch.log(pi ** 2 + 1e-12), t, 0.0).mean()
    paper = smoothed_ce64(z + 2 * torch.log(pi), t, 0.0).mean()
    assert close(loss(z, t), ref) and not close(ref, paper, 1e-3, 1e-3)


def test_public_names_kept():
    design = ["create_loss", "LOSSES", "CrossEntropy", "FocalLoss", "ClassBalancedLoss",
              "LDAMLoss", "ProgressiveLoss", "BalancedSoftmaxLoss", "LogitAdjustmentLoss",
              "CostSensitiveCE", "CostSensitiveExpected", "CostSensitiveFocal", "CombinedLoss",
              "loss_accepts"]
    for name in set(design) | set(L.__all__):
        assert hasattr(L, name), name
    assert set(design) <= set(L.__all__)
