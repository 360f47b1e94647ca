"""Weight constraints applied between optimizer steps.

:class:`MaxNorm` is the per-class norm cap of weight balancing (Alshammari et al., CVPR 2022,
"Long-Tailed Recognition via Weight Balancing"; official ShadeAlsha/LTR-weight-balancing,
``utils/regularizers.py``, ``MaxNorm_via_PGD``): projected gradient descent that keeps every
class's weight vector inside a norm ball.

The recipe of the paper is two stages: (1) train the whole network with cross-entropy and a
tuned (large) weight decay -- a config choice, nothing to build; (2) retrain the classifier
with a class-balanced loss, weight decay and MaxNorm (the official demo: classifier weight and
bias only, SGD lr 0.01 momentum 0.9, weight decay 0.1, cosine schedule over 10 epochs,
``thresh = 0.1``, loss ``ClassBalancedLoss(base='softmax_bce', beta=0.9999)``).

How a training loop uses it (the official ``train_model``): build ``maxnorm = MaxNorm(thresh)``
before stage 2 and call ``maxnorm.set_radius(model.classifier)`` once on the weights that stage 2
starts from; then call ``maxnorm(model.classifier)`` after the last optimizer step of every
training epoch (the official code projects once per epoch, after the training phase, not after
each step; ``every='step'`` is the per-step variant a user may choose).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["MaxNorm", "MAXNORM_EVERY", "row_norms"]

MAXNORM_EVERY = ("epoch", "step")

WeightLike = Union[torch.Tensor, nn.Module]


def _weight_of(target: WeightLike) -> torch.Tensor:
    """The (K, ...) weight matrix of a classifier head (or the tensor itself)."""
    if isinstance(target, torch.Tensor):
        w = target
    else:
        w = getattr(target, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"MaxNorm needs a classifier with a weight matrix (a `weight` parameter of "
                              f"shape (K, D)); {type(target).__name__} has none")
    if w.dim() < 2:
        raise ConfigError(f"MaxNorm projects the rows of a (K, D) weight matrix, got shape {tuple(w.shape)}")
    return w


def row_norms(weight: WeightLike, norm_type: float = 2.0) -> torch.Tensor:
    """Per-class (per-row) ``L_p`` norms of a head's weight, shape (K,)."""
    w = _weight_of(weight).detach()
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1), ord=norm_type, dim=1)


class MaxNorm:
    """Per-class max-norm constraint, projected after optimizer steps (PGD).

    ``radius = min_k ||w_k|| + thresh * (max_k ||w_k|| - min_k ||w_k||)`` is fixed once from
    the weights given to :meth:`set_radius` (or at the first call), as the official
    ``setPerLayerThresh``: ``thresh`` is relative, 0 caps every class at the smallest norm, 1 at
    the largest (the official default is 1.0, its demo uses 0.1). A call projects every row
    whose ``L_p`` norm exceeds the radius onto the sphere of that radius
    (``w_k <- w_k * radius / ||w_k||``), in place and without autograd; rows inside the ball
    are unchanged, and the bias is never constrained (the official threshold for 1-D
    parameters is infinite). The official code's exponent ``tau`` (default 1, never changed
    in its demos) is not exposed.

    ``every`` tells the training loop when to call it (``'epoch'``: after each training epoch,
    as the official code; ``'step'``: after every optimizer step). ``state_dict`` holds the
    radius so that a resumed run keeps it.
    """

    def __init__(self, thresh: float = 0.1, *, norm_type: float = 2.0, every: str = "epoch") -> None:
        try:
            t = float(thresh)
        except (TypeError, ValueError):
            raise ConfigError(f"MaxNorm thresh={thresh!r} must be a number >= 0") from None
        if not (math.isfinite(t) and t >= 0):
            raise ConfigError(f"MaxNorm thresh={thresh!r} must be a finite number >= 0 (relative: 0 = the "
                              f"smallest class norm, 1 = the largest)")
        p = float(norm_type)
        if not (p >= 1 or p == math.inf):
            raise ConfigError(f"MaxNorm norm_type={norm_type!r} must be >= 1 (a norm) or inf")
        if every not in MAXNORM_EVERY:
            raise ConfigError(f"MaxNorm every={every!r} is not valid; valid: {', '.join(MAXNORM_EVERY)}")
        self.thresh = t
        self.norm_type = p
        self.every = every
        self.radius: Optional[float] = None

    def set_radius(self, weight: WeightLike) -> float:
        """Fix the radius from the current row norms of ``weight`` (a head or its weight)."""
        n = row_norms(weight, self.norm_type)
        self.radius = float(n.min() + self.thresh * (n.max() - n.min()))
        logger.info("MaxNorm: radius %.6g (row norms %.6g..%.6g, thresh %g)", self.radius,
                    float(n.min()), float(n.max()), self.thresh)
        return self.radius

    @torch.no_grad()
    def __call__(self, weight: WeightLike) -> int:
        """Project the rows of ``weight`` onto the ball; returns how many rows were scaled."""
        w = _weight_of(weight)
        if self.radius is None:
            self.set_radius(w)
        flat = w.detach().reshape(w.shape[0], -1)
        norms = torch.linalg.vector_norm(flat, ord=self.norm_type, dim=1)
        # rows already on the sphere up to rounding (a previous projection) are left as they are
        over = norms > self.radius * (1.0 + 8 * torch.finfo(norms.dtype).eps)
        if bool(over.any()):
            scale = torch.where(over, self.radius / norms.clamp_min(torch.finfo(norms.dtype).tiny),
                                torch.ones_like(norms))
            w.mul_(scale.reshape((-1,) + (1,) * (w.dim() - 1)).to(w.dtype))
        return int(over.sum())

    def state_dict(self) -> Dict[str, Any]:
        return {"thresh": self.thresh, "norm_type": self.norm_type, "every": self.every, "radius": self.radius}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.radius = None if state.get("radius") is None else float(state["radius"])

    def __repr__(self) -> str:
        return f"MaxNorm(thresh={self.thresh:g}, norm_type={self.norm_type:g}, every={self.every!r}, radius={self.radius})"
