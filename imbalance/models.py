"""Model zoo for 1-D signals (registry ``MODELS``) and the imbalance-aware model utilities.

Contract (DESIGN.md): every model takes ``x`` of shape ``(B, C, L)`` with any ``C >= 1``
(``in_channels``: 2 for I/Q, 1 for real signals, 12 for multichannel sensors) and any
``L >= 16`` and has

* ``forward_features(x) -> (B, D)``: the backbone, global average pooling and dropout;
* ``classifier``: the head, ``nn.Linear(D, K)`` unless :func:`swap_classifier` replaced it;
* ``forward(x) == classifier(forward_features(x))`` (exactly, in eval mode);
* attributes ``in_channels``, ``num_classes``, ``feature_dim`` (= D) and ``min_length`` (16).

Downsampling adapts to the signal: every pooling step halves the length only while the result
keeps at least ``4`` samples, so a 16-sample sensor signal and a 4800-sample radio burst go
through the same network (a short signal simply skips the late pooling steps).

Models (``model.name``):

=========================  ==========================================================  ==================
name                       architecture                                                full size default
=========================  ==========================================================  ==================
ConvNetADSB                ``depth`` blocks [conv k3 - norm - ReLU - SE - maxpool/2]    8 blocks x 350 ch
ResNet1D                   stem + ``depth`` (2..5) stages of basic residual blocks      4 stages, 64 ch
DilatedTCN                 stem + ``depth`` residual dilated-conv levels (d = 2^i)      8 levels, 64 ch
FrequencyDomainExpert      log|FFT| spectrum -> ConvNet trunk                          6 blocks x 128 ch
ResNetFrequencyExpert      log|FFT| spectrum -> ResNet trunk                           4 stages, 64 ch
MixtureOfExpertsConvNet    gated mix of time-ConvNet, frequency-ConvNet, TCN experts   128/128/64 ch
MixtureOfExpertsResNet     gated mix of time-ResNet, frequency-ResNet, TCN experts     64 ch, 4 stages
=========================  ==========================================================  ==================

``width`` is the base channel count and ``depth`` the number of blocks / stages / levels (for
a mixture of experts: of every expert); ``None`` means the full size above.

Normalisation (``norm_kind``): ``bn`` BatchNorm1d; ``gn`` GroupNorm (the largest divisor of the
channel count that is <= 32 and leaves >= 4 channels per group); ``ln`` GroupNorm with one group
(layer norm over channels and time of each sample); ``auto``: GroupNorm when the per-device
batch is known and smaller than :data:`AUTO_GN_BATCH` (16; batch statistics of fewer samples are
too noisy, Wu & He 2018), else BatchNorm.
"""
from __future__ import annotations

import inspect
import logging
import math
import numbers
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError
from .class_priors import log_prior
from .heads import HEADS, head_linear, CosineMarginClassifier  # noqa: F401
from .registry import Registry

logger = logging.getLogger(__name__)

MODELS = Registry("model")
INITS = Registry("init")

MIN_LENGTH = 16
"""Shortest signal every model accepts."""
MIN_POOLED_LENGTH = 4
"""A pooling step is skipped when it would leave fewer samples than this."""
AUTO_GN_BATCH = 16
"""``norm_kind='auto'`` picks GroupNorm when the per-device batch is below this."""
NORM_KINDS = ("auto", "bn", "gn", "ln")


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
                # Same values and gradients as max_pool1d(x, 2) (the gradient goes to the arg-max),
                # but its backward is one scatter instead of oneDNN's slow pooling backward on the
                # CPU; amax would be slower (its backward builds an equality mask).
                n = x.shape[-1] // 2
                x = x[..., : 2 * n].unflatten(-1, (n, 2)).max(-1).values
            else:
                x = F.max_pool1d(x, 2)
        return x

    def extra_repr(self) -> str:
        return f"times={self.times}, mode={self.mode}, min_length={self.min_length}"


def _conv(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False)


class ConvBlock(nn.Module):
    """conv(k) - norm - ReLU - [SE] - adaptive max-pool /2."""

    def __init__(self, *, cin: int, cout: int, kernel_size: int, norm: str, attention: bool,
                 pool: bool = True) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, kernel_size)
        self.norm = make_norm(norm, cout)
        self.se = SqueezeExcite(channels=cout) if attention else nn.Identity()
        self.pool = AdaptiveDownsample(times=1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.se(F.relu(self.norm(self.conv(x)))))


class ConvTrunk(nn.Module):
    """``depth`` ConvBlocks of ``width`` channels, then global average pooling -> (B, width)."""

    def __init__(self, *, in_channels: int, width: int, depth: int, kernel_size: int, norm: str,
                 attention: bool) -> None:
        super().__init__()
        chans = [in_channels] + [width] * depth
        self.blocks = nn.Sequential(*[
            ConvBlock(cin=chans[i], cout=chans[i + 1], kernel_size=kernel_size, norm=norm,
                      attention=attention) for i in range(depth)
        ])
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=-1)


class BasicBlock1D(nn.Module):
    """Residual basic block (He et al., CVPR 2016): conv-norm-ReLU-conv-norm-[SE] + shortcut
    (1x1 conv + norm when the channel count changes), then ReLU. Downsampling happens before
    the block (adaptive average pooling), so main path and shortcut see the same length."""

    def __init__(self, *, cin: int, cout: int, kernel_size: int, norm: str, attention: bool) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, kernel_size)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = _conv(cout, cout, kernel_size)
        self.norm2 = make_norm(norm, cout)
        self.se = SqueezeExcite(channels=cout) if attention else nn.Identity()
        if cin != cout:
            self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, bias=False), make_norm(norm, cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.se(self.norm2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class ResTrunk(nn.Module):
    """ResNet-1D trunk: stem conv(k7)-norm-ReLU, pool /4, then ``stages`` stages of
    ``blocks_per_stage`` basic blocks with ``width * 2**i`` channels; every stage after the first
    starts with a pool /2 (all pooling adaptive). Ends with global average pooling."""

    def __init__(self, *, in_channels: int, width: int, stages: int, blocks_per_stage: int,
                 kernel_size: int, stem_kernel_size: int, norm: str, attention: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(in_channels, width, stem_kernel_size), make_norm(norm, width),
                                  nn.ReLU(inplace=True), AdaptiveDownsample(times=2, mode="max"))
        layers: List[nn.Module] = []
        cin = width
        for i in range(stages):
            cout = width * 2 ** i
            if i > 0:
                layers.append(AdaptiveDownsample(times=1, mode="avg"))
            for _ in range(blocks_per_stage):
                layers.append(BasicBlock1D(cin=cin, cout=cout, kernel_size=kernel_size, norm=norm,
                                           attention=attention))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=-1)


class TemporalBlock(nn.Module):
    """Residual dilated block of a TCN (Bai et al. 2018, "An Empirical Evaluation of Generic
    Convolutional and Recurrent Networks"), non-causal ('same' padding) for classification:
    conv(k, d)-norm-ReLU-dropout-conv(k, d)-norm-[SE] + x, ReLU."""

    def __init__(self, *, channels: int, kernel_size: int, dilation: int, norm: str,
                 attention: bool, dropout: float) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, kernel_size, dilation)
        self.norm1 = make_norm(norm, channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _conv(channels, channels, kernel_size, dilation)
        self.norm2 = make_norm(norm, channels)
        self.se = SqueezeExcite(channels=channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.norm1(self.conv1(x))))
        out = self.se(self.norm2(self.conv2(out)))
        return F.relu(out + x)


class TCNTrunk(nn.Module):
    """Dilated TCN trunk: stem conv(k7)-norm-ReLU, pool /4 (adaptive), then ``levels``
    TemporalBlocks with dilation ``min(2**i, max_dilation)``; global average pooling.
    Receptive field after the stem: ``1 + 2 (k - 1) sum_i d_i`` samples (1021 for 8 levels, k 3)."""

    def __init__(self, *, in_channels: int, width: int, levels: int, kernel_size: int, norm: str,
                 attention: bool, dropout: float, max_dilation: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(in_channels, width, 7), make_norm(norm, width),
                                  nn.ReLU(inplace=True), AdaptiveDownsample(times=2, mode="max"))
        self.levels = nn.Sequential(*[
            TemporalBlock(channels=width, kernel_size=kernel_size, dilation=min(2 ** i, max_dilation),
                          norm=norm, attention=attention, dropout=dropout) for i in range(levels)
        ])
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels(self.stem(x)).mean(dim=-1)


class SpectralFrontEnd(nn.Module):
    """Spectral features of the signal: ``log(1 + |FFT(x)| / sqrt(L))``, computed in float32.

    With 2 input channels and ``complex_iq`` the channels are the I/Q parts of one complex
    baseband signal: ``z = I + jQ``, full FFT (both sides of the spectrum differ for complex
    signals), ``fftshift``ed so that frequency 0 is in the middle: 1 channel of length L.
    Otherwise every channel is a real signal: ``rfft`` per channel, C channels of length
    ``L // 2 + 1``.
    """

    def __init__(self, *, in_channels: int, complex_iq: bool = True) -> None:
        super().__init__()
        self.complex = bool(complex_iq) and in_channels == 2
        self.out_channels = 1 if self.complex else in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            n = x.shape[-1]
            if self.complex:
                spec = torch.fft.fftshift(torch.fft.fft(torch.complex(x[:, 0], x[:, 1]), dim=-1), dim=-1)
                spec = spec.unsqueeze(1)
            else:
                spec = torch.fft.rfft(x, dim=-1)
            return torch.log1p(spec.abs() / math.sqrt(n))


class FrequencyTrunk(nn.Module):
    """SpectralFrontEnd followed by a ConvTrunk or ResTrunk on the spectrum."""

    def __init__(self, *, front: SpectralFrontEnd, trunk: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.trunk = trunk
        self.out_dim = trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.front(x))


# ----------------------------------------------------------------------------- model base
def _pos_int(name: str, key: str, value: Any, lo: int = 1, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
            isinstance(value, float) and value.is_integer()):
        raise ConfigError(f"{name}: {key} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name}: {key} must be {rng}, got {v}")
    return v


class SignalModel(nn.Module):
    """Base class: input check, feature dropout and the ``classifier`` head.

    Subclasses build ``self.trunk`` (a module mapping ``(B, C, L)`` to ``(B, D)`` with attribute
    ``out_dim``) between ``super().__init__`` and ``self._finish()``.
    """

    min_length: int = MIN_LENGTH

    def __init__(self, *, num_classes: int, in_channels: int, dropout_rate: float,
                 norm_kind: str) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_classes = _pos_int(name, "num_classes", num_classes)
        self.in_channels = _pos_int(name, "in_channels", in_channels)
        if not (isinstance(dropout_rate, (int, float)) and 0.0 <= float(dropout_rate) < 1.0):
            raise ConfigError(f"{name}: dropout_rate must be in [0, 1), got {dropout_rate!r}")
        self.norm_kind = resolve_norm_kind(norm_kind)
        self.dropout_rate = float(dropout_rate)

    def _finish(self, trunk: nn.Module) -> None:
        self.trunk = trunk
        self.feature_dim = int(trunk.out_dim)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.classifier: nn.Module = nn.Linear(self.feature_dim, self.num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError unless ``x`` is ``(B, in_channels, L)`` with ``L >= min_length``."""
        if x.dim() != 3:
            raise DataError(f"{type(self).__name__} expects input of shape (batch, channels, length), "
                            f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise DataError(f"{type(self).__name__} was built for in_channels={self.in_channels} but the "
                            f"input has {x.shape[1]} channels (shape {tuple(x.shape)}); build the "
                            f"model with in_channels={x.shape[1]}")
        if x.shape[-1] < self.min_length:
            raise DataError(f"signal length {x.shape[-1]} is shorter than {type(self).__name__}'s "
                            f"minimum of {self.min_length}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.dropout(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


# ----------------------------------------------------------------------------- models
@MODELS.register("ConvNetADSB", aliases=("convnet", "ConvNet"))
class ConvNetADSB(SignalModel):
    """Deep plain ConvNet for ADS-B emitter identification (SEED: 8 blocks, 350 channels).

    ``depth`` blocks of [conv(k) - norm - ReLU - SE (use_attention) - max-pool /2 (adaptive)],
    all ``width`` channels wide; global average pooling; dropout; linear head.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, kernel_size: int = 3) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        width = _pos_int(n, "width", 350 if width is None else width)
        depth = _pos_int(n, "depth", 8 if depth is None else depth)
        kernel_size = _pos_int(n, "kernel_size", kernel_size)
        self._finish(ConvTrunk(in_channels=self.in_channels, width=width, depth=depth,
                               kernel_size=kernel_size, norm=self.norm_kind, attention=use_attention))


@MODELS.register("ResNet1D", aliases=("resnet1d", "resnet"))
class ResNet1D(SignalModel):
    """1-D ResNet (He et al. 2016) with 2, 3, 4 or 5 stages (``depth``, default 4) of
    ``blocks_per_stage`` basic blocks; channels ``width * 2**i`` (default width 64: 64..512,
    a ResNet-18 layout). See :class:`ResTrunk`."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, blocks_per_stage: int = 2, kernel_size: int = 3,
                 stem_kernel_size: int = 7) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        self._finish(ResTrunk(
            in_channels=self.in_channels, width=_pos_int(n, "width", 64 if width is None else width),
            stages=_pos_int(n, "depth (number of stages)", 4 if depth is None else depth, 2, 5),
            blocks_per_stage=_pos_int(n, "blocks_per_stage", blocks_per_stage),
            kernel_size=_pos_int(n, "kernel_size", kernel_size),
            stem_kernel_size=_pos_int(n, "stem_kernel_size", stem_kernel_size),
            norm=self.norm_kind, attention=use_attention))


@MODELS.register("DilatedTCN", aliases=("tcn", "TCN"))
class DilatedTCN(SignalModel):
    """Dilated temporal convolutional network (Bai et al. 2018), non-causal, for
    classification: ``depth`` residual levels (default 8) of ``width`` channels (default 64),
    dilation ``2**i`` (capped at ``max_dilation``); dropout ``dropout_rate`` inside every level
    and on the pooled features. See :class:`TCNTrunk`."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, kernel_size: int = 3, max_dilation: int = 128) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        self._finish(TCNTrunk(
            in_channels=self.in_channels, width=_pos_int(n, "width", 64 if width is None else width),
            levels=_pos_int(n, "depth (number of levels)", 8 if depth is None else depth),
            kernel_size=_pos_int(n, "kernel_size", kernel_size), norm=self.norm_kind,
            attention=use_attention, dropout=self.dropout_rate,
            max_dilation=_pos_int(n, "max_dilation", max_dilation)))


@MODELS.register("FrequencyDomainExpert", aliases=("freq_convnet",))
class FrequencyDomainExpert(SignalModel):
    """Frequency-domain expert: log-magnitude spectrum (:class:`SpectralFrontEnd`; I/Q treated as
    one complex signal when ``in_channels == 2`` and ``complex_iq``) fed to a ConvNet trunk of
    ``depth`` blocks (default 6) x ``width`` channels (default 128)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, kernel_size: int = 3, complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        front = SpectralFrontEnd(in_channels=self.in_channels, complex_iq=complex_iq)
        trunk = ConvTrunk(in_channels=front.out_channels,
                          width=_pos_int(n, "width", 128 if width is None else width),
                          depth=_pos_int(n, "depth", 6 if depth is None else depth),
                          kernel_size=_pos_int(n, "kernel_size", kernel_size), norm=self.norm_kind,
                          attention=use_attention)
        self._finish(FrequencyTrunk(front=front, trunk=trunk))


@MODELS.register("ResNetFrequencyExpert", aliases=("freq_resnet",))
class ResNetFrequencyExpert(SignalModel):
    """Frequency-domain expert with a ResNet trunk: :class:`SpectralFrontEnd` then
    :class:`ResTrunk` (``depth`` 2..5 stages, default 4; ``width`` default 64)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, blocks_per_stage: int = 2, kernel_size: int = 3,
                 complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        front = SpectralFrontEnd(in_channels=self.in_channels, complex_iq=complex_iq)
        trunk = ResTrunk(in_channels=front.out_channels,
                         width=_pos_int(n, "width", 64 if width is None else width),
                         stages=_pos_int(n, "depth (number of stages)", 4 if depth is None else depth, 2, 5),
                         blocks_per_stage=_pos_int(n, "blocks_per_stage", blocks_per_stage),
                         kernel_size=_pos_int(n, "kernel_size", kernel_size), stem_kernel_size=7,
                         norm=self.norm_kind, attention=use_attention)
        self._finish(FrequencyTrunk(front=front, trunk=trunk))


class MixtureOfExperts(nn.Module):
    """Gated mixture of expert trunks (Jacobs et al. 1991; soft gating as in Shazeer et al. 2017
    without sparsity).

    Each expert ``e`` maps the signal to features ``h_e``; ``f_e = ReLU(P_e h_e)`` projects them
    to a common ``dim``. The gate sees every projected feature: ``g = softmax(G [f_1; ...; f_E])``
    and the output is ``sum_e g_e f_e``. The last gate weights are kept in ``last_gate``
    (detached, ``(B, E)``) for inspection.
    """

    def __init__(self, *, experts: Dict[str, nn.Module], dim: int) -> None:
        super().__init__()
        self.names = list(experts)
        self.experts = nn.ModuleDict(experts)
        self.proj = nn.ModuleDict({k: nn.Linear(m.out_dim, dim) for k, m in experts.items()})
        self.gate = nn.Linear(dim * len(experts), len(experts))
        self.out_dim = dim
        self.last_gate: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [F.relu(self.proj[k](self.experts[k](x))) for k in self.names]
        stacked = torch.stack(feats, dim=1)                                  # (B, E, D)
        g = torch.softmax(self.gate(torch.cat(feats, dim=1)), dim=-1)         # (B, E)
        self.last_gate = g.detach()
        return (g.unsqueeze(-1) * stacked).sum(dim=1)


def _check_experts(name: str, experts: Sequence[str], valid: Sequence[str]) -> List[str]:
    if isinstance(experts, str):
        experts = [experts]
    experts = list(experts)
    bad = [e for e in experts if e not in valid]
    if not experts or bad or len(set(experts)) != len(experts):
        raise ConfigError(f"{name}: experts must be distinct names among {', '.join(valid)}; got {experts}")
    return experts


@MODELS.register("MixtureOfExpertsConvNet", aliases=("moe_convnet", "MoEConvNet"))
class MixtureOfExpertsConvNet(SignalModel):
    """Mixture of a time-domain ConvNet expert ('time', 6 blocks x 128 ch), a frequency-domain
    ConvNet expert ('freq', as :class:`FrequencyDomainExpert`, 6 x 128) and a dilated TCN expert
    ('tcn', 6 levels x 64 ch); ``width``/``depth`` override every expert's; features projected to
    ``expert_dim`` (256) and mixed by a learned softmax gate (:class:`MixtureOfExperts`)."""

    EXPERTS = ("time", "freq", "tcn")

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, expert_dim: int = 256,
                 experts: Sequence[str] = ("time", "freq", "tcn"), kernel_size: int = 3,
                 complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        names = _check_experts(n, experts, self.EXPERTS)
        k = _pos_int(n, "kernel_size", kernel_size)
        w = lambda d: _pos_int(n, "width", d if width is None else width)  # noqa: E731
        dp = lambda d: _pos_int(n, "depth", d if depth is None else depth)  # noqa: E731
        c, norm, att = self.in_channels, self.norm_kind, use_attention
        built: Dict[str, nn.Module] = {}
        for e in names:
            if e == "time":
                built[e] = ConvTrunk(in_channels=c, width=w(128), depth=dp(6), kernel_size=k,
                                     norm=norm, attention=att)
            elif e == "freq":
                front = SpectralFrontEnd(in_channels=c, complex_iq=complex_iq)
                built[e] = FrequencyTrunk(front=front, trunk=ConvTrunk(
                    in_channels=front.out_channels, width=w(128), depth=dp(6), kernel_size=k,
                    norm=norm, attention=att))
            else:
                built[e] = TCNTrunk(in_channels=c, width=w(64), levels=dp(6), kernel_size=k,
                                    norm=norm, attention=att, dropout=self.dropout_rate)
        self._finish(MixtureOfExperts(experts=built, dim=_pos_int(n, "expert_dim", expert_dim)))


@MODELS.register("MixtureOfExpertsResNet", aliases=("moe_resnet", "MoEResNet"))
class MixtureOfExpertsResNet(SignalModel):
    """ResNet-style mixture of experts: a time-domain ResNet expert ('time'), a frequency-domain
    ResNet expert ('freq', as :class:`ResNetFrequencyExpert`) and a residual dilated TCN expert
    ('tcn'); defaults width 64, depth 4 (ResNet stages, 2..5; TCN levels = depth + 2); features
    projected to ``expert_dim`` (256) and mixed by a learned softmax gate."""

    EXPERTS = ("time", "freq", "tcn")

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, expert_dim: int = 256,
                 experts: Sequence[str] = ("time", "freq", "tcn"), blocks_per_stage: int = 2,
                 kernel_size: int = 3, complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        names = _check_experts(n, experts, self.EXPERTS)
        k = _pos_int(n, "kernel_size", kernel_size)
        wd = _pos_int(n, "width", 64 if width is None else width)
        st = _pos_int(n, "depth (number of stages)", 4 if depth is None else depth, 2, 5)
        bps = _pos_int(n, "blocks_per_stage", blocks_per_stage)
        c, norm, att = self.in_channels, self.norm_kind, use_attention
        built: Dict[str, nn.Module] = {}
        for e in names:
            if e == "time":
                built[e] = ResTrunk(in_channels=c, width=wd, stages=st, blocks_per_stage=bps,
                                    kernel_size=k, stem_kernel_size=7, norm=norm, attention=att)
            elif e == "freq":
                front = SpectralFrontEnd(in_channels=c, complex_iq=complex_iq)
                built[e] = FrequencyTrunk(front=front, trunk=ResTrunk(
                    in_channels=front.out_channels, width=wd, stages=st, blocks_per_stage=bps,
                    kernel_size=k, stem_kernel_size=7, norm=norm, attention=att))
            else:
                built[e] = TCNTrunk(in_channels=c, width=wd, levels=st + 2, kernel_size=k,
                                    norm=norm, attention=att, dropout=self.dropout_rate)
        self._finish(MixtureOfExperts(experts=built, dim=_pos_int(n, "expert_dim", expert_dim)))


# ----------------------------------------------------------------------------- factory
_COMMON = ("num_classes", "in_channels", "dropout_rate", "use_attention", "norm_kind", "width", "depth")


def model_options(name: str) -> List[str]:
    """Model-specific keyword arguments of ``name`` (beyond create_model's own)."""
    cls = MODELS.get(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and p not in _COMMON]


def create_model(name: str, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "auto", width: Optional[int] = None,
                 depth: Optional[int] = None, per_device_batch: Optional[int] = None,
                 **kwargs: Any) -> nn.Module:
    """Build model ``name`` (see :data:`MODELS`; unknown names list the valid ones).

    ``width``/``depth`` ``None`` give the seed's full-size architecture. ``norm_kind='auto'``
    becomes GroupNorm when ``per_device_batch < AUTO_GN_BATCH`` (16), else BatchNorm.
    ``kwargs`` are model-specific options (:func:`model_options`); an unknown one is a
    ConfigError naming the valid ones.
    """
    cls = MODELS.get(name)
    canonical = MODELS.canonical(name)
    valid = model_options(canonical)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"model {canonical} got unknown option(s) {', '.join(unknown)}; valid options: "
                          f"{', '.join(valid) if valid else '(none)'}")
    kind = resolve_norm_kind(norm_kind, per_device_batch)
    if per_device_batch is not None and str(norm_kind).lower() == "auto":
        logger.debug("norm_kind=auto with per-device batch %s -> %s", per_device_batch, kind)
    model = cls(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                use_attention=bool(use_attention), norm_kind=kind, width=width, depth=depth, **kwargs)
    return model


# ----------------------------------------------------------------------------- heads
def swap_classifier(model: nn.Module, head: str, class_counts: Optional[Sequence[float]] = None,
                    **kwargs: Any) -> nn.Module:
    """Replace ``model.classifier`` in place by a fresh head ``head`` (registry :data:`HEADS`:
    linear, cosine_ldam, logit_adjust, temperature) with ``model.feature_dim`` inputs and
    ``model.num_classes`` outputs, on the old head's device; returns ``model``.

    ``kwargs`` are the head's options, e.g. cosine_ldam: ``scale=30.0, ldam_power=0.25,
    ldam_max_m=0.5``; logit_adjust: ``tau=1.0`` (needs ``class_counts``); temperature:
    ``temperature=1.0, learnable=True``. An unknown option is a ConfigError naming the valid ones.
    """
    if not hasattr(model, "feature_dim") or not hasattr(model, "classifier"):
        raise ConfigError(f"{type(model).__name__} has no feature_dim/classifier; cannot swap its head")
    builder = HEADS.get(head)
    canonical = HEADS.canonical(head)
    sig = inspect.signature(builder.__init__ if inspect.isclass(builder) else builder).parameters
    valid = [p for p in sig if p not in ("self", "in_features", "num_classes", "class_counts")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"head {canonical} got unknown option(s) {', '.join(unknown)}; valid options: "
                          f"{', '.join(valid) if valid else '(none)'}")
    new = builder(in_features=model.feature_dim, num_classes=model.num_classes,
                  class_counts=class_counts, **kwargs)
    old = next(iter(model.classifier.parameters()), None)
    if old is not None:
        new = new.to(device=old.device, dtype=old.dtype if old.is_floating_point() else None)
    model.classifier = new
    logger.info("classifier head: %s", canonical)
    return model


# ----------------------------------------------------------------------------- initialisation
def _weight_layers(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            yield m


def _reset_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
            m.reset_parameters()


def _cosine_heads(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, CosineMarginClassifier)]


@INITS.register("xavier")
def _init_xavier(model: nn.Module) -> None:
    """Xavier/Glorot uniform weights (Glorot & Bengio 2010), zero biases, norms to (1, 0)."""
    for m in _weight_layers(model):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for h in _cosine_heads(model):
        nn.init.xavier_uniform_(h.weight)
    _reset_norms(model)


@INITS.register("balanced_xavier")
def _init_balanced_xavier(model: nn.Module) -> None:
    """Xavier everywhere, then every class's weight vector in the classifier rescaled to the
    same norm (the mean norm), so that no class starts with a larger logit scale (the
    weight-norm imbalance Kang et al. 2020 observe in long-tailed training)."""
    _init_xavier(model)
    lin = head_linear(model.classifier) if hasattr(model, "classifier") else None
    if lin is not None:
        with torch.no_grad():
            norms = lin.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
            lin.weight.mul_(norms.mean() / norms)


@INITS.register("kaiming")
def _init_kaiming(model: nn.Module) -> None:
    """He normal weights (He et al. 2015): fan_out for convolutions, fan_in for linear layers;
    zero biases; norms to (1, 0)."""
    for m in _weight_layers(model):
        mode = "fan_out" if isinstance(m, nn.Conv1d) else "fan_in"
        nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for h in _cosine_heads(model):
        nn.init.kaiming_normal_(h.weight, mode="fan_in", nonlinearity="relu")
    _reset_norms(model)


@INITS.register("default")
def _init_default(model: nn.Module) -> None:
    """PyTorch's own initialisation (``reset_parameters`` of every layer that has one; a
    temperature head's temperature is kept)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()


def init_model_for_imbalanced(model: nn.Module, class_counts: Optional[Sequence[float]],
                              init_type: str = "balanced_xavier", use_log_prior_bias: bool = True,
                              temperature: float = 1.0) -> nn.Module:
    """Re-initialise ``model`` in place for long-tailed training and return it.

    ``init_type`` in :data:`INITS` (balanced_xavier, xavier, kaiming, default). With
    ``use_log_prior_bias`` the classifier bias becomes ``b_c = log(pi_c) / temperature``,
    ``pi_c = n_c / sum n`` (the prior-matching bias init; cf. Menon et al. 2021, Lin et al.
    2017's prior bias): the untrained model then predicts the training prior, so early training
    is not spent learning the class frequencies. A head without bias (cosine) keeps none (logged).
    """
    init_fn = INITS.get(init_type)
    if not temperature > 0:
        raise ConfigError(f"init temperature must be > 0, got {temperature}")
    init_fn(model)
    if use_log_prior_bias:
        if class_counts is None:
            raise ConfigError("use_log_prior_bias needs class_counts (training samples per class)")
        lin = head_linear(model.classifier)
        if lin is None or lin.bias is None:
            logger.warning("head %s has no bias; log-prior bias not applied",
                           type(model.classifier).__name__)
        else:
            bias = log_prior(class_counts, model.num_classes, "init_model_for_imbalanced") / temperature
            with torch.no_grad():
                lin.bias.copy_(bias.to(lin.bias))
            if not isinstance(model.classifier, nn.Linear) and getattr(model.classifier, "tau", 0):
                logger.warning("log-prior bias with a logit_adjust head: the prior enters twice in "
                               "training (bias and adjustment)")
    return model


# ----------------------------------------------------------------------------- complexity
def model_complexity(model: nn.Module, in_channels: int, length: int) -> Dict[str, int]:
    """Parameter counts and forward FLOPs for one sample of shape ``(in_channels, length)``.

    FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` on a batch of 1 in eval mode:
    convolutions and matrix products counted as 2 FLOPs per multiply-add; element-wise ops,
    normalisation, pooling and FFTs are not counted (they are a few percent at most).
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.randn(1, int(in_channels), int(length), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
        flops = int(counter.get_total_flops())
    finally:
        model.train(was_training)
    return {"params": int(params), "trainable_params": int(trainable), "flops_per_sample": flops}


def format_complexity(info: Dict[str, int]) -> str:
    """``'1.23 M parameters (1.23 M trainable), 4.56 GFLOPs per sample'``."""
    return (f"{info['params'] / 1e6:.3f} M parameters ({info['trainable_params'] / 1e6:.3f} M trainable), "
            f"{info['flops_per_sample'] / 1e9:.4f} GFLOPs per sample")


__all__ = [
    "MODELS", "HEADS", "INITS", "MIN_LENGTH", "AUTO_GN_BATCH", "NORM_KINDS",
    "create_model", "swap_classifier", "init_model_for_imbalanced", "model_complexity",
    "format_complexity", "model_options", "resolve_norm_kind", "make_norm", "group_norm_groups",
    "SignalModel", "ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert",
    "ResNetFrequencyExpert", "MixtureOfExpertsConvNet", "MixtureOfExpertsResNet",
    "SqueezeExcite", "AdaptiveDownsample", "SpectralFrontEnd", "MixtureOfExperts",
]
