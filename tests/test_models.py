"""Tests of imbalance.models / imbalance.heads: the model contract over the whole registry, the
origin networks layer by layer (ORIGIN_MODELS.md), heads, initialisation, complexity counting
and the errors a user can cause."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalance.errors import ConfigError, DataError, UnknownNameError
from imbalance.heads import (CosineMarginClassifier, LogitAdjustedLinear,
                             TemperatureScaledClassifier)
from imbalance.models import (HEADS, INITS, MODELS, AdaptiveDownsample, ChannelAttention,
                              MixtureOfExperts, SkipMaxPool1d, SkipStrideConv1d, SpectralFrontEnd,
                              SqueezeExcite, convnet_adsb_plan, create_model, group_norm_groups,
                              init_model_for_imbalanced, model_complexity, resolve_norm_kind,
                              swap_classifier)

torch.set_num_threads(1)

NAMES = MODELS.names()
SMALL = dict(width=8, depth=2)
EXPECTED_MODELS = {"ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert",
                   "ResNetFrequencyExpert", "MixtureOfExpertsConvNet", "MixtureOfExpertsResNet"}
MOE = ["MixtureOfExpertsConvNet", "MixtureOfExpertsResNet"]
ATTENTION_MODELS = {"SignalTransformer", "ConvTransformer"}  # imbalance/transformers.py


def small(name, num_classes=5, in_channels=2, **kw):
    args = dict(SMALL)
    args.update(kw)
    torch.manual_seed(0)
    return create_model(name, num_classes, in_channels=in_channels, **args)


def test_registry_holds_the_seed_models_the_variant_and_heads():
    assert EXPECTED_MODELS | {"ConvNetSE", "InceptionTime", "FCN", "ResNetTSC"} | ATTENTION_MODELS == set(NAMES)
    assert set(HEADS.names()) == {"linear", "cosine_ldam", "logit_adjust", "temperature"}
    assert set(INITS.names()) == {"balanced_xavier", "xavier", "kaiming", "default"}


# ----------------------------------------------------------------------------- model contract
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,length", [(2, 16), (1, 37), (12, 300), (2, 17)])
def test_shapes_features_and_classifier(name, channels, length):
    model = small(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(3, channels, length)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        via_head = model.classifier(feats)
    assert logits.shape == (3, 7)
    assert feats.shape == (3, model.feature_dim)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, via_head)
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.feature_dim, 7)
    assert (model.in_channels, model.num_classes, model.min_length) == (channels, 7, 16)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_models_take_short_and_odd_signals(name):
    # The origin networks at full size down-sample 4800 samples by up to 384; on a short signal
    # the steps that would leave fewer than 4 samples are skipped instead of failing.
    model = create_model(name, 3, in_channels=2).eval()
    with torch.no_grad():
        for length in (16, 23, 101):
            out = model(torch.randn(2, 2, length))
            assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    kw = dict(load_balance_weight=0.01) if name in MOE else {}
    model = small(name, num_classes=4, in_channels=2, **kw).train()
    x = torch.randn(4, 2, 64)
    y = torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    if name in MOE:
        loss = loss + model.aux_loss()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_dropout_is_inside_forward_features_in_training_mode(name):
    # With the same RNG state, train-mode forward equals classifier(forward_features) too.
    model = small(name, dropout_rate=0.5).train()
    x = torch.randn(4, 2, 64)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    b = model.classifier(model.forward_features(x))
    assert torch.allclose(a, b)
    # ... and dropout does act in training: two draws differ, eval is deterministic.
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_forward_is_finite(name):
    model = small(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 2, 64))
    assert out.shape == (2, 5) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_small_model_learns_a_separable_problem(name):
    # Class 0: low-frequency tone, class 1: high-frequency tone (random phase, noise).
    g = torch.Generator().manual_seed(0)
    n, length = 64, 64
    y = torch.arange(n) % 2
    t = torch.arange(length, dtype=torch.float32)
    freq = torch.where(y == 0, 0.03, 0.2)[:, None]
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    x = torch.stack([torch.cos(2 * math.pi * freq * t + phase),
                     torch.sin(2 * math.pi * freq * t + phase)], dim=1)
    x = x + 0.1 * torch.randn(x.shape, generator=g)
    model = small(name, num_classes=2, dropout_rate=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", NAMES)
def test_too_short_and_wrong_channel_inputs_are_clear_errors(name):
    model = small(name).eval()
    with pytest.raises(DataError, match=rf"signal length 8 is shorter than {name}'s minimum of 16"):
        model(torch.randn(2, 2, 8))
    with pytest.raises(DataError, match=r"in_channels=2.*3 channels"):
        model(torch.randn(2, 3, 64))
    with pytest.raises(DataError, match=r"\(batch, channels, length\)"):
        model(torch.randn(2, 64))
    model(torch.randn(2, 2, 16))  # the minimum itself is fine


def test_unknown_model_head_init_names_list_valid_ones():
    with pytest.raises(UnknownNameError, match="ConvNetADSB") as e:
        create_model("ConvNetXYZ", 3)
    assert all(n in str(e.value) for n in EXPECTED_MODELS)
    model = small("ConvNetADSB")
    with pytest.raises(UnknownNameError, match="cosine_ldam"):
        swap_classifier(model, "arcface")
    with pytest.raises(UnknownNameError, match="balanced_xavier"):
        init_model_for_imbalanced(model, [3, 2, 1, 1, 1], init_type="orthogonal")


def test_unknown_model_option_is_a_config_error_naming_valid_options():
    with pytest.raises(ConfigError, match=r"kernal_size.*valid options: .*kernel_size"):
        create_model("ConvNetSE", 3, width=8, depth=2, kernal_size=5)
    create_model("ConvNetSE", 3, width=8, depth=2, kernel_size=5)
    # The origin ConvNetADSB has its kernels fixed by the plan: no kernel_size option.
    with pytest.raises(ConfigError, match=r"ConvNetADSB got unknown option\(s\) kernel_size; valid options: \(none\)"):
        create_model("ConvNetADSB", 3, kernel_size=5)
    with pytest.raises(ConfigError, match="spectral_mod.*spectral_mode"):
        create_model("FrequencyDomainExpert", 3, width=8, depth=2, spectral_mod="ri")
    with pytest.raises(ConfigError, match="tua.*tau"):
        swap_classifier(small("ConvNetADSB"), "logit_adjust", class_counts=[5, 4, 3, 2, 1], tua=1.0)


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("ConvNetADSB", dict(width=0), "width must be >= 1"),
    ("ConvNetADSB", dict(depth=9), r"depth must be in 1..8, got 9"),
    ("ConvNetADSB", dict(depth=0), r"depth must be in 1..8, got 0"),
    ("ConvNetSE", dict(depth=-1), "depth must be >= 1"),
    ("ConvNetADSB", dict(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\)"),
    ("ConvNetADSB", dict(in_channels=0), "in_channels must be >= 1"),
    ("ConvNetADSB", dict(norm_kind="batch"), "unknown norm_kind 'batch'; valid: auto, bn, gn, ln"),
    ("DilatedTCN", dict(depth=0), r"depth \(number of levels\) must be >= 1"),
    ("FrequencyDomainExpert", dict(spectral_mode="log"), "unknown spectral_mode 'log'; valid: powerlog, ri, magphase"),
    ("FrequencyDomainExpert", dict(spectral_window="hamming"), "unknown spectral_window 'hamming'; valid: hann, null"),
    ("MixtureOfExpertsConvNet", dict(load_balance_weight=-1.0), "load_balance_weight must be a number >= 0"),
    ("MixtureOfExpertsResNet", dict(gate_dropout=1.0), r"gate_dropout must be in \[0, 1\)"),
    ("MixtureOfExpertsResNet", dict(gate_hidden=0), "gate_hidden must be >= 1"),
])
def test_bad_values_are_config_errors(name, kwargs, pattern):
    args = dict(width=8, depth=2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=pattern):
        create_model(name, 3, **args)


@pytest.mark.parametrize("name", ["ResNet1D", "ResNetFrequencyExpert", "MixtureOfExpertsResNet"])
def test_resnet_stage_count_is_2_to_5(name):
    for bad in (1, 6):
        with pytest.raises(ConfigError, match=r"depth \(number of stages\) must be in 2..5"):
            create_model(name, 3, width=4, depth=bad)


# ----------------------------------------------------------------------------- origin: ConvNetADSB
# ORIGIN_MODELS.md, transcribed: per block the convolutions (cin, cout, kernel) and the max-pool.
ORIGIN_CONVNET = [
    ([(2, 50, 15)], 4),
    ([(50, 100, 11)], 3),
    ([(100, 150, 7)], 2),
    ([(150, 200, 5), (200, 200, 5)], 2),
    ([(200, 300, 5), (300, 300, 5)], 2),
    ([(300, 350, 5), (350, 350, 5)], 2),
    ([(350, 350, 7), (350, 350, 7)], 2),
    ([(350, 350, 7), (350, 350, 7)], None),
]


def _origin_convnet_counts(num_classes, length, attention=True):
    """Parameters and forward FLOPs of the table: convs without bias, BatchNorm (2 per channel),
    channel attention 350 -> 21 -> 350 without biases (applied to two pooled vectors), head."""
    params = flops = 0
    for convs, pool in ORIGIN_CONVNET:
        for cin, cout, k in convs:
            params += cin * cout * k + 2 * cout
            flops += 2 * cin * cout * k * length    # padding k // 2 keeps the length
        if pool is not None:
            length //= pool
    if attention:
        params += 2 * 350 * (350 // 16)
        flops += 2 * (2 * 350 * 21 + 2 * 21 * 350)
    params += 350 * num_classes + num_classes
    flops += 2 * 350 * num_classes
    return params, flops


def test_convnet_adsb_parameters_and_flops_equal_the_origin_table():
    model = create_model("ConvNetADSB", 10)
    want_params, want_flops = _origin_convnet_counts(10, 4800)
    info = model_complexity(model, 2, 4800)
    assert info["params"] == want_params
    assert info["flops_per_sample"] == want_flops
    assert round(want_params / 1e6, 2) == 5.85                  # ORIGIN_MODELS.md: "5.85 M parameters"
    assert round(want_flops / 1e9, 2) == 0.76                   # "0.76 GFLOPs per sample at T = 4800"
    no_att = create_model("ConvNetADSB", 10, use_attention=False)
    assert sum(p.numel() for p in no_att.parameters()) == _origin_convnet_counts(10, 4800, False)[0]


def test_convnet_adsb_layers_are_the_origin_plan():
    model = create_model("ConvNetADSB", 10, norm_kind="bn")
    layers = list(model.trunk.features)
    got, i = [], 0
    for convs, pool in ORIGIN_CONVNET:
        for cin, cout, k in convs:
            conv, norm, act = layers[i:i + 3]
            assert isinstance(conv, nn.Conv1d) and isinstance(norm, nn.BatchNorm1d) and isinstance(act, nn.ReLU)
            assert conv.bias is None and conv.stride == (1,) and conv.padding == (k // 2,)
            got.append((conv.in_channels, conv.out_channels, conv.kernel_size[0]))
            i += 3
        if pool is not None:
            assert isinstance(layers[i], SkipMaxPool1d)
            assert (layers[i].kernel_size, layers[i].stride, layers[i].padding) == (pool, pool, 0)
            i += 1
    assert i == len(layers)
    assert got == [c for convs, _ in ORIGIN_CONVNET for c in convs]
    assert isinstance(model.trunk.attention, ChannelAttention) and model.feature_dim == 350
    # 4800 samples reach block 8 as 12 (4800/4/3/2/2/2/2 = 25, //2 = 12): nothing is skipped.
    with torch.no_grad():
        assert model.trunk.features.eval()(torch.randn(1, 2, 4800)).shape == (1, 350, 12)


def test_convnet_adsb_pools_globally_by_max_after_the_attention():
    model = small("ConvNetADSB", use_attention=True).eval()
    x = torch.randn(3, 2, 200)
    with torch.no_grad():
        fmap = model.trunk.attention(model.trunk.features(x))
        assert torch.equal(model.forward_features(x), fmap.amax(dim=-1))


def test_channel_attention_matches_the_cbam_formula_in_float64():
    torch.manual_seed(0)
    att = ChannelAttention(channels=48).double()
    x = torch.randn(2, 48, 10, dtype=torch.float64)
    w1 = att.mlp[0].weight[:, :, 0].detach().numpy()       # (3, 48): 48 // 16 hidden, no bias
    w2 = att.mlp[2].weight[:, :, 0].detach().numpy()
    assert w1.shape == (3, 48) and att.mlp[0].bias is None and att.mlp[2].bias is None

    def mlp(v):
        return np.maximum(v @ w1.T, 0) @ w2.T

    xn = x.numpy()
    gate = 1 / (1 + np.exp(-(mlp(xn.mean(-1)) + mlp(xn.max(-1)))))
    np.testing.assert_allclose(att(x).detach().numpy(), xn * gate[:, :, None], rtol=1e-12, atol=1e-12)
    assert ChannelAttention(channels=8).mlp[0].out_channels == 1  # max(1, C // 16)


@pytest.mark.parametrize("name", ["ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert",
                                  "ResNetFrequencyExpert", "MixtureOfExpertsConvNet", "MixtureOfExpertsResNet"])
def test_channel_attention_once_per_backbone(name):
    n_backbones = 3 if name in MOE else 1
    on = create_model(name, 3, width=8, depth=2, use_attention=True)
    off = create_model(name, 3, width=8, depth=2, use_attention=False)
    assert sum(isinstance(m, ChannelAttention) for m in on.modules()) == n_backbones
    assert not any(isinstance(m, (ChannelAttention, SqueezeExcite)) for m in off.modules())


def test_width_and_depth_scale_the_convnet_plan():
    # width = the widest channel count built, depth = how many of the 8 blocks; no pool after
    # the last block built.
    assert convnet_adsb_plan(32, 4) == [(8, 15, 1, 4), (16, 11, 1, 3), (24, 7, 1, 2), (32, 5, 2, None)]
    full = convnet_adsb_plan()
    assert [c for c, _, _, _ in full] == [50, 100, 150, 200, 300, 350, 350, 350]
    assert [p for _, _, _, p in full] == [4, 3, 2, 2, 2, 2, 2, None]
    assert convnet_adsb_plan(350, 8) == full
    assert convnet_adsb_plan(8, 2) == [(4, 15, 1, 4), (8, 11, 1, None)]
    assert convnet_adsb_plan(1, 3) == [(1, 15, 1, 4), (1, 11, 1, 3), (1, 7, 1, None)]
    model = create_model("ConvNetADSB", 10, width=32, depth=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d) and m.kernel_size[0] > 1]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (2, 8, 15), (8, 16, 11), (16, 24, 7), (24, 32, 5), (32, 32, 5)]
    assert model.feature_dim == 32


# ----------------------------------------------------------------------------- origin: ResNet1D, TCN
def _resnet_params(cin, base, stages, num_classes, attention=True):
    p = cin * base * 7 + 2 * base                                   # stem conv + norm
    c = base
    for i in range(stages):
        cout = base * 2 ** i
        for b in range(2):
            p += c * cout * 3 + cout * cout * 3 + 4 * cout           # two convs + two norms
            if b == 0 and (i > 0 or c != cout):
                p += c * cout + 2 * cout                             # 1x1 shortcut + norm
            c = cout
    if attention:
        p += 2 * c * max(1, c // 16)
    return p + c * num_classes + num_classes


def test_resnet1d_is_the_origin_network():
    model = create_model("ResNet1D", 10)
    assert sum(p.numel() for p in model.parameters()) == _resnet_params(2, 32, 4, 10)
    bb = model.trunk
    stem = bb.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (2, 32, (7,), (2,), (3,))
    assert (bb.stem[3].kernel_size, bb.stem[3].stride, bb.stem[3].padding) == (3, 2, 1)
    firsts = [getattr(bb, f"layer{i}")[0] for i in range(1, 5)]
    assert [b.conv1.out_channels for b in firsts] == [32, 64, 128, 256]
    assert [b.conv1.stride[0] for b in firsts] == [1, 2, 2, 2]
    assert [b.downsample is not None for b in firsts] == [False, True, True, True]
    assert firsts[1].downsample[0].kernel_size == (1,) and firsts[1].downsample[0].stride == (2,)
    assert model.feature_dim == 256
    # 4800 -> stem 2400 -> pool 1200 -> 1200, 600, 300, 150: global average of the last map.
    model.eval()
    x = torch.randn(1, 2, 4800)
    with torch.no_grad():
        h = bb.stem(x)
        for i in range(1, 5):
            h = getattr(bb, f"layer{i}")(h)
        assert h.shape == (1, 256, 150)
        assert torch.allclose(model.forward_features(x), bb.attention(h).mean(-1), atol=1e-6)
    for stages, dim in [(2, 64), (3, 128), (5, 512)]:
        assert create_model("ResNet1D", 3, depth=stages).feature_dim == dim
    assert create_model("ResNet1D", 3, width=16).feature_dim == 128
    assert create_model("ResNetFrequencyExpert", 3).feature_dim == 128    # base 16
    m = create_model("ResNetFrequencyExpert", 10)
    assert sum(p.numel() for p in m.parameters()) == _resnet_params(2, 16, 4, 10)


def test_dilated_tcn_is_the_origin_network():
    model = create_model("DilatedTCN", 10)
    proj = model.trunk.proj[0]
    assert (proj.in_channels, proj.out_channels, proj.kernel_size, proj.padding) == (2, 64, (3,), (1,))
    convs = [(blk.block[0], blk.block[3]) for blk in model.trunk.blocks]
    assert [c.dilation[0] for pair in convs for c in pair] == [1, 1, 2, 2, 4, 4, 8, 8]
    assert all(c.padding == c.dilation and c.kernel_size == (3,) for pair in convs for c in pair)
    want = 2 * 64 * 3 + 128 + 4 * (2 * 64 * 64 * 3 + 4 * 64) + 2 * 64 * 4 + 64 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == want
    x = torch.randn(2, 2, 100)
    blk = model.trunk.blocks[0].eval()
    with torch.no_grad():
        assert torch.equal(blk(x.new_ones(2, 64, 30)), F.relu(1 + blk.block(x.new_ones(2, 64, 30))))
    assert [b.block[0].dilation[0] for b in create_model("DilatedTCN", 3, width=8, depth=5).trunk.blocks] == \
        [1, 2, 4, 8, 16]


@pytest.mark.parametrize("name", ["ResNet1D", "DilatedTCN", "ResNetFrequencyExpert"])
def test_origin_kaiming_fan_out_and_normal_head_init(name):
    torch.manual_seed(0)
    model = create_model(name, 50, width=64, depth=3)
    convs = [m for m in model.trunk.modules() if isinstance(m, nn.Conv1d) and m.weight.numel() > 5000]
    assert convs
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.1)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.equal(model.classifier.bias, torch.zeros(50))
    # init='default' is the model's own (origin) init again, not PyTorch's uniform one.
    nn.init.constant_(model.classifier.weight, 1.0)
    init_model_for_imbalanced(model, None, init_type="default", use_log_prior_bias=False)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)


# ----------------------------------------------------------------------------- down-sampling
def test_skip_max_pool_skips_steps_that_would_leave_under_four_samples():
    assert SkipMaxPool1d(4)(torch.zeros(1, 1, 16)).shape[-1] == 4
    assert SkipMaxPool1d(4)(torch.zeros(1, 1, 15)).shape[-1] == 15          # 3 < 4: skipped
    assert SkipMaxPool1d(3)(torch.zeros(1, 1, 14)).shape[-1] == 4
    assert SkipMaxPool1d(3, 2, 1)(torch.zeros(1, 1, 7)).shape[-1] == 4      # (7 + 2 - 3) // 2 + 1
    assert SkipMaxPool1d(3, 2, 1)(torch.zeros(1, 1, 6)).shape[-1] == 6      # 3: skipped
    x = torch.randn(2, 3, 50)
    assert torch.equal(SkipMaxPool1d(3, 2, 1)(x), F.max_pool1d(x, 3, 2, 1))
    pool = AdaptiveDownsample(times=5)
    assert pool(torch.zeros(1, 1, 16)).shape[-1] == 4
    assert pool(torch.zeros(1, 1, 4800)).shape[-1] == 150


def test_strided_conv_falls_back_to_stride_one_on_short_signals():
    torch.manual_seed(0)
    conv = SkipStrideConv1d(2, 4, 7, stride=2, padding=3, bias=False)
    x = torch.randn(1, 2, 8)                                   # ceil(8 / 2) = 4: strided
    assert torch.equal(conv(x), F.conv1d(x, conv.weight, None, 2, 3))
    x = torch.randn(1, 2, 6)                                   # 3 < 4: stride 1, same weights
    assert torch.equal(conv(x), F.conv1d(x, conv.weight, None, 1, 3))
    # A ResNet block's two strided paths decide alike (conv k3 p1 and shortcut k1 p0).
    model = create_model("ResNet1D", 3, width=4).eval()
    with torch.no_grad():
        for length in range(16, 40):
            model(torch.randn(1, 2, length))


@pytest.mark.parametrize("length", [36, 37])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_training_pool_matches_max_pool1d_values_and_gradients(length, k):
    """The reshape-max used under autograd is max_pool1d(x, k) exactly, ties after ReLU included."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 3, length)).requires_grad_(True)
    g = torch.randn(4, 3, length // k)
    y = SkipMaxPool1d(k)(x) if k != 2 else AdaptiveDownsample(times=1)(x)
    (y * g).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    ref = F.max_pool1d(x, k)
    (ref * g).sum().backward()
    assert torch.equal(y, ref) and torch.equal(ours, x.grad)


# ----------------------------------------------------------------------------- spectral front end
def _hann(n):
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)     # periodic, as torch.hann_window


@pytest.mark.parametrize("mode", ["powerlog", "ri", "magphase"])
def test_spectral_front_end_matches_numpy_in_float64_for_iq(mode):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 50)).astype(np.float32)
    got = SpectralFrontEnd(in_channels=2, mode=mode)(torch.from_numpy(x)).numpy()
    z = (x[:, 0].astype(np.float64) + 1j * x[:, 1]) * _hann(50)
    spec = np.fft.fft(z, axis=-1, norm="ortho")
    want = {"powerlog": np.stack([np.log1p(np.abs(spec) ** 2)] * 2, 1),
            "ri": np.stack([spec.real, spec.imag], 1),
            "magphase": np.stack([np.abs(spec), np.arctan2(spec.imag, spec.real)], 1)}[mode]
    assert got.shape == (3, 2, 50)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_spectral_front_end_real_channels_and_no_window():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    spec = np.fft.rfft(x.astype(np.float64) * _hann(40), axis=-1, norm="ortho")
    front = SpectralFrontEnd(in_channels=3)
    assert front.out_channels == 3
    np.testing.assert_allclose(front(torch.from_numpy(x)).numpy(), np.log1p(np.abs(spec) ** 2), rtol=1e-4, atol=1e-5)
    ri = SpectralFrontEnd(in_channels=3, mode="ri")(torch.from_numpy(x)).numpy()
    assert ri.shape == (2, 6, 21)
    np.testing.assert_allclose(ri, np.concatenate([spec.real, spec.imag], 1), rtol=1e-4, atol=1e-5)
    plain = SpectralFrontEnd(in_channels=2, window=None)(torch.from_numpy(x[:, :2])).numpy()
    z = np.fft.fft(x[:, 0].astype(np.float64) + 1j * x[:, 1], axis=-1, norm="ortho")
    np.testing.assert_allclose(plain[:, 0], np.log1p(np.abs(z) ** 2), rtol=1e-4, atol=1e-5)
    two_real = SpectralFrontEnd(in_channels=2, complex_iq=False)
    assert two_real.out_channels == 2 and two_real(torch.from_numpy(x[:, :2])).shape == (2, 2, 21)


def test_frequency_expert_is_the_convnet_on_the_spectrum():
    model = small("FrequencyDomainExpert", spectral_mode="magphase").eval()
    x = torch.randn(2, 2, 128)
    with torch.no_grad():
        spec = SpectralFrontEnd(in_channels=2, mode="magphase")(x)
        assert torch.equal(model.forward_features(x), model.trunk.backbone(spec))
    # Without a window, |FFT|^2 ignores circular time shifts, so the expert's output does too.
    plain = small("FrequencyDomainExpert", spectral_window=None).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), plain(torch.roll(x, 37, dims=-1)), atol=1e-4)
        assert not torch.allclose(model(x), model(torch.roll(x, 37, dims=-1)), atol=1e-4)


# ----------------------------------------------------------------------------- mixtures of experts
@pytest.mark.parametrize("name", MOE)
def test_mixture_equals_the_origin_sum_of_gated_expert_logits(name):
    model = small(name).eval()
    assert isinstance(model, MixtureOfExperts) and model.names == ["time", "tcn", "freq"]
    x = torch.randn(3, 2, 64)
    with torch.no_grad():
        out = model(x)
        g = model.gate(x)
        W, b = model.classifier.weight, model.classifier.bias
        nn.init.normal_(b)          # any shared bias: the gate sums to 1
        out = model(x)
        want, start, total = 0, 0, sum(model.expert_dims)
        for i, k in enumerate(model.names):
            f = model.experts[k](x)
            d = model.expert_dims[i]
            logits_e = f @ W[:, start:start + d].T + (W[:, total + i] + b)    # expert head W_e, b_e
            want = want + g[:, i:i + 1] * logits_e
            start += d
    assert torch.allclose(out, want, atol=1e-5)
    assert model.feature_dim == total + 3
    assert torch.allclose(g.sum(1), torch.ones(3)) and (g > 0).all()
    assert torch.equal(model.last_gate, g)
    two = small(name, experts=["time", "tcn"])
    assert two.names == ["time", "tcn"] and two(x).shape == (3, 5) and two.gate.gate_mlp[-1].out_features == 2
    with pytest.raises(ConfigError, match="experts must be distinct names among time, tcn, freq"):
        small(name, experts=["time", "wavelet"])


def test_mixture_gate_is_the_origin_gate():
    model = create_model("MixtureOfExpertsConvNet", 10)
    stem, mlp = model.gate.gate_stem, model.gate.gate_mlp
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0])
            for c in stem if isinstance(c, nn.Conv1d)] == [(2, 16, 7, 2, 3), (16, 32, 3, 2, 1)]
    assert (stem[3].kernel_size, stem[3].stride, stem[3].padding) == (3, 2, 1)
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)] == [(32, 64), (64, 3)]
    assert mlp[2].p == 0.1
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in mlp if isinstance(m, nn.Linear))
    # Experts at their origin sizes: ConvNetADSB (350), TCN (64), frequency ConvNetADSB (350).
    assert model.expert_dims == [350, 64, 350]
    assert create_model("MixtureOfExpertsResNet", 10).expert_dims == [256, 64, 128]


def test_mixture_head_columns_start_as_the_experts_origin_heads():
    torch.manual_seed(0)
    model = create_model("MixtureOfExpertsResNet", 40, width=64, depth=3)
    W, b = model.classifier.weight, model.classifier.bias
    d = model.expert_dims
    assert torch.equal(b, torch.zeros(40))
    assert W[:, :sum(d)].std().item() == pytest.approx(0.01, rel=0.1)    # ResNet / TCN heads N(0, 0.01)
    assert torch.equal(W[:, sum(d):], torch.zeros(40, 3))                 # ... with zero biases
    conv = create_model("MixtureOfExpertsConvNet", 40, width=64, depth=3)
    W = conv.classifier.weight
    bound = 1 / math.sqrt(64)                                             # ConvNetADSB head: PyTorch default
    assert W[:, :64].abs().max() <= bound and W[:, :64].std().item() > 0.5 * bound / math.sqrt(3)
    assert W[:, 64:128].std().item() == pytest.approx(0.01, rel=0.15)     # the TCN's head


@pytest.mark.parametrize("name", MOE)
def test_load_balance_term_is_the_negative_gate_entropy(name):
    model = small(name, load_balance_weight=0.5).train()
    x = torch.randn(6, 2, 64)
    model(x)
    p = model.last_gate.double().mean(0)
    want = 0.5 * float((p * torch.log(p + 1e-8)).sum())
    aux = model.aux_loss()
    assert aux.requires_grad and float(aux.detach()) == pytest.approx(want, rel=1e-5)
    assert want < 0 and float(aux.detach()) >= 0.5 * -math.log(3) - 1e-6        # >= -log E at uniform use
    aux.backward()
    assert model.gate.gate_mlp[-1].weight.grad.abs().sum() > 0
    assert float(model.aux_loss()) == 0.0                                   # taken once
    model.eval()
    with torch.no_grad():
        model(x)
    assert float(model.aux_loss()) == 0.0                                   # not in eval
    off = small(name).train()
    off(x)
    assert float(off.aux_loss()) == 0.0                                     # default weight 0


def test_norm_kind_auto_and_explicit():
    assert resolve_norm_kind("auto", 8) == "gn"
    assert resolve_norm_kind("auto", 16) == "bn"
    assert resolve_norm_kind("auto", None) == "bn"

    def norms(model):
        return {type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.GroupNorm))}

    for name in NAMES:
        if name in ATTENTION_MODELS:  # LayerNorm only, whatever norm_kind (transformers.py: exact padding)
            assert "norm_kind" in MODELS.get(name).unused_common_options
            assert norms(create_model(name, 3, width=32, depth=2, per_device_batch=4)) == set(), name
            continue
        assert norms(create_model(name, 3, width=32, depth=2, per_device_batch=4)) == {nn.GroupNorm}, name
        assert norms(create_model(name, 3, width=32, depth=2, per_device_batch=64)) == {nn.BatchNorm1d}, name
    ln = create_model("ConvNetSE", 3, width=32, depth=2, norm_kind="ln")
    assert {m.num_groups for m in ln.modules() if isinstance(m, nn.GroupNorm)} == {1}
    gn = create_model("ConvNetSE", 3, width=32, depth=2, norm_kind="gn")
    assert {m.num_groups for m in gn.modules() if isinstance(m, nn.GroupNorm)} == {8}
    assert [group_norm_groups(c) for c in (6, 32, 64, 350, 512)] == [1, 8, 16, 25, 32]
    gn.train()(torch.randn(1, 2, 32))  # batch of one trains with GroupNorm


# ----------------------------------------------------------------------------- ConvNetSE (variant)
def test_convnet_se_default_is_8_blocks_of_350_channels():
    model = create_model("ConvNetSE", 100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 8 and all(c.out_channels == 350 for c in convs)
    assert convs[0].in_channels == 2 and model.feature_dim == 350
    # Hand count: convs (no bias) + BN (2 per channel) + SE (350->21->350) + linear head.
    se = 350 * 21 + 21 + 21 * 350 + 350
    expected = 2 * 350 * 3 + 7 * 350 * 350 * 3 + 8 * 2 * 350 + 8 * se + 350 * 100 + 100
    assert sum(p.numel() for p in model.parameters()) == expected
    # The state-dict keys of this project's earlier ConvNetADSB, so its checkpoints load here.
    keys = set(model.state_dict())
    assert {"trunk.blocks.0.conv.weight", "trunk.blocks.7.se.fc2.bias", "trunk.blocks.7.norm.running_var",
            "classifier.weight"} <= keys


def test_squeeze_excite_matches_formula():
    torch.manual_seed(0)
    se = SqueezeExcite(channels=32)
    x = torch.randn(2, 32, 10)
    s = x.mean(-1)
    w1, b1, w2, b2 = (t.detach().numpy() for t in (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias))
    h = np.maximum(s.numpy() @ w1.T + b1, 0)
    gate = 1 / (1 + np.exp(-(h @ w2.T + b2)))
    np.testing.assert_allclose(se(x).detach().numpy(), x.numpy() * gate[:, :, None], rtol=1e-5, atol=1e-6)
    assert se.fc1.out_features == 4  # max(32 // 16, 4)
    with_se = create_model("ConvNetSE", 3, width=8, depth=3, use_attention=True)
    assert sum(isinstance(m, SqueezeExcite) for m in with_se.modules()) == 3


# ----------------------------------------------------------------------------- complexity
def test_model_complexity_counts_by_hand():
    # Origin plan at width 8, depth 2: conv 2->4 k15 (pool 4), conv 4->8 k11, no attention.
    model = create_model("ConvNetADSB", 5, in_channels=2, width=8, depth=2, use_attention=False)
    info = model_complexity(model, 2, 32)
    assert info["flops_per_sample"] == 2 * 2 * 4 * 15 * 32 + 2 * 4 * 8 * 11 * 8 + 2 * 8 * 5
    assert info["params"] == 2 * 4 * 15 + 8 + 4 * 8 * 11 + 16 + 8 * 5 + 5
    model.classifier.weight.requires_grad_(False)
    assert model_complexity(model, 2, 32)["trainable_params"] == info["params"] - 40
    assert model.training  # mode restored


@pytest.mark.parametrize("name", NAMES)
def test_model_complexity_runs_for_every_model(name):
    info = model_complexity(small(name), 2, 256)
    assert info["params"] > 0 and info["flops_per_sample"] > 0
    assert set(info) == {"params", "trainable_params", "flops_per_sample"}


# ----------------------------------------------------------------------------- heads
COUNTS = [100, 40, 10, 4, 1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_swaps_in_place(name, head):
    model = small(name)
    same = swap_classifier(model, head, class_counts=COUNTS)
    assert same is model
    assert isinstance(model.classifier, nn.Module) and not (
        head != "linear" and isinstance(model.classifier, nn.Linear))
    model.eval()
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 5) and torch.isfinite(out).all()
        assert torch.equal(out, model.classifier(model.forward_features(x)))
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 4])).backward()
    assert all(p.grad is not None for p in model.classifier.parameters() if p.requires_grad)


def test_cosine_head_formula_and_ldam_margins():
    torch.manual_seed(0)
    head = CosineMarginClassifier(in_features=6, num_classes=3, class_counts=[100, 10, 1],
                                  scale=30.0, ldam_power=0.25, ldam_max_m=0.5)
    x = torch.randn(4, 6)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    w = head.weight.detach().numpy()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    want = 30.0 * xn @ wn.T
    np.testing.assert_allclose(head(x).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    # Cao et al.: m_c proportional to n_c^(-1/4), the largest equal to max_m.
    m = np.array([100, 10, 1], dtype=float) ** -0.25
    np.testing.assert_allclose(head.margins.numpy(), 0.5 * m / m.max(), rtol=1e-6)
    y = torch.tensor([0, 2, 1, 2])
    with_margin = head(x, y).detach().numpy()
    expect = want.copy()
    expect[np.arange(4), y.numpy()] -= 30.0 * head.margins.numpy()[y.numpy()]
    np.testing.assert_allclose(with_margin, expect, rtol=1e-5, atol=1e-5)
    assert torch.equal(CosineMarginClassifier(in_features=6, num_classes=3).margins, torch.zeros(3))


def test_logit_adjusted_linear_adjusts_in_training_only():
    torch.manual_seed(0)
    head = LogitAdjustedLinear(in_features=6, num_classes=3, class_counts=[60, 30, 10], tau=1.2)
    x = torch.randn(4, 6)
    plain = (x @ head.linear.weight.T + head.linear.bias).detach()
    prior = np.log(np.array([0.6, 0.3, 0.1]))
    head.train()
    np.testing.assert_allclose(head(x).detach().numpy(), plain.numpy() + 1.2 * prior, rtol=1e-5, atol=1e-5)
    head.eval()
    np.testing.assert_allclose(head(x).detach().numpy(), plain.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="needs class_counts"):
        LogitAdjustedLinear(in_features=6, num_classes=3)
    with pytest.raises(ConfigError, match="3 entries but the model has 4 classes"):
        LogitAdjustedLinear(in_features=6, num_classes=4, class_counts=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"> 0; classes \[1\]"):
        LogitAdjustedLinear(in_features=6, num_classes=3, class_counts=[5, 0, 3])


def test_temperature_head_divides_by_a_learnable_temperature():
    torch.manual_seed(0)
    head = TemperatureScaledClassifier(in_features=6, num_classes=3, temperature=2.5)
    x = torch.randn(4, 6)
    plain = x @ head.linear.weight.T + head.linear.bias
    assert torch.allclose(head(x), plain / 2.5, atol=1e-6)
    F.cross_entropy(head(x), torch.tensor([0, 1, 2, 0])).backward()
    assert head.log_t.grad is not None and head.log_t.grad.abs() > 0
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        TemperatureScaledClassifier(in_features=6, num_classes=3, temperature=0.0)


def test_swap_keeps_options_and_feature_dim():
    model = small("ResNet1D")
    swap_classifier(model, "cosine_ldam", class_counts=COUNTS, scale=16.0, ldam_max_m=0.3)
    head = model.classifier
    assert isinstance(head, CosineMarginClassifier)
    assert head.scale == 16.0 and head.weight.shape == (5, model.feature_dim)
    assert head.margins.max().item() == pytest.approx(0.3)
    swap_classifier(model, "logit_adjust", class_counts=COUNTS, tau=1.5)
    assert isinstance(model.classifier, LogitAdjustedLinear) and model.classifier.tau == 1.5


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("init_type", INITS.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_every_init_and_head(name, init_type, head):
    model = swap_classifier(small(name), head, class_counts=COUNTS)
    out = init_model_for_imbalanced(model, COUNTS, init_type=init_type, use_log_prior_bias=True,
                                    temperature=2.0)
    assert out is model
    lin = model.classifier if isinstance(model.classifier, nn.Linear) else getattr(model.classifier, "linear", None)
    if lin is not None:
        prior = np.array(COUNTS, dtype=float) / sum(COUNTS)
        np.testing.assert_allclose(lin.bias.detach().numpy(), np.log(prior) / 2.0, rtol=1e-5)
    model.eval()
    assert torch.isfinite(model(torch.randn(2, 2, 32))).all()


def test_log_prior_bias_makes_the_untrained_model_predict_the_prior():
    model = small("ConvNetADSB")
    init_model_for_imbalanced(model, COUNTS, init_type="xavier", use_log_prior_bias=True)
    nn.init.zeros_(model.classifier.weight)
    probs = torch.softmax(model.eval()(torch.randn(3, 2, 32)), 1)
    want = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    assert torch.allclose(probs, want.expand(3, -1), atol=1e-6)
    init_model_for_imbalanced(model, COUNTS, init_type="xavier", use_log_prior_bias=False)
    assert torch.equal(model.classifier.bias, torch.zeros(5))


def test_balanced_xavier_equalises_class_weight_norms():
    model = create_model("ConvNetADSB", 10, width=64, depth=2)
    init_model_for_imbalanced(model, list(range(10, 0, -1)), init_type="balanced_xavier")
    norms = model.classifier.weight.norm(dim=1)
    assert torch.allclose(norms, norms.mean().expand(10), rtol=1e-5)
    init_model_for_imbalanced(model, list(range(10, 0, -1)), init_type="xavier")
    assert model.classifier.weight.norm(dim=1).std() > 1e-3


def test_xavier_and_kaiming_scales():
    model = create_model("ConvNetSE", 10, width=128, depth=3, use_attention=False)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv1d)][1]  # 128 -> 128, k 3
    init_model_for_imbalanced(model, [1] * 10, init_type="xavier", use_log_prior_bias=False)
    bound = math.sqrt(6.0 / (128 * 3 + 128 * 3))
    assert conv.weight.abs().max() <= bound + 1e-7
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    init_model_for_imbalanced(model, [1] * 10, init_type="kaiming", use_log_prior_bias=False)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (128 * 3)), rel=0.05)
    init_model_for_imbalanced(model, [1] * 10, init_type="default", use_log_prior_bias=False)
    assert conv.weight.abs().max() <= 1 / math.sqrt(128 * 3) + 1e-7  # PyTorch's kaiming_uniform(a=sqrt 5)


def test_init_errors():
    model = small("ConvNetADSB")
    with pytest.raises(ConfigError, match="4 entries but the model has 5 classes"):
        init_model_for_imbalanced(model, [1, 2, 3, 4])
    with pytest.raises(ConfigError, match="needs class_counts"):
        init_model_for_imbalanced(model, None)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        init_model_for_imbalanced(model, COUNTS, temperature=0)
    init_model_for_imbalanced(model, None, use_log_prior_bias=False)
