"""Building blocks of the signal models (:mod:`imbalance.models`): normalisation, pooling and
strided convolutions that adapt to short signals, channel attention, the origin networks'
backbones (ORIGIN_MODELS.md), the spectral front end, and ConvNetSE's blocks.

Downsampling adapts to the signal: a pooling (or strided) step is skipped when it would leave
fewer than :data:`MIN_POOLED_LENGTH` samples, so a 16-sample sensor signal and a 4800-sample
radio burst go through the same network.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

MIN_LENGTH = 16
"""Shortest signal every model accepts."""
MIN_POOLED_LENGTH = 4
"""A down-sampling step (pool or strided convolution) is skipped when it would leave fewer
samples than this."""
AUTO_GN_BATCH = 16
"""``norm_kind='auto'`` picks GroupNorm when the per-device batch is below this."""
NORM_KINDS = ("auto", "bn", "gn", "ln")
SPECTRAL_MODES = ("powerlog", "ri", "magphase")
SPECTRAL_WINDOWS = ("hann", None)


# ----------------------------------------------------------------------------- building blocks
def resolve_norm_kind(norm_kind: str, per_device_batch: Optional[int] = None) -> str:
    """``'auto'`` -> ``'gn'`` if ``per_device_batch < AUTO_GN_BATCH`` else ``'bn'``."""
    kind = str(norm_kind).lower()
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm_kind {norm_kind!r}; valid: {', '.join(NORM_KINDS)}")
    if kind == "auto":
        return "gn" if per_device_batch is not None and int(per_device_batch) < AUTO_GN_BATCH else "bn"
    return kind


def group_norm_groups(channels: int) -> int:
    """Groups for GroupNorm: the largest divisor g of ``channels`` with g <= 32 and
    ``channels / g >= 4`` (1 for fewer than 8 channels)."""
    best = 1
    for g in range(1, min(32, channels // 4) + 1):
        if channels % g == 0:
            best = g
    return best


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer for ``(B, channels, L)`` maps; ``kind`` in bn/gn/ln (auto = bn)."""
    kind = resolve_norm_kind(kind)
    if kind == "bn":
        return nn.BatchNorm1d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    return nn.GroupNorm(1, channels)


def _conv_out_length(length: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _pairs_max(x: torch.Tensor, k: int) -> torch.Tensor:
    """``max_pool1d(x, k)`` (stride k, no padding) as a reshape and a max: the same values and
    gradients (to the first arg-max, as max_pool1d), but its backward is one scatter instead of
    oneDNN's slow pooling backward on the CPU."""
    n = x.shape[-1] // k
    return x[..., : k * n].unflatten(-1, (n, k)).max(-1).values


class SkipMaxPool1d(nn.Module):
    """``nn.MaxPool1d(kernel_size, stride, padding)``, skipped (identity) when its output would
    be shorter than ``min_length`` samples."""

    def __init__(self, kernel_size: int, stride: Optional[int] = None, padding: int = 0,
                 min_length: int = MIN_POOLED_LENGTH) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(kernel_size if stride is None else stride)
        self.padding = int(padding)
        self.min_length = int(min_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel_size, self.stride, self.padding
        if _conv_out_length(x.shape[-1], k, s, p) < self.min_length:
            return x
        if k == s and p == 0 and torch.is_grad_enabled() and x.requires_grad:
            return _pairs_max(x, k)
        return F.max_pool1d(x, k, s, p)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"min_length={self.min_length}")


class SkipStrideConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose stride falls back to 1 when the strided output would be shorter than
    :data:`MIN_POOLED_LENGTH` samples (same weights; only short signals are affected)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        if s > 1 and _conv_out_length(x.shape[-1], k, s, p, d) < MIN_POOLED_LENGTH:
            return F.conv1d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        return super().forward(x)


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018), as the origin codebase applies it once
    after a backbone's last block: a shared MLP (1x1 conv C -> max(1, C // reduction), ReLU,
    1x1 conv back to C, no biases) on the global average pool and on the global max pool of the
    map; the two outputs are summed, passed through a sigmoid and scale the channels:
    ``x * sigmoid(MLP(avg_t x) + MLP(max_t x))``."""

    def __init__(self, *, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv1d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv1d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=-1, keepdim=True))
        mx = self.mlp(x.amax(dim=-1, keepdim=True))
        return x * torch.sigmoid(avg + mx)


def kaiming_fan_out_(module: nn.Module) -> None:
    """The origin ResNet1D / DilatedTCN / gate initialisation of convolutions: Kaiming normal,
    fan_out, ReLU gain."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def normal_linear_(module: nn.Module, std: float = 0.01) -> None:
    """The origin's linear initialisation: weights N(0, std), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- origin backbones
CONVNET_ADSB_PLAN: Tuple[Tuple[int, int, int, Optional[int]], ...] = (
    (50, 15, 1, 4), (100, 11, 1, 3), (150, 7, 1, 2), (200, 5, 2, 2),
    (300, 5, 2, 2), (350, 5, 2, 2), (350, 7, 2, 2), (350, 7, 2, None),
)
"""The origin ConvNetADSB, one row per block: (channels, kernel, convolutions, max-pool)."""


def convnet_adsb_plan(width: Optional[int] = None, depth: Optional[int] = None
                      ) -> List[Tuple[int, int, int, Optional[int]]]:
    """The block plan of :class:`ConvNetADSBBackbone` for ``width``/``depth`` (see the module
    docstring): the first ``depth`` origin blocks, channels scaled so that the widest is
    ``width``, no pool after the last block."""
    depth = len(CONVNET_ADSB_PLAN) if depth is None else int(depth)
    rows = CONVNET_ADSB_PLAN[:depth]
    widest = max(c for c, _, _, _ in rows)
    width = widest if width is None else int(width)
    out = [(max(1, int(c * width / widest + 0.5)), k, n, pool) for c, k, n, pool in rows]
    c, k, n, _ = out[-1]
    out[-1] = (c, k, n, None)
    return out


class ConvNetADSBBackbone(nn.Module):
    """The origin ConvNetADSB without its head: blocks of [conv(k, padding k//2, no bias) -
    norm - ReLU] x 1 or 2, then max-pool (:data:`CONVNET_ADSB_PLAN`); channel attention
    (optional) once after the last block; global MAX pooling -> ``(B, out_dim)``.

    ``features`` is one ``nn.Sequential`` in the origin's order (conv, norm, ReLU, ..., pool). The
    forward runs each ReLU that precedes a max-pool after the pool instead: the two commute exactly
    (``max(relu a, relu b) = relu(max(a, b))``, and the gradient reaches the same arg-max), and the
    ReLU and its backward then touch 1/k of the samples (k = 4, 3, 2): a part of the element-wise
    tail of a training step that bf16 does not speed up (BENCHMARKS.md)."""

    head_init = "default"

    def __init__(self, *, in_channels: int, width: Optional[int], depth: Optional[int], norm: str,
                 attention: bool) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        cin = in_channels
        for c, k, n, pool in convnet_adsb_plan(width, depth):
            for _ in range(n):
                layers += [nn.Conv1d(cin, c, k, padding=k // 2, bias=False), make_norm(norm, c),
                           nn.ReLU(inplace=True)]
                cin = c
            if pool is not None:
                layers.append(SkipMaxPool1d(pool))
        self.features = nn.Sequential(*layers)
        order = list(range(len(layers)))
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], SkipMaxPool1d):
                order[i], order[i + 1] = i + 1, i
        self.run_order = tuple(order)  # indices into ``features``: pool before ReLU
        self.attention = ChannelAttention(channels=cin) if attention else None
        self.out_dim = cin

    def init_weights(self) -> None:
        """The origin leaves PyTorch's initialisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.features)
        h = x
        for i in self.run_order:
            h = layers[i](h)
        if self.attention is not None:
            h = self.attention(h)
        return h.max(dim=-1).values


class BasicBlock1D(nn.Module):
    """Residual basic block (He et al., CVPR 2016) as the origin writes it: conv k3 (stride s) -
    norm - ReLU - conv k3 - norm, plus the shortcut (1x1 conv with stride s + norm when the
    stride or the channel count changes), then ReLU. The strides fall back to 1 together on a
    signal too short for them (:class:`SkipStrideConv1d`)."""

    def __init__(self, *, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = SkipStrideConv1d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(SkipStrideConv1d(cin, cout, 1, stride=stride, bias=False),
                                            make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet1DBackbone(nn.Module):
    """The origin ResNet1D without its head: stem conv(k7, stride 2, padding 3) - norm - ReLU -
    max-pool(3, stride 2, padding 1); ``stages`` stages (``layer1``..) of ``blocks_per_stage``
    basic blocks with ``base * 2**i`` channels, the first block of every stage after the first
    with stride 2; channel attention (optional); global AVERAGE pooling. Convolutions Kaiming
    normal (fan_out, ReLU) as the origin initialises them."""

    head_init = "normal"

    def __init__(self, *, in_channels: int, base: int, stages: int, blocks_per_stage: int,
                 norm: str, attention: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            SkipStrideConv1d(in_channels, base, 7, stride=2, padding=3, bias=False), make_norm(norm, base),
            nn.ReLU(inplace=True), SkipMaxPool1d(3, stride=2, padding=1))
        self.stage_names: List[str] = []
        cin = base
        for i in range(stages):
            cout = base * 2 ** i
            blocks = [BasicBlock1D(cin=cin, cout=cout, stride=1 if i == 0 else 2, norm=norm)]
            blocks += [BasicBlock1D(cin=cout, cout=cout, stride=1, norm=norm) for _ in range(blocks_per_stage - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
            cin = cout
        self.attention = ChannelAttention(channels=cin) if attention else None
        self.out_dim = cin
        self.init_weights()

    def init_weights(self) -> None:
        kaiming_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for name in self.stage_names:
            h = getattr(self, name)(h)
        if self.attention is not None:
            h = self.attention(h)
        return h.mean(dim=-1)


class DilatedTCNBlock(nn.Module):
    """Residual dilated level of the origin DilatedTCN: conv(k3, dilation d, padding d) - norm -
    ReLU - conv(k3, d) - norm, output ``ReLU(x + block(x))``."""

    def __init__(self, *, channels: int, dilation: int, norm: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            make_norm(norm, channels), nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            make_norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.block(x))


class DilatedTCNBackbone(nn.Module):
    """The origin DilatedTCN without its head: projection conv(k3, padding 1) - norm - ReLU,
    ``levels`` :class:`DilatedTCNBlock` with dilation ``2**i``, channel attention (optional),
    global AVERAGE pooling. No down-sampling (every layer keeps the length); receptive field
    ``3 + 4 (2**levels - 1)`` samples (63 for 4 levels). Kaiming normal (fan_out) convolutions."""

    head_init = "normal"

    def __init__(self, *, in_channels: int, channels: int, levels: int, norm: str, attention: bool) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv1d(in_channels, channels, 3, padding=1, bias=False),
                                  make_norm(norm, channels), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[DilatedTCNBlock(channels=channels, dilation=2 ** i, norm=norm)
                                      for i in range(levels)])
        self.attention = ChannelAttention(channels=channels) if attention else None
        self.out_dim = channels
        self.init_weights()

    def init_weights(self) -> None:
        kaiming_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.proj(x))
        if self.attention is not None:
            h = self.attention(h)
        return h.mean(dim=-1)


class SpectralFrontEnd(nn.Module):
    """Frequency-domain features, as the origin's ``SpectralFeatures`` computes them from I/Q:
    ``z = (I + jQ) * w`` with ``w`` a periodic Hann window (``torch.hann_window``; ``window=None``:
    none), ``X = FFT(z)`` with norm "ortho" (no fftshift), then by ``mode``:

    * ``powerlog`` (default): ``log(1 + |X|^2)``, repeated to 2 channels;
    * ``ri``: ``Re X, Im X``;
    * ``magphase``: ``|X|, atan2(Im X, Re X)``.

    That is the path for 2 channels with ``complex_iq`` (the seed's data); output (B, 2, L).
    Any other channel count (or ``complex_iq=False``) is C real signals: each is windowed and
    transformed by ``rfft`` (norm "ortho"; the L // 2 + 1 non-redundant bins), giving
    ``log(1 + |X_c|^2)`` (C channels, no repetition: the backbones take any C) or the pairs
    above stacked as ``[Re X_0..Re X_{C-1}, Im X_0..Im X_{C-1}]`` (2C channels). Computed in
    float32 outside autocast (FFTs need it)."""

    def __init__(self, *, in_channels: int, mode: str = "powerlog", window: Optional[str] = "hann",
                 complex_iq: bool = True) -> None:
        super().__init__()
        mode = str(mode).lower()
        if mode not in SPECTRAL_MODES:
            raise ConfigError(f"unknown spectral_mode {mode!r}; valid: {', '.join(SPECTRAL_MODES)}")
        if window is not None and str(window).lower() in ("none", "null", ""):
            window = None
        if window is not None and str(window).lower() != "hann":
            raise ConfigError(f"unknown spectral_window {window!r}; valid: hann, null (no window)")
        self.mode = mode
        self.window = None if window is None else "hann"
        self.complex = bool(complex_iq) and in_channels == 2
        if self.complex:
            self.out_channels = 2
        else:
            self.out_channels = in_channels if mode == "powerlog" else 2 * in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            n = x.shape[-1]
            if self.window is not None:
                x = x * torch.hann_window(n, device=x.device, dtype=x.dtype)
            if self.complex:
                spec = torch.fft.fft(torch.complex(x[:, 0], x[:, 1]), dim=-1, norm="ortho").unsqueeze(1)
            else:
                spec = torch.fft.rfft(x, dim=-1, norm="ortho")
            if self.mode == "powerlog":
                out = torch.log1p(spec.real ** 2 + spec.imag ** 2)
                return out.repeat(1, 2, 1) if self.complex else out
            if self.mode == "ri":
                return torch.cat([spec.real, spec.imag], dim=1)
            return torch.cat([spec.abs(), torch.atan2(spec.imag, spec.real)], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, window={self.window}, complex_iq={self.complex}"


class FrequencyBackbone(nn.Module):
    """:class:`SpectralFrontEnd` (``spec``) followed by a backbone on its output (``backbone``)."""

    def __init__(self, *, spec: SpectralFrontEnd, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.out_dim = backbone.out_dim
        self.head_init = backbone.head_init

    def init_weights(self) -> None:
        self.backbone.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.spec(x))


# ----------------------------------------------------------------------------- ConvNetSE blocks
class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., CVPR 2018, "Squeeze-and-Excitation Networks"):
    ``x * sigmoid(W2 relu(W1 mean_t(x)))`` with bottleneck ``max(C // reduction, 4)``."""

    def __init__(self, *, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=-1)))))
        return x * s.unsqueeze(-1)


class AdaptiveDownsample(nn.Module):
    """Halve the length ``times`` times (max or average pooling, kernel 2), skipping every
    step that would leave fewer than ``min_length`` samples."""

    def __init__(self, *, times: int = 1, mode: str = "max", min_length: int = MIN_POOLED_LENGTH) -> None:
        super().__init__()
        self.times = int(times)
        self.mode = mode
        self.min_length = int(min_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            if x.shape[-1] < 2 * self.min_length:
                break
            if self.mode != "max":
                x = F.avg_pool1d(x, 2)
            elif torch.is_grad_enabled() and x.requires_grad:
                x = _pairs_max(x, 2)
            else:
                x = F.max_pool1d(x, 2)
        return x

    def extra_repr(self) -> str:
        return f"times={self.times}, mode={self.mode}, min_length={self.min_length}"


class ConvBlock(nn.Module):
    """conv(k) - norm - ReLU - [SE] - adaptive max-pool /2."""

    def __init__(self, *, cin: int, cout: int, kernel_size: int, norm: str, attention: bool,
                 pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = make_norm(norm, cout)
        self.se = SqueezeExcite(channels=cout) if attention else nn.Identity()
        self.pool = AdaptiveDownsample(times=1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.se(F.relu(self.norm(self.conv(x)))))


class ConvTrunk(nn.Module):
    """``depth`` ConvBlocks of ``width`` channels, then global average pooling -> (B, width)."""

    head_init = "default"

    def __init__(self, *, in_channels: int, width: int, depth: int, kernel_size: int, norm: str,
                 attention: bool) -> None:
        super().__init__()
        chans = [in_channels] + [width] * depth
        self.blocks = nn.Sequential(*[
            ConvBlock(cin=chans[i], cout=chans[i + 1], kernel_size=kernel_size, norm=norm,
                      attention=attention) for i in range(depth)
        ])
        self.out_dim = width

    def init_weights(self) -> None:
        """PyTorch's initialisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=-1)
