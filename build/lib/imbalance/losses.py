"""Loss functions for long-tailed classification (SEED.md section 2, "损失函数").

Every loss is an ``nn.Module`` called as ``loss(logits, targets)`` and returns the batch mean
(a float32 scalar: logits are cast with ``logits.float()``, so bf16 logits under autocast are
fine). Build them by name with :func:`create_loss` from the registry :data:`LOSSES`; every
loss can be built from ``class_counts`` alone, every other argument has a default. Every loss
has ``set_epoch(epoch)`` (a no-op unless it has a schedule) and a plain ``epoch`` attribute;
before ``set_epoch`` is called a loss behaves as at epoch 0. Every loss accepts (and may
ignore) ``total_epochs``, so a pipeline can pass it uniformly.

Conventions
-----------
* Per-class weights are normalised to sum to K (mean 1), so switching methods does not change
  the loss scale (as the official LDAM-DRW and class-balanced code do).
* A weighted loss is ``mean_i w[y_i] * l_i`` (sum over the batch divided by the batch size, the
  re-weighted empirical risk, as in Cui et al.'s official code), EXCEPT ``LDAMLoss``'s DRW
  phase, which follows the official LDAM-DRW code: ``F.cross_entropy(..., weight=w)``, i.e.
  ``sum_i w[y_i] l_i / sum_i w[y_i]``.
* Losses that use class counts need every class to have at least one training sample.
* Label smoothing (Szegedy et al. 2016; ``label_smoothing = eps`` in [0, 1)) is accepted by
  the softmax cross-entropy family only: ``CrossEntropy``, ``CostSensitiveCE``,
  ``ProgressiveLoss``, ``ClassBalancedLoss`` (``base='softmax'``), ``BalancedSoftmaxLoss``,
  ``LogitAdjustmentLoss``, ``LDAMLoss``, ``VSLoss`` and ``CDTLoss``. The smoothed per-sample CE is
  ``(1 - eps) (-log p_y) + eps/K sum_c (-log p_c)`` on the loss's own (adjusted) logits; a
  weighted loss weights it by ``w[y]`` as above. The other losses do not take the keyword, so
  :func:`create_loss` refuses it; :func:`loss_accepts` tells a pipeline in advance.
* ``BalancedSoftmaxLoss`` and ``LogitAdjustmentLoss`` take ``prior`` (:data:`PRIORS`):
  ``'train'`` (the class prior of the training set) or ``'sampled'`` (``sampled_prior``, the
  class prior of the re-sampled batches, per epoch if the sampler changes).
* ``CombinedLoss(shared={...})`` passes keyword arguments to every part that accepts them.
* Per-sample form: every loss except ``LDAMLoss`` with DRW (a weighted mean normalised by the
  batch's weights) and a ``CombinedLoss`` holding one has ``per_sample(logits, targets) -> (B,)``
  whose mean is the loss (``has_per_sample`` says which). Mixed targets
  (:mod:`imbalance.mixing`): one mixing coefficient per batch (mixup, CutMix, Balanced-MixUp)
  works with every loss, ``lam * L(z, y_a) + (1 - lam) * L(z, y_b)``; Remix's per-sample label
  weights need the per-sample form, so LDAMLoss with DRW cannot take them (refused).
* Keywords that a config maps from the loss section (``focal_gamma -> gamma``, ``logit_tau ->
  tau``, ...) mean the same in every loss that takes them; ``VSLoss``/``CDTLoss`` name their
  exponent ``vs_gamma``/``cdt_gamma`` so that the focal ``gamma`` never reaches them.

Names (see each class for the formula and paper):
``CrossEntropy``, ``FocalLoss``, ``ClassBalancedLoss``, ``LDAMLoss``, ``ProgressiveLoss``,
``BalancedSoftmaxLoss``, ``LogitAdjustmentLoss``, ``CostSensitiveCE``,
``CostSensitiveExpected``, ``CostSensitiveFocal``, ``VSLoss``, ``CDTLoss``,
``LabelAwareSmoothing``, ``CombinedLoss``.

Cost strategies (``cost_strategy``) give the per-class cost ``w_c`` of misclassifying class c
(normalised to sum to K):

* ``auto``: ``w_c ∝ 1 / n_c`` (inverse frequency);
* ``sqrt``: ``w_c ∝ 1 / sqrt(n_c)``;
* ``log``: ``w_c ∝ 1 + ln(n_max / n_c)`` (log-damped inverse frequency: 1 for the head,
  growing by 1 per factor e of rarity; invariant to scaling all counts; between ``uniform``
  and ``sqrt`` in strength for any realistic imbalance);
* ``uniform``: all 1 (``CostSensitiveCE`` is then exactly ``CrossEntropy``);
* ``manual``: from ``cost_matrix`` — a K-vector of per-class costs, or a KxK matrix
  ``C[y, j]`` = cost of predicting j when the truth is y. Entries must be >= 0.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import class_priors
from .errors import ConfigError, UnknownNameError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES", "COST_STRATEGIES", "create_loss", "class_weights", "effective_number_weights",
    "ldam_margins", "cost_matrix_from", "loss_uses_class_counts", "loss_accepts", "ImbalanceLoss",
    "CrossEntropy", "FocalLoss", "ClassBalancedLoss", "LDAMLoss", "ProgressiveLoss",
    "BalancedSoftmaxLoss", "LogitAdjustmentLoss", "CostSensitiveCE", "CostSensitiveExpected",
    "CostSensitiveFocal", "CombinedLoss", "PRIORS", "VSLoss", "CDTLoss", "LabelAwareSmoothing",
    "LAS_SHAPES", "label_aware_epsilons", "supports_per_sample",
]

LOSSES = Registry("loss")
COST_STRATEGIES = Registry("cost strategy")

CountsLike = Union[Sequence[int], np.ndarray, torch.Tensor]


# ============================================================================ helpers
def _counts(class_counts: Optional[CountsLike], loss_name: str, *, required: bool = True,
            positive: bool = True) -> Optional[np.ndarray]:
    """Validate ``class_counts`` -> float64 array (or None when not required and not given)."""
    if class_counts is None:
        if required:
            raise ConfigError(f"{loss_name} needs class_counts (training samples per class)")
        return None
    if isinstance(class_counts, torch.Tensor):
        arr = class_counts.detach().cpu().numpy()
    else:
        arr = np.asarray(class_counts)
    try:
        arr = arr.astype(np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{loss_name}: class_counts must be numbers, got {class_counts!r}") from None
    if arr.size == 0:
        raise ConfigError(f"{loss_name}: class_counts is empty")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"{loss_name}: class_counts must be finite and >= 0, got {arr.tolist()}")
    if positive and np.any(arr == 0):
        empty = np.flatnonzero(arr == 0).tolist()
        raise ConfigError(
            f"{loss_name}: class(es) {empty} have 0 training samples; this loss needs at least "
            f"one sample per class (remove the class or use CrossEntropy/FocalLoss)"
        )
    return arr


def _normalise(w: np.ndarray, what: str) -> np.ndarray:
    """Scale ``w`` to sum to ``len(w)`` (mean 1)."""
    total = float(np.sum(w))
    if not np.isfinite(total) or total <= 0:
        raise ConfigError(f"{what}: weights must not all be zero")
    return w * (len(w) / total)


def _check_beta(beta: Any, what: str) -> float:
    b = float(beta)
    if not 0.0 <= b < 1.0:
        raise ConfigError(f"{what} beta={beta!r} is outside the valid range [0, 1)")
    return b


def _check_nonneg(value: Any, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"{what}={value!r} must be a finite number >= 0")
    return v


def _check_epochs(total_epochs: Any) -> int:
    if int(total_epochs) != total_epochs or int(total_epochs) < 1:
        raise ConfigError(f"total_epochs must be an integer >= 1, got {total_epochs!r}")
    return int(total_epochs)


def effective_number_weights(class_counts: CountsLike, beta: float) -> np.ndarray:
    """Cui et al. 2019: ``w_c = (1 - beta) / (1 - beta ** n_c)``, normalised to sum to K
    (:func:`imbalance.class_priors.effective_number_weights`, with this module's checks).

    ``beta = 0`` gives uniform weights; ``beta -> 1`` approaches ``1 / n_c``.
    """
    n = _counts(class_counts, "effective-number weights")
    return class_priors.effective_number_weights(n, _check_beta(beta, "class-balanced"))


def ldam_margins(class_counts: CountsLike, max_margin: float = 0.5) -> np.ndarray:
    """Cao et al. 2019: ``m_c ∝ n_c ** (-1/4)``, scaled so that the largest margin is ``max_margin``."""
    n = _counts(class_counts, "LDAMLoss")
    return class_priors.ldam_margins(n, len(n), max_margin=float(max_margin), who="LDAMLoss").numpy()


def _manual_matrix(cost_matrix: Any, k: Optional[int], what: str) -> np.ndarray:
    if cost_matrix is None:
        raise ConfigError(f"{what}: cost_strategy 'manual' needs cost_matrix (a K-vector or KxK)")
    try:
        c = np.asarray(cost_matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: cost_matrix must be numbers, got {cost_matrix!r}") from None
    ok = (c.ndim == 1 and c.size > 0) or (c.ndim == 2 and c.shape[0] == c.shape[1] > 0)
    if ok and k is not None:
        ok = c.shape[0] == k
    if not ok:
        want = f"({k},) or ({k}, {k})" if k is not None else "(K,) or (K, K)"
        raise ConfigError(f"{what}: cost_matrix has shape {tuple(c.shape)}, expected {want}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ConfigError(f"{what}: cost_matrix entries must be finite and >= 0")
    return c


# ---- cost strategies: class_counts (float array or None) -> unnormalised per-class weights
@COST_STRATEGIES.register("auto")
def _cost_auto(n: np.ndarray) -> np.ndarray:
    return 1.0 / n


@COST_STRATEGIES.register("sqrt")
def _cost_sqrt(n: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(n)


@COST_STRATEGIES.register("log")
def _cost_log(n: np.ndarray) -> np.ndarray:
    return 1.0 + np.log(n.max() / n)


@COST_STRATEGIES.register("uniform")
def _cost_uniform(n: np.ndarray) -> np.ndarray:
    return np.ones_like(n)


@COST_STRATEGIES.register("manual")
def _cost_manual(n: np.ndarray) -> np.ndarray:  # handled in class_weights (needs the matrix)
    raise AssertionError("unreachable")


def class_weights(class_counts: Optional[CountsLike], strategy: str = "auto",
                  cost_matrix: Any = None, *, what: str = "cost") -> Optional[np.ndarray]:
    """Per-class weights for ``strategy`` (see the module docstring), normalised to sum to K.

    ``uniform`` returns all ones (or ``None`` when ``class_counts`` is not given either);
    ``manual`` with a KxK matrix uses the off-diagonal row mean ``mean_{j != y} C[y, j]`` as
    the weight of class y.
    """
    name = COST_STRATEGIES.canonical(str(strategy))
    if name == "manual":
        k = len(_counts(class_counts, what, positive=False)) if class_counts is not None else None
        c = _manual_matrix(cost_matrix, k, what)
        if c.ndim == 2:
            kk = c.shape[0]
            w = (c.sum(axis=1) - np.diag(c)) / max(kk - 1, 1)
        else:
            w = c
        return _normalise(w, f"{what} (manual cost_matrix)")
    if cost_matrix is not None:
        logger.warning("%s: cost_matrix is ignored with cost_strategy=%r (use 'manual')", what, name)
    if name == "uniform":
        if class_counts is None:
            return None
        return np.ones(len(_counts(class_counts, what, positive=False)))
    n = _counts(class_counts, f"{what} with cost_strategy={name!r}")
    return _normalise(COST_STRATEGIES.get(name)(n), what)


def cost_matrix_from(class_counts: Optional[CountsLike], strategy: str = "auto",
                     cost_matrix: Any = None, *, what: str = "CostSensitiveExpected"
                     ) -> Optional[np.ndarray]:
    """KxK cost matrix: ``manual`` KxK as given (scaled so its off-diagonal row means sum to K);
    otherwise ``C[y, j] = w_y`` for ``j != y`` and 0 on the diagonal, ``w`` from
    :func:`class_weights`. ``None`` for ``uniform`` without class counts (K unknown:
    ``C = 1 - I`` is built at the first call)."""
    name = COST_STRATEGIES.canonical(str(strategy))
    if name == "manual":
        k = len(_counts(class_counts, what, positive=False)) if class_counts is not None else None
        c = _manual_matrix(cost_matrix, k, what)
        if c.ndim == 2:
            kk = c.shape[0]
            row = (c.sum(axis=1) - np.diag(c)) / max(kk - 1, 1)
            if row.sum() <= 0:
                raise ConfigError(f"{what}: manual cost_matrix has no positive off-diagonal cost")
            return c * (kk / row.sum())
    w = class_weights(class_counts, strategy, cost_matrix, what=what)
    if w is None:
        return None
    return w[:, None] * (1.0 - np.eye(len(w)))


def _tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.float32)


def _check_targets(logits: torch.Tensor, targets: torch.Tensor, k: Optional[int], name: str):
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (batch, num_classes), got {tuple(logits.shape)}")
    if k is not None and logits.shape[1] != k:
        raise ConfigError(
            f"{name}: logits have {logits.shape[1]} classes but class_counts/cost_matrix has {k}"
        )


def _ce(z: torch.Tensor, t: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(z, t, label_smoothing=label_smoothing)


def _check_smoothing(value: Any, who: str) -> float:
    try:
        ls = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} label_smoothing={value!r} must be a number in [0, 1)") from None
    if not 0.0 <= ls < 1.0:
        raise ConfigError(f"{who} label_smoothing={value!r} is outside the valid range [0, 1)")
    return ls


def _weighted_ce(z: torch.Tensor, t: torch.Tensor, weight: Optional[torch.Tensor],
                 label_smoothing: float) -> torch.Tensor:
    """``mean_i w[y_i] * CE_eps(z_i, y_i)`` (the batch mean, not normalised by the weights);
    ``CE_eps`` is the label-smoothed CE; ``weight=None`` is the plain (smoothed) CE."""
    if weight is None:
        return _ce(z, t, label_smoothing)
    per = F.cross_entropy(z, t, reduction="none", label_smoothing=label_smoothing)
    return (weight.to(z.device)[t] * per).mean()


def _weighted_ce_terms(z: torch.Tensor, t: torch.Tensor, weight: Optional[torch.Tensor],
                       label_smoothing: float) -> torch.Tensor:
    """Per-sample ``w[y_i] * CE_eps(z_i, y_i)`` (the terms :func:`_weighted_ce` averages)."""
    per = F.cross_entropy(z, t, reduction="none", label_smoothing=label_smoothing)
    return per if weight is None else weight.to(z.device)[t] * per


def _softmax_log_pt_terms(z: torch.Tensor, t: torch.Tensor):
    """``(-log p_t, log(1 - p_t))`` of ``softmax(z)`` for the targets ``t``, both stable.

    ``log(1 - p_t) = logsumexp_{j != t} z_j - logsumexp_j z_j`` (the target masked with
    -inf), so it stays finite (and differentiable) where ``p_t`` rounds to 1 in float32
    (a logit margin above ~17). Where no other class has a finite logit (a single class, or
    the others masked with -inf) ``1 - p_t = 0`` exactly: ``-inf``, as a constant (the
    log-sum-exp of an all -inf row would give NaN gradients).
    """
    nll = F.cross_entropy(z, t, reduction="none")
    lse = torch.logsumexp(z, dim=1)
    others = z.scatter(1, t[:, None], float("-inf"))
    none = torch.isneginf(others).all(dim=1, keepdim=True)
    lse_others = torch.logsumexp(torch.where(none, torch.zeros_like(others), others), dim=1)
    return nll, torch.where(none.squeeze(1), float("-inf"), lse_others - lse)


def _softmax_focal_terms(z: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample softmax focal loss ``(1 - p_t)^gamma (-log p_t)`` (Lin et al. 2017).

    The modulator is ``exp(gamma * log(1 - p_t))`` with ``log(1 - p_t)`` from
    :func:`_softmax_log_pt_terms`: ``(1 - p_t)^gamma`` by ``pow`` has an infinite derivative
    at ``p_t = 1`` for ``gamma < 1`` (NaN gradients once a margin exceeds ~17 in float32).
    ``gamma = 0`` is the plain CE (modulator 1, also where ``1 - p_t = 0``).
    """
    if gamma == 0.0:
        return F.cross_entropy(z, t, reduction="none")
    nll, log1m_pt = _softmax_log_pt_terms(z, t)
    return torch.exp(gamma * log1m_pt) * nll


# ============================================================================ base
class ImbalanceLoss(nn.Module):
    """Base class: ``epoch`` attribute and a ``set_epoch`` hook (no-op unless overridden).

    Per-sample form: a loss that is a batch mean of per-sample terms, ``forward(z, y) ==
    mean_i l(z_i, y_i)``, has ``per_sample(z, y) -> (B,)`` returning the ``l_i`` and
    ``has_per_sample`` True (what Remix's per-sample label weights and ImbSAM's head/tail split
    need). The base class has none: ``per_sample`` raises :class:`ConfigError`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._on_epoch()

    def _on_epoch(self) -> None:
        pass

    @property
    def has_per_sample(self) -> bool:
        """Whether :meth:`per_sample` is defined (``forward == per_sample(...).mean()``)."""
        return False

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``(B,)`` whose mean is ``forward(logits, targets)``."""
        raise ConfigError(f"{type(self).__name__}{self._no_per_sample_reason()} is not a batch mean of "
                          f"per-sample terms, so it cannot take per-sample weights (Remix) or a "
                          f"head/tail split of the batch (ImbSAM)")

    def _no_per_sample_reason(self) -> str:
        return ""


class _PerSampleLoss(ImbalanceLoss):
    """A loss whose ``forward`` is the batch mean of :meth:`per_sample`."""

    @property
    def has_per_sample(self) -> bool:
        return True


def _buffer(module: nn.Module, name: str, value: Optional[np.ndarray]) -> None:
    module.register_buffer(name, _tensor(value), persistent=False)


# ============================================================================ losses
@LOSSES.register("CrossEntropy")
class CrossEntropy(_PerSampleLoss):
    """Softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""

    def __init__(self, *, label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing, "CrossEntropy")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _ce(logits.float(), targets, self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("FocalLoss")
class FocalLoss(_PerSampleLoss):
    """Focal loss (Lin et al. 2017), softmax form: ``-alpha_t (1 - p_t)^gamma log p_t``.

    ``alpha``: ``None`` (1); a float, applied uniformly to every class (Lin et al.'s alpha is
    the weight of the positive class in the binary/sigmoid form; in a K-way softmax there is no
    background class, so a scalar only scales the loss); or a per-class list of length K
    (``alpha_t = alpha[y]``, used as given). ``gamma = 0`` and ``alpha = None`` is exactly CE.

    The modulator is computed as ``exp(gamma * log(1 - p_t))`` with ``log(1 - p_t)`` a
    difference of log-sum-exps, so gradients stay finite for ``gamma < 1`` at any margin
    (``(1 - p_t)^gamma`` by ``pow`` gives NaN gradients once ``p_t`` rounds to 1). The
    official RetinaNet focal loss is the sigmoid form (see ``ClassBalancedLoss(base='focal')``);
    this softmax form is the one of the official LDAM-DRW code (``focal_loss`` there, with
    ``p_t = exp(-CE)``) when it has no class weights. No label smoothing (not defined here).
    """

    def __init__(self, *, gamma: float = 2.0, alpha: Union[None, float, Sequence[float]] = None,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__()
        self.gamma = _check_nonneg(gamma, "FocalLoss gamma")
        self.alpha_scalar: Optional[float] = None
        _buffer(self, "alpha", None)
        if alpha is not None:
            if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
                a = float(alpha)
                if not 0.0 <= a <= 1.0:
                    raise ConfigError(f"FocalLoss alpha={alpha!r} is outside the valid range [0, 1]")
                self.alpha_scalar = a
            else:
                a = np.asarray(alpha, dtype=np.float64).reshape(-1)
                if not np.all(np.isfinite(a)) or np.any(a < 0):
                    raise ConfigError("FocalLoss alpha entries must be finite and >= 0")
                if class_counts is not None and len(a) != len(np.asarray(class_counts).reshape(-1)):
                    raise ConfigError(
                        f"FocalLoss alpha has {len(a)} entries but there are "
                        f"{len(np.asarray(class_counts).reshape(-1))} classes"
                    )
                _buffer(self, "alpha", a)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        k = self.alpha.numel() if self.alpha is not None else None
        _check_targets(z, targets, k, "FocalLoss")
        if self.gamma == 0.0 and self.alpha is None and self.alpha_scalar is None:
            return _ce(z, targets)
        return self.per_sample(z, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        k = self.alpha.numel() if self.alpha is not None else None
        _check_targets(z, targets, k, "FocalLoss")
        loss = _softmax_focal_terms(z, targets, self.gamma)
        if self.alpha is not None:
            loss = self.alpha.to(z.device)[targets] * loss
        elif self.alpha_scalar is not None:
            loss = self.alpha_scalar * loss
        return loss


@LOSSES.register("ClassBalancedLoss")
class ClassBalancedLoss(_PerSampleLoss):
    """Class-balanced loss (Cui et al. 2019), weights ``(1 - beta) / (1 - beta^{n_y})``.

    Weights normalised to sum to K; ``loss = mean_i w[y_i] * L(z_i, y_i)`` with ``L``:

    * ``softmax``: ``-log softmax(z)_y``, label-smoothed when ``label_smoothing > 0`` (the
      official code calls ``tf.losses.softmax_cross_entropy(onehot, z, weights=w_y)``
      without smoothing; given ``label_smoothing=eps`` that function computes exactly this);
    * ``sigmoid``: ``-sum_j log sigmoid(z^t_j)``, ``z^t_j = z_j`` if j = y else ``-z_j``;
    * ``focal``: the paper's sigmoid focal loss ``-sum_j (1 - p^t_j)^gamma log p^t_j``,
      ``p^t_j = sigmoid(z^t_j)`` (gamma = 0 gives ``sigmoid``);
    * ``softmax_bce``: binary cross-entropy on the softmax probabilities,
      ``L = (1/K) sum_j BCE(p_j, [j = y])`` with ``p = softmax(z)``: the ``"softmax"`` branch of
      the widely copied PyTorch port (vandit15/Class-balanced-loss-pytorch), which the official
      weight-balancing code (ShadeAlsha/LTR-weight-balancing, ``utils/class_balanced_loss.py``)
      uses in its second stage; computed with ``F.binary_cross_entropy`` as there (so
      ``log`` is clamped at -100), averaged over the B*K entries with the weight ``w[y_i]`` on
      every entry of row i. It is not Cui et al.'s softmax CE.

    The batch reduction follows the official code (richardaecn/class-balanced-loss,
    ``src/cifar_main.py``): the weighted sum divided by the batch size (``sum(labels)``), for
    all three bases. Not part of the loss, but in the official code for ``sigmoid``/``focal``:
    the classifier bias is initialised to ``-log(K - 1)`` (prior 1/K per binary task) and is
    excluded from weight decay.

    Choosing ``beta``: the effective number of samples is ``E_n = (1 - beta^n) / (1 - beta)``.
    It is ``~ n`` while ``n << 1 / (1 - beta)`` and saturates at ``1 / (1 - beta)`` for
    ``n >> 1 / (1 - beta)``. So with small data the default ``beta = 0.9999``
    (``1/(1-beta) = 10000``) gives weights ``~ 1 / n`` (e.g. ``n_max = 480``: the weight
    ratio is within 2.5% of ``n_max / n_min``), i.e. plain inverse frequency; ``beta``
    around ``1 - 1/n_max`` (0.998 for ``n_max = 480``) gives a gentler weighting that
    saturates for the head classes; ``beta = 0`` is uniform. The max/min weight ratio
    ``(1 - beta^{n_max}) / (1 - beta^{n_min})`` is logged at construction and kept in
    ``weight_ratio``.
    """

    BASES = ("softmax", "sigmoid", "focal", "softmax_bce")

    def __init__(self, *, beta: float = 0.9999, base: str = "softmax", gamma: float = 2.0,
                 label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        if base not in self.BASES:
            raise UnknownNameError(
                f"unknown ClassBalancedLoss base {base!r}; valid: {', '.join(self.BASES)}"
            )
        self.beta = _check_beta(beta, "ClassBalancedLoss")
        self.base = base
        self.gamma = _check_nonneg(gamma, "ClassBalancedLoss gamma")
        self.label_smoothing = _check_smoothing(label_smoothing, "ClassBalancedLoss")
        if self.label_smoothing > 0 and base != "softmax":
            raise ConfigError(
                f"ClassBalancedLoss label_smoothing={label_smoothing!r} is defined only for "
                f"base='softmax', not base={base!r} (use label_smoothing=0)"
            )
        n = _counts(class_counts, "ClassBalancedLoss")
        w = effective_number_weights(n, self.beta)
        self.weight_ratio = float(w.max() / w.min())
        logger.info("ClassBalancedLoss beta=%g: weights max/min = %.4g (1/n would give %.4g; "
                    "1/(1-beta) = %.4g samples)", self.beta, self.weight_ratio,
                    float(n.max() / n.min()), 1.0 / (1.0 - self.beta))
        _buffer(self, "weight", w)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.weight.numel(), "ClassBalancedLoss")
        if self.base == "softmax":
            return _weighted_ce(z, targets, self.weight, self.label_smoothing)
        return self.per_sample(z, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.weight.numel(), "ClassBalancedLoss")
        w = self.weight.to(z.device)[targets]
        if self.base == "softmax":
            return w * F.cross_entropy(z, targets, reduction="none",
                                       label_smoothing=self.label_smoothing)
        onehot = F.one_hot(targets, z.shape[1]).to(z.dtype)
        if self.base == "softmax_bce":
            bce = F.binary_cross_entropy(F.softmax(z, dim=1), onehot, reduction="none")
            return w * bce.mean(dim=1)
        bce = F.binary_cross_entropy_with_logits(z, onehot, reduction="none")
        if self.base == "focal" and self.gamma != 0.0:
            # 1 - p^t = sigmoid(-z^t), computed stably: (1 - p^t)^gamma = exp(gamma * logsigmoid(-z^t))
            # (the official code's exp(-gamma y z - gamma log1p(exp(-z))), without its overflow).
            zt = torch.where(onehot > 0, z, -z)
            bce = torch.exp(self.gamma * F.logsigmoid(-zt)) * bce
        return w * bce.sum(dim=1)


@LOSSES.register("LDAMLoss")
class LDAMLoss(ImbalanceLoss):
    """LDAM with optional deferred re-weighting (Cao et al. 2019, official LDAM-DRW code).

    ``loss = CE(s * (z - m_y e_y), y)`` with margins ``m_c ∝ n_c^{-1/4}``, the largest equal
    to ``max_margin``, and scale ``s``. DRW: before epoch ``drw_start`` (or always, when it is
    None) no class weights; from ``drw_start`` the class-balanced weights
    ``(1 - drw_beta) / (1 - drw_beta^{n_c})`` normalised to sum to K, applied as
    ``F.cross_entropy(..., weight=w)`` (the official code's weighted mean
    ``sum_i w[y_i] l_i / sum_i w[y_i]``; its ``train_rule='DRW'`` switches at epoch 160 of 200
    with ``betas = [0, 0.9999]``, i.e. ``drw_start=160``). The official model feeds
    normalised (cosine) logits to this loss (``use_norm=True``); use the ``cosine_ldam``
    head for that.

    ``label_smoothing = eps`` smooths the CE on the margin-adjusted scaled logits, as
    ``F.cross_entropy(s * (z - m_y e_y), y, weight=w, label_smoothing=eps)`` does: with DRW
    active that is ``sum_i [(1 - eps) w[y_i] (-log p_{i,y_i}) + eps/K sum_c w[c] (-log p_ic)]
    / sum_i w[y_i]`` (PyTorch weights the smoothing term of class c by ``w[c]``); without DRW
    the plain smoothed CE. The official code has no label smoothing.

    The max/min ratio of the DRW weights is kept in ``drw_weight_ratio`` (and logged when DRW
    is on); see :class:`ClassBalancedLoss` for how ``drw_beta`` relates to the class sizes.
    """

    def __init__(self, *, max_margin: float = 0.5, scale: float = 30.0,
                 drw_start: Optional[int] = None, drw_beta: float = 0.9999,
                 label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        self.max_margin = _check_nonneg(max_margin, "LDAMLoss max_margin")
        s = float(scale)
        if not (math.isfinite(s) and s > 0):
            raise ConfigError(f"LDAMLoss scale={scale!r} must be a finite number > 0")
        self.scale = s
        if drw_start is not None and (int(drw_start) != drw_start or int(drw_start) < 0):
            raise ConfigError(f"LDAMLoss drw_start={drw_start!r} must be None or an integer >= 0")
        self.drw_start = None if drw_start is None else int(drw_start)
        self.drw_beta = _check_beta(drw_beta, "LDAMLoss DRW")
        self.label_smoothing = _check_smoothing(label_smoothing, "LDAMLoss")
        n = _counts(class_counts, "LDAMLoss")
        _buffer(self, "margins", ldam_margins(n, self.max_margin))
        w = effective_number_weights(n, self.drw_beta)
        self.drw_weight_ratio = float(w.max() / w.min())
        if self.drw_start is not None:
            logger.info("LDAMLoss DRW from epoch %d, beta=%g: weights max/min = %.4g (1/n would "
                        "give %.4g)", self.drw_start, self.drw_beta, self.drw_weight_ratio,
                        float(n.max() / n.min()))
        _buffer(self, "drw_weight", w)

    @property
    def drw_active(self) -> bool:
        return self.drw_start is not None and self.epoch >= self.drw_start

    @property
    def has_per_sample(self) -> bool:
        """Without DRW only: the DRW phase is a weighted mean normalised by the batch's weights."""
        return self.drw_start is None

    def _no_per_sample_reason(self) -> str:
        return " with DRW (drw_start set: sum_i w_i l_i / sum_i w_i)" if self.drw_start is not None else ""

    def _margin_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.margins.numel(), "LDAMLoss")
        m = self.margins.to(z.device)
        onehot = F.one_hot(targets, z.shape[1]).to(z.dtype)
        return self.scale * (z - onehot * m[targets][:, None])

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self._margin_logits(logits, targets)
        weight = self.drw_weight.to(out.device) if self.drw_active else None
        return F.cross_entropy(out, targets, weight=weight, label_smoothing=self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.has_per_sample:
            return super().per_sample(logits, targets)
        return F.cross_entropy(self._margin_logits(logits, targets), targets, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("ProgressiveLoss")
class ProgressiveLoss(_PerSampleLoss):
    """Progressive re-weighting: weighted CE whose re-weighting strength grows over the epochs.

    ``w_c(t) ∝ n_c^{-p(t)}`` normalised to sum to K, with the power ``p(t)`` linear from
    ``power_start`` at epoch 0 to ``power_end`` at epoch ``total_epochs - 1`` (constant
    afterwards; ``total_epochs = 1`` -> ``power_start``). ``p = 0`` is plain CE, ``p = 1``
    inverse-frequency re-weighting, ``p = 0.5`` square-root re-weighting; it is the loss-side
    twin of ``progressive_power`` sampling. ``loss = mean_i w[y_i] CE_i`` (``CE_i``
    label-smoothed when ``label_smoothing > 0``).
    """

    def __init__(self, *, power_start: float = 0.0, power_end: float = 1.0,
                 label_smoothing: float = 0.0, total_epochs: int = 1,
                 class_counts: Optional[CountsLike] = None) -> None:
        super().__init__()
        self.power_start = _check_nonneg(power_start, "ProgressiveLoss power_start")
        self.power_end = _check_nonneg(power_end, "ProgressiveLoss power_end")
        self.label_smoothing = _check_smoothing(label_smoothing, "ProgressiveLoss")
        self.total_epochs = _check_epochs(total_epochs)
        self._log_n = np.log(_counts(class_counts, "ProgressiveLoss"))
        _buffer(self, "weight", self._weights())

    def power_at(self, epoch: int) -> float:
        if self.total_epochs <= 1:
            return self.power_start
        t = min(max(epoch / (self.total_epochs - 1), 0.0), 1.0)
        return self.power_start + (self.power_end - self.power_start) * t

    @property
    def power(self) -> float:
        return self.power_at(self.epoch)

    def _weights(self) -> np.ndarray:
        return _normalise(np.exp(-self.power * self._log_n), "ProgressiveLoss")

    def _on_epoch(self) -> None:
        self.weight = _tensor(self._weights()).to(self.weight.device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.weight.numel(), "ProgressiveLoss")
        return _weighted_ce(z, targets, self.weight, self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.weight.numel(), "ProgressiveLoss")
        return _weighted_ce_terms(z, targets, self.weight, self.label_smoothing)


PRIORS = ("train", "sampled")


def _sampled_prior_table(sampled_prior: Any, k: Optional[int], who: str) -> np.ndarray:
    """Validate ``sampled_prior`` -> (E, K) float64 rows of class probabilities (sum 1)."""
    if isinstance(sampled_prior, torch.Tensor):
        sampled_prior = sampled_prior.detach().cpu().numpy()
    try:
        p = np.array(sampled_prior, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{who}: sampled_prior must be numbers, got {sampled_prior!r}") from None
    if p.ndim == 1:
        p = p[None, :]
    want = f"({k},) or (E, {k})" if k is not None else "(K,) or (E, K)"
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1 or (k is not None and p.shape[1] != k):
        raise ConfigError(f"{who}: sampled_prior has shape {tuple(np.shape(sampled_prior))}, "
                          f"expected {want}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ConfigError(f"{who}: sampled_prior entries must be finite and >= 0")
    zero = np.argwhere(p == 0)
    if zero.size:
        e, c = (int(x) for x in zero[0])
        classes = sorted({int(x) for x in zero[:, 1]})
        raise ConfigError(
            f"{who}: sampled_prior gives class(es) {classes} probability 0 (first at row {e}, "
            f"class {c}); the log prior would be -inf (a sampler that never draws a class "
            f"cannot be used with prior='sampled')"
        )
    return p / p.sum(axis=1, keepdims=True)


class _PriorAdjustedLoss(_PerSampleLoss):
    """Shared prior handling of :class:`BalancedSoftmaxLoss` and :class:`LogitAdjustmentLoss`.

    ``prior='train'``: the class prior of the training set, ``pi = n / sum n``.
    ``prior='sampled'``: the prior of the batches the loss actually sees, given as
    ``sampled_prior`` -- a (K,) vector of per-class probabilities of a drawn sample, or an
    (E, K) array with one row per epoch (a progressive sampler); ``set_epoch(e)`` uses row
    ``min(e, E - 1)`` (row 0 before the first ``set_epoch``). Rows are normalised to sum to 1
    (CE is invariant to the constant this changes); zero probabilities are refused.
    """

    _table: np.ndarray  # (E, K) class probabilities, one row per epoch

    def _init_prior(self, who: str, prior: str, sampled_prior: Any,
                    class_counts: Optional[CountsLike]) -> None:
        if prior not in PRIORS:
            raise UnknownNameError(f"unknown {who} prior {prior!r}; valid: {', '.join(PRIORS)}")
        self.prior = prior
        if prior == "train":
            if sampled_prior is not None:
                raise ConfigError(f"{who}: sampled_prior is used only with prior='sampled' "
                                  f"(got prior='train')")
            n = _counts(class_counts, who)
            self._table = (n / n.sum())[None, :]
        else:
            if sampled_prior is None:
                raise ConfigError(
                    f"{who}: prior='sampled' needs sampled_prior, a (K,) vector of per-class "
                    f"probabilities of a drawn sample or an (E, K) array (one row per epoch)"
                )
            n = _counts(class_counts, who, required=False, positive=False)
            self._table = _sampled_prior_table(sampled_prior, None if n is None else len(n), who)
            logger.info("%s: sampled prior (%d row(s)); first row %s", who, len(self._table),
                        np.array2string(self._table[0], precision=4))

    @property
    def prior_row(self) -> int:
        """Row of the prior table used at the current epoch."""
        return min(max(self.epoch, 0), len(self._table) - 1)

    @property
    def class_prior(self) -> np.ndarray:
        """The class prior ``pi`` (sums to 1) used at the current epoch."""
        return self._table[self.prior_row]


@LOSSES.register("BalancedSoftmaxLoss")
class BalancedSoftmaxLoss(_PriorAdjustedLoss):
    """Balanced Softmax (Ren et al. 2020): ``CE(z + log n, y)`` with ``n`` the class counts.

    As the official code (jiawei-ren/BalancedMetaSoftmax-Classification,
    ``loss/BalancedSoftmaxLoss.py``: ``logits + log(sample_per_class)``, then
    ``F.cross_entropy``). ``prior='sampled'`` (see :class:`_PriorAdjustedLoss`) uses
    ``z + log pi_sampled`` instead. Ren et al. (Sec. 3.3) observe that Balanced Softmax with
    class-balanced re-sampling over-balances (the label prior is compensated twice) and answer
    it with their Meta Sampler; ``prior='sampled'`` is the direct remedy of compensating the
    prior of the batches the loss actually sees (not in the official code). With a
    class-uniform sampler the loss is then plain CE. ``log n`` and ``log pi`` differ by a
    constant, to which CE is invariant. ``label_smoothing`` smooths the CE on the adjusted
    logits (not in the official code).
    """

    def __init__(self, *, prior: str = "train", sampled_prior: Any = None,
                 label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing, "BalancedSoftmaxLoss")
        self._init_prior("BalancedSoftmaxLoss", prior, sampled_prior, class_counts)
        if prior == "train":  # log n exactly as the official code (log pi + a constant)
            self._log_table = np.log(_counts(class_counts, "BalancedSoftmaxLoss"))[None, :]
        else:
            self._log_table = np.log(self._table)
        _buffer(self, "log_prior", self._log_table[self.prior_row])

    def _on_epoch(self) -> None:
        self.log_prior = _tensor(self._log_table[self.prior_row]).to(self.log_prior.device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.log_prior.numel(), "BalancedSoftmaxLoss")
        return _ce(z + self.log_prior.to(z.device), targets, self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.log_prior.numel(), "BalancedSoftmaxLoss")
        return F.cross_entropy(z + self.log_prior.to(z.device), targets, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("LogitAdjustmentLoss")
class LogitAdjustmentLoss(_PriorAdjustedLoss):
    """Logit-adjusted loss (Menon et al. 2021): ``CE(z + tau * log pi, y)``, ``pi = n / sum n``.

    Follows the official code (google-research ``logit_adjustment/utils.py``,
    ``build_loss_fn``): the adjustment is ``log(pi^tau + 1e-12)``, which equals the paper's
    ``tau * log pi`` except for priors with ``pi^tau`` near 1e-12 or below (there the code's
    guard bounds it at ``log 1e-12 = -27.6``). ``prior='sampled'`` (see
    :class:`_PriorAdjustedLoss`) uses the prior of the re-sampled batches the loss sees.
    ``label_smoothing`` smooths the CE on the adjusted logits (not in the official code).
    """

    EPS = 1e-12  # the official code's guard inside the log

    def __init__(self, *, tau: float = 1.0, prior: str = "train", sampled_prior: Any = None,
                 label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        t = float(tau)
        if not math.isfinite(t):
            raise ConfigError(f"LogitAdjustmentLoss tau={tau!r} must be a finite number")
        self.tau = t
        self.label_smoothing = _check_smoothing(label_smoothing, "LogitAdjustmentLoss")
        self._init_prior("LogitAdjustmentLoss", prior, sampled_prior, class_counts)
        self._adj_table = np.log(self._table ** t + self.EPS)
        _buffer(self, "adjustment", self._adj_table[self.prior_row])

    def _on_epoch(self) -> None:
        self.adjustment = _tensor(self._adj_table[self.prior_row]).to(self.adjustment.device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.adjustment.numel(), "LogitAdjustmentLoss")
        return _ce(z + self.adjustment.to(z.device), targets, self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.adjustment.numel(), "LogitAdjustmentLoss")
        return F.cross_entropy(z + self.adjustment.to(z.device), targets, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("CostSensitiveCE")
class CostSensitiveCE(_PerSampleLoss):
    """Cost-sensitive cross-entropy: ``mean_i w[y_i] * CE_i`` (Elkan 2001; Khan et al. 2018).

    ``w`` from ``cost_strategy`` (module docstring); with a manual KxK ``cost_matrix`` the
    weight of class y is its off-diagonal row mean ``mean_{j != y} C[y, j]``. With
    ``uniform`` costs the loss is exactly :class:`CrossEntropy` (with the same
    ``label_smoothing``). ``label_smoothing = eps``: ``mean_i w[y_i] CE_eps,i`` with the
    per-sample smoothed CE (module docstring).
    """

    def __init__(self, *, cost_strategy: str = "auto", cost_matrix: Any = None,
                 label_smoothing: float = 0.0, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        self.cost_strategy = COST_STRATEGIES.canonical(str(cost_strategy))
        self.label_smoothing = _check_smoothing(label_smoothing, "CostSensitiveCE")
        w = class_weights(class_counts, self.cost_strategy, cost_matrix, what="CostSensitiveCE")
        if self.cost_strategy == "uniform":
            w = None  # exactly CrossEntropy
        _buffer(self, "weight", w)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.weight is not None:
            _check_targets(z, targets, self.weight.numel(), "CostSensitiveCE")
        return _weighted_ce(z, targets, self.weight, self.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.weight is not None:
            _check_targets(z, targets, self.weight.numel(), "CostSensitiveCE")
        return _weighted_ce_terms(z, targets, self.weight, self.label_smoothing)


@LOSSES.register("CostSensitiveExpected")
class CostSensitiveExpected(_PerSampleLoss):
    """Expected misclassification cost (Bayes risk under the softmax): ``mean_i sum_j p_ij C[y_i, j]``.

    ``C`` is the manual KxK ``cost_matrix`` (scaled so that its off-diagonal row means sum to
    K), or ``C[y, j] = w_y`` for ``j != y`` and 0 on the diagonal with ``w`` from
    ``cost_strategy`` (a manual K-vector gives ``w``). With this default the loss is
    ``mean_i w[y_i] (1 - p_{i, y_i})``. Minimising it drives the softmax towards the Bayes
    decision under ``C`` (Elkan 2001). It is bounded and saturates when ``p_y -> 0``, so it
    fits fine-tuning (stage 2) better than training from scratch. No label smoothing (the
    loss has no target distribution to smooth).
    """

    def __init__(self, *, cost_strategy: str = "auto", cost_matrix: Any = None,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__()
        self.cost_strategy = COST_STRATEGIES.canonical(str(cost_strategy))
        _buffer(self, "cost", cost_matrix_from(class_counts, self.cost_strategy, cost_matrix,
                                               what="CostSensitiveExpected"))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        if self.cost is None:
            k = z.shape[1]
            cost = 1.0 - torch.eye(k, device=z.device, dtype=z.dtype)
        else:
            _check_targets(z, targets, self.cost.shape[0], "CostSensitiveExpected")
            cost = self.cost.to(z.device)
        p = F.softmax(z, dim=1)
        return (p * cost[targets]).sum(dim=1)


@LOSSES.register("CostSensitiveFocal")
class CostSensitiveFocal(_PerSampleLoss):
    """Cost-sensitive focal loss: ``mean_i w[y_i] (1 - p_t)^gamma (-log p_t)`` (softmax focal,
    Lin et al. 2017, with the class costs of :class:`CostSensitiveCE` as alpha_t).

    Same stable modulator as :class:`FocalLoss` (finite gradients for ``gamma < 1`` at any
    margin). The official LDAM-DRW code's weighted focal loss instead puts the class weight
    inside the CE (``p = exp(-w_y CE)``, ``(1 - p)^gamma w_y CE``); here the weight multiplies
    the focal term, as Lin et al.'s alpha_t. No label smoothing (not defined for the focal
    loss)."""

    def __init__(self, *, cost_strategy: str = "auto", gamma: float = 2.0, cost_matrix: Any = None,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__()
        self.cost_strategy = COST_STRATEGIES.canonical(str(cost_strategy))
        self.gamma = _check_nonneg(gamma, "CostSensitiveFocal gamma")
        w = class_weights(class_counts, self.cost_strategy, cost_matrix, what="CostSensitiveFocal")
        _buffer(self, "weight", None if self.cost_strategy == "uniform" else w)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        k = self.weight.numel() if self.weight is not None else None
        _check_targets(z, targets, k, "CostSensitiveFocal")
        per = _softmax_focal_terms(z, targets, self.gamma)
        if self.weight is not None:
            per = self.weight.to(z.device)[targets] * per
        return per


def _check_finite(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be a finite number") from None
    if not math.isfinite(v):
        raise ConfigError(f"{what}={value!r} must be a finite number")
    return v


@LOSSES.register("VSLoss")
class VSLoss(_PerSampleLoss):
    """Vector-scaling loss (Kini et al. 2021): ``CE(Delta * z + iota, y)``.

    Multiplicative ``Delta_c = (n_c / n_max)^gamma`` and additive ``iota_c = tau * log pi_c``
    (``pi = n / sum n``), ``gamma = vs_gamma``. As the official code (orparask/VS-Loss,
    ``class_imbalance/losses.py``, ``VSLoss``): the logits are divided by
    ``(n_max / n_c)^gamma`` (i.e. ``(1/n)^gamma / min_c (1/n_c)^gamma``) and ``tau * log pi``
    (no guard inside the log) is added; its defaults ``gamma = 0.3``, ``tau = 1.0``.
    ``vs_gamma = 0`` is the logit-adjusted loss (Menon et al. 2021) with ``tau``;
    ``vs_gamma = 0, tau = 0`` is plain CE; ``tau = 0`` is :class:`CDTLoss`. The official
    training script can add DRW/re-weighting class weights (its ``train_rule``); they are not
    part of this loss. ``label_smoothing`` smooths the CE on the adjusted logits (not in the
    official code).

    The keyword is ``vs_gamma``, not ``gamma``, so that a config's ``focal_gamma`` (mapped onto
    ``gamma``) never reaches it; ``tau`` is the logit-adjustment strength (``logit_tau``).
    """

    def __init__(self, *, vs_gamma: float = 0.3, tau: float = 1.0, label_smoothing: float = 0.0,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__()
        who = type(self).__name__
        self.vs_gamma = _check_nonneg(vs_gamma, f"{who} vs_gamma")
        self.tau = _check_finite(tau, f"{who} tau")
        self.label_smoothing = _check_smoothing(label_smoothing, who)
        n = _counts(class_counts, who)
        divisor = (n.max() / n) ** self.vs_gamma          # 1 / Delta_c, >= 1
        _buffer(self, "divisor", divisor)
        _buffer(self, "iota", self.tau * np.log(n / n.sum()))

    def adjusted_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``z / (n_max / n)^gamma + tau * log pi`` (float32)."""
        z = logits.float()
        return z / self.divisor.to(z.device) + self.iota.to(z.device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_targets(logits, targets, self.divisor.numel(), type(self).__name__)
        return F.cross_entropy(self.adjusted_logits(logits), targets, reduction="none",
                               label_smoothing=self.label_smoothing)


@LOSSES.register("CDTLoss")
class CDTLoss(VSLoss):
    """Class-dependent temperatures (Ye et al. 2020, "Identifying and compensating for feature
    deviation in imbalanced deep learning"): ``CE(z / a, y)`` with ``a_c = (n_max / n_c)^gamma``.

    During training the logit of class c is divided by ``a_c`` (1 for the largest class, larger
    for rarer classes), so the network must produce larger logits for the tail; at test time
    the raw logits are used. The paper's own code is not public; this is the official VS-loss
    code's ``--loss_type CDT`` (``VSLoss(tau=0, gamma)``, default ``gamma = 0.3``), i.e.
    :class:`VSLoss` with ``tau = 0``. ``cdt_gamma = 0`` is plain CE. ``label_smoothing`` as
    for :class:`VSLoss`.
    """

    def __init__(self, *, cdt_gamma: float = 0.3, label_smoothing: float = 0.0,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__(vs_gamma=cdt_gamma, tau=0.0, label_smoothing=label_smoothing,
                         class_counts=class_counts, total_epochs=total_epochs)
        self.cdt_gamma = self.vs_gamma


LAS_SHAPES = Registry("label-aware smoothing shape")


def _check_unit(value: Any, what: str) -> float:
    """A number in [0, 1) (a smoothing amount)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be a number in [0, 1)") from None
    if not 0.0 <= v < 1.0:
        raise ConfigError(f"{what}={value!r} is outside the valid range [0, 1)")
    return v


@LAS_SHAPES.register("concave")
def _las_concave(r: np.ndarray, head: float, tail: float, power: Optional[float]) -> np.ndarray:
    return tail + (head - tail) * np.sin(r * np.pi / 2.0)


@LAS_SHAPES.register("linear")
def _las_linear(r: np.ndarray, head: float, tail: float, power: Optional[float]) -> np.ndarray:
    return tail + (head - tail) * r


@LAS_SHAPES.register("convex")
def _las_convex(r: np.ndarray, head: float, tail: float, power: Optional[float]) -> np.ndarray:
    return head + (head - tail) * np.sin(1.5 * np.pi + r * np.pi / 2.0)


@LAS_SHAPES.register("exp")
def _las_exp(r: np.ndarray, head: float, tail: float, power: Optional[float]) -> np.ndarray:
    return tail + (head - tail) * np.power(r, power)


def label_aware_epsilons(class_counts: CountsLike, smooth_head: float = 0.3, smooth_tail: float = 0.0,
                         shape: str = "concave", power: Optional[float] = None) -> np.ndarray:
    """MiSLAS per-class smoothing ``eps_c = f(r_c)``, ``r_c = (n_c - n_K) / (n_1 - n_K)`` in
    [0, 1] (``n_1`` the largest, ``n_K`` the smallest count), float64:

    * ``concave``: ``eps_K + (eps_1 - eps_K) sin(pi r / 2)``;
    * ``linear``: ``eps_K + (eps_1 - eps_K) r``;
    * ``convex``: ``eps_1 + (eps_1 - eps_K) sin(3 pi / 2 + pi r / 2)``;
    * ``exp``: ``eps_K + (eps_1 - eps_K) r^power``;

    so the largest class gets ``eps_1 = smooth_head`` and the smallest ``eps_K = smooth_tail``
    (official ``methods.py``). When every class has the same count the official code divides
    0 by 0; here ``r = 1`` (every class is the largest: ``smooth_head``).
    """
    n = _counts(class_counts, "LabelAwareSmoothing")
    name = LAS_SHAPES.canonical(str(shape))
    head = _check_unit(smooth_head, "LabelAwareSmoothing smooth_head")
    tail = _check_unit(smooth_tail, "LabelAwareSmoothing smooth_tail")
    if name == "exp":
        if power is None:
            raise ConfigError("LabelAwareSmoothing shape='exp' needs power (a number > 0)")
        power = _check_nonneg(power, "LabelAwareSmoothing power")
        if power == 0:
            raise ConfigError("LabelAwareSmoothing power=0 must be > 0 (r^0 = 1 for every class)")
    elif power is not None:
        raise ConfigError(f"LabelAwareSmoothing power={power!r} is used only with shape='exp' "
                          f"(got shape={name!r})")
    span = n.max() - n.min()
    r = np.ones_like(n) if span == 0 else (n - n.min()) / span
    eps = LAS_SHAPES.get(name)(r, head, tail, power)
    if np.any(eps < 0) or np.any(eps >= 1):
        raise ConfigError(f"LabelAwareSmoothing gives smoothing outside [0, 1): {eps.tolist()}")
    return eps


@LOSSES.register("LabelAwareSmoothing")
class LabelAwareSmoothing(_PerSampleLoss):
    """Label-aware smoothing of MiSLAS (Zhong et al. 2021, official dvlab-research/MiSLAS,
    ``methods.py``): cross-entropy with a per-class smoothing ``eps_y``,

        ``l_i = (1 - eps_{y_i}) (-log p_{i,y_i}) + eps_{y_i} * (1/K) sum_c (-log p_ic)``,

    batch mean; ``eps`` from :func:`label_aware_epsilons` (head classes smoothed more).
    The official code has no defaults; its configs use ``smooth_head/smooth_tail`` = 0.3/0.0
    (ImageNet-LT, iNaturalist 2018, CIFAR-10-LT-100), 0.4/0.1 (CIFAR-100-LT-100, Places-LT),
    0.2/0.0 and 0.1/0.0 (smaller imbalance), always with the default ``shape='concave'``. It is
    used in stage 2 (classifier learning, with shift BN and a class-balanced sampler) after a
    mixup-trained stage 1. ``eps_1 = eps_K = eps`` is ordinary label smoothing; ``eps = 0`` is CE.
    Takes no ``label_smoothing`` (it is the smoothing).
    """

    def __init__(self, *, smooth_head: float = 0.3, smooth_tail: float = 0.0, shape: str = "concave",
                 power: Optional[float] = None, class_counts: Optional[CountsLike] = None,
                 total_epochs: int = 1) -> None:
        super().__init__()
        self.shape = LAS_SHAPES.canonical(str(shape))
        eps = label_aware_epsilons(class_counts, smooth_head, smooth_tail, self.shape, power)
        self.smooth_head, self.smooth_tail, self.power = float(smooth_head), float(smooth_tail), power
        _buffer(self, "smoothing", eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        _check_targets(z, targets, self.smoothing.numel(), "LabelAwareSmoothing")
        eps = self.smoothing.to(z.device)[targets]
        logp = F.log_softmax(z, dim=1)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)
        return (1.0 - eps) * nll - eps * logp.mean(dim=1)


LossSpec = Union[str, nn.Module, Mapping[str, Any]]


@LOSSES.register("CombinedLoss")
class CombinedLoss(ImbalanceLoss):
    """Weighted sum ``sum_k weights[k] * losses[k](logits, targets)`` (SEED's example).

    ``losses``: dict label -> ``nn.Module`` | loss name | ``{"name": ..., **kwargs}``, or a
    list of names/modules (labelled by name or position). Names are built with
    :func:`create_loss` (passing ``class_counts`` and ``total_epochs``). ``weights``: dict
    label -> float, list in the order of ``losses``, or ``None`` (equal weights summing to 1).
    The default is SEED's example: 0.7 CrossEntropy + 0.3 FocalLoss. ``set_epoch`` is
    forwarded to every part.

    ``shared``: keyword arguments given to every part built by name that accepts them (e.g.
    a config's ``focal_gamma`` as ``{"gamma": 2.0}`` reaches FocalLoss but not
    CrossEntropy); a part's own dict spec overrides a shared value. A shared key that no part
    accepts is an error; parts given as modules receive nothing.
    """

    def __init__(self, *, losses: Union[Mapping[str, LossSpec], Sequence[LossSpec], None] = None,
                 weights: Union[Mapping[str, float], Sequence[float], None] = None,
                 shared: Optional[Mapping[str, Any]] = None,
                 class_counts: Optional[CountsLike] = None, total_epochs: int = 1) -> None:
        super().__init__()
        if losses is None and weights is None:
            weights = {"CrossEntropy": 0.7, "FocalLoss": 0.3}
        items = self._items(losses)
        if shared is None:
            shared = {}
        if not isinstance(shared, Mapping):
            raise ConfigError(f"CombinedLoss shared must be a dict of keyword arguments, got {shared!r}")
        shared = {str(k): v for k, v in shared.items()}
        reserved = sorted(set(shared) & {"name", "class_counts", "total_epochs"})
        if reserved:
            raise ConfigError(f"CombinedLoss shared must not contain {reserved} (class_counts and "
                              f"total_epochs are given to CombinedLoss itself)")
        used: set = set()
        mods = nn.ModuleDict()
        for label, spec in items:
            mods[label] = self._build(label, spec, class_counts, total_epochs, shared, used)
        unused = sorted(set(shared) - used)
        if unused:
            raise ConfigError(
                f"CombinedLoss shared argument(s) {unused} are accepted by none of the parts "
                f"{[l for l, _ in items]}"
            )
        self.losses = mods
        labels = [l for l, _ in items]
        if weights is None:
            w = [1.0 / len(labels)] * len(labels)
        elif isinstance(weights, Mapping):
            unknown = sorted(set(map(str, weights)) - set(labels))
            missing = [l for l in labels if l not in weights]
            if unknown or missing:
                raise ConfigError(
                    f"CombinedLoss weights keys {sorted(map(str, weights))} must match the "
                    f"losses {labels}"
                )
            w = [float(weights[l]) for l in labels]
        else:
            w = [float(x) for x in weights]
            if len(w) != len(labels):
                raise ConfigError(
                    f"CombinedLoss has {len(labels)} losses but {len(w)} weights"
                )
        for x in w:
            if not math.isfinite(x):
                raise ConfigError(f"CombinedLoss weights must be finite, got {w}")
        self.weights: Dict[str, float] = dict(zip(labels, w))

    @staticmethod
    def _items(losses: Union[Mapping[str, LossSpec], Sequence[LossSpec], None]):
        """``losses`` -> ``[(label, spec), ...]`` (the default: SEED's CE + Focal)."""
        if losses is None:
            losses = {"CrossEntropy": "CrossEntropy", "FocalLoss": "FocalLoss"}
        if isinstance(losses, Mapping):
            items = [(str(k), v) for k, v in losses.items()]
        elif isinstance(losses, (list, tuple)):
            items = []
            for i, v in enumerate(losses):
                label = v if isinstance(v, str) else (
                    str(v.get("name")) if isinstance(v, Mapping) else f"loss{i}")
                if any(label == l for l, _ in items):
                    label = f"{label}_{i}"
                items.append((label, v))
        else:
            raise ConfigError("CombinedLoss losses must be a dict or a list of loss names/modules")
        if not items:
            raise ConfigError("CombinedLoss needs at least one loss")
        return items

    @classmethod
    def shared_keywords(cls, losses: Union[Mapping[str, LossSpec], Sequence[LossSpec], None] = None
                        ) -> set:
        """The keywords that at least one part of ``losses`` built by name accepts (what
        ``shared`` may hold), e.g. for a pipeline that maps its whole loss section onto
        ``shared``: ``{k: v for k, v in section.items() if k in shared_keywords(losses)}``."""
        out: set = set()
        for _, spec in cls._items(losses):
            name = spec if isinstance(spec, str) else (
                spec.get("name") if isinstance(spec, Mapping) else None)
            if name is not None:
                params = inspect.signature(LOSSES.get(str(name)).__init__).parameters
                out |= set(params)
        return out - {"self", "class_counts", "total_epochs"}

    @staticmethod
    def _build(label: str, spec: LossSpec, class_counts: Optional[CountsLike],
               total_epochs: int, shared: Mapping[str, Any], used: set) -> nn.Module:
        if isinstance(spec, nn.Module):
            return spec
        if isinstance(spec, str):
            name, own = spec, {}
        elif isinstance(spec, Mapping):
            own = dict(spec)
            name = own.pop("name", None)
            if name is None:
                raise ConfigError(f"CombinedLoss part {label!r} needs a 'name'")
        else:
            raise ConfigError(
                f"CombinedLoss part {label!r} must be a loss name, a dict with 'name', or a module"
            )
        given = {k: v for k, v in shared.items() if loss_accepts(str(name), k)}
        used.update(given)
        if given:
            logger.info("CombinedLoss part %r (%s) takes shared %s", label, name, sorted(given))
        kw = {**given, **own}
        kw.setdefault("class_counts", class_counts)
        kw.setdefault("total_epochs", total_epochs)
        return create_loss(str(name), **kw)

    def _on_epoch(self) -> None:
        for m in self.losses.values():
            if hasattr(m, "set_epoch"):
                m.set_epoch(self.epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = None
        for label, m in self.losses.items():
            part = self.weights[label] * m(logits, targets).float()
            total = part if total is None else total + part
        return total

    @property
    def has_per_sample(self) -> bool:
        """When every part has a per-sample form."""
        return all(bool(getattr(m, "has_per_sample", False)) for m in self.losses.values())

    def _no_per_sample_reason(self) -> str:
        bad = [l for l, m in self.losses.items() if not getattr(m, "has_per_sample", False)]
        return f" (part(s) {bad})" if bad else ""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.has_per_sample:
            return super().per_sample(logits, targets)
        total = None
        for label, m in self.losses.items():
            part = self.weights[label] * m.per_sample(logits, targets).float()
            total = part if total is None else total + part
        return total


# ============================================================================ factory
_USES_COUNTS = {"ClassBalancedLoss", "LDAMLoss", "ProgressiveLoss", "BalancedSoftmaxLoss",
                "LogitAdjustmentLoss", "CostSensitiveCE", "CostSensitiveExpected",
                "CostSensitiveFocal", "VSLoss", "CDTLoss", "LabelAwareSmoothing"}


def loss_uses_class_counts(name: str) -> bool:
    """Whether the loss ``name`` reads the class counts (CombinedLoss: if any part may)."""
    canon = LOSSES.canonical(str(name))
    return canon in _USES_COUNTS or canon == "CombinedLoss"


def supports_per_sample(loss: nn.Module) -> bool:
    """Whether ``loss`` (a built loss module) has a per-sample form ``loss.per_sample(z, y)``
    whose batch mean is ``loss(z, y)`` (see the module docstring)."""
    return bool(getattr(loss, "has_per_sample", False)) and callable(getattr(loss, "per_sample", None))


def loss_accepts(name: str, keyword: str) -> bool:
    """Whether the constructor of loss ``name`` takes the keyword argument ``keyword``
    (e.g. ``loss_accepts("FocalLoss", "label_smoothing")`` is False). Unknown names raise
    :class:`UnknownNameError`. For ``CombinedLoss`` this is about CombinedLoss itself; its
    parts get keywords through ``shared``."""
    cls = LOSSES.get(str(name))
    return str(keyword) != "self" and str(keyword) in inspect.signature(cls.__init__).parameters


def create_loss(name: str, class_counts: Optional[CountsLike] = None, **kwargs: Any) -> nn.Module:
    """Build loss ``name`` from :data:`LOSSES` with ``class_counts`` and keyword arguments.

    Unknown names raise :class:`UnknownNameError` listing the valid ones; unknown keyword
    arguments raise :class:`ConfigError` listing the accepted ones.
    """
    cls = LOSSES.get(str(name))
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        raise ConfigError(
            f"{LOSSES.canonical(str(name))} got unknown argument(s) {bad}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(class_counts=class_counts, **kwargs)
