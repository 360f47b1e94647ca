"""Stage 3 and post-hoc calibration of the classifier.

- tau-normalisation (Kang et al. 2020, "Decoupling"; official code facebookresearch/
  classifier-balancing, ``tau_norm`` notebook): the logits become ``f @ (W / ||W_c||^tau)^T``
  with the bias DROPPED, as the official code computes them. tau = 0 is then the bias-free
  classifier (not the untouched one, which stage 3 reports as its baseline); tau = 1 makes every
  class vector unit length. :func:`tau_normalize` returns a new module and leaves the head as it
  is. A cosine head is already normalised (tau-norm would be a no-op) and is refused; after LWS,
  the wrapped linear weights are normalised and the learned scales kept.
- logit adjustment (Menon et al. 2021): ``z_c - tau * log(pi_c)`` with ``pi`` the training class
  prior; ``argmax`` of it is the post-hoc Bayes-optimal rule for the balanced error at tau = 1.
- temperature scaling (Guo et al. 2017; official code gpleiss/temperature_scaling): the logits
  are divided by one scalar ``T`` fitted on the VALIDATION split's negative log-likelihood; the
  argmax does not change. The official code runs 50 LBFGS steps (lr 0.01) from T = 1.5; here the
  one-dimensional NLL (convex in 1/T) is minimised to convergence, which is the same optimum
  without the early stop.
- ``search_tau``: pick tau on the VALIDATION split (best mAcc; ties go to the value closest to 1
  so that a flat curve keeps the paper's default).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import class_priors, heads
from .engine import accuracy_and_macc
from .errors import ConfigError
from .stage2 import LWSClassifier

log = logging.getLogger(__name__)

TAU_NORM_GRID = [round(0.1 * i, 2) for i in range(21)]  # [0, 2]
LOGIT_TAU_GRID = [round(0.1 * i, 2) for i in range(31)]  # [0, 3]
TEMPERATURE_RANGE = (0.05, 20.0)


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log pi_c`` of the training counts (float32); every class needs a sample."""
    counts = np.asarray(class_counts)
    return class_priors.log_prior(counts, len(counts), "logit adjustment")


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """``logits - tau * log(pi)`` (Menon et al. 2021, post-hoc logit adjustment)."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)


def tau_normalized_weight(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_c / ||w_c||^tau`` row by row (rows are classes)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def classifier_weight(classifier: nn.Module) -> torch.Tensor:
    """The (K, D) weight matrix of a classifier head (nn.Linear or a head with ``weight`` /
    ``linear.weight`` / ``fc.weight``)."""
    for path in ("weight", "linear.weight", "fc.weight", "base.weight"):
        obj = classifier
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.Tensor) and obj.dim() == 2:
            return obj
    raise ConfigError(
        f"tau_norm needs a classifier with a (classes x features) weight matrix; "
        f"{type(classifier).__name__} has none"
    )


class TauNormalizedLinear(nn.Module):
    """``f @ W_tau^T`` with ``W_tau = W / ||W_c||^tau`` precomputed and no bias (Kang et al.'s
    tau_norm). ``weight`` is a buffer: stage 3 trains nothing."""

    def __init__(self, weight: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("weight", tau_normalized_weight(weight.detach().float(), self.tau))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.weight.shape[0]}, features={self.weight.shape[1]}"


def tau_normalize(head: nn.Module, tau: float) -> nn.Module:
    """A new module computing ``f @ (W / ||W_c||^tau)^T`` (no bias) from ``head``'s weight ``W``;
    ``head`` is not modified.

    - ``nn.Linear`` and the ``logit_adjust`` head (its eval-mode logits are ``W f + b``): ``W``.
    - the ``temperature`` head ``(W f + b) / T``: ``W / T`` (the same relative norms; T kept).
    - an LWS wrapper (``s_c * head(f)``): the wrapped head is normalised, the scales are kept.
    - a cosine head: refused (its class vectors are already unit length).
    """
    return _tau_normalize(head, float(tau)).train(head.training)


def _tau_normalize(head: nn.Module, tau: float) -> nn.Module:
    if isinstance(head, heads.CosineMarginClassifier):
        raise ConfigError("tau-norm on a cosine head (model.head=cosine_ldam) is a no-op: its class weights are "
                          "already unit length; use stage3.mode=logit_adjust or a linear head")
    if isinstance(head, LWSClassifier):
        out = LWSClassifier(_tau_normalize(head.head, tau), head.scales.numel())
        with torch.no_grad():
            out.scales.copy_(head.scales)
        out.scales.requires_grad_(False)
        return out.to(head.scales.device)
    if isinstance(head, heads.TemperatureScaledClassifier):
        w = head.linear.weight.detach() / head.temperature.detach()
    else:
        w = classifier_weight(head).detach()
    return TauNormalizedLinear(w, tau).to(w.device)


class LogitAdjustedOutput(nn.Module):
    """Wraps a head and subtracts ``tau * log(pi)`` from its logits (stage-3 logit adjustment,
    baked into the final model so that evaluation and prediction reuse it)."""

    def __init__(self, head: nn.Module, class_counts: Sequence[int], tau: float) -> None:
        super().__init__()
        self.head = head
        self.tau = float(tau)
        self.register_buffer("offset", -self.tau * log_prior(class_counts))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) + self.offset.to(features.dtype)


class TemperatureScaledOutput(nn.Module):
    """Wraps a head and divides its logits by a fitted scalar ``T`` (Guo et al. 2017's post-hoc
    temperature scaling; the argmax is unchanged)."""

    def __init__(self, head: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
        self.head = head
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.head(features)
        return z / self.temperature.to(z.dtype)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` in float64."""
    z = logits.double() / float(temperature)
    return float(F.cross_entropy(z, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor,
                    bounds: Tuple[float, float] = TEMPERATURE_RANGE) -> float:
    """The ``T`` in ``bounds`` that minimises the NLL of ``softmax(logits / T)`` (float64).

    The NLL is convex in ``beta = 1/T`` (a log-sum-exp of linear functions of beta minus a linear
    one), so a bounded scalar minimisation finds the global optimum in the range."""
    from scipy.optimize import minimize_scalar

    z = logits.detach().double().cpu()
    y = labels.long().cpu()
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]

    def f(beta: float) -> float:
        return float(F.cross_entropy(z * beta, y))

    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    beta = float(res.x)
    return 1.0 / beta


def search_tau(
    logits_for: Callable[[float], torch.Tensor],
    labels: torch.Tensor,
    grid: Sequence[float],
    num_classes: int,
) -> Tuple[float, List[Dict[str, float]]]:
    """Evaluate val mAcc for every tau of ``grid``; return the best tau and the curve."""
    curve = []
    for tau in grid:
        acc, macc = accuracy_and_macc(logits_for(float(tau)).argmax(1), labels, num_classes)
        curve.append({"tau": float(tau), "val_macc": macc, "val_acc": acc})
    best = max(curve, key=lambda r: (round(r["val_macc"], 12), -abs(r["tau"] - 1.0)))
    return best["tau"], curve


def validation_too_small(labels: torch.Tensor, num_classes: int) -> str:
    """A reason why the validation split cannot choose tau, or '' if it can."""
    counts = torch.bincount(labels.long(), minlength=num_classes)
    missing = int((counts == 0).sum())
    if missing:
        return f"{missing} of {num_classes} classes have no validation sample"
    if len(labels) < 2 * num_classes:
        return f"only {len(labels)} validation samples for {num_classes} classes"
    return ""
