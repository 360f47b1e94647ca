"""Attention models for 1-D signals: :class:`SignalTransformer` and :class:`ConvTransformer`.

Both follow the zoo's contract (:class:`imbalance.model_base.SignalModel`): any ``C >= 1``, any
``L >= 16``, ``forward_features(x) -> (B, D)``, a ``classifier`` head, so every head, stage
(cRT, fine-tuning, LWS), tau-norm, t-SNE and :func:`imbalance.complexity.model_complexity` work
on them. They register into :data:`imbalance.model_base.MODELS` (``model.name``).

``SignalTransformer`` (a ViT for signals, Dosovitskiy et al. 2021; PatchTST-style patching, Nie
et al. 2023): the signal is cut into patches of ``patch_length`` samples every ``patch_stride``
samples (a strided ``Conv1d``, the usual patch embedding; the last patch is completed with zeros
so that no sample is dropped), positions are added, and ``depth`` pre-norm encoder blocks
(``x + MHSA(LN(x))``, ``x + MLP(LN(x))``, GELU MLP of ``mlp_ratio * D``) run on the tokens, with
a final LayerNorm. Pooling: ``mean`` over the tokens or ``cls`` (a learned class token, ViT).

``ConvTransformer``: a convolutional stem of ``stem_layers`` blocks [Conv1d(k=``stem_kernel``,
stride 2) - LayerNorm over channels - GELU] (channels ramp up to ``D``: ``D / 2**(n-1-i)``) that
down-samples by ``2**stem_layers`` (16 by default: 4800 samples -> 300 tokens), then the same
encoder. The usual choice for long raw I/Q signals, where one linear patch projection sees too
little (Xiao et al. 2021, "Early convolutions help transformers see better"; ConvTran, Foumani et
al. 2023, for time series).

Attention is :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels where the
device has them). Sizes by ``model.width`` (``D``) / ``model.depth`` (blocks), heads by
``num_heads`` (default ``D // 32``, at least 1):

========  =====  =====  =====  ==========================================================
size      width  depth  heads  use
========  =====  =====  =====  ==========================================================
tiny         64      2      2  CPU experiments
small       128      4      4
base        256      6      8  ``width``/``depth`` null (the full size)
========  =====  =====  =====  ==========================================================

Positions (``positions``): ``learnable`` (a table of ``num_positions`` vectors, trunc-normal
0.02) or ``sinusoidal`` (Vaswani et al. 2017, fixed). They are ABSOLUTE: token ``i`` gets
position ``i`` whatever the signal's length, so a short signal uses the first rows of the table.
A signal with more tokens than the table (learnable) takes the table linearly interpolated to
its token count (as ViT resamples its position grid for a larger image; exact ``F.interpolate``
``mode='linear', align_corners=False``); sinusoidal positions exist for any index.

Variable length and padding: ``forward(x, lengths=None)``. ``lengths`` (B,) gives each signal's
valid sample count in a zero- or otherwise-padded batch; samples past it are zeroed, tokens that
hold none of the signal are masked out of attention (a boolean ``attn_mask``) and out of mean
pooling, the stem's feature maps are zeroed past each layer's valid length, and the positions
(and their interpolation) follow each signal's own token count. A padded signal's output then
equals the unpadded signal's output (up to float rounding of the kernels), in eval mode. The
stem uses a LayerNorm over channels at each time step (not BatchNorm or GroupNorm, whose batch or
time statistics would make an output depend on the padding), so ``norm_kind`` and
``use_attention`` (channel attention; the encoder is attention already) are not used.

Why no graph neural network: a GNN classifies nodes or graphs whose edges carry information
(sensor networks, molecules, meshes). One burst of a 1-D signal has no such graph: the only
structure is the time axis, a chain on which a GNN's message passing is a 1-D convolution with
a kernel of 3 (a TCN does it better), and a fully connected graph over time steps with learned
edge weights is self-attention, i.e. these transformers. A graph becomes meaningful only across
signals (e.g. receivers of a network, or a k-NN graph between samples), which is a different
task from classifying one signal.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError
from .model_base import MODELS, SignalModel, opt_int, pos_int

__all__ = [
    "SignalTransformer", "ConvTransformer", "TransformerTrunk", "EncoderBlock", "PatchEmbedding",
    "ConvStem", "ChannelLayerNorm", "sinusoidal_positions", "interpolate_positions", "SIZES",
    "POSITIONS", "POOLINGS",
]

#: width, depth of the named sizes (``base`` is what ``width``/``depth`` null build).
SIZES = {"tiny": (64, 2), "small": (128, 4), "base": (256, 6)}
POSITIONS = ("learnable", "sinusoidal")
POOLINGS = ("cls", "mean")
HEAD_DIM = 32  # default num_heads = width // HEAD_DIM


def _choice(name: str, key: str, value: Any, valid: Tuple[str, ...]) -> str:
    v = str(value).lower()
    if v not in valid:
        raise ConfigError(f"{name}: unknown {key} {value!r}; valid: {', '.join(valid)}")
    return v


def _ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: mlp_ratio must be a number > 0, got {value!r}")
    return float(value)


def check_lengths(lengths: Optional[torch.Tensor], x: torch.Tensor, who: str) -> Optional[torch.Tensor]:
    """``lengths`` as a (B,) int64 tensor on ``x``'s device with values in 1..L (DataError else)."""
    if lengths is None:
        return None
    n = torch.as_tensor(lengths, device=x.device)
    if n.dim() != 1 or n.shape[0] != x.shape[0]:
        raise DataError(f"{who}: lengths must have one entry per signal ({x.shape[0]}), got shape {tuple(n.shape)}")
    if n.is_floating_point() and not bool((n == n.round()).all()):
        raise DataError(f"{who}: lengths must be whole sample counts")
    n = n.long()
    if bool((n < 1).any()) or bool((n > x.shape[-1]).any()):
        raise DataError(f"{who}: lengths must be in 1..{x.shape[-1]} (the padded length), got "
                        f"{int(n.min())}..{int(n.max())}")
    return n


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: position t < lengths[b]."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def sinusoidal_positions(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017: ``PE(p, 2i) = sin(p / 10000**(2i/D))``, ``PE(p, 2i+1) = cos(...)``
    for positions ``index`` (any shape, float), shape ``index.shape + (dim,)``."""
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=index.device, dtype=torch.float32) * 2 / dim)
    angle = index.float()[..., None] * freq
    pe = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)
    return pe[..., :dim]


def interpolate_positions(table: torch.Tensor, counts: torch.Tensor, size: int) -> torch.Tensor:
    """Positions (B, size, D) from a learned ``table`` (T, D) for signals of ``counts`` (B,) tokens.

    A signal with ``n <= T`` tokens takes rows ``0..n-1`` (absolute positions, exactly); one with
    ``n > T`` takes the table linearly resampled to ``n`` rows (``F.interpolate(mode='linear',
    align_corners=False)``: source coordinate ``(i + 0.5) T / n - 0.5``). Rows past ``n`` (padding)
    are filled with clamped values; they are masked out by the caller."""
    t = table.shape[0]
    idx = torch.arange(size, device=table.device, dtype=torch.float64)[None, :]
    n = counts.to(device=table.device, dtype=torch.float64)[:, None]
    coord = torch.where(n > t, (idx + 0.5) * t / n - 0.5, idx).clamp(0, t - 1)
    lo = coord.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (coord - lo).to(table.dtype)[..., None]
    return table[lo] * (1 - w) + table[hi] * w


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, L) map, at every time step separately."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class PatchEmbedding(nn.Module):
    """Patches of ``patch_length`` samples every ``patch_stride`` samples -> (B, N, D) tokens; a
    signal of ``L`` samples gives ``N = 1 + ceil(max(L - P, 0) / S)`` patches (the last one
    completed with zeros)."""

    def __init__(self, *, in_channels: int, dim: int, patch_length: int, patch_stride: int) -> None:
        super().__init__()
        self.patch_length, self.patch_stride = int(patch_length), int(patch_stride)
        self.proj = nn.Conv1d(in_channels, dim, self.patch_length, stride=self.patch_stride)

    def num_tokens(self, length: torch.Tensor) -> torch.Tensor:
        p, s = self.patch_length, self.patch_stride
        return 1 + torch.div((length - p).clamp_min(0) + s - 1, s, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        n = int(self.num_tokens(torch.tensor(x.shape[-1])))
        total = self.patch_length + (n - 1) * self.patch_stride
        if lengths is not None:
            x = x * time_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        if total > x.shape[-1]:
            x = F.pad(x, (0, total - x.shape[-1]))
        tokens = self.proj(x).transpose(1, 2)
        counts = None if lengths is None else self.num_tokens(lengths)
        return tokens, counts

    def init_weights(self) -> None:
        self.proj.reset_parameters()


class ConvStem(nn.Module):
    """``layers`` blocks [Conv1d(k, stride 2, padding k // 2) - ChannelLayerNorm - GELU], channels
    ``dim / 2**(layers-1-i)`` (at least ``min(dim, 16)``); with ``lengths`` every map is zeroed past its valid
    length ``floor((l + 2p - k) / 2) + 1``, as if the signal had not been padded."""

    def __init__(self, *, in_channels: int, dim: int, layers: int, kernel: int) -> None:
        super().__init__()
        self.kernel, self.padding = int(kernel), int(kernel) // 2
        chans = [max(min(dim, 16), dim >> (layers - 1 - i)) for i in range(layers)]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = in_channels
        for out in chans:
            self.convs.append(nn.Conv1d(c, out, self.kernel, stride=2, padding=self.padding))
            self.norms.append(ChannelLayerNorm(out))
            c = out

    def out_length(self, length: torch.Tensor) -> torch.Tensor:
        return torch.div(length + 2 * self.padding - self.kernel, 2, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if lengths is not None:
            x = x * time_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x)))
            if lengths is not None:
                lengths = self.out_length(lengths)
                x = x * time_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        return x.transpose(1, 2), lengths

    def init_weights(self) -> None:
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for norm in self.norms:
            norm.reset_parameters()


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + proj(SDPA(LN(x)))``, ``x + MLP(LN(x))``."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = int(num_heads)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TransformerTrunk(nn.Module):
    """Tokenizer (:class:`PatchEmbedding` or :class:`ConvStem`) -> positions -> [class token] ->
    ``depth`` :class:`EncoderBlock` -> LayerNorm -> pooling; ``forward(x, lengths) -> (B, D)``."""

    head_init = "normal"

    def __init__(self, *, tokenizer: nn.Module, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 positions: str, pooling: str, num_positions: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.out_dim = int(dim)
        self.positions, self.pooling = positions, pooling
        self.pos_table = nn.Parameter(torch.zeros(num_positions, dim)) if positions == "learnable" else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        self.blocks = nn.ModuleList(EncoderBlock(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def init_weights(self) -> None:
        """ViT's (timm): trunc-normal(0.02) linear weights and zero biases, LayerNorm (1, 0),
        trunc-normal(0.02) positions, N(0, 1e-6) class token; the tokenizer's own."""
        self.tokenizer.init_weights()
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        self.norm.reset_parameters()
        if self.pos_table is not None:
            nn.init.trunc_normal_(self.pos_table, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def position_codes(self, counts: Optional[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
        if counts is None:
            counts = torch.tensor([size], device=device)
        if self.pos_table is not None:
            return interpolate_positions(self.pos_table, counts, size)
        return sinusoidal_positions(torch.arange(size, device=device), self.out_dim)[None]

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens, counts = self.tokenizer(x, lengths)
        b, n, _ = tokens.shape
        tokens = tokens + self.position_codes(counts, n, tokens.device).to(tokens.dtype)
        valid = None if counts is None else time_mask(counts, n)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)
        mask = None if valid is None else valid[:, None, None, :]
        for blk in self.blocks:
            tokens = blk(tokens, mask)
        tokens = self.norm(tokens)
        if self.cls_token is not None:
            return tokens[:, 0]
        if valid is None:
            return tokens.mean(dim=1)
        w = valid.to(tokens.dtype)[..., None]
        return (tokens * w).sum(dim=1) / w.sum(dim=1)


def _size(name: str, width: Any, depth: Any, num_heads: Any) -> Tuple[int, int, int]:
    base_w, base_d = SIZES["base"]
    w = opt_int(name, "width", width, base_w)
    d = opt_int(name, "depth (number of encoder blocks)", depth, base_d)
    h = opt_int(name, "num_heads", num_heads, max(1, w // HEAD_DIM))
    if w % h:
        raise ConfigError(f"{name}: width {w} is not divisible by num_heads {h}; choose num_heads dividing the width")
    return w, d, h


class _AttentionModel(SignalModel):
    """Shared forward of the attention models: ``lengths`` passes through to the trunk."""

    #: common create_model arguments these models do not read (recipe warns when a user sets them)
    unused_common_options = ("use_attention", "norm_kind")

    def forward_features(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_input(x)
        return self.dropout(self.trunk(x, check_lengths(lengths, x, type(self).__name__)))

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.classifier(self.forward_features(x, lengths))


@MODELS.register("SignalTransformer", aliases=("signal_transformer", "transformer"))
class SignalTransformer(_AttentionModel):
    """Patch transformer for 1-D signals (module docstring): patches of ``patch_length`` samples
    every ``patch_stride`` (default: ``patch_length``, no overlap), ``positions`` learnable /
    sinusoidal, ``pooling`` mean / cls, ``depth`` pre-norm blocks of width ``width`` with
    ``num_heads`` heads (default ``width // 32``) and an MLP of ``mlp_ratio * width``."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "auto", width: Optional[int] = None,
                 depth: Optional[int] = None, patch_length: int = 16, patch_stride: Optional[int] = None,
                 positions: str = "learnable", pooling: str = "mean", num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0, num_positions: int = 512) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                         norm_kind=norm_kind)
        n = type(self).__name__
        w, d, h = _size(n, width, depth, num_heads)
        p = pos_int(n, "patch_length", patch_length)
        s = opt_int(n, "patch_stride", patch_stride, p)
        tok = PatchEmbedding(in_channels=self.in_channels, dim=w, patch_length=p, patch_stride=s)
        self._finish(TransformerTrunk(tokenizer=tok, dim=w, depth=d, num_heads=h, mlp_ratio=_ratio(n, mlp_ratio),
                                      positions=_choice(n, "positions", positions, POSITIONS),
                                      pooling=_choice(n, "pooling", pooling, POOLINGS),
                                      num_positions=pos_int(n, "num_positions", num_positions)))


@MODELS.register("ConvTransformer", aliases=("conv_transformer",))
class ConvTransformer(_AttentionModel):
    """Convolutional stem (``stem_layers`` stride-2 blocks of kernel ``stem_kernel``, down-sampling
    by ``2**stem_layers``) + the encoder of :class:`SignalTransformer` (module docstring)."""

    def __init__(self, *, num_classes: int, in_channels: int = 2, dropout_rate: float = 0.1,
                 use_attention: bool = True, norm_kind: str = "auto", width: Optional[int] = None,
                 depth: Optional[int] = None, stem_layers: int = 4, stem_kernel: int = 7,
                 positions: str = "learnable", pooling: str = "mean", num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0, num_positions: int = 512) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, dropout_rate=dropout_rate,
                         norm_kind=norm_kind)
        n = type(self).__name__
        w, d, h = _size(n, width, depth, num_heads)
        stem = ConvStem(in_channels=self.in_channels, dim=w, layers=pos_int(n, "stem_layers", stem_layers, 1, 8),
                        kernel=pos_int(n, "stem_kernel", stem_kernel))
        self._finish(TransformerTrunk(tokenizer=stem, dim=w, depth=d, num_heads=h, mlp_ratio=_ratio(n, mlp_ratio),
                                      positions=_choice(n, "positions", positions, POSITIONS),
                                      pooling=_choice(n, "pooling", pooling, POOLINGS),
                                      num_positions=pos_int(n, "num_positions", num_positions)))
