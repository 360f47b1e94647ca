"""Tests for the losses added with the mixing/MiSLAS/VS work: VSLoss, CDTLoss,
LabelAwareSmoothing, ClassBalancedLoss(base='softmax_bce') and the per-sample form of every loss,
each against a float64 reference computed here from the paper's formula."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.losses import (LOSSES, create_loss, label_aware_epsilons, loss_accepts,
                              supports_per_sample)

COUNTS = [500, 120, 40, 9, 3]
K = len(COUNTS)
N = np.asarray(COUNTS, dtype=np.float64)
PI = N / N.sum()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(48, K, generator=g, dtype=torch.float64) * 3).float()
    t = torch.randint(0, K, (48,), generator=g)
    t[:K] = torch.arange(K)  # every class present
    return z, t


def ref_ce(z, t, eps=0.0):
    """Smoothed CE per sample in float64 from log-sum-exp written out."""
    z = torch.as_tensor(z, dtype=torch.float64)
    logp = z - torch.log(torch.exp(z - z.max(1, keepdim=True).values).sum(1, keepdim=True)) \
        - z.max(1, keepdim=True).values
    nll = -logp[torch.arange(len(t)), t]
    return (1 - eps) * nll + eps * (-logp).mean(1)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------ VS / CDT
@pytest.mark.parametrize("gamma, tau", [(0.3, 1.0), (0.2, 1.2), (0.5, 0.0), (1.0, 2.0), (0.05, -0.5)])
def test_vs_loss_formula(gamma, tau, batch):
    z, t = batch
    delta = torch.as_tensor((N / N.max()) ** gamma)
    iota = torch.as_tensor(tau * np.log(PI))
    ref = ref_ce(z.double() * delta + iota, t).mean()
    loss = create_loss("VSLoss", class_counts=COUNTS, vs_gamma=gamma, tau=tau)
    assert close(loss(z, t), ref)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_vs_gamma0_is_logit_adjustment(tau, batch):
    z, t = batch
    vs = create_loss("VSLoss", class_counts=COUNTS, vs_gamma=0.0, tau=tau)
    ref = ref_ce(z.double() + tau * torch.as_tensor(np.log(PI)), t).mean()
    assert close(vs(z, t), ref)
    # and the registered LA loss (which guards the log with +1e-12: negligible for these priors)
    la = create_loss("LogitAdjustmentLoss", class_counts=COUNTS, tau=tau)
    assert close(vs(z, t), la(z, t))


def test_vs_gamma0_tau0_is_ce(batch):
    z, t = batch
    vs = create_loss("VSLoss", class_counts=COUNTS, vs_gamma=0.0, tau=0.0)
    ce = create_loss("CrossEntropy")
    assert close(vs(z, t), ce(z, t), tol=1e-6)
    assert close(vs(z, t), ref_ce(z, t).mean())


@pytest.mark.parametrize("gamma", [0.1, 0.3, 1.0])
def test_cdt_divides_logits_by_class_temperature(gamma, batch):
    z, t = batch
    a = (N.max() / N) ** gamma          # Ye et al.: a_c = (N_max / N_c)^gamma
    assert a[0] == 1.0 and np.all(np.diff(a) > 0)   # head untouched, rarer classes cooled more
    ref = ref_ce(z.double() / torch.as_tensor(a), t).mean()
    cdt = create_loss("CDTLoss", class_counts=COUNTS, cdt_gamma=gamma)
    assert close(cdt(z, t), ref)
    assert close(cdt(z, t), create_loss("VSLoss", class_counts=COUNTS, vs_gamma=gamma, tau=0.0)(z, t))
    assert close(create_loss("CDTLoss", class_counts=COUNTS, cdt_gamma=0.0)(z, t), ref_ce(z, t).mean())


def test_cdt_pushes_tail_logits_up():
    """The gradient of CDT on a tail sample asks for a larger increase of the tail logit than
    plain CE does at equal logits (the tail logit is divided by a_c > 1)."""
    z = torch.zeros(1, K, requires_grad=True)
    t = torch.tensor([K - 1])
    create_loss("CDTLoss", class_counts=COUNTS, cdt_gamma=0.5)(z, t).backward()
    g_cdt = z.grad[0, K - 1].item()
    z2 = torch.zeros(1, K, requires_grad=True)
    create_loss("CrossEntropy")(z2, t).backward()
    # at z = 0 the probabilities are equal; the CDT gradient is the CE gradient divided by a_c
    a = (N.max() / N[-1]) ** 0.5
    assert math.isclose(g_cdt, z2.grad[0, K - 1].item() / a, rel_tol=1e-5)


@pytest.mark.parametrize("name, kw", [("VSLoss", {"vs_gamma": 0.3, "tau": 1.0}), ("CDTLoss", {"cdt_gamma": 0.3})])
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_vs_cdt_label_smoothing(name, kw, eps, batch):
    z, t = batch
    gamma = kw.get("vs_gamma", kw.get("cdt_gamma"))
    tau = kw.get("tau", 0.0)
    adj = z.double() / torch.as_tensor((N.max() / N) ** gamma) + tau * torch.as_tensor(np.log(PI))
    loss = create_loss(name, class_counts=COUNTS, label_smoothing=eps, **kw)
    assert close(loss(z, t), ref_ce(adj, t, eps).mean())
    assert loss_accepts(name, "label_smoothing")


def test_vs_large_logits_and_bf16():
    z = torch.tensor([[80.0, -80.0, 0.0, 0.0, 0.0], [-60.0, 0.0, 0.0, 0.0, 90.0]], requires_grad=True)
    t = torch.tensor([1, 0])
    loss = create_loss("VSLoss", class_counts=COUNTS)
    v = loss(z, t)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(z.grad).all()
    vb = loss(z.detach().bfloat16(), t)
    assert vb.dtype == torch.float32 and torch.isfinite(vb)
    # bf16 logits are rounded, then the loss is computed in float32 on them
    assert close(vb, loss(z.detach().bfloat16().float(), t), tol=1e-6)


@pytest.mark.parametrize("name, kw", [("VSLoss", {"vs_gamma": -0.1}), ("VSLoss", {"tau": float("nan")}),
                                      ("CDTLoss", {"cdt_gamma": -1}), ("VSLoss", {"label_smoothing": 1.0})])
def test_vs_cdt_bad_values(name, kw):
    with pytest.raises(ConfigError):
        create_loss(name, class_counts=COUNTS, **kw)


@pytest.mark.parametrize("name", ["VSLoss", "CDTLoss", "LabelAwareSmoothing"])
def test_new_losses_need_counts_and_no_empty_class(name):
    with pytest.raises(ConfigError, match="class_counts"):
        create_loss(name)
    with pytest.raises(ConfigError, match="0 training samples"):
        create_loss(name, class_counts=[10, 0, 3])


def test_vs_keyword_is_not_the_focal_gamma():
    # A config maps focal_gamma onto `gamma`; VS/CDT must not accept it.
    assert not loss_accepts("VSLoss", "gamma") and not loss_accepts("CDTLoss", "gamma")
    assert loss_accepts("VSLoss", "tau") and not loss_accepts("CDTLoss", "tau")


# --------------------------------------------------------------------- label-aware smoothing
def test_las_epsilons_hand_computed():
    counts = [100, 55, 10]                       # r = 1, 0.5, 0
    h, t = 0.4, 0.1
    conc = label_aware_epsilons(counts, h, t, "concave")
    lin = label_aware_epsilons(counts, h, t, "linear")
    conv = label_aware_epsilons(counts, h, t, "convex")
    expo = label_aware_epsilons(counts, h, t, "exp", power=2.0)
    s = math.sin(math.pi / 4)
    np.testing.assert_allclose(conc, [0.4, 0.1 + 0.3 * s, 0.1], atol=1e-12)
    np.testing.assert_allclose(lin, [0.4, 0.25, 0.1], atol=1e-12)
    # convex: eps_1 + (eps_1 - eps_K) sin(3pi/2 + pi r/2): r=0.5 -> 0.4 - 0.3 cos(pi/4)
    np.testing.assert_allclose(conv, [0.4, 0.4 - 0.3 * s, 0.1], atol=1e-12)
    np.testing.assert_allclose(expo, [0.4, 0.1 + 0.3 * 0.25, 0.1], atol=1e-12)
    assert conv[1] < lin[1] < conc[1]


def test_las_balanced_counts_give_head_smoothing():
    np.testing.assert_allclose(label_aware_epsilons([7, 7, 7], 0.3, 0.0), [0.3, 0.3, 0.3])


@pytest.mark.parametrize("shape", ["concave", "linear", "convex"])
def test_las_loss_formula(shape, batch):
    z, t = batch
    loss = create_loss("LabelAwareSmoothing", class_counts=COUNTS, smooth_head=0.4, smooth_tail=0.1,
                       shape=shape)
    eps = torch.as_tensor(label_aware_epsilons(COUNTS, 0.4, 0.1, shape))[t]
    zz = z.double()
    logp = zz - torch.logsumexp(zz, 1, keepdim=True)
    ref = ((1 - eps) * -logp[torch.arange(len(t)), t] + eps * (-logp).sum(1) / K).mean()
    assert close(loss(z, t), ref)
    # the rarest class is smoothed least, the most frequent most
    assert math.isclose(float(loss.smoothing[0]), 0.4, rel_tol=1e-6)
    assert math.isclose(float(loss.smoothing[-1]), 0.1, rel_tol=1e-6)


def test_las_uniform_is_label_smoothing_and_zero_is_ce(batch):
    z, t = batch
    las = create_loss("LabelAwareSmoothing", class_counts=COUNTS, smooth_head=0.2, smooth_tail=0.2)
    assert close(las(z, t), create_loss("CrossEntropy", label_smoothing=0.2)(z, t))
    las0 = create_loss("LabelAwareSmoothing", class_counts=COUNTS, smooth_head=0.0, smooth_tail=0.0)
    assert close(las0(z, t), create_loss("CrossEntropy")(z, t))


def test_las_defaults_and_refusals():
    las = create_loss("LabelAwareSmoothing", class_counts=COUNTS)
    assert las.shape == "concave" and las.smooth_head == 0.3 and las.smooth_tail == 0.0
    assert not loss_accepts("LabelAwareSmoothing", "label_smoothing")
    with pytest.raises(ConfigError, match="label_smoothing"):
        create_loss("LabelAwareSmoothing", class_counts=COUNTS, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="power"):
        create_loss("LabelAwareSmoothing", class_counts=COUNTS, shape="exp")
    with pytest.raises(ConfigError, match="only with shape='exp'"):
        create_loss("LabelAwareSmoothing", class_counts=COUNTS, power=2.0)
    with pytest.raises(ConfigError, match="smooth_head"):
        create_loss("LabelAwareSmoothing", class_counts=COUNTS, smooth_head=1.0)
    with pytest.raises(UnknownNameError, match="concave"):
        create_loss("LabelAwareSmoothing", class_counts=COUNTS, shape="sigmoid")


def test_las_bf16_and_large_margin():
    z = torch.tensor([[200.0, -200.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = create_loss("LabelAwareSmoothing", class_counts=COUNTS)
    v = loss(z, torch.tensor([0]))
    v.backward()
    # eps_0 = 0.3 of the loss sits on the uniform part: finite, large (mean -log p over classes)
    assert torch.isfinite(v) and torch.isfinite(z.grad).all() and v.item() > 50
    assert torch.isfinite(loss(z.detach().bfloat16(), torch.tensor([0])))


# ------------------------------------------------------- class-balanced softmax BCE (WB stage 2)
def test_class_balanced_softmax_bce_matches_reference(batch):
    z, t = batch
    beta = 0.9999
    w = (1 - beta) / (1 - beta ** N)
    w = w / w.sum() * K
    p = torch.softmax(z.double(), 1)
    y = torch.nn.functional.one_hot(t, K).double()
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    ref = (torch.as_tensor(w)[t][:, None] * bce).mean()      # mean over the B*K entries
    loss = create_loss("ClassBalancedLoss", class_counts=COUNTS, beta=beta, base="softmax_bce")
    assert close(loss(z, t), ref)
    with pytest.raises(ConfigError, match="softmax_bce"):
        create_loss("ClassBalancedLoss", class_counts=COUNTS, base="softmax_bce", label_smoothing=0.1)


# -------------------------------------------------------------------------- per-sample form
def _build(name):
    kw = {"base": "focal"} if name == "ClassBalancedLoss" else {}
    return create_loss(name, class_counts=COUNTS, **kw)


@pytest.mark.parametrize("name", LOSSES.names())
def test_per_sample_mean_is_the_loss(name, batch):
    z, t = batch
    loss = _build(name)
    assert supports_per_sample(loss)  # every loss built by default has one
    per = loss.per_sample(z, t)
    assert per.shape == (len(t),) and per.dtype == torch.float32
    assert close(per.mean(), loss(z, t))
    # the same on a subset of the batch (what ImbSAM splits)
    m = t >= 3
    assert close(loss.per_sample(z[m], t[m]), per[m])


@pytest.mark.parametrize("base", ["softmax", "sigmoid", "softmax_bce"])
def test_per_sample_class_balanced_bases(base, batch):
    z, t = batch
    kw = {"label_smoothing": 0.1} if base == "softmax" else {}
    loss = create_loss("ClassBalancedLoss", class_counts=COUNTS, base=base, **kw)
    assert close(loss.per_sample(z, t).mean(), loss(z, t))


def test_ldam_with_drw_has_no_per_sample(batch):
    z, t = batch
    ldam = create_loss("LDAMLoss", class_counts=COUNTS, drw_start=2)
    assert not supports_per_sample(ldam)
    with pytest.raises(ConfigError, match="DRW"):
        ldam.per_sample(z, t)
    combo = create_loss("CombinedLoss", class_counts=COUNTS,
                        losses={"a": "CrossEntropy", "b": {"name": "LDAMLoss", "drw_start": 2}})
    assert not supports_per_sample(combo)
    with pytest.raises(ConfigError, match="'b'"):
        combo.per_sample(z, t)
    plain = create_loss("LDAMLoss", class_counts=COUNTS, label_smoothing=0.1)
    assert close(plain.per_sample(z, t).mean(), plain(z, t))
