"""Tests of imbalance.tsc_models: the official layer plans of InceptionTime, FCN and ResNet
(counted by hand from hfawaz/InceptionTime and hfawaz/dl-4-tsc), Keras' 'same' padding and
initialisation, the mask-aware pooling (padding changes nothing in eval mode) and the errors.
The registry-wide contract (any C, any L >= 16, heads, inits, bf16, learning) is checked for
these models by the parametrised tests of tests/test_models.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalance.errors import ConfigError
from imbalance.models import MODELS, create_model, model_complexity
from imbalance.tsc_models import (FCN, InceptionModule, InceptionTime, ResNetTSC, SameConv1d, masked_mean,
                                  split_mask_channel, trim_padding)

TSC = ["InceptionTime", "FCN", "ResNetTSC"]


def test_registered_with_aliases():
    for name in TSC:
        assert name in MODELS.names()
    assert MODELS.get("inception_time") is InceptionTime and MODELS.get("fcn") is FCN
    assert MODELS.get("resnet_tsc") is ResNetTSC
    assert all(getattr(MODELS.get(n), "mask_aware", False) for n in TSC)
    assert not getattr(MODELS.get("ConvNetADSB"), "mask_aware", False)


# ----------------------------------------------------------------------------- layer plans
def _bn(c):
    return 2 * c  # weight and bias (running statistics are buffers, not parameters)


def _inception_params(c_in, k, filters=32, depth=6, bottleneck=32, kernels=(40, 20, 10)):
    """hfawaz/InceptionTime classifiers/inception.py, layer by layer."""
    total, c, res_c = 0, c_in, c_in
    for d in range(depth):
        use_b = bottleneck > 0 and c > 1
        inner = bottleneck if use_b else c
        total += (c * bottleneck if use_b else 0) + sum(inner * filters * kk for kk in kernels)
        total += c * filters + _bn(4 * filters)        # max-pool -> 1x1 conv; BN of the concat
        c = 4 * filters
        if d % 3 == 2:
            total += res_c * c + _bn(c)                 # shortcut conv (no bias) + BN
            res_c = c
    return total + c * k + k


@pytest.mark.parametrize("c_in", [1, 3])
def test_inception_time_parameter_count_is_the_official_networks(c_in):
    model = create_model("InceptionTime", 10, in_channels=c_in)
    assert sum(p.numel() for p in model.parameters()) == _inception_params(c_in, 10)
    assert model.kernel_sizes == [40, 20, 10] and model.feature_dim == 128
    # univariate: 421,482 (a Keras summary of the same network lists these trainable params)
    if c_in == 1:
        assert _inception_params(1, 10) == 421_482


def test_inception_module_structure():
    model = create_model("InceptionTime", 4, in_channels=1)
    mods = list(model.trunk.blocks)
    assert len(mods) == 6
    assert mods[0].bottleneck is None                  # one input channel: no bottleneck
    assert all(m.bottleneck is not None and m.bottleneck.out_channels == 32 for m in mods[1:])
    assert [c.kernel_size[0] for c in mods[1].convs] == [40, 20, 10]
    assert all(c.bias is None for c in mods[1].convs) and mods[1].pool_conv.in_channels == 128
    assert sorted(model.trunk.shortcuts.keys()) == ["2", "5"]  # after modules 3 and 6
    assert model.trunk.shortcuts["2"][0].in_channels == 1 and model.trunk.shortcuts["5"][0].in_channels == 128
    no_res = create_model("InceptionTime", 4, in_channels=1, use_residual=False)
    assert len(no_res.trunk.shortcuts) == 0
    small = create_model("InceptionTime", 4, in_channels=2, width=8, depth=4, kernel_size=20, bottleneck_size=0)
    assert small.kernel_sizes == [20, 10, 5] and small.feature_dim == 32
    assert all(m.bottleneck is None for m in small.trunk.blocks)


def test_inception_module_equals_a_float64_reference():
    torch.manual_seed(0)
    mod = InceptionModule(in_channels=3, filters=4, kernel_sizes=(8, 4, 2), bottleneck=5, norm="bn").double().eval()
    with torch.no_grad():
        for m in mod.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 23, dtype=torch.float64)
    z = F.conv1d(x, mod.bottleneck.weight)
    outs = []
    for conv in mod.convs:                              # Keras 'same': (k-1)//2 left, k//2 right
        k = conv.kernel_size[0]
        outs.append(F.conv1d(F.pad(z, ((k - 1) // 2, k // 2)), conv.weight))
    pooled = F.max_pool1d(F.pad(x, (1, 1), value=-math.inf), 3, stride=1)
    outs.append(F.conv1d(pooled, mod.pool_conv.weight))
    h = torch.cat(outs, 1)
    bn = mod.norm
    want = F.relu((h - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
                  * bn.weight[:, None] + bn.bias[:, None])
    torch.testing.assert_close(mod(x), want)


@pytest.mark.parametrize("k", [1, 2, 3, 8, 40])
def test_same_convolution_pads_like_keras(k):
    # Keras 'same' for stride 1: pad_total = k - 1, pad_left = pad_total // 2 (numpy reference).
    conv = SameConv1d(1, 1, k, bias=False).double()
    x = torch.randn(1, 1, 50, dtype=torch.float64)
    w = conv.weight.detach().numpy()[0, 0]
    xp = np.concatenate([np.zeros((k - 1) // 2), x.numpy()[0, 0], np.zeros(k - 1 - (k - 1) // 2)])
    want = np.array([np.dot(xp[t:t + k], w) for t in range(50)])
    np.testing.assert_allclose(conv(x).detach().numpy()[0, 0], want, rtol=1e-12, atol=1e-12)


def test_fcn_plan_and_parameters():
    model = create_model("FCN", 5, in_channels=2)
    convs = [m.conv for m in model.trunk.blocks]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(2, 128, 8), (128, 256, 5),
                                                                                   (256, 128, 3)]
    want = (2 * 128 * 8 + 128 + _bn(128)) + (128 * 256 * 5 + 256 + _bn(256)) + (256 * 128 * 3 + 128 + _bn(128))
    assert sum(p.numel() for p in model.parameters()) == want + 128 * 5 + 5
    assert create_model("FCN", 5, in_channels=1, width=8, depth=2).feature_dim == 16


def test_resnet_tsc_plan_and_parameters():
    model = create_model("ResNetTSC", 5, in_channels=1)
    blocks = list(model.trunk.blocks)
    chans = [(b.convs[0].conv.in_channels, b.convs[0].conv.out_channels) for b in blocks]
    assert chans == [(1, 64), (64, 128), (128, 128)]
    assert [[c.conv.kernel_size[0] for c in b.convs] for b in blocks] == [[8, 5, 3]] * 3
    assert isinstance(blocks[0].shortcut, nn.Sequential) and isinstance(blocks[1].shortcut, nn.Sequential)
    assert isinstance(blocks[2].shortcut, nn.BatchNorm1d)  # equal channels: BN only, as dl-4-tsc

    def block(cin, c, shortcut_conv):
        n = cin * c * 8 + c + c * c * 5 + c + c * c * 3 + c + 3 * _bn(c)
        return n + ((cin * c + c) if shortcut_conv else 0) + _bn(c)

    want = block(1, 64, True) + block(64, 128, True) + block(128, 128, False) + 128 * 5 + 5
    assert sum(p.numel() for p in model.parameters()) == want


@pytest.mark.parametrize("name", TSC)
def test_keras_glorot_uniform_initialisation(name):
    torch.manual_seed(0)
    model = create_model(name, 10, in_channels=1)
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv1d, nn.Linear)) and m.weight.numel() > 2000:
            w = m.weight
            fan_in = w.shape[1] * (w.shape[2] if w.dim() == 3 else 1)
            fan_out = w.shape[0] * (w.shape[2] if w.dim() == 3 else 1)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max().item() <= bound + 1e-7
            assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)
        if isinstance(m, (nn.Conv1d, nn.Linear)) and m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # init='default' restores the Keras initialisation (the model's own init_weights)
    from imbalance.models import init_model_for_imbalanced
    nn.init.constant_(model.classifier.weight, 1.0)
    init_model_for_imbalanced(model, None, init_type="default", use_log_prior_bias=False)
    assert model.classifier.weight.abs().max().item() <= math.sqrt(6.0 / (model.feature_dim + 10))


# ----------------------------------------------------------------------------- mask
def test_masked_mean_and_helpers():
    h = torch.arange(12, dtype=torch.float64).reshape(1, 2, 6).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    out = masked_mean(h, mask)
    torch.testing.assert_close(out, torch.tensor([[1.0, 7.0], [2.0, 8.0]], dtype=torch.float64))
    torch.testing.assert_close(masked_mean(h, None), h.mean(-1))
    assert torch.equal(masked_mean(h, torch.zeros(2, 6, dtype=torch.bool)), torch.zeros(2, 2, dtype=torch.float64))
    x = torch.cat([h, torch.tensor([[0.9, 1.1, 0.6, 0.2, -0.1, 0.0]] * 2, dtype=torch.float64)[:, None]], 1)
    sig, m = split_mask_channel(x)
    assert sig.shape == (2, 2, 6) and m.tolist()[0] == [True, True, True, False, False, False]
    xt, mt = trim_padding(sig, mask)
    assert xt.shape[-1] == 4 and mt.shape == (2, 4)      # the last column with a sample is 3


def _pad(x, total):
    """(B, C, n) -> (B, C + 1, total): zero padding at the end and the mask channel last."""
    b, c, n = x.shape
    out = torch.zeros(b, c + 1, total, dtype=x.dtype)
    out[:, :c, :n] = x
    out[:, c, :n] = 1.0
    return out


@pytest.mark.parametrize("name", TSC)
def test_padding_changes_nothing_in_eval_mode(name):
    # The logits of a series do not depend on the padding after it: equal to the same network
    # without a mask on the unpadded series, at any padded length, trimmed or not.
    torch.manual_seed(0)
    kw = dict(width=8, depth=3) if name != "InceptionTime" else dict(width=4, depth=6)
    plain = create_model(name, 3, in_channels=2, **kw).double()
    masked = create_model(name, 3, in_channels=3, mask_channel=True, **kw).double()
    masked.load_state_dict(plain.state_dict())
    untrimmed = create_model(name, 3, in_channels=3, mask_channel=True, trim_padding=False, **kw).double()
    untrimmed.load_state_dict(plain.state_dict())
    for m in (plain, masked, untrimmed):
        with torch.no_grad():   # non-trivial running statistics
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm1d):
                    torch.manual_seed(1)
                    bn.running_mean.uniform_(-0.3, 0.3)
                    bn.running_var.uniform_(0.5, 2.0)
        m.eval()
    x = torch.randn(1, 2, 37, dtype=torch.float64) - 0.5   # negative values: max-pool must not see the 0s
    want = plain(x)
    for total in (37, 50, 120):
        torch.testing.assert_close(masked(_pad(x, total)), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(untrimmed(_pad(x, total)), want, rtol=1e-10, atol=1e-10)
    # a batch of two lengths: each row equals its own unpadded result
    y = torch.randn(1, 2, 20, dtype=torch.float64)
    batch = torch.cat([_pad(x, 60), _pad(y, 60)])
    torch.testing.assert_close(masked(batch), torch.cat([want, plain(y)]), rtol=1e-10, atol=1e-10)
    # without the mask the padding does change the result (the test can fail)
    assert not torch.allclose(plain(_pad(x, 120)[:, :2]), want)


@pytest.mark.parametrize("name", TSC)
def test_masked_training_step_is_finite(name):
    model = create_model(name, 3, in_channels=2, mask_channel=True, width=8, depth=2).train()
    x = _pad(torch.randn(4, 1, 30), 64)
    x[1, :, 20:] = 0.0       # a shorter series in the batch
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    info = model_complexity(model, 2, 64)
    assert info["params"] > 0


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,pattern", [
    (dict(name="InceptionTime", in_channels=1, mask_channel=True), "mask_channel=true needs in_channels >= 2"),
    (dict(name="InceptionTime", kernel_size=3), r"kernel_size must be >= 4, got 3"),
    (dict(name="InceptionTime", bottleneck_size=-1), r"bottleneck_size must be >= 0"),
    (dict(name="InceptionTime", use_residual="yes"), "use_residual must be true or false"),
    (dict(name="FCN", depth=4), r"depth must be in 1..3, got 4"),
    (dict(name="ResNetTSC", width=0), "width must be >= 1"),
    (dict(name="FCN", mask_channel=1), "mask_channel must be true or false"),
])
def test_bad_options_are_config_errors(kwargs, pattern):
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=pattern):
        create_model(name, 3, **kwargs)
