"""Tests of imbalance.transformers: padding/masking, positions, tokenizers, attention math, sizes,
options, FLOP counting. (The zoo's contract tests in test_models.py run on these models too.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imbalance.errors import ConfigError, DataError
from imbalance.models import HEADS, create_model, model_complexity, swap_classifier
from imbalance.transformers import (ConvStem, EncoderBlock, PatchEmbedding, interpolate_positions,
                                    sinusoidal_positions)

NAMES = ["SignalTransformer", "ConvTransformer"]


def build(name, **kw):
    args = dict(width=16, depth=2, num_heads=2)
    args.update(kw)
    torch.manual_seed(0)
    return create_model(name, 4, in_channels=2, **args).eval()


# ----------------------------------------------------------------------------- padding and masks
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("positions", ["learnable", "sinusoidal"])
def test_padded_signal_gives_the_unpadded_output_when_masked(name, pooling, positions):
    # num_positions=4 makes the longer signals interpolate their positions: still exact.
    model = build(name, pooling=pooling, positions=positions, num_positions=4)
    torch.manual_seed(1)
    lengths = [37, 16, 100, 64]
    signals = [torch.randn(2, n) for n in lengths]
    padded = torch.full((4, 2, 100), 7.5)  # any padding value: samples past the length are ignored
    for i, s in enumerate(signals):
        padded[i, :, :s.shape[1]] = s
    with torch.no_grad():
        out = model(padded, lengths=torch.tensor(lengths))
        feats = model.forward_features(padded, lengths=torch.tensor(lengths))
        for i, s in enumerate(signals):
            alone = model(s[None])
            assert torch.allclose(out[i], alone[0], atol=1e-5, rtol=1e-5), (i, out[i], alone[0])
        # without the lengths the padding is signal: the outputs of the padded ones differ
        unmasked = model(padded)
    assert torch.equal(model.classifier(feats), out)
    assert not torch.allclose(unmasked[0], out[0], atol=1e-3)
    assert torch.allclose(unmasked[2], out[2], atol=1e-5)  # the full-length signal has no padding


@pytest.mark.parametrize("name", NAMES)
def test_bad_lengths_are_data_errors(name):
    model = build(name)
    x = torch.randn(2, 2, 40)
    with pytest.raises(DataError, match="one entry per signal"):
        model(x, lengths=torch.tensor([40]))
    with pytest.raises(DataError, match=r"lengths must be in 1..40"):
        model(x, lengths=torch.tensor([41, 10]))
    with pytest.raises(DataError, match=r"lengths must be in 1..40"):
        model(x, lengths=torch.tensor([0, 10]))
    with pytest.raises(DataError, match="whole sample counts"):
        model(x, lengths=torch.tensor([10.5, 10.0]))
    assert torch.equal(model(x, lengths=torch.tensor([40, 40])), model(x))  # full lengths = no mask


def test_patch_count_keeps_every_sample():
    emb = PatchEmbedding(in_channels=1, dim=3, patch_length=16, patch_stride=8)
    counts = emb.num_tokens(torch.tensor([16, 17, 24, 25, 100]))
    # 1 + ceil((L - 16) / 8)
    assert counts.tolist() == [1, 2, 2, 3, 1 + math.ceil(84 / 8)]
    assert emb.num_tokens(torch.tensor([5])).tolist() == [1]  # shorter than a patch: one (zero-filled) patch
    x = torch.randn(1, 1, 25)
    tokens, _ = emb(x, None)
    assert tokens.shape == (1, 3, 3)
    # the last token sees the last sample (padding completes the patch, nothing is dropped)
    y = x.clone()
    y[..., -1] += 1.0
    assert not torch.allclose(emb(y, None)[0][:, -1], tokens[:, -1])
    assert torch.equal(emb(y, None)[0][:, :2], tokens[:, :2])


def test_conv_stem_valid_lengths_follow_the_convolution_arithmetic():
    stem = ConvStem(in_channels=2, dim=8, layers=3, kernel=7).eval()
    for n in (16, 17, 33, 100):
        out, lengths = stem(torch.randn(1, 2, n), torch.tensor([n]))
        assert out.shape[1] == lengths.item()
        want = n
        for _ in range(3):
            want = (want + 2 * 3 - 7) // 2 + 1
        assert lengths.item() == want


# ----------------------------------------------------------------------------- positions
def test_sinusoidal_positions_are_vaswanis_formula():
    pos = np.arange(7, dtype=np.float64)
    d = 6
    want = np.zeros((7, d))
    for i in range(d // 2):
        want[:, 2 * i] = np.sin(pos / 10000 ** (2 * i / d))
        want[:, 2 * i + 1] = np.cos(pos / 10000 ** (2 * i / d))
    got = sinusoidal_positions(torch.arange(7), d).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert sinusoidal_positions(torch.arange(3), 5).shape == (3, 5)  # odd width: truncated


def test_learned_positions_absolute_up_to_the_table_then_interpolated():
    torch.manual_seed(0)
    table = torch.randn(6, 5, dtype=torch.float64)
    got = interpolate_positions(table, torch.tensor([3, 6, 9, 20]), 20)
    assert torch.equal(got[0, :3], table[:3])              # absolute: the first rows, exactly
    assert torch.equal(got[1, :6], table)
    for row, n in ((2, 9), (3, 20)):                      # more tokens than rows: F.interpolate
        ref = F.interpolate(table.T[None], size=n, mode="linear", align_corners=False)[0].T
        assert torch.allclose(got[row, :n], ref, atol=1e-12)


# ----------------------------------------------------------------------------- attention
def test_encoder_block_is_prenorm_multi_head_attention_in_float64():
    torch.manual_seed(0)
    blk = EncoderBlock(dim=8, num_heads=2, mlp_ratio=2.0).double()
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)

    def ln(v, m):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias

    h = ln(x, blk.norm1) @ blk.qkv.weight.T + blk.qkv.bias
    q, k, v = h[..., :8], h[..., 8:16], h[..., 16:]
    heads = []
    for i in range(2):
        sl = slice(4 * i, 4 * i + 4)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4)
        s = s.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[..., sl])
    y = x + torch.cat(heads, -1) @ blk.proj.weight.T + blk.proj.bias
    m1, m2 = blk.mlp[0], blk.mlp[2]
    y = y + F.gelu(ln(y, blk.norm2) @ m1.weight.T + m1.bias) @ m2.weight.T + m2.bias
    with torch.no_grad():
        got = blk(x, mask[:, None, None, :])
    assert torch.allclose(got, y, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_attention_runs_through_scaled_dot_product_attention(name, monkeypatch):
    import imbalance.transformers as T

    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(T.F, "scaled_dot_product_attention", spy)
    model = build(name, depth=3)
    with torch.no_grad():
        model(torch.randn(2, 2, 64))
    assert len(calls) == 3 and calls[0][:2] == (2, 2)  # (batch, heads, tokens, head dim)


@pytest.mark.parametrize("name", NAMES)
def test_cls_pooling_returns_the_class_token(name):
    model = build(name, pooling="cls")
    trunk = model.trunk
    x = torch.randn(2, 2, 64)
    seen = {}
    trunk.norm.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    with torch.no_grad():
        feats = trunk(x)
    n_tokens = trunk.tokenizer(x, None)[0].shape[1]
    assert seen["tokens"].shape[1] == n_tokens + 1
    assert torch.equal(feats, seen["tokens"][:, 0])


# ----------------------------------------------------------------------------- sizes and options
@pytest.mark.parametrize("name", NAMES)
def test_sizes_and_head_counts(name):
    full = create_model(name, 10)
    assert full.feature_dim == 256 and len(full.trunk.blocks) == 6 and full.trunk.blocks[0].num_heads == 8
    tiny = create_model(name, 10, width=64, depth=2)
    assert tiny.feature_dim == 64 and len(tiny.trunk.blocks) == 2 and tiny.trunk.blocks[0].num_heads == 2
    assert create_model(name, 10, width=8, depth=1).trunk.blocks[0].num_heads == 1
    assert create_model(name, 10, width=48, depth=1, num_heads=3).trunk.blocks[0].num_heads == 3


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("SignalTransformer", dict(width=48, num_heads=5), "width 48 is not divisible by num_heads 5"),
    ("SignalTransformer", dict(positions="rope"), "unknown positions 'rope'; valid: learnable, sinusoidal"),
    ("SignalTransformer", dict(pooling="max"), "unknown pooling 'max'; valid: cls, mean"),
    ("SignalTransformer", dict(mlp_ratio=0), "mlp_ratio must be a number > 0"),
    ("SignalTransformer", dict(patch_length=0), "patch_length must be >= 1"),
    ("SignalTransformer", dict(patch_stride=0), "patch_stride must be >= 1"),
    ("SignalTransformer", dict(num_positions=0), "num_positions must be >= 1"),
    ("ConvTransformer", dict(stem_layers=9), r"stem_layers must be in 1..8"),
    ("ConvTransformer", dict(stem_kernel=0), "stem_kernel must be >= 1"),
    ("ConvTransformer", dict(depth=0), r"depth \(number of encoder blocks\) must be >= 1"),
    ("ConvTransformer", dict(patch_length=4), r"unknown option\(s\) patch_length"),
])
def test_bad_options_are_config_errors(name, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        create_model(name, 3, **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length", [16, 23, 4800])
def test_variable_lengths_beyond_the_position_table(name, length):
    model = build(name, num_positions=8)
    with torch.no_grad():
        out = model(torch.randn(2, 2, length))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head", sorted(HEADS.names()))
def test_every_head_takes_the_features(name, head):
    model = build(name)
    kw = {"class_counts": [10, 5, 2, 1]}
    swap_classifier(model, head, **kw)
    x = torch.randn(3, 2, 40)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model.classifier(model.forward_features(x)))


def test_flops_count_the_attention_products_by_hand():
    # One block, width 8, 2 heads, mlp 16, patches of 4 (stride 4) over 2 x 32 -> 8 tokens, mean pooling.
    model = create_model("SignalTransformer", 3, width=8, depth=1, num_heads=2, mlp_ratio=2.0, patch_length=4)
    n, d, c, p, k, hidden = 8, 8, 2, 4, 3, 16
    want = (2 * c * p * d * n            # patch embedding
            + 2 * n * d * 3 * d          # qkv
            + 2 * 2 * n * n * d          # Q K^T and A V over all heads
            + 2 * n * d * d              # output projection
            + 2 * n * d * hidden * 2     # MLP
            + 2 * d * k)                 # head
    assert model_complexity(model, 2, 32)["flops_per_sample"] == want


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_with_padding_is_finite(name):
    model = build(name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 2, 64), lengths=torch.tensor([64, 20]))
    assert torch.isfinite(out.float()).all()


def test_a_run_with_a_transformer_through_lws_tau_norm_and_the_rebuilt_model(run_tiny):
    # stage 2 LWS on the attention features, stage 3 tau-norm + logit adjustment; final.pt rebuilds it
    import json

    from imbalance.evaluate import load_trained_model

    rdir, _ = run_tiny("model.name=ConvTransformer", "model.width=16", "model.positions=sinusoidal",
                       "model.pooling=cls", "stage2.mode=lws", "stage3.mode=both", name="ct")
    res = json.loads((rdir / "results" / "results.json").read_text())
    assert {"stage1", "stage2", "stage3", "final"} <= set(res["metrics"])
    assert res["model_info"]["name"] == "ConvTransformer" and res["model_info"]["flops_per_sample"] > 0
    model, info = load_trained_model(rdir)
    assert model.trunk.pooling == "cls" and model.trunk.positions == "sinusoidal"
    with torch.no_grad():
        out = model(torch.randn(3, info.num_channels, info.length))
    assert out.shape == (3, info.num_classes)
