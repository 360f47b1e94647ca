"""Class counts -> priors, weights and margins: the one place these are computed.

Used by the losses (re-weighting, margins, priors), the heads (LDAM margins, logit adjustment),
stage-3 calibration (the log prior) and model initialisation (a log-prior bias).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["as_counts", "log_prior", "ldam_margins", "effective_number_weights", "normalise_to_k"]


def as_counts(class_counts: Optional[Sequence[float]], num_classes: int, who: str) -> torch.Tensor:
    """``class_counts`` as a float64 tensor of length ``num_classes`` with every count > 0."""
    if class_counts is None:
        raise ConfigError(f"{who} needs class_counts (the number of training samples per class)")
    counts = torch.as_tensor(list(class_counts) if not torch.is_tensor(class_counts) else class_counts,
                             dtype=torch.float64).flatten()
    if counts.numel() != num_classes:
        raise ConfigError(
            f"{who}: class_counts has {counts.numel()} entries but the model has {num_classes} classes"
        )
    if not torch.isfinite(counts).all() or (counts <= 0).any():
        bad = [i for i, c in enumerate(counts.tolist()) if not (math.isfinite(c) and c > 0)]
        raise ConfigError(f"{who}: every class count must be > 0; classes {bad} have none")
    return counts


def log_prior(class_counts: Sequence[float], num_classes: int, who: str = "log prior") -> torch.Tensor:
    """``log pi_c`` with ``pi_c = n_c / sum_j n_j`` (float32, length K)."""
    counts = as_counts(class_counts, num_classes, who)
    return torch.log(counts / counts.sum()).float()


def ldam_margins(class_counts: Sequence[float], num_classes: int, *, power: float = 0.25,
                 max_margin: float = 0.5, who: str = "cosine_ldam") -> torch.Tensor:
    """LDAM margins (Cao et al., NeurIPS 2019, eq. 13): ``m_c = C / n_c ** power``, with ``C``
    chosen so that the largest margin (the rarest class) equals ``max_margin`` (float64)."""
    counts = as_counts(class_counts, num_classes, who)
    m = counts.pow(-power)
    return m * (max_margin / m.max())


def normalise_to_k(w: np.ndarray, what: str) -> np.ndarray:
    """Scale ``w`` to sum to ``len(w)`` (mean 1), as the official re-weighting codes do."""
    total = float(np.sum(w))
    if not np.isfinite(total) or total <= 0:
        raise ConfigError(f"{what}: weights must not all be zero")
    return w * (len(w) / total)


def effective_number_weights(class_counts: Sequence[float], beta: float) -> np.ndarray:
    """Cui et al. 2019: ``w_c = (1 - beta) / (1 - beta ** n_c)``, normalised to sum to K.

    ``beta = 0`` gives uniform weights; ``beta -> 1`` approaches ``1 / n_c``. Every class needs
    a sample; ``beta`` must be in [0, 1)."""
    n = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if n.size == 0 or not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ConfigError(f"effective-number weights: every class needs > 0 training samples, got {n.tolist()}")
    b = float(beta)
    if not 0.0 <= b < 1.0:
        raise ConfigError(f"class-balanced beta={beta!r} is outside the valid range [0, 1)")
    if b == 0.0:
        w = np.ones_like(n)
    else:
        # 1 - beta**n computed as -expm1(n log beta) for precision at beta close to 1.
        w = (1.0 - b) / (-np.expm1(n * math.log(b)))
    return normalise_to_k(w, "effective-number weights")
