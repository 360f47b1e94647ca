"""Classifier heads for long-tailed recognition (registry ``HEADS``).

Every head maps features ``(B, D)`` to logits ``(B, K)`` and is built with the keywords
``in_features``, ``num_classes`` and ``class_counts`` (``None`` when not needed) plus its own
options. :func:`imbalance.models.swap_classifier` builds one by name and puts it in
``model.classifier``.

==============  ================================  ===============================================
name            class                             logits
==============  ================================  ===============================================
linear          ``torch.nn.Linear``               ``W x + b``
cosine_ldam     :class:`CosineMarginClassifier`   ``s * cos(theta)`` (LDAM margins stored, see class)
logit_adjust    :class:`LogitAdjustedLinear`      train: ``W x + b + tau log pi``; eval: ``W x + b``
temperature     :class:`TemperatureScaledClassifier`  ``(W x + b) / T`` with learnable ``T > 0``
==============  ================================  ===============================================
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .class_priors import ldam_margins, log_prior  # noqa: F401  (re-exported)
from .errors import ConfigError
from .registry import Registry

logger = logging.getLogger(__name__)

HEADS = Registry("head")


class CosineMarginClassifier(nn.Module):
    """Cosine classifier, LDAM-ready (Cao et al. 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss"; the normalised linear layer of their code).

    ``logits_c = scale * cos(theta_c) = scale * <x/|x|, w_c/|w_c|>``. No bias.

    The LDAM margins ``m_c = C / n_c ** ldam_power`` (largest = ``ldam_max_m``) are stored in the
    buffer ``margins`` (zeros without ``class_counts``) but **not** applied by ``forward(x)``:
    with ``LDAMLoss`` the loss subtracts the margin from the true-class logit. Note the scale:
    these logits are already multiplied by ``scale``, so the margin in logit units is
    ``scale * m_c``. ``forward(x, target)`` applies the margin itself (subtracts
    ``scale * m_y`` from the true-class logit), for use with a plain cross-entropy.
    The attribute ``scale`` tells a loss that the logits are pre-scaled.
    """

    def __init__(self, *, in_features: int, num_classes: int,
                 class_counts: Optional[Sequence[float]] = None, scale: float = 30.0,
                 ldam_power: float = 0.25, ldam_max_m: float = 0.5) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"cosine_ldam: scale must be > 0, got {scale}")
        if not ldam_max_m >= 0:
            raise ConfigError(f"cosine_ldam: ldam_max_m must be >= 0, got {ldam_max_m}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.ldam_power = float(ldam_power)
        self.ldam_max_m = float(ldam_max_m)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        if class_counts is not None:
            margins = ldam_margins(class_counts, num_classes, power=ldam_power, max_margin=ldam_max_m).float()
        else:
            margins = torch.zeros(num_classes)
        self.register_buffer("margins", margins)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        cos = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        logits = self.scale * cos
        if target is not None:
            margin = self.scale * self.margins.to(logits.dtype)[target]
            logits = logits - F.one_hot(target, self.num_classes).to(logits.dtype) * margin[:, None]
        return logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}"


class LogitAdjustedLinear(nn.Module):
    """Linear layer with built-in logit adjustment (Menon et al., ICLR 2021, "Long-tail learning
    via logit adjustment", eq. 10-11).

    Training: ``W x + b + tau * log pi`` (the logit-adjusted loss: cross-entropy on these logits);
    evaluation (``model.eval()``): plain ``W x + b``, which is then the balanced-error predictor.
    ``pi_c = n_c / sum n``, from ``class_counts`` (required).
    """

    def __init__(self, *, in_features: int, num_classes: int,
                 class_counts: Optional[Sequence[float]] = None, tau: float = 1.0,
                 bias: bool = True) -> None:
        super().__init__()
        self.tau = float(tau)
        self.linear = nn.Linear(in_features, num_classes, bias=bias)
        self.register_buffer("log_prior", log_prior(class_counts, num_classes, "head 'logit_adjust'"))
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        if self.training and self.tau != 0.0:
            logits = logits + self.tau * self.log_prior.to(logits.dtype)
        return logits

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class TemperatureScaledClassifier(nn.Module):
    """Linear layer followed by a learnable temperature: ``logits = (W x + b) / T``.

    ``T = exp(log_t)`` is kept positive by learning ``log_t`` (initialised to
    ``log(temperature)``). This is a reparameterisation of the linear layer trained jointly with
    it (on the training loss, so it scales the logits as the training data want); it is NOT
    Guo et al.'s (2017) calibration, which fits one T on held-out validation NLL after training:
    that is ``stage3.temperature=auto`` (:class:`imbalance.calibration.TemperatureScaledOutput`).
    """

    def __init__(self, *, in_features: int, num_classes: int,
                 class_counts: Optional[Sequence[float]] = None, temperature: float = 1.0,
                 learnable: bool = True, bias: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature head: temperature must be > 0, got {temperature}")
        self.linear = nn.Linear(in_features, num_classes, bias=bias)
        self.log_t = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learnable)
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_t.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        return logits / self.log_t.exp().to(logits.dtype)


def _linear_head(*, in_features: int, num_classes: int,
                 class_counts: Optional[Sequence[float]] = None, bias: bool = True) -> nn.Linear:
    """The plain linear head ``W x + b`` (``class_counts`` is ignored)."""
    return nn.Linear(in_features, num_classes, bias=bias)


HEADS.add("linear", _linear_head)
HEADS.add("cosine_ldam", CosineMarginClassifier, aliases=("CosineMarginClassifier", "cosine"))
HEADS.add("logit_adjust", LogitAdjustedLinear, aliases=("LogitAdjustedLinear",))
HEADS.add("temperature", TemperatureScaledClassifier, aliases=("TemperatureScaledClassifier",))


def head_linear(head: nn.Module) -> Optional[nn.Linear]:
    """The ``nn.Linear`` inside a head (the head itself for 'linear'); None for a cosine head."""
    if isinstance(head, nn.Linear):
        return head
    lin = getattr(head, "linear", None)
    return lin if isinstance(lin, nn.Linear) else None


def remove_bias(head: nn.Module) -> nn.Module:
    """``head`` without the bias of its linear layer (``model.classifier_bias=false``): the
    ``nn.Linear`` (the head itself, or its ``linear``) is replaced by one with ``bias=False`` and
    the same weight, so the model's own head initialisation is kept. Returns the (new) head; a
    head without a bias (cosine) comes back unchanged."""
    lin = head_linear(head)
    if lin is None or lin.bias is None:
        return head
    new = nn.Linear(lin.in_features, lin.out_features, bias=False).to(device=lin.weight.device,
                                                                      dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight)
    new.weight.requires_grad_(lin.weight.requires_grad)
    if head is lin:
        return new
    head.linear = new
    return head


__all__ = [
    "HEADS",
    "remove_bias",
    "CosineMarginClassifier",
    "LogitAdjustedLinear",
    "TemperatureScaledClassifier",
    "ldam_margins",
    "log_prior",
    "head_linear",
]
