"""Model zoo for 1-D signals (registry ``MODELS``) and the imbalance-aware model utilities.

Contract (DESIGN.md): every model takes ``x`` of shape ``(B, C, L)`` with any ``C >= 1``
(``in_channels``: 2 for I/Q, 1 for real signals, 12 for multichannel sensors) and any
``L >= 16`` and has

* ``forward_features(x) -> (B, D)``: the backbone, global pooling and dropout;
* ``classifier``: the head, ``nn.Linear(D, K)`` unless :func:`swap_classifier` replaced it;
* ``forward(x) == classifier(forward_features(x))`` (exactly, in eval mode);
* attributes ``in_channels``, ``num_classes``, ``feature_dim`` (= D) and ``min_length`` (16).

The seven models SEED.md names are, with ``width=None, depth=None`` (config ``model.width`` /
``model.depth: null``), exactly the networks of the codebase SEED.md documents
(``ORIGIN_MODELS.md``): same layers, kernels, strides, paddings, pools, channel attention,
global pooling and initialisation. Two things are generalised, and neither changes a network
on the seed's data (2 I/Q channels, 4800 samples):

* any ``C``: the first convolution (and the gate's) takes ``C`` channels instead of 2; the
  spectral front end treats 2 channels as I + jQ and other counts as real signals;
* any ``L >= 16``: a down-sampling step (max-pool or strided convolution) is skipped when it
  would leave fewer than ``4`` samples (:data:`MIN_POOLED_LENGTH`), so a 16-sample sensor
  signal and a 4800-sample burst go through the same network. At L = 4800 nothing is skipped.

Models (``model.name``); params and GFLOPs per sample at 10 classes, 2 x 4800 input, full size:

=========================  ===================================================================  =======  ======
name                       architecture at full size (``width``/``depth`` null)                  params  GFLOPs
=========================  ===================================================================  =======  ======
ConvNetADSB                8 blocks, 50-100-150-200-300-350-350-350 channels, kernels            5.85 M    0.76
                           15-11-7-5-5-5-7-7 (blocks 4-8: two convs), max-pools 4-3-2-2-2-2-2,
                           channel attention, global max pool (:class:`ConvNetADSBBackbone`)
ResNet1D                   stem (conv k7 s2, max-pool 3/2) + 4 stages x 2 basic blocks,          0.97 M    0.41
                           32-64-128-256 channels, strides 1-2-2-2, global average pool
DilatedTCN                 conv k3 projection + 4 residual levels, 64 channels, dilation         0.10 M    0.95
                           1-2-4-8, no down-sampling, global average pool
FrequencyDomainExpert      spectral front end (Hann, FFT, log(1 + |X|^2)) -> ConvNetADSB         5.85 M    0.76
ResNetFrequencyExpert      spectral front end -> ResNet1D with base 16                           0.25 M    0.10
MixtureOfExpertsConvNet    softmax gate over ConvNetADSB, DilatedTCN and                         11.8 M    2.47
                           FrequencyDomainExpert, logits mixed per sample
                           (:class:`MixtureOfExperts`)
MixtureOfExpertsResNet     softmax gate over ResNet1D (base 32), DilatedTCN and                  1.33 M    1.46
                           ResNetFrequencyExpert (base 16)
ConvNetSE                  not an origin model: this project's earlier ConvNetADSB, ``depth``    2.70 M    3.52
                           blocks [conv k3 - norm - ReLU - SE - max-pool /2] of ``width``
                           channels (8 x 350), global average pool
=========================  ===================================================================  =======  ======

At the CPU demo's size (``width=32, depth=4``, 2 x 1024 samples, 10 classes) ConvNetADSB has
14.0 k parameters and 2.4 MFLOPs per sample, ConvNetSE 11.2 k and 5.9 MFLOPs; one fp32 forward +
backward of a batch of 128 takes about 4x less time with ConvNetADSB (1 thread; bench_models.py).

``width`` and ``depth`` (``None``: the full size above) scale the origin plans:

* ConvNetADSB / FrequencyDomainExpert: ``depth`` = how many of the 8 blocks (1..8, the first
  ones; the last block built has no pool, as block 8 has none: a max-pool right before the
  global max pool changes nothing but the trailing samples it truncates); ``width`` = the
  widest channel count of the network built (350 at full size), every block's channels scaled
  by the same factor (``round(c * width / widest)``, at least 1). E.g. ``width=32, depth=4``:
  blocks 8-16-24-32 ch (block 4 has two convolutions), 1 + 1 + 1 + 2 convolutions.
* ResNet1D / ResNetFrequencyExpert: ``width`` = the base channel count (32 / 16; stage ``i``
  has ``width * 2**i``), ``depth`` = the number of stages (2..5; 4 at full size; stages after
  the first stride 2); ``blocks_per_stage`` (2) is a model option.
* DilatedTCN: ``width`` = channels (64), ``depth`` = residual levels (4; dilation ``2**i``).
* Mixtures of experts: ``width``/``depth`` are passed to every expert in that expert's own
  meaning (e.g. ``width=32``: ConvNet experts 32 ch at the widest, TCN 32 ch, ResNet bases 32);
  ``None`` keeps every expert at its origin size.

Normalisation (``norm_kind``): ``bn`` BatchNorm1d; ``gn`` GroupNorm (the largest divisor of the
channel count that is <= 32 and leaves >= 4 channels per group; the origin uses
``min(8, C)`` groups); ``ln`` GroupNorm with one group (layer norm over channels and time of
each sample); ``auto``: GroupNorm when the per-device batch is known and smaller than
:data:`AUTO_GN_BATCH` (16; batch statistics of fewer samples are too noisy, Wu & He 2018), else
BatchNorm (the origin's ``auto`` is always BatchNorm).
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .heads import HEADS, CosineMarginClassifier, head_linear  # noqa: F401  (public here too)
from .complexity import format_complexity, model_complexity  # noqa: F401  (public here too)
from .initialization import INITS, init_model_for_imbalanced  # noqa: F401  (public here too)
from .layers import (  # noqa: F401  (the blocks are public here too)
    AUTO_GN_BATCH,
    CONVNET_ADSB_PLAN,
    AdaptiveDownsample,
    ChannelAttention,
    ConvNetADSBBackbone,
    ConvTrunk,
    DilatedTCNBackbone,
    FrequencyBackbone,
    MIN_LENGTH,
    MIN_POOLED_LENGTH,
    NORM_KINDS,
    ResNet1DBackbone,
    SPECTRAL_MODES,
    SPECTRAL_WINDOWS,
    SkipMaxPool1d,
    SkipStrideConv1d,
    SpectralFrontEnd,
    SqueezeExcite,
    convnet_adsb_plan,
    group_norm_groups,
    kaiming_fan_out_,
    make_norm,
    normal_linear_,
    resolve_norm_kind,
)
from .model_base import MODELS, SignalModel  # noqa: F401  (public here too)
from .model_base import head_init_ as _head_init_, opt_int as _opt_int, pos_int as _pos_int

logger = logging.getLogger(__name__)


def _convnet_adsb(n: str, in_channels: int, width: Any, depth: Any, norm: str, attention: bool
                  ) -> ConvNetADSBBackbone:
    return ConvNetADSBBackbone(in_channels=in_channels, width=_opt_int(n, "width", width, None),
                               depth=_opt_int(n, "depth", depth, None, 1, len(CONVNET_ADSB_PLAN)),
                               norm=norm, attention=attention)


def _resnet1d(n: str, in_channels: int, width: Any, depth: Any, base: int, blocks_per_stage: Any,
              norm: str, attention: bool) -> ResNet1DBackbone:
    return ResNet1DBackbone(in_channels=in_channels, base=_opt_int(n, "width", width, base),
                            stages=_opt_int(n, "depth (number of stages)", depth, 4, 2, 5),
                            blocks_per_stage=_pos_int(n, "blocks_per_stage", blocks_per_stage),
                            norm=norm, attention=attention)


def _tcn(n: str, in_channels: int, width: Any, depth: Any, norm: str, attention: bool) -> DilatedTCNBackbone:
    return DilatedTCNBackbone(in_channels=in_channels, channels=_opt_int(n, "width", width, 64),
                              levels=_opt_int(n, "depth (number of levels)", depth, 4), norm=norm,
                              attention=attention)


# ----------------------------------------------------------------------------- models
@MODELS.register("ConvNetADSB", aliases=("convnet", "ConvNet"))
class ConvNetADSB(SignalModel):
    """Deep ConvNet for ADS-B emitter identification, the origin codebase's network (SEED: "8
    blocks, 350 channels"): :class:`ConvNetADSBBackbone` (50-100-150-200-300-350-350-350
    channels, kernels 15-11-7-5-5-5-7-7, max-pools 4-3-2-2-2-2-2, CBAM channel attention once
    after block 8 when ``use_attention``, global max pooling), dropout, linear 350 -> K.
    5.85 M parameters and 0.76 GFLOPs per 2 x 4800 sample at 10 classes. PyTorch's default
    initialisation, as the origin. ``width``/``depth``: see the module docstring."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        self._finish(_convnet_adsb(type(self).__name__, self.in_channels, width, depth, self.norm_kind,
                                   use_attention))


@MODELS.register("ConvNetSE", aliases=("convnet_se",))
class ConvNetSE(SignalModel):
    """This project's earlier "ConvNetADSB" (not an origin network), kept under its own name for
    results and checkpoints made with it: ``depth`` blocks (default 8) of [conv(k) - norm - ReLU -
    SE (use_attention) - max-pool /2 (adaptive)], all ``width`` channels wide (default 350);
    global average pooling; dropout; linear head. Where it differs from the origin ConvNetADSB:
    fewer parameters (2.70 M vs 5.85 M at full size) but 4.6x the FLOPs (3.52 vs 0.76 G per
    2 x 4800 sample: 350 channels while the signal is still long); at the demo size (width 32,
    depth 4, 1024 samples) 11.2 k vs 14.0 k parameters, 5.9 vs 2.4 MFLOPs, about 4x slower per
    training step, and lower test mAcc on the built-in data after 30 epochs (41.2 / 43.7% vs
    50.2 / 62.7%, seeds 42 / 43)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, kernel_size: int = 3) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        self._finish(ConvTrunk(in_channels=self.in_channels, width=_opt_int(n, "width", width, 350),
                               depth=_opt_int(n, "depth", depth, 8),
                               kernel_size=_pos_int(n, "kernel_size", kernel_size), norm=self.norm_kind,
                               attention=use_attention))


@MODELS.register("ResNet1D", aliases=("resnet1d", "resnet"))
class ResNet1D(SignalModel):
    """The origin's 1-D ResNet (He et al. 2016 basic blocks): :class:`ResNet1DBackbone` with base
    32 and 4 stages of 2 blocks (32-64-128-256 channels, strides 1-2-2-2), CBAM channel attention
    when ``use_attention``, global average pooling, dropout, linear 256 -> K. Origin
    initialisation: Kaiming normal (fan_out, ReLU) convolutions, linear N(0, 0.01), bias 0.
    ``width`` = base, ``depth`` = stages (2..5)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, blocks_per_stage: int = 2) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        self._finish(_resnet1d(type(self).__name__, self.in_channels, width, depth, 32, blocks_per_stage,
                               self.norm_kind, use_attention))


@MODELS.register("DilatedTCN", aliases=("tcn", "TCN"))
class DilatedTCN(SignalModel):
    """The origin's dilated temporal convolutional network (non-causal, Bai et al. 2018 style
    residual levels): :class:`DilatedTCNBackbone` with 64 channels and 4 levels (dilation
    1, 2, 4, 8), CBAM channel attention when ``use_attention``, global average pooling,
    dropout, linear 64 -> K. Same initialisation as :class:`ResNet1D`. ``width`` = channels,
    ``depth`` = levels. No down-sampling, so its cost grows with L (0.95 GFLOPs at 4800)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        self._finish(_tcn(type(self).__name__, self.in_channels, width, depth, self.norm_kind, use_attention))


@MODELS.register("FrequencyDomainExpert", aliases=("freq_convnet",))
class FrequencyDomainExpert(SignalModel):
    """The origin's frequency-domain expert: :class:`SpectralFrontEnd` (``spectral_mode``
    powerlog / ri / magphase, ``spectral_window`` hann / null) -> :class:`ConvNetADSBBackbone`
    (the full ConvNetADSB at width/depth null) -> dropout -> linear 350 -> K."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, spectral_mode: str = "powerlog",
                 spectral_window: Optional[str] = "hann", complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        spec = SpectralFrontEnd(in_channels=self.in_channels, mode=spectral_mode, window=spectral_window,
                                complex_iq=complex_iq)
        self._finish(FrequencyBackbone(spec=spec, backbone=_convnet_adsb(
            type(self).__name__, spec.out_channels, width, depth, self.norm_kind, use_attention)))


@MODELS.register("ResNetFrequencyExpert", aliases=("freq_resnet",))
class ResNetFrequencyExpert(SignalModel):
    """The origin's frequency-domain ResNet expert: :class:`SpectralFrontEnd` ->
    :class:`ResNet1DBackbone` with base 16 (16-32-64-128 channels) -> dropout -> linear
    128 -> K, initialised as :class:`ResNet1D`. (The origin fixes this expert's dropout at 0.1;
    here it is ``dropout_rate``, 0.1 by default.)"""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, blocks_per_stage: int = 2, spectral_mode: str = "powerlog",
                 spectral_window: Optional[str] = "hann", complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        spec = SpectralFrontEnd(in_channels=self.in_channels, mode=spectral_mode, window=spectral_window,
                                complex_iq=complex_iq)
        self._finish(FrequencyBackbone(spec=spec, backbone=_resnet1d(
            type(self).__name__, spec.out_channels, width, depth, 16, blocks_per_stage, self.norm_kind,
            use_attention)))


# ----------------------------------------------------------------------------- mixtures of experts
class MoEGate(nn.Module):
    """The origin's gating network: ``gate_stem`` = conv(C -> 16, k7, stride 2, padding 3) - norm
    - ReLU - max-pool(3, stride 2, padding 1) - conv(16 -> 32, k3, stride 2, padding 1) - norm -
    ReLU - global average pool; ``gate_mlp`` = linear 32 -> ``hidden`` - ReLU - dropout - linear
    ``hidden`` -> E; softmax (in float32). Initialised as the origin: Kaiming normal (fan_out)
    convolutions, N(0, 0.01) linear weights, zero biases."""

    def __init__(self, *, in_channels: int, num_experts: int, hidden: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.gate_stem = nn.Sequential(
            SkipStrideConv1d(in_channels, 16, 7, stride=2, padding=3, bias=False), make_norm(norm, 16),
            nn.ReLU(inplace=True), SkipMaxPool1d(3, stride=2, padding=1),
            SkipStrideConv1d(16, 32, 3, stride=2, padding=1, bias=False), make_norm(norm, 32),
            nn.ReLU(inplace=True))
        self.gate_mlp = nn.Sequential(nn.Linear(32, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                      nn.Linear(hidden, num_experts))
        self.init_weights()

    def init_weights(self) -> None:
        kaiming_fan_out_(self.gate_stem)
        normal_linear_(self.gate_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate_mlp(self.gate_stem(x).mean(dim=-1)).float(), dim=-1)


class MixtureOfExperts(SignalModel):
    """Base of the origin's mixtures of experts (Jacobs et al. 1991, soft gating): E expert
    backbones (``experts``), each with its own head in the origin, and a per-sample softmax gate
    (:class:`MoEGate`); the origin's output is ``sum_e g_e (W_e f_e + b_e)`` with ``f_e`` the
    expert's pooled features after its dropout.

    To keep one ``classifier`` (so that cRT, tau-norm, swap_classifier and t-SNE work), the
    mixture is written as one linear layer over

        ``forward_features(x) = [g_1 f_1, ..., g_E f_E, g_1, ..., g_E]``  (``feature_dim = sum D_e + E``)

    ``classifier = [W_1 .. W_E | c_1 .. c_E] + b``, whose output is ``sum_e g_e (W_e f_e + c_e) + b
    = sum_e g_e (W_e f_e + c_e + b)`` because the gate sums to 1: exactly the origin's mixture
    with expert biases ``b_e = c_e + b`` (one redundant bias vector). At construction (and with
    ``init='default'``) the columns of expert ``e`` are initialised as that expert's origin head
    (N(0, 0.01) and 0 for ResNet1D / DilatedTCN experts, PyTorch's default for ConvNetADSB
    experts; the bias columns take the expert's bias init) and ``b`` is 0. A head swapped in
    by :func:`swap_classifier` (e.g. cosine) sees the same features.

    Load balance: with ``load_balance_weight = w > 0`` every forward in training mode with
    gradients stores ``w * sum_e p_e log p_e`` (``p`` = the batch-mean gate; the negative
    entropy, minimal when the experts are used equally; eps 1e-8 as the origin), which
    :meth:`aux_loss` returns once; the training loop adds it to the loss (the origin's example
    uses ``w = 5e-3``; 0, the default, turns it off). ``last_gate`` holds the last gate
    weights (detached, ``(B, E)``).
    """

    def _build(self, experts: Dict[str, nn.Module], *, gate_hidden: Any, gate_dropout: Any,
               load_balance_weight: Any) -> None:
        n = type(self).__name__
        if not (isinstance(gate_dropout, (int, float)) and 0.0 <= float(gate_dropout) < 1.0):
            raise ConfigError(f"{n}: gate_dropout must be in [0, 1), got {gate_dropout!r}")
        if not (isinstance(load_balance_weight, (int, float)) and not isinstance(load_balance_weight, bool)
                and math.isfinite(load_balance_weight) and load_balance_weight >= 0):
            raise ConfigError(f"{n}: load_balance_weight must be a number >= 0, got {load_balance_weight!r}")
        self.names = list(experts)
        self.experts = nn.ModuleDict(experts)
        self.gate = MoEGate(in_channels=self.in_channels, num_experts=len(experts),
                            hidden=_pos_int(n, "gate_hidden", gate_hidden), dropout=float(gate_dropout),
                            norm=self.norm_kind)
        self.load_balance_weight = float(load_balance_weight)
        self.expert_dims = [int(m.out_dim) for m in experts.values()]
        self.last_gate: Optional[torch.Tensor] = None
        self._aux: Optional[torch.Tensor] = None
        self._finish(None, feature_dim=sum(self.expert_dims) + len(experts))

    def init_weights(self) -> None:
        for m in self.experts.values():
            m.init_weights()
        self.gate.init_weights()
        lin = head_linear(self.classifier)
        if lin is None or lin.weight.shape[1] != self.feature_dim:
            return
        start, total = 0, sum(self.expert_dims)
        for i, (name, dim) in enumerate(zip(self.names, self.expert_dims)):
            _head_init_(lin, self.experts[name].head_init, slice(start, start + dim), bias_column=total + i)
            start += dim
        if lin.bias is not None:
            with torch.no_grad():
                lin.bias.zero_()

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's softmax weights ``(B, E)`` for ``x`` (float32)."""
        return self.gate(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g = self.gate(x)
        self.last_gate = g.detach()
        if self.training and self.load_balance_weight > 0 and torch.is_grad_enabled():
            p = g.mean(dim=0)
            self._aux = self.load_balance_weight * (p * (p + 1e-8).log()).sum()
        parts = [g[:, i:i + 1] * self.dropout(self.experts[k](x)) for i, k in enumerate(self.names)]
        return torch.cat(parts + [g.to(parts[0].dtype)], dim=1)

    def aux_loss(self) -> torch.Tensor:
        """The load-balance term of the last training forward (0 when off or already taken);
        the training loop adds it to the loss once per forward."""
        aux, self._aux = self._aux, None
        if aux is None:
            return torch.zeros((), device=self._device())
        return aux

    def _device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")


def _check_experts(name: str, experts: Sequence[str], valid: Sequence[str]) -> List[str]:
    if isinstance(experts, str):
        experts = [experts]
    experts = list(experts)
    bad = [e for e in experts if e not in valid]
    if not experts or bad or len(set(experts)) != len(experts):
        raise ConfigError(f"{name}: experts must be distinct names among {', '.join(valid)}; got {experts}")
    return experts


@MODELS.register("MixtureOfExpertsConvNet", aliases=("moe_convnet", "MoEConvNet"))
class MixtureOfExpertsConvNet(MixtureOfExperts):
    """The origin's MoE over a time-domain ConvNetADSB ('time'), a DilatedTCN with 64 channels
    and 4 levels ('tcn') and a FrequencyDomainExpert ('freq', powerlog, Hann), mixed by
    :class:`MoEGate` (see :class:`MixtureOfExperts` for the single-classifier form and the
    load-balance term). ``experts`` picks a subset (in this order); ``width``/``depth`` go to
    every expert in its own meaning."""

    EXPERTS = ("time", "tcn", "freq")

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, experts: Sequence[str] = ("time", "tcn", "freq"),
                 gate_hidden: int = 64, gate_dropout: float = 0.1, load_balance_weight: float = 0.0,
                 spectral_mode: str = "powerlog", spectral_window: Optional[str] = "hann",
                 complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        c, norm, att = self.in_channels, self.norm_kind, use_attention
        built: Dict[str, nn.Module] = {}
        for e in _check_experts(n, experts, self.EXPERTS):
            if e == "time":
                built[e] = _convnet_adsb(n, c, width, depth, norm, att)
            elif e == "tcn":
                built[e] = _tcn(n, c, width, depth, norm, att)
            else:
                spec = SpectralFrontEnd(in_channels=c, mode=spectral_mode, window=spectral_window,
                                        complex_iq=complex_iq)
                built[e] = FrequencyBackbone(spec=spec, backbone=_convnet_adsb(
                    n, spec.out_channels, width, depth, norm, att))
        self._build(built, gate_hidden=gate_hidden, gate_dropout=gate_dropout,
                    load_balance_weight=load_balance_weight)


@MODELS.register("MixtureOfExpertsResNet", aliases=("moe_resnet", "MoEResNet"))
class MixtureOfExpertsResNet(MixtureOfExperts):
    """The origin's ResNet-style MoE over a time-domain ResNet1D with base 32 ('time'), a
    DilatedTCN with 64 channels and 4 levels ('tcn') and a ResNetFrequencyExpert with base 16
    ('freq'), mixed by :class:`MoEGate` (see :class:`MixtureOfExperts`). ``width``/``depth`` go
    to every expert in its own meaning (ResNet base and stages 2..5, TCN channels and levels)."""

    EXPERTS = ("time", "tcn", "freq")

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "bn", width: Optional[int] = None,
                 depth: Optional[int] = None, experts: Sequence[str] = ("time", "tcn", "freq"),
                 blocks_per_stage: int = 2, gate_hidden: int = 64, gate_dropout: float = 0.1,
                 load_balance_weight: float = 0.0, spectral_mode: str = "powerlog",
                 spectral_window: Optional[str] = "hann", complex_iq: bool = True) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         dropout_rate=dropout_rate, norm_kind=norm_kind)
        n = type(self).__name__
        c, norm, att = self.in_channels, self.norm_kind, use_attention
        built: Dict[str, nn.Module] = {}
        for e in _check_experts(n, experts, self.EXPERTS):
            if e == "time":
                built[e] = _resnet1d(n, c, width, depth, 32, blocks_per_stage, norm, att)
            elif e == "tcn":
                built[e] = _tcn(n, c, width, depth, norm, att)
            else:
                spec = SpectralFrontEnd(in_channels=c, mode=spectral_mode, window=spectral_window,
                                        complex_iq=complex_iq)
                built[e] = FrequencyBackbone(spec=spec, backbone=_resnet1d(
                    n, spec.out_channels, width, depth, 16, blocks_per_stage, norm, att))
        self._build(built, gate_hidden=gate_hidden, gate_dropout=gate_dropout,
                    load_balance_weight=load_balance_weight)


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

    ``width``/``depth`` ``None`` give the seed's full-size architecture, exactly the origin
    codebase's network (module docstring; ORIGIN_MODELS.md). ``norm_kind='auto'``
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


__all__ = [
    "MODELS", "HEADS", "INITS", "MIN_LENGTH", "MIN_POOLED_LENGTH", "AUTO_GN_BATCH", "NORM_KINDS",
    "SPECTRAL_MODES", "CONVNET_ADSB_PLAN", "convnet_adsb_plan",
    "create_model", "swap_classifier", "init_model_for_imbalanced", "model_complexity",
    "format_complexity", "model_options", "resolve_norm_kind", "make_norm", "group_norm_groups",
    "SignalModel", "ConvNetADSB", "ConvNetSE", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert",
    "ResNetFrequencyExpert", "MixtureOfExperts", "MixtureOfExpertsConvNet", "MixtureOfExpertsResNet",
    "ConvNetADSBBackbone", "ResNet1DBackbone", "DilatedTCNBackbone", "FrequencyBackbone", "MoEGate",
    "ChannelAttention", "SqueezeExcite", "AdaptiveDownsample", "SkipMaxPool1d", "SkipStrideConv1d",
    "SpectralFrontEnd", "SignalTransformer", "ConvTransformer",
]


# ----------------------------------------------------------------------------- other families
# Registered into MODELS by their own modules, which import model_base (not this module).
from . import tsc_models  # noqa: E402,F401  (InceptionTime, FCN, ResNetTSC)
from .transformers import ConvTransformer, SignalTransformer  # noqa: E402,F401  (public here too)
