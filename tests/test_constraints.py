"""Tests for imbalance.constraints.MaxNorm: the radius rule and the projection, in float64."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from imbalance.constraints import MaxNorm, row_norms
from imbalance.errors import ConfigError


def head_with_norms(norms, d=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(d, len(norms)).to(dtype)
    with torch.no_grad():
        v = torch.randn(len(norms), d, generator=g, dtype=dtype)
        lin.weight.copy_(v / v.norm(dim=1, keepdim=True) * torch.tensor(norms, dtype=dtype)[:, None])
        lin.bias.fill_(5.0)
    return lin


def test_radius_is_relative_to_the_row_norms():
    lin = head_with_norms([4.0, 1.0, 2.0, 0.5])
    m = MaxNorm(0.1)
    assert m.set_radius(lin) == pytest.approx(0.5 + 0.1 * (4.0 - 0.5))
    assert MaxNorm(0.0).set_radius(lin) == pytest.approx(0.5)
    assert MaxNorm(1.0).set_radius(lin) == pytest.approx(4.0)


def test_projection_caps_rows_keeps_direction_and_bias():
    lin = head_with_norms([4.0, 1.0, 2.0, 0.5])
    before = lin.weight.detach().clone()
    m = MaxNorm(0.3)
    r = m.set_radius(lin)                               # 0.5 + 0.3 * 3.5 = 1.55
    assert r == pytest.approx(1.55)
    assert m(lin) == 2                                  # rows 0 and 2 exceed it
    after = lin.weight.detach()
    n = row_norms(lin)
    assert torch.allclose(n, torch.tensor([1.55, 1.0, 1.55, 0.5], dtype=torch.float64), atol=1e-12)
    # w_k <- w_k * r / ||w_k|| for the capped rows; others bit-identical
    assert torch.allclose(after[0], before[0] * (1.55 / 4.0), atol=1e-12)
    assert torch.allclose(after[2], before[2] * (1.55 / 2.0), atol=1e-12)
    assert torch.equal(after[1], before[1]) and torch.equal(after[3], before[3])
    assert torch.equal(lin.bias.detach(), torch.full((4,), 5.0, dtype=torch.float64))
    # idempotent, and the radius stays the one fixed at the start (not recomputed)
    assert m(lin) == 0 and m.radius == pytest.approx(1.55)


def test_first_call_fixes_the_radius_then_growth_is_capped():
    lin = head_with_norms([3.0, 1.0])
    m = MaxNorm(0.5)
    assert m(lin) == 1 and m.radius == pytest.approx(2.0)
    with torch.no_grad():
        lin.weight.mul_(10.0)                         # an optimizer step that grows every row
    assert m(lin) == 2
    assert torch.allclose(row_norms(lin), torch.full((2,), 2.0, dtype=torch.float64), atol=1e-12)


def test_projection_keeps_autograd_and_works_on_a_tensor_and_l1():
    lin = head_with_norms([3.0, 1.0], dtype=torch.float32)
    lin(torch.randn(2, 4)).sum().backward()
    g = lin.weight.grad.clone()
    MaxNorm(0.0)(lin)
    assert lin.weight.requires_grad and lin.weight.is_leaf and torch.equal(lin.weight.grad, g)
    w = torch.tensor([[3.0, -4.0], [0.5, 0.5]], dtype=torch.float64)
    m = MaxNorm(0.0, norm_type=1.0)                   # L1 norms 7 and 1 -> radius 1
    m(w)
    assert torch.allclose(w[0], torch.tensor([3.0, -4.0], dtype=torch.float64) / 7.0)


def test_state_dict_round_trip_and_bad_values():
    m = MaxNorm(0.2)
    m.set_radius(head_with_norms([2.0, 1.0]))
    m2 = MaxNorm(0.2)
    m2.load_state_dict(m.state_dict())
    assert m2.radius == m.radius
    for bad in (-0.1, float("nan"), "x"):
        with pytest.raises(ConfigError, match="thresh"):
            MaxNorm(bad)
    with pytest.raises(ConfigError, match="every"):
        MaxNorm(0.1, every="batch")
    with pytest.raises(ConfigError, match="norm_type"):
        MaxNorm(0.1, norm_type=0.5)
    with pytest.raises(ConfigError, match="weight matrix"):
        MaxNorm(0.1)(nn.ReLU())
    with pytest.raises(ConfigError, match="rows"):
        MaxNorm(0.1)(torch.ones(3))
