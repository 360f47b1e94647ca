"""Tests for imbalance.sam: SAM's perturbation and update, ImbSAM's head/tail split, the
restoration of the weights before the base step, and the BatchNorm handling, in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalance.errors import ConfigError, UnknownNameError
from imbalance.sam import SAM, SAM_MODES, imbsam_tail_classes


def make(seed=0, k=3):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, k)).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 0])
    return net, x, y


def flat(ps):
    return torch.cat([p.reshape(-1) for p in ps])


class Recorder(torch.optim.SGD):
    """SGD that records the parameters and gradients it steps from."""

    def step(self, closure=None):
        self.seen_params = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        self.seen_grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def grads_at(net, params_value, fn):
    """Gradient of fn(net) w.r.t. the parameters, with the parameters set to params_value."""
    ps = list(net.parameters())
    saved = [p.detach().clone() for p in ps]
    with torch.no_grad():
        for p, v in zip(ps, params_value):
            p.copy_(v)
    g = torch.autograd.grad(fn(net), ps)
    with torch.no_grad():
        for p, v in zip(ps, saved):
            p.copy_(v)
    return list(g)


def net_at(net, value):
    """A copy of net with its parameters set to value."""
    import copy
    c = copy.deepcopy(net)
    with torch.no_grad():
        for p, v in zip(c.parameters(), value):
            p.copy_(v)
    return c


def test_registry_and_tail_classes():
    assert set(SAM_MODES.names()) == {"sam", "imbsam"}
    net, _, _ = make()
    with pytest.raises(UnknownNameError, match="imbsam"):
        SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode="asam")
    assert imbsam_tail_classes([100, 30, 19, 5, 20], 20) == [2, 3]


def test_sam_perturbation_restore_and_update():
    net, x, y = make()
    rho, lr = 0.05, 0.1
    w0 = [p.detach().clone() for p in net.parameters()]
    seen = []

    def closure():
        seen.append([p.detach().clone() for p in net.parameters()])
        return F.cross_entropy(net(x), y)

    base = Recorder(net.parameters(), lr=lr)
    hook_params = []
    sam = SAM(base, model=net, rho=rho)
    loss = sam.step(closure, before_step=lambda: hook_params.append([p.detach().clone() for p in net.parameters()]))
    # first pass at w, second at w + rho g / ||g||
    g = grads_at(net, w0, lambda m: F.cross_entropy(m(x), y))
    e = rho * flat(g) / (flat(g).norm() + 1e-12)
    assert len(seen) == 2
    assert torch.equal(flat(seen[0]), flat(w0))
    assert torch.allclose(flat(seen[1]) - flat(w0), e, atol=1e-14, rtol=0)
    assert abs(float((flat(seen[1]) - flat(w0)).norm()) - rho) < 1e-12
    # weights restored (exactly) before the hook and the base step; the step uses g(w + e)
    assert torch.equal(flat(hook_params[0]), flat(w0)) and torch.equal(flat(base.seen_params), flat(w0))
    g_sam = grads_at(net, seen[1], lambda m: F.cross_entropy(m(x), y))
    assert torch.allclose(flat(base.seen_grads), flat(g_sam), atol=1e-14)
    assert torch.allclose(flat(net.parameters()), flat(w0) - lr * flat(g_sam), atol=1e-14)
    # the returned loss is the batch loss at w (before the update), detached
    with torch.no_grad():
        ps = list(net.parameters())
        now = [p.clone() for p in ps]
        for p, v in zip(ps, w0):
            p.copy_(v)
        want_loss = F.cross_entropy(net(x), y)
        for p, v in zip(ps, now):
            p.copy_(v)
    assert torch.allclose(loss, want_loss, atol=1e-15) and not loss.requires_grad


def test_sam_rho0_is_the_base_step():
    net, x, y = make(1)
    net2, _, _ = make(1)
    SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, rho=0.0).step(lambda: F.cross_entropy(net(x), y))
    opt = torch.optim.SGD(net2.parameters(), lr=0.1)
    F.cross_entropy(net2(x), y).backward()
    opt.step()
    assert torch.allclose(flat(net.parameters()), flat(net2.parameters()), atol=1e-15)


def test_imbsam_split_head_unperturbed_tail_sharpness_aware():
    net, x, y = make(2)
    rho, lr, tw = 0.1, 0.2, 2.0
    tail = [2]                                  # class 2 is the tail; samples 2 and 7
    w0 = [p.detach().clone() for p in net.parameters()]
    seen = []

    def closure():
        seen.append([p.detach().clone() for p in net.parameters()])
        return F.cross_entropy(net(x), y, reduction="none")

    base = Recorder(net.parameters(), lr=lr)
    sam = SAM(base, model=net, rho=rho, mode="imbsam", tail_classes=tail)
    assert sam.tail_weight == 2.0 and not sam.freeze_bn_second_pass
    loss = sam.step(closure, targets=y)
    m = y == 2
    b = len(y)

    def head(mod):
        return F.cross_entropy(mod(x), y, reduction="none")[~m].sum() / b

    def tail_loss(mod):
        return tw * F.cross_entropy(mod(x), y, reduction="none")[m].sum() / b

    g_t = flat(grads_at(net, w0, tail_loss))
    e = rho * g_t / (g_t.norm() + 1e-12)            # perturbation from the TAIL gradient only
    assert len(seen) == 2
    assert torch.allclose(flat(seen[1]) - flat(w0), e, atol=1e-14, rtol=0)
    w_e = seen[1]
    want = flat(grads_at(net, w0, head)) + flat(grads_at(net, w_e, tail_loss))
    assert torch.equal(flat(base.seen_params), flat(w0))
    assert torch.allclose(flat(base.seen_grads), want, atol=1e-14)
    assert torch.allclose(flat(net.parameters()), flat(w0) - lr * want, atol=1e-14)
    # the head loss is not perturbed: plain SAM's gradient differs
    g_all = flat(grads_at(net, w0, lambda mod: head(mod) + tail_loss(mod)))
    assert not torch.allclose(want, g_all)
    assert not loss.requires_grad and torch.allclose(
        loss, (head(net_at(net, w0)) + tail_loss(net_at(net, w0)) / tw).detach(), atol=1e-14)


def test_imbsam_batch_without_tail_is_the_head_step():
    net, x, y = make(3)
    net2, _, _ = make(3)
    calls = []

    def closure():
        calls.append(1)
        return F.cross_entropy(net(x), y, reduction="none")

    SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode="imbsam", tail_classes=[7]).step(closure, targets=y)
    assert len(calls) == 1
    opt = torch.optim.SGD(net2.parameters(), lr=0.1)
    F.cross_entropy(net2(x), y).backward()             # all samples are head: sum / B = the mean
    opt.step()
    assert torch.allclose(flat(net.parameters()), flat(net2.parameters()), atol=1e-15)


def test_imbsam_input_checks():
    net, x, y = make()
    sam = SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode="imbsam", tail_classes=[2])
    with pytest.raises(ValueError, match="targets"):
        sam.step(lambda: F.cross_entropy(net(x), y, reduction="none"))
    with pytest.raises(ValueError, match="per-sample"):
        sam.step(lambda: F.cross_entropy(net(x), y), targets=y)
    with pytest.raises(ConfigError, match="tail_classes"):
        SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode="imbsam")
    with pytest.raises(ConfigError, match="only with"):
        SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, tail_classes=[1])
    with pytest.raises(ConfigError, match="rho"):
        SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, rho=-0.1)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x))))


@pytest.mark.parametrize("mode, freeze", [("sam", None), ("imbsam", None), ("sam", False), ("imbsam", True)])
def test_bn_running_stats_in_the_second_pass(mode, freeze):
    torch.manual_seed(0)
    net = BNNet().train()
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    kw = {"tail_classes": [1]} if mode == "imbsam" else {}
    sam = SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode=mode, freeze_bn_second_pass=freeze, **kw)
    frozen = (mode == "sam") if freeze is None else freeze
    assert sam.freeze_bn_second_pass == frozen
    n0 = int(net.bn.num_batches_tracked)
    sam.step(lambda: F.cross_entropy(net(x), y, reduction="none"), targets=y)
    assert int(net.bn.num_batches_tracked) - n0 == (1 if frozen else 2)


def test_optimizer_interface_delegates():
    net, x, y = make()
    base = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(base, model=net)
    assert sam.param_groups is base.param_groups
    sam.param_groups[0]["lr"] = 0.01                     # what the LR scheduler does
    assert base.param_groups[0]["lr"] == 0.01
    sam.step(lambda: F.cross_entropy(net(x), y))
    assert sam.state_dict()["state"] and sam.state_dict() == base.state_dict()
    with pytest.raises(TypeError):
        SAM(sam, model=net)


def test_sam_composes_with_a_mixed_loss_on_a_framework_model():
    """The wiring the training loop uses: mix the batch, closure = forward + mixed_loss."""
    import numpy as np

    from imbalance.losses import create_loss
    from imbalance.mixing import create_mix, mixed_loss
    from imbalance.models import create_model

    torch.manual_seed(0)
    np.random.seed(0)
    counts = [40, 10, 3]
    model = create_model("ConvNetADSB", num_classes=3, width=8, depth=2, norm_kind="bn").train()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.05), model=model, rho=0.05)
    loss_fn = create_loss("VSLoss", class_counts=counts)
    mix = create_mix("remix", class_counts=counts)
    x, y = torch.randn(8, 2, 64), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        xm, target = mix(x, y)
        loss = sam.step(lambda xm=xm, target=target: mixed_loss(loss_fn, model(xm).float(), target))
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("mode", ["sam", "imbsam"])
def test_nonfinite_loss_changes_nothing(mode):
    net, x, y = make(4)
    w0 = [p.detach().clone() for p in net.parameters()]
    kw = {"tail_classes": [2]} if mode == "imbsam" else {}
    sam = SAM(torch.optim.SGD(net.parameters(), lr=0.1), model=net, mode=mode, **kw)
    calls = []

    def closure():
        calls.append(1)
        return F.cross_entropy(net(x), y, reduction="none") * float("nan")

    loss = sam.step(closure, targets=y)
    assert torch.isnan(loss) and len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(w0, net.parameters(), strict=True))
