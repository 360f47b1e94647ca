"""Tests for imbalance.bn_tools: MiSLAS's shift-BN mode and frozen BatchNorm statistics."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from imbalance.bn_tools import bn_modules, frozen_bn_stats, shift_bn_train_mode, with_shift_bn


class Net(nn.Module):
    def __init__(self, norm="bn"):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4) if norm == "bn" else nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(0.5)
        self.classifier = nn.Linear(4, 3)

    def forward_features(self, x):
        return self.drop(self.bn(self.conv(x))).mean(-1)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def frozen_backbone(net):
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.classifier.parameters():
        p.requires_grad_(True)


def test_modes_bn_only_and_literal():
    net = Net()
    net.eval()
    assert shift_bn_train_mode(net) == 1
    assert net.bn.training and not net.drop.training and not net.conv.training and net.classifier.training
    shift_bn_train_mode(net, bn_only=False)                 # the official model.train()
    assert net.training and net.drop.training and net.bn.training
    dp = nn.DataParallel(Net())
    dp.eval()
    assert shift_bn_train_mode(dp) == 1 and dp.module.bn.training and not dp.module.drop.training


def test_shift_bn_updates_running_stats_with_momentum_and_keeps_affine():
    torch.manual_seed(0)
    net = Net()
    frozen_backbone(net)
    with torch.no_grad():
        net.bn.weight.fill_(1.5)
        net.bn.bias.fill_(-0.2)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(16, 2, 10) * 3 + 2                       # a distribution the stats have not seen
    rm0, rv0 = net.bn.running_mean.clone(), net.bn.running_var.clone()
    shift_bn_train_mode(net)
    with torch.no_grad():
        h = net.conv(x)
    out = net(x)
    nn.functional.cross_entropy(out, torch.randint(0, 3, (16,))).backward()
    opt.step()
    h = h.double()
    bm = h.mean(dim=(0, 2))
    bv = h.var(dim=(0, 2), unbiased=True)
    m = net.bn.momentum
    assert torch.allclose(net.bn.running_mean.double(), (1 - m) * rm0.double() + m * bm, atol=1e-5)
    assert torch.allclose(net.bn.running_var.double(), (1 - m) * rv0.double() + m * bv, atol=1e-4)
    # affine parameters frozen (not learned), the classifier learned
    assert torch.all(net.bn.weight == 1.5) and torch.all(net.bn.bias == -0.2)
    assert net.bn.weight.grad is None and net.classifier.weight.grad is not None
    # the forward pass normalised with the batch statistics
    with torch.no_grad():
        y = net.bn(net.conv(x)).double()
        hb = net.conv(x).double()
        ref = (hb - hb.mean(dim=(0, 2), keepdim=True)) / torch.sqrt(
            hb.var(dim=(0, 2), unbiased=False, keepdim=True) + net.bn.eps) * 1.5 - 0.2
    assert torch.allclose(y, ref, atol=1e-4)


def test_eval_mode_keeps_stats_and_no_bn_model_warns(caplog):
    net = Net()
    net.eval()
    rm = net.bn.running_mean.clone()
    with torch.no_grad():
        net(torch.randn(8, 2, 10) + 5)
    assert torch.equal(net.bn.running_mean, rm)               # shift_bn off: cRT's frozen stats
    gn = Net(norm="gn")
    with caplog.at_level(logging.WARNING):
        assert shift_bn_train_mode(gn) == 0
    assert "no BatchNorm" in caplog.text and bn_modules(gn) == []


def test_with_shift_bn_wraps_a_plan():
    calls = []

    def base(m):
        calls.append("base")
        m.eval()

    net = Net()
    with_shift_bn(base)(net)
    assert calls == ["base"] and net.bn.training and not net.drop.training


def test_frozen_bn_stats_restores_running_statistics():
    net = Net()
    net.train()
    net(torch.randn(8, 2, 10))
    state = {k: v.clone() for k, v in net.bn.state_dict().items()}
    with frozen_bn_stats(net):
        out = net(torch.randn(8, 2, 10) * 4 + 1)
        assert not torch.equal(net.bn.running_mean, state["running_mean"])  # moved inside
    for k, v in net.bn.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert out.requires_grad
    with pytest.raises(RuntimeError):
        with frozen_bn_stats(net):
            net(torch.randn(8, 2, 10) + 3)
            raise RuntimeError("boom")
    assert torch.equal(net.bn.running_mean, state["running_mean"])
