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
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import class_priors
from .analysis import accuracy_and_macc
from .classifier_chain import (  # noqa: F401  (the stage-3 wrappers; public here too)
    LogitAdjustedOutput,
    TauNormalizedLinear,
    TemperatureScaledOutput,
    classifier_weight,
    tau_normalize,
    tau_normalized_weight,
)

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
