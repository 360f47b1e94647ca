"""Stage 3 and post-hoc calibration of the classifier.

- tau-normalisation (Kang et al. 2020, "Decoupling"): each class weight vector becomes
  ``w_c / ||w_c||^tau``; tau = 0 is the identity, tau = 1 makes every class vector unit length.
  The bias, if any, is kept as it is (so that tau = 0 is exactly the identity).
- logit adjustment (Menon et al. 2021): ``z_c - tau * log(pi_c)`` with ``pi`` the training class
  prior; ``argmax`` of it is the post-hoc Bayes-optimal rule for the balanced error at tau = 1.
- ``search_tau``: pick tau on the VALIDATION split (best mAcc; ties go to the value closest to 1
  so that a flat curve keeps the paper's default).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import heads
from .engine import accuracy_and_macc
from .errors import ConfigError

log = logging.getLogger(__name__)

TAU_NORM_GRID = [round(0.1 * i, 2) for i in range(21)]  # [0, 2]
LOGIT_TAU_GRID = [round(0.1 * i, 2) for i in range(31)]  # [0, 3]


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log pi_c`` of the training counts (float32); every class needs a sample."""
    counts = np.asarray(class_counts)
    return heads.log_prior(counts, len(counts), "logit adjustment")


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """``logits - tau * log(pi)`` (Menon et al. 2021, post-hoc logit adjustment)."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)


def tau_normalized_weight(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_c / ||w_c||^tau`` row by row (rows are classes)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def classifier_weight(classifier: nn.Module) -> nn.Parameter:
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


@torch.no_grad()
def apply_tau_norm(classifier: nn.Module, tau: float) -> None:
    """Replace the classifier's weights by their tau-normalised version, in place."""
    w = classifier_weight(classifier)
    w.copy_(tau_normalized_weight(w, tau))


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
