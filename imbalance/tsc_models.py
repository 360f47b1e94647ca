"""Deep time-series classifiers of the UCR/UEA literature, registered in ``MODELS``.

=========  ============================================================================  =========
name       architecture at full size (``width``/``depth`` null), as the official code      params(*)
=========  ============================================================================  =========
InceptionTime  6 Inception modules (bottleneck 1x1 -> 32 when the input has > 1 channel;  0.42 M
           convolutions k 40, 20, 10 with 32 filters each; max-pool 3 -> 1x1 conv 32;
           concat 128 -> BN -> ReLU), a residual shortcut (1x1 conv + BN) every 3
           modules, global average pooling, linear 128 -> K
FCN        conv 128 k8 - BN - ReLU, conv 256 k5 - BN - ReLU, conv 128 k3 - BN - ReLU,    0.27 M
           global average pooling, linear 128 -> K
ResNetTSC  3 residual blocks of [conv k8 - BN - ReLU - conv k5 - BN - ReLU - conv k3 -   0.51 M
           BN] + shortcut (1x1 conv + BN when the channels change, else BN), ReLU;
           64-128-128 channels, global average pooling, linear 128 -> K
=========  ============================================================================  =========

(*) one input channel, 10 classes.

Sources (read and compared; no code copied):

* InceptionTime: Ismail Fawaz et al., "InceptionTime: Finding AlexNet for time series
  classification", DMKD 2020; official code hfawaz/InceptionTime ``classifiers/inception.py``:
  ``kernel_size=41`` becomes ``40`` and the three kernels ``40 // 2**i`` = 40, 20, 10 ('same'
  padding; an even kernel pads one more sample on the right, in PyTorch as in Keras), 32
  filters, bottleneck 32 (only on an input with more than one channel; linear, no bias), max-pool
  3 / stride 1 on the module's *input* followed by a 1x1 conv, depth 6, shortcut after modules 3
  and 6 (``d % 3 == 2``). The paper's *InceptionTime* is an **ensemble of 5** such networks
  (``classifiers/nne.py`` averages their softmax outputs); this module is ONE network (the
  "Inception" rows of ``results-inception-128.csv``); docs/RESULTS.md compares with both.
* FCN and ResNet: Wang, Yan & Oates, "Time series classification from scratch with deep neural
  networks: a strong baseline", IJCNN 2017 (official Keras code
  cauchyturing/UCR_Time_Series_Classification_Deep_Learning_Baseline); the reimplementation of
  hfawaz/dl-4-tsc ``classifiers/fcn.py`` and ``classifiers/resnet.py`` (Ismail Fawaz et al.,
  DMKD 2019), whose published results (``results/results-ucr-128.csv``) docs/RESULTS.md cites,
  is followed layer for layer (convolutions with bias, as Keras' default).

Initialisation as the official Keras code: Glorot-uniform kernels (convolutions and the
classifier) and zero biases; BatchNorm weight 1 and bias 0. Where this differs from Keras:
BatchNorm uses PyTorch's momentum 0.1 and eps 1e-5 (Keras: momentum 0.99, i.e. 0.01 here, and
eps 1e-3); with budgets of a few hundred epochs instead of 1500, the slower Keras running
averages would lag behind the weights at test time. ``norm_kind`` may pick GroupNorm / LayerNorm.
There is no dropout in the official networks: the presets set ``model.dropout=0``.
``use_attention`` is ignored (no attention in these networks).

Variable length (mask)
    With ``mask_channel=True`` the LAST input channel is the observation mask (1 on the series'
    samples, 0 on padding; the data layer appends it, :mod:`imbalance.series_data`), so
    ``in_channels`` counts it and the networks see ``in_channels - 1`` signal channels. The
    networks are then mask-aware: padding is zeroed before every convolution (so a 'same'
    convolution sees exactly the zeros of its own padding), the max-pool branch treats padding
    as -inf, and global average pooling averages over the series' samples only. In eval mode
    the logits of a series therefore do not depend on how much padding follows it
    (``tests/test_tsc_models.py`` pins this). Columns that are padding in every series of the
    batch are cut off first (``trim_padding``), which changes nothing but the cost. In
    training mode BatchNorm's batch statistics include the (zeroed) padding positions.
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .heads import head_linear
from .layers import make_norm
from .model_base import MODELS, SignalModel, pos_int, opt_int

logger = logging.getLogger(__name__)

__all__ = ["TSCModel", "InceptionTime", "FCN", "ResNetTSC", "InceptionModule", "InceptionTimeBackbone",
           "FCNBackbone", "ResNetTSCBackbone", "split_mask_channel", "masked_mean", "trim_padding",
           "glorot_init_"]


# ----------------------------------------------------------------------------- masks
def split_mask_channel(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(signal (B, C-1, L), mask (B, L) bool)`` from an input whose last channel is the mask
    (True where the value is > 0.5, so an amplitude-scaled or slightly noisy mask still reads)."""
    return x[:, :-1], x[:, -1] > 0.5


def trim_padding(x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cut the trailing columns that are padding in every row (at least one column is kept)."""
    cols = mask.any(dim=0)
    if bool(cols.all()):
        return x, mask
    idx = torch.nonzero(cols)
    last = int(idx.max()) + 1 if idx.numel() else 1
    return x[..., :last], mask[:, :last]


def masked_mean(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Global average pooling ``(B, D, L) -> (B, D)``, over the True positions of ``mask``
    ``(B, L)`` only (all positions when None; a row without any True position gives 0)."""
    if mask is None:
        return h.mean(dim=-1)
    m = mask[:, None, :].to(h.dtype)
    return (h * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)


class SameConv1d(nn.Conv1d):
    """A stride-1 convolution whose output has the input's length ('same'): ``(k - 1) // 2``
    zeros on the left and ``k // 2`` on the right, so an even kernel pads one more on the right,
    as Keras' and PyTorch's ``padding='same'`` do. The padding is explicit: PyTorch's own copies
    the input for even kernels with a warning."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True) -> None:
        super().__init__(cin, cout, k, bias=bias)
        self.pad = ((k - 1) // 2, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad) if self.pad != (0, 0) else x)


def _apply_mask(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return h if mask is None else h * mask[:, None, :].to(h.dtype)


def glorot_init_(module: nn.Module) -> None:
    """Keras' defaults on every layer of ``module``: Glorot-uniform weights of convolutions and
    linear layers, zero biases, normalisation layers reset to weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.GroupNorm)):
            m.reset_parameters()


# ----------------------------------------------------------------------------- blocks
class InceptionModule(nn.Module):
    """One Inception module of hfawaz/InceptionTime: bottleneck (1x1, no bias, linear) when the
    input has more than one channel and ``bottleneck > 0``; convolutions of ``kernel_sizes``
    ('same', no bias) on it; max-pool 3/1 on the module input -> 1x1 conv; concatenation of the
    ``len(kernel_sizes) + 1`` branches -> norm -> ReLU."""

    def __init__(self, *, in_channels: int, filters: int, kernel_sizes: Sequence[int], bottleneck: int,
                 norm: str) -> None:
        super().__init__()
        self.bottleneck = (nn.Conv1d(in_channels, bottleneck, 1, bias=False)
                           if bottleneck > 0 and in_channels > 1 else None)
        inner = bottleneck if self.bottleneck is not None else in_channels
        self.convs = nn.ModuleList(SameConv1d(inner, filters, int(k), bias=False)
                                   for k in kernel_sizes)
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.out_channels = filters * (len(kernel_sizes) + 1)
        self.norm = make_norm(norm, self.out_channels)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = self.bottleneck(x) if self.bottleneck is not None else x
        if mask is None:
            p = self.pool(x)
        else:  # padding is -inf for the max (as beyond the ends); padded outputs back to 0
            pad = ~mask[:, None, :]
            p = self.pool(x.masked_fill(pad, float("-inf"))).masked_fill(pad, 0.0)
        h = torch.cat([conv(z) for conv in self.convs] + [self.pool_conv(p)], dim=1)
        return _apply_mask(F.relu(self.norm(h)), mask)


class InceptionTimeBackbone(nn.Module):
    """``depth`` Inception modules with a shortcut (1x1 conv + norm, added, ReLU) after every
    third one (``d % 3 == 2``) from the last shortcut's output; global average pooling."""

    def __init__(self, *, in_channels: int, filters: int, depth: int, kernel_sizes: Sequence[int], bottleneck: int,
                 use_residual: bool, norm: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleDict()
        c, res_c = in_channels, in_channels
        for d in range(depth):
            mod = InceptionModule(in_channels=c, filters=filters, kernel_sizes=kernel_sizes, bottleneck=bottleneck,
                                  norm=norm)
            self.blocks.append(mod)
            c = mod.out_channels
            if use_residual and d % 3 == 2:
                self.shortcuts[str(d)] = nn.Sequential(nn.Conv1d(res_c, c, 1, bias=False), make_norm(norm, c))
                res_c = c
        self.out_dim = c

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        res = x
        for d, mod in enumerate(self.blocks):
            x = mod(x, mask)
            key = str(d)
            if key in self.shortcuts:
                x = _apply_mask(F.relu(x + self.shortcuts[key](res)), mask)
                res = x
        return masked_mean(x, mask)


class ConvNormAct(nn.Module):
    """conv ('same', with bias as Keras' default) -> norm -> ReLU (``act``) -> mask."""

    def __init__(self, cin: int, cout: int, k: int, norm: str, act: bool = True) -> None:
        super().__init__()
        self.conv = SameConv1d(cin, cout, k)
        self.norm = make_norm(norm, cout)
        self.act = act

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm(self.conv(x))
        return _apply_mask(F.relu(h) if self.act else h, mask)


FCN_PLAN = ((1, 8), (2, 5), (1, 3))
"""FCN's blocks: (channels as a multiple of ``width``, kernel)."""


class FCNBackbone(nn.Module):
    """Wang et al.'s FCN: the first ``depth`` blocks of [conv(width*m, k) - norm - ReLU] for
    (m, k) in (1, 8), (2, 5), (1, 3); global average pooling."""

    def __init__(self, *, in_channels: int, width: int, depth: int, norm: str) -> None:
        super().__init__()
        blocks: List[nn.Module] = []
        c = in_channels
        for mult, k in FCN_PLAN[:depth]:
            blocks.append(ConvNormAct(c, width * mult, k, norm))
            c = width * mult
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = c

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for b in self.blocks:
            x = b(x, mask)
        return masked_mean(x, mask)


class ResidualBlockTSC(nn.Module):
    """conv k8 - norm - ReLU - conv k5 - norm - ReLU - conv k3 - norm, plus the shortcut (1x1 conv
    with bias + norm when the channel count changes, else norm alone, as dl-4-tsc), ReLU."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvNormAct(cin, cout, 8, norm), ConvNormAct(cout, cout, 5, norm),
                                    ConvNormAct(cout, cout, 3, norm, act=False)])
        self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1), make_norm(norm, cout)) if cin != cout \
            else make_norm(norm, cout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = conv(h, mask)
        return _apply_mask(F.relu(h + self.shortcut(x)), mask)


class ResNetTSCBackbone(nn.Module):
    """``depth`` residual blocks with ``width`` channels in the first and ``2 * width`` after
    (64-128-128 at full size); global average pooling."""

    def __init__(self, *, in_channels: int, width: int, depth: int, norm: str) -> None:
        super().__init__()
        blocks: List[nn.Module] = []
        c = in_channels
        for i in range(depth):
            out = width if i == 0 else 2 * width
            blocks.append(ResidualBlockTSC(c, out, norm))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = c

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for b in self.blocks:
            x = b(x, mask)
        return masked_mean(x, mask)


# ----------------------------------------------------------------------------- models
class TSCModel(SignalModel):
    """Base of the time-series classifiers: the mask channel, Keras' initialisation, the trunk
    called with the mask. ``mask_aware``: the data layer may append a mask channel for it."""

    mask_aware = True

    def _setup_mask(self, mask_channel: Any, trim: Any) -> int:
        """Store the mask options; return the number of signal channels."""
        if not isinstance(mask_channel, bool):
            raise ConfigError(f"{type(self).__name__}: mask_channel must be true or false, got {mask_channel!r}")
        if not isinstance(trim, bool):
            raise ConfigError(f"{type(self).__name__}: trim_padding must be true or false, got {trim!r}")
        self.mask_channel = mask_channel
        self.trim_padding = trim
        signal = self.in_channels - (1 if mask_channel else 0)
        if signal < 1:
            raise ConfigError(f"{type(self).__name__}: mask_channel=true needs in_channels >= 2 (the signal "
                              f"channels and the mask), got {self.in_channels}")
        return signal

    def init_weights(self) -> None:
        """Keras' defaults, as the official code (module docstring)."""
        glorot_init_(self.trunk)
        lin = head_linear(self.classifier)
        if lin is not None:
            glorot_init_(lin)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        mask = None
        if self.mask_channel:
            x, mask = split_mask_channel(x)
            if self.trim_padding:
                x, mask = trim_padding(x, mask)
            x = _apply_mask(x, mask)
        return self.dropout(self.trunk(x, mask))


@MODELS.register("InceptionTime", aliases=("inception_time", "inception"))
class InceptionTime(TSCModel):
    """One Inception network of InceptionTime (Ismail Fawaz et al. 2020; module docstring):
    ``depth`` (6) modules of ``width`` (32) filters per branch, kernels ``kernel_size // 2**i``
    for i = 0, 1, 2 (40, 20, 10), ``bottleneck_size`` (32; 0: none), a shortcut every 3 modules
    (``use_residual``), global average pooling, dropout, linear ``4 * width`` -> K. The paper's
    InceptionTime is an ensemble of 5 of these (not built here)."""

    def __init__(self, *, num_classes: int, in_channels: int = 1, dropout_rate: float = 0.0,
                 use_attention: bool = False, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, kernel_size: int = 40, bottleneck_size: int = 32,
                 use_residual: bool = True, mask_channel: bool = False, trim_padding: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                         norm_kind=norm_kind)
        n = type(self).__name__
        signal = self._setup_mask(mask_channel, trim_padding)
        k = pos_int(n, "kernel_size", kernel_size, 4)
        if not isinstance(use_residual, bool):
            raise ConfigError(f"{n}: use_residual must be true or false, got {use_residual!r}")
        self.kernel_sizes = [k // 2 ** i for i in range(3)]
        self._finish(InceptionTimeBackbone(
            in_channels=signal, filters=opt_int(n, "width", width, 32),
            depth=opt_int(n, "depth", depth, 6), kernel_sizes=self.kernel_sizes,
            bottleneck=pos_int(n, "bottleneck_size", bottleneck_size, 0), use_residual=use_residual,
            norm=self.norm_kind))


@MODELS.register("FCN", aliases=("fcn",))
class FCN(TSCModel):
    """Fully convolutional network of Wang et al. (2017): blocks of ``width``, ``2 * width``,
    ``width`` channels (128-256-128) with kernels 8, 5, 3 (``depth`` = how many, 1..3), global
    average pooling, dropout, linear -> K."""

    def __init__(self, *, num_classes: int, in_channels: int = 1, dropout_rate: float = 0.0,
                 use_attention: bool = False, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, mask_channel: bool = False, trim_padding: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                         norm_kind=norm_kind)
        n = type(self).__name__
        signal = self._setup_mask(mask_channel, trim_padding)
        self._finish(FCNBackbone(in_channels=signal, width=opt_int(n, "width", width, 128),
                                 depth=opt_int(n, "depth", depth, 3, 1, len(FCN_PLAN)), norm=self.norm_kind))


@MODELS.register("ResNetTSC", aliases=("resnet_tsc",))
class ResNetTSC(TSCModel):
    """ResNet of Wang et al. (2017) as dl-4-tsc builds it: ``depth`` (3) residual blocks of
    kernels 8-5-3, ``width`` (64) channels in the first block and ``2 * width`` after, global
    average pooling, dropout, linear -> K."""

    def __init__(self, *, num_classes: int, in_channels: int = 1, dropout_rate: float = 0.0,
                 use_attention: bool = False, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, mask_channel: bool = False, trim_padding: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                         norm_kind=norm_kind)
        n = type(self).__name__
        signal = self._setup_mask(mask_channel, trim_padding)
        self._finish(ResNetTSCBackbone(in_channels=signal, width=opt_int(n, "width", width, 64),
                                       depth=opt_int(n, "depth", depth, 3), norm=self.norm_kind))
