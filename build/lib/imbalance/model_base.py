"""The base of every model of the zoo: the registry ``MODELS``, :class:`SignalModel` (input
check, feature dropout, the ``classifier`` head, ``init_weights``) and the checks of integer
options. :mod:`imbalance.models` defines the origin networks on it and re-exports all of this;
model families in their own modules (:mod:`imbalance.tsc_models`) register into the same
``MODELS`` without importing :mod:`imbalance.models`, which imports them (no import cycle)."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch
from torch import nn

from .errors import ConfigError, DataError
from .heads import head_linear
from .layers import MIN_LENGTH, resolve_norm_kind
from .registry import Registry

__all__ = ["MODELS", "SignalModel", "check_int", "check_opt_int", "init_head_"]

MODELS = Registry("model")

def check_int(name: str, key: str, value: Any, lo: int = 1, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
            isinstance(value, float) and value.is_integer()):
        raise ConfigError(f"{name}: {key} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name}: {key} must be {rng}, got {v}")
    return v


def check_opt_int(name: str, key: str, value: Any, default: Optional[int], lo: int = 1,
             hi: Optional[int] = None) -> Optional[int]:
    """``value`` checked as by :func:`check_int`, or ``default`` when it is None."""
    return default if value is None else check_int(name, key, value, lo, hi)


def init_head_(linear: nn.Linear, kind: str, columns: slice = slice(None),
                bias_column: Optional[int] = None) -> None:
    """Initialise ``linear``'s weight columns ``columns`` as an origin head over those inputs:
    ``normal`` N(0, 0.01) weights and bias 0 (ResNet1D, DilatedTCN); ``default`` PyTorch's
    ``nn.Linear`` (uniform +-1/sqrt(fan_in) weights and bias). The bias goes to ``linear.bias``
    or, with ``bias_column``, to that weight column (the mixtures of experts)."""
    w = linear.weight
    fan_in = w[:, columns].shape[1]
    with torch.no_grad():
        if kind == "normal":
            w[:, columns].normal_(0.0, 0.01)
            bias_value = None
        else:
            bound = 1.0 / math.sqrt(fan_in)
            w[:, columns].uniform_(-bound, bound)
            bias_value = bound
        target = w[:, bias_column] if bias_column is not None else linear.bias
        if target is not None:
            if bias_value is None:
                target.zero_()
            else:
                target.uniform_(-bias_value, bias_value)


class SignalModel(nn.Module):
    """Base class: input check, feature dropout and the ``classifier`` head.

    Subclasses pass ``_finish`` their backbone (a module mapping ``(B, C, L)`` to ``(B, D)`` with
    attributes ``out_dim``, ``head_init`` and ``init_weights()``), which becomes ``self.trunk``.
    """

    min_length: int = MIN_LENGTH

    def __init__(self, *, num_classes: int, in_channels: int, dropout_rate: float,
                 norm_kind: str) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_classes = check_int(name, "num_classes", num_classes)
        self.in_channels = check_int(name, "in_channels", in_channels)
        if not (isinstance(dropout_rate, (int, float)) and 0.0 <= float(dropout_rate) < 1.0):
            raise ConfigError(f"{name}: dropout_rate must be in [0, 1), got {dropout_rate!r}")
        self.norm_kind = resolve_norm_kind(norm_kind)
        self.dropout_rate = float(dropout_rate)

    def _finish(self, backbone: Optional[nn.Module], feature_dim: Optional[int] = None) -> None:
        if backbone is not None:
            self.trunk = backbone
        self.feature_dim = int(backbone.out_dim if feature_dim is None else feature_dim)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.classifier: nn.Module = nn.Linear(self.feature_dim, self.num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """The model's own initialisation (the origin's): the backbone's, then the head's
        (``N(0, 0.01)`` weights and zero bias after a ResNet1D / DilatedTCN backbone, PyTorch's
        ``nn.Linear`` default otherwise). Called at construction and by ``init='default'``."""
        self.trunk.init_weights()
        lin = head_linear(self.classifier)
        if lin is not None:
            init_head_(lin, self.trunk.head_init)

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
