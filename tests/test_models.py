"""Tests of imbalance.models / imbalance.heads: the model contract over the whole registry,
heads, initialisation, complexity counting and the errors a user can cause."""
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
from imbalance.models import (HEADS, INITS, MODELS, AdaptiveDownsample, SpectralFrontEnd,
                              SqueezeExcite, create_model, group_norm_groups,
                              init_model_for_imbalanced, model_complexity, resolve_norm_kind,
                              swap_classifier)

torch.set_num_threads(1)

NAMES = MODELS.names()
SMALL = dict(width=8, depth=2)
EXPECTED_MODELS = {"ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert",
                   "ResNetFrequencyExpert", "MixtureOfExpertsConvNet", "MixtureOfExpertsResNet"}


def small(name, num_classes=5, in_channels=2, **kw):
    args = dict(SMALL)
    args.update(kw)
    torch.manual_seed(0)
    return create_model(name, num_classes, in_channels=in_channels, **args)


def test_registry_holds_the_seed_models_and_heads():
    assert EXPECTED_MODELS <= set(NAMES)
    assert set(HEADS.names()) == {"linear", "cosine_ldam", "logit_adjust", "temperature"}
    assert set(INITS.names()) == {"balanced_xavier", "xavier", "kaiming", "default"}


# ----------------------------------------------------------------------------- model contract
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,length", [(2, 16), (1, 37), (12, 300)])
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
def test_backward_reaches_every_parameter(name):
    model = small(name, num_classes=4, in_channels=2).train()
    x = torch.randn(4, 2, 64)
    y = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
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
        create_model("ConvNetADSB", 3, width=8, depth=2, kernal_size=5)
    create_model("ConvNetADSB", 3, width=8, depth=2, kernel_size=5)
    with pytest.raises(ConfigError, match="tua.*tau"):
        swap_classifier(small("ConvNetADSB"), "logit_adjust", class_counts=[5, 4, 3, 2, 1], tua=1.0)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(width=0), "width must be >= 1"),
    (dict(depth=-1), "depth must be >= 1"),
    (dict(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\)"),
    (dict(in_channels=0), "in_channels must be >= 1"),
    (dict(norm_kind="batch"), "unknown norm_kind 'batch'; valid: auto, bn, gn, ln"),
])
def test_bad_values_are_config_errors(kwargs, pattern):
    args = dict(width=8, depth=2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=pattern):
        create_model("ConvNetADSB", 3, **args)


@pytest.mark.parametrize("name", ["ResNet1D", "ResNetFrequencyExpert", "MixtureOfExpertsResNet"])
def test_resnet_stage_count_is_2_to_5(name):
    for bad in (1, 6):
        with pytest.raises(ConfigError, match=r"depth \(number of stages\) must be in 2..5"):
            create_model(name, 3, width=4, depth=bad)


# ----------------------------------------------------------------------------- architectures
def test_convnet_adsb_default_is_8_blocks_of_350_channels():
    model = create_model("ConvNetADSB", 100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 8 and all(c.out_channels == 350 for c in convs)
    assert convs[0].in_channels == 2 and model.feature_dim == 350
    # Hand count: convs (no bias) + BN (2 per channel) + SE (350->21->350) + linear head.
    se = 350 * 21 + 21 + 21 * 350 + 350
    expected = 2 * 350 * 3 + 7 * 350 * 350 * 3 + 8 * 2 * 350 + 8 * se + 350 * 100 + 100
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet1d_stages_double_the_channels():
    for stages, dim in [(2, 128), (3, 256), (4, 512), (5, 1024)]:
        m = create_model("ResNet1D", 3, depth=stages)
        assert m.feature_dim == dim
    assert create_model("ResNet1D", 3).feature_dim == 512  # default: 4 stages, width 64


def test_tcn_uses_exponential_dilations():
    m = create_model("DilatedTCN", 3, width=8, depth=5)
    dil = [blk.conv1.dilation[0] for blk in m.trunk.levels]
    assert dil == [1, 2, 4, 8, 16]


def test_adaptive_downsampling_stops_at_four_samples():
    pool = AdaptiveDownsample(times=5)
    assert pool(torch.zeros(1, 1, 16)).shape[-1] == 4       # 16 -> 8 -> 4, then skipped
    assert pool(torch.zeros(1, 1, 4800)).shape[-1] == 150   # 4800 / 32
    assert pool(torch.zeros(1, 1, 7)).shape[-1] == 7


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


def test_spectral_front_end_matches_numpy_fft():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 50)).astype(np.float32)
    got = SpectralFrontEnd(in_channels=2)(torch.from_numpy(x)).numpy()
    z = x[:, 0] + 1j * x[:, 1]
    want = np.log1p(np.abs(np.fft.fftshift(np.fft.fft(z, axis=-1), axes=-1)) / np.sqrt(50))
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-4, atol=1e-5)
    assert got.shape == (3, 1, 50)
    real = SpectralFrontEnd(in_channels=3)(torch.from_numpy(np.concatenate([x, x[:, :1]], 1))).numpy()
    want_r = np.log1p(np.abs(np.fft.rfft(x[:, 0], axis=-1)) / np.sqrt(50))
    assert real.shape == (3, 3, 26)
    np.testing.assert_allclose(real[:, 0], want_r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["FrequencyDomainExpert", "ResNetFrequencyExpert"])
def test_frequency_expert_ignores_circular_time_shifts(name):
    # |FFT| is invariant to a circular shift, so the frequency experts' outputs must be too,
    # while a time-domain model's are not.
    model = small(name).eval()
    x = torch.randn(2, 2, 128)
    with torch.no_grad():
        assert torch.allclose(model(x), model(torch.roll(x, 37, dims=-1)), atol=1e-4)
        conv = small("ConvNetADSB").eval()
        assert not torch.allclose(conv(x), conv(torch.roll(x, 37, dims=-1)), atol=1e-4)


@pytest.mark.parametrize("name", ["MixtureOfExpertsConvNet", "MixtureOfExpertsResNet"])
def test_mixture_of_experts_is_the_gated_sum(name):
    model = small(name, expert_dim=16).eval()
    moe = model.trunk
    assert moe.names == ["time", "freq", "tcn"]
    x = torch.randn(3, 2, 64)
    with torch.no_grad():
        out = moe(x)
        feats = [F.relu(moe.proj[k](moe.experts[k](x))) for k in moe.names]
        g = torch.softmax(moe.gate(torch.cat(feats, 1)), -1)
        want = sum(g[:, i:i + 1] * f for i, f in enumerate(feats))
    assert torch.allclose(out, want, atol=1e-6)
    assert moe.last_gate.shape == (3, 3)
    assert torch.allclose(moe.last_gate.sum(1), torch.ones(3))
    two = small(name, experts=["time", "tcn"])
    assert two.trunk.names == ["time", "tcn"] and two(x).shape == (3, 5)
    with pytest.raises(ConfigError, match="experts must be distinct names among time, freq, tcn"):
        small(name, experts=["time", "wavelet"])


def test_norm_kind_auto_and_explicit():
    assert resolve_norm_kind("auto", 8) == "gn"
    assert resolve_norm_kind("auto", 16) == "bn"
    assert resolve_norm_kind("auto", None) == "bn"

    def norms(model):
        return {type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.GroupNorm))}

    assert norms(create_model("ConvNetADSB", 3, width=32, depth=2, per_device_batch=4)) == {nn.GroupNorm}
    assert norms(create_model("ConvNetADSB", 3, width=32, depth=2, per_device_batch=64)) == {nn.BatchNorm1d}
    assert norms(create_model("ResNet1D", 3, width=8, depth=2, norm_kind="bn")) == {nn.BatchNorm1d}
    ln = create_model("ConvNetADSB", 3, width=32, depth=2, norm_kind="ln")
    assert {m.num_groups for m in ln.modules() if isinstance(m, nn.GroupNorm)} == {1}
    gn = create_model("ConvNetADSB", 3, width=32, depth=2, norm_kind="gn")
    assert {m.num_groups for m in gn.modules() if isinstance(m, nn.GroupNorm)} == {8}
    assert [group_norm_groups(c) for c in (6, 32, 64, 350, 512)] == [1, 8, 16, 25, 32]
    gn.train()(torch.randn(1, 2, 32))  # batch of one trains with GroupNorm


def test_use_attention_toggles_squeeze_excite():
    with_se = create_model("ConvNetADSB", 3, width=8, depth=3, use_attention=True)
    without = create_model("ConvNetADSB", 3, width=8, depth=3, use_attention=False)
    assert sum(isinstance(m, SqueezeExcite) for m in with_se.modules()) == 3
    assert not any(isinstance(m, SqueezeExcite) for m in without.modules())


# ----------------------------------------------------------------------------- complexity
def test_model_complexity_counts_by_hand():
    model = create_model("ConvNetADSB", 5, in_channels=2, width=8, depth=2, use_attention=False)
    info = model_complexity(model, 2, 32)
    # conv1: 2 x (2*8*3) MACs x 32 positions; pool -> 16; conv2: 2 x (8*8*3) x 16; head 2 x 8*5.
    assert info["flops_per_sample"] == 2 * 2 * 8 * 3 * 32 + 2 * 8 * 8 * 3 * 16 + 2 * 8 * 5
    assert info["params"] == 2 * 8 * 3 + 16 + 8 * 8 * 3 + 16 + 8 * 5 + 5
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
@pytest.mark.parametrize("init_type", INITS.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_every_init_and_head(init_type, head):
    model = swap_classifier(small("ConvNetADSB"), head, class_counts=COUNTS)
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
    model = create_model("ConvNetADSB", 10, width=128, depth=3, use_attention=False)
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


@pytest.mark.parametrize("length", [36, 37])
def test_training_pool_matches_max_pool1d_values_and_gradients(length):
    """The pairs-max used under autograd is max_pool1d(x, 2) exactly, ties after ReLU included."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 3, length)).requires_grad_(True)
    g = torch.randn(4, 3, length // 2)
    y = AdaptiveDownsample(times=1)(x)
    (y * g).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    ref = F.max_pool1d(x, 2)
    (ref * g).sum().backward()
    assert torch.equal(y, ref) and torch.equal(ours, x.grad)
