"""Batch-mixing augmentations (registry ``MIXES``): mixup, Remix, Balanced-MixUp, CutMix 1-D.

A mix is applied by the training loop to a TRAINING batch on its device, after the per-sample
augmentations (the dataset's transform) and before the forward pass; validation, test and
feature extraction never mix. Every mix is a callable

    x_mixed, target = mix(x, y)                    # mixup, remix, cutmix1d
    x_mixed, target = mix(x, y, x_bal, y_bal)      # balanced_mixup (second, class-balanced batch)

with ``x`` of shape ``(B, C, L)`` (any ``(B, ...)`` for the interpolating mixes), and returns a
:class:`MixedTarget` ``(y_a, y_b, weight_a)``: sample i's label is ``y_a[i]`` with weight
``weight_a[i]`` and ``y_b[i]`` with ``1 - weight_a[i]``. The loss is :func:`mixed_loss`:

* one label coefficient for the whole batch (mixup, CutMix, Balanced-MixUp):
  ``lam * L(z, y_a) + (1 - lam) * L(z, y_b)`` with the loss as it is (the official
  ``mixup_criterion``), so every registered loss takes it;
* per-sample label weights (Remix): ``mean_i [w_i l(z_i, y_a_i) + (1 - w_i) l(z_i, y_b_i)]``
  with the loss's per-sample form (``loss.per_sample``); a loss without one (LDAMLoss with
  DRW, a batch-normalised weighted mean) is refused with a :class:`ConfigError`
  (:func:`check_loss_compatible` says so before training starts).

Randomness: as the official code, the mixing coefficient comes from ``numpy.random`` (global
state) and the pairing permutation from ``torch.randperm`` (global torch RNG), so seeding and
the checkpointed RNG states make a run reproducible. ``prob`` (default 1) is the chance that a
batch is mixed at all (CutMix's ``cutmix_prob``; the other official codes always mix); an
unmixed batch comes back as it was with ``y_b = y_a`` and weight 1.

Config (proposed): ``data.augment.mix.name`` (none | mixup | remix | balanced_mixup |
cutmix1d), ``alpha`` (null: the method's default), ``prob``, ``kappa`` and ``tau`` (Remix).
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .losses import supports_per_sample
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["MIXES", "MixedTarget", "BatchMix", "Mixup", "Remix", "BalancedMixup", "CutMix1d",
           "create_mix", "mixed_loss", "mixed_correct", "check_loss_compatible", "remix_label_weights"]

MIXES = Registry("mix")


@dataclass(frozen=True)
class MixedTarget:
    """Labels of a mixed batch: sample i is ``y_a[i]`` with weight ``weight_a[i]`` and ``y_b[i]``
    with ``1 - weight_a[i]``.

    ``lam``: the share of the first input in every mixed sample (float, for logging).
    ``label_lam``: the one label weight of the whole batch, or ``None`` when the weights differ
    per sample (Remix), which makes :func:`mixed_loss` use the loss's per-sample form.
    """

    y_a: torch.Tensor
    y_b: torch.Tensor
    weight_a: torch.Tensor
    lam: float
    label_lam: Optional[float]

    @property
    def per_sample(self) -> bool:
        return self.label_lam is None

    def __len__(self) -> int:
        return int(self.y_a.shape[0])

    @classmethod
    def unmixed(cls, y: torch.Tensor) -> "MixedTarget":
        return cls(y, y, torch.ones(y.shape[0], device=y.device), 1.0, 1.0)


Target = Union[torch.Tensor, MixedTarget]


# ------------------------------------------------------------------------------------ checks
def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be a number > 0") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{what}={value!r} must be a finite number > 0")
    return v


def _unit(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{what}={value!r} is outside the valid range [0, 1]")
    return v


def _check_batch(x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{who}: expected x of shape (B, ...) and y of shape (B,), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")


# ------------------------------------------------------------------------------------- mixes
class BatchMix:
    """Base class: ``alpha`` (> 0) of the Beta distribution and ``prob`` (chance to mix)."""

    DEFAULT_ALPHA = 1.0
    needs_second_batch = False
    per_sample_labels = False

    def __init__(self, *, alpha: Optional[float] = None, prob: float = 1.0) -> None:
        who = type(self).__name__
        self.alpha = _positive(self.DEFAULT_ALPHA if alpha is None else alpha, f"{who} alpha")
        self.prob = _unit(prob, f"{who} prob")

    def _skip(self) -> bool:
        """Whether this batch stays unmixed (one uniform draw, only when ``prob < 1``)."""
        return self.prob < 1.0 and not (np.random.rand() < self.prob)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha:g}, prob={self.prob:g})"


@MIXES.register("mixup")
class Mixup(BatchMix):
    """mixup (Zhang et al. 2018; official facebookresearch/mixup-cifar10, ``mixup_data``).

    One ``lam ~ Beta(alpha, alpha)`` per batch, a random permutation ``perm`` of the batch:
    ``x = lam * x + (1 - lam) * x[perm]``, labels ``(y, y[perm])`` with weight ``lam``.
    Default ``alpha = 1`` (the official script's default; MiSLAS's stage 1 uses 1.0 on CIFAR and
    0.2 on ImageNet-scale data).
    """

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, MixedTarget]:
        _check_batch(x, y, "mixup")
        if self._skip():
            return x, MixedTarget.unmixed(y)
        lam = float(np.random.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], device=x.device)
        mixed = lam * x + (1.0 - lam) * x[perm]
        w = torch.full((y.shape[0],), lam, device=y.device)
        return mixed, MixedTarget(y, y[perm], w, lam, lam)


def remix_label_weights(n_a: torch.Tensor, n_b: torch.Tensor, lam: float, *, kappa: float = 3.0,
                        tau: float = 0.5) -> torch.Tensor:
    """Remix's label weight of ``y_a`` per sample (Chou et al. 2020, eq. for ``lambda_y``):

    * 0 if ``n_a / n_b >= kappa`` and ``lam < tau`` (a is the majority and contributes little
      of the input: the label goes to the minority class b);
    * 1 if ``n_a / n_b <= 1 / kappa`` and ``1 - lam < tau`` (the mirror case);
    * ``lam`` otherwise (mixup).

    ``n_a``, ``n_b``: the training counts of each sample's two classes; ``lam`` the input
    coefficient of a.
    """
    ratio = n_a.double() / n_b.double()
    w = torch.full(ratio.shape, float(lam), dtype=torch.float32, device=ratio.device)
    w = torch.where((ratio >= kappa) & (lam < tau), torch.zeros_like(w), w)
    w = torch.where((ratio <= 1.0 / kappa) & (1.0 - lam < tau), torch.ones_like(w), w)
    return w


@MIXES.register("remix")
class Remix(BatchMix):
    """Remix: rebalanced mixup (Chou et al., ECCV 2020 workshops).

    Inputs as :class:`Mixup` (one ``lam ~ Beta(alpha, alpha)`` per batch, a permutation); the
    label weight of ``y_a`` is set per sample by :func:`remix_label_weights` from the class
    counts: when a majority sample (``n_a >= kappa * n_b``) is mixed in with less than ``tau``
    of the input, the whole label goes to the minority class. Defaults are the paper's
    ``kappa = 3``, ``tau = 0.5`` (and ``alpha = 1``). The authors released no code; the rule
    follows the paper's definition of ``lambda_y`` (which the open imbalanced-DL
    re-implementations use as well). The loss needs a per-sample form (see module docstring).
    """

    per_sample_labels = True

    def __init__(self, *, class_counts: Sequence[int], alpha: Optional[float] = None, prob: float = 1.0,
                 kappa: float = 3.0, tau: float = 0.5) -> None:
        super().__init__(alpha=alpha, prob=prob)
        if class_counts is None:
            raise ConfigError("remix needs class_counts (training samples per class)")
        n = torch.as_tensor(np.asarray(class_counts, dtype=np.float64).reshape(-1))
        if n.numel() == 0 or not torch.isfinite(n).all() or (n < 0).any():
            raise ConfigError(f"remix: class_counts must be finite counts >= 0, got {n.tolist()}")
        self.counts = n
        self.kappa = _positive(kappa, "remix kappa")
        if self.kappa < 1.0:
            raise ConfigError(f"remix kappa={kappa!r} must be >= 1 (n_a / n_b >= kappa marks a majority)")
        self.tau = _unit(tau, "remix tau")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, MixedTarget]:
        _check_batch(x, y, "remix")
        if self._skip():
            return x, MixedTarget.unmixed(y)
        lam = float(np.random.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], device=x.device)
        mixed = lam * x + (1.0 - lam) * x[perm]
        yb = y[perm]
        counts = self.counts.to(y.device)
        if int(y.max()) >= counts.numel() or bool(((counts[y] == 0) | (counts[yb] == 0)).any()):
            raise ValueError(f"remix: a batch label has no training count (counts for "
                             f"{counts.numel()} classes, labels up to {int(y.max())})")
        w = remix_label_weights(counts[y], counts[yb], lam, kappa=self.kappa, tau=self.tau)
        return mixed, MixedTarget(y, yb, w, lam, None)

    def __repr__(self) -> str:
        return f"Remix(alpha={self.alpha:g}, prob={self.prob:g}, kappa={self.kappa:g}, tau={self.tau:g})"


@MIXES.register("balanced_mixup")
class BalancedMixup(BatchMix):
    """Balanced-MixUp (Galdran et al., MICCAI 2021; official agaldran/balanced_mixup,
    ``train_lt_mxp.py``): mix an instance-sampled batch with a class-balanced batch.

    ``lam ~ Beta(alpha, 1)``: ``x = (1 - lam) * x + lam * x_bal``, labels ``(y, y_bal)`` with
    the weight ``1 - lam`` on ``y`` (the official code builds the soft one-hot target and uses
    soft-target CE; with a CE-family loss this equals :func:`mixed_loss`, other losses are
    interpolated). No permutation: sample i of one batch meets sample i of the other. The
    second batch comes from a loader over the same training set with a class-balanced sampler
    (the official ``ComboLoader``; the epoch ends with the shorter loader). Default
    ``alpha = 0.2`` (the value most of the official experiment configs use; 0.1-0.4 appear).
    """

    DEFAULT_ALPHA = 0.2
    needs_second_batch = True

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_bal: torch.Tensor,
                 y_bal: torch.Tensor) -> Tuple[torch.Tensor, MixedTarget]:
        _check_batch(x, y, "balanced_mixup")
        _check_batch(x_bal, y_bal, "balanced_mixup (balanced batch)")
        if x.shape != x_bal.shape:
            raise ValueError(f"balanced_mixup: the instance batch {tuple(x.shape)} and the class-"
                             f"balanced batch {tuple(x_bal.shape)} must have the same shape (same "
                             f"batch size and signal length)")
        if self._skip():
            return x, MixedTarget.unmixed(y)
        lam = float(np.random.beta(self.alpha, 1.0))
        mixed = (1.0 - lam) * x + lam * x_bal.to(x.device)
        w = torch.full((y.shape[0],), 1.0 - lam, device=y.device)
        return mixed, MixedTarget(y, y_bal.to(y.device), w, 1.0 - lam, 1.0 - lam)


@MIXES.register("cutmix1d")
class CutMix1d(BatchMix):
    """CutMix (Yun et al. 2019; official clovaai/CutMix-PyTorch, ``train.py``) on the time axis.

    ``lam ~ Beta(alpha, alpha)``, a permutation ``perm``; a segment of length
    ``int(L * (1 - lam))`` centred at ``c ~ U{0..L-1}`` and clipped to ``[0, L)`` (the official
    ``rand_bbox`` in one dimension: ``[c - cut//2, c + cut//2)`` clipped) is replaced by the same
    segment of ``x[perm]``, in every channel; ``lam`` is then recomputed from the segment
    actually replaced: ``1 - (x2 - x1) / L``. Labels ``(y, y[perm])`` with weight ``lam``.
    ``prob`` is the official ``cutmix_prob`` (its examples: 0.5 on CIFAR, 1.0 on ImageNet);
    default ``alpha = 1`` (the official ``beta``). The input is not modified in place.
    """

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, MixedTarget]:
        _check_batch(x, y, "cutmix1d")
        if x.dim() != 3:
            raise ValueError(f"cutmix1d: expected x of shape (B, C, L), got {tuple(x.shape)}")
        if self._skip():
            return x, MixedTarget.unmixed(y)
        lam = float(np.random.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], device=x.device)
        x1, x2 = self.segment(x.shape[-1], lam)
        mixed = x.clone()
        mixed[..., x1:x2] = x[perm][..., x1:x2]
        lam = 1.0 - (x2 - x1) / x.shape[-1]
        w = torch.full((y.shape[0],), lam, device=y.device)
        return mixed, MixedTarget(y, y[perm], w, lam, lam)

    @staticmethod
    def segment(length: int, lam: float) -> Tuple[int, int]:
        """``(x1, x2)``: the replaced time segment ``[x1, x2)`` for a drawn ``lam`` (draws the
        centre from ``numpy.random``)."""
        cut = int(length * (1.0 - lam))
        c = int(np.random.randint(length))
        return int(np.clip(c - cut // 2, 0, length)), int(np.clip(c + cut // 2, 0, length))


# ----------------------------------------------------------------------------------- factory
def create_mix(name: Optional[str], *, alpha: Optional[float] = None, prob: float = 1.0,
               class_counts: Optional[Sequence[int]] = None, **kwargs: Any) -> Optional[BatchMix]:
    """Build mix ``name`` from :data:`MIXES` (``None``/``'none'`` -> ``None``: no mixing).

    ``alpha=None`` takes the method's default; ``class_counts`` is passed to the mixes that
    use it (Remix) and ignored by the others; other keywords (``kappa``, ``tau``) must be
    accepted by the mix, else :class:`ConfigError` lists the accepted ones.
    """
    if name is None or str(name).lower() == "none":
        return None
    cls = MIXES.get(str(name))
    params = inspect.signature(cls.__init__).parameters
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        accepted = [p for p in params if p not in ("self", "class_counts")]
        raise ConfigError(f"mix {MIXES.canonical(str(name))} got unknown argument(s) {bad}; "
                          f"accepted: {', '.join(accepted)}")
    if "class_counts" in params:
        kwargs["class_counts"] = class_counts
    mix = cls(alpha=alpha, prob=prob, **kwargs)
    logger.info("batch mixing: %r", mix)
    return mix


# ------------------------------------------------------------------------------------- losses
def check_loss_compatible(mix: Optional[BatchMix], loss_fn: nn.Module, *, key: str = "data.augment.mix.name"
                          ) -> None:
    """Refuse (ConfigError) a loss that cannot take this mix's targets: per-sample label
    weights (Remix) need ``loss.per_sample`` (see :func:`imbalance.losses.supports_per_sample`)."""
    if mix is None or not mix.per_sample_labels:
        return
    if not supports_per_sample(loss_fn):
        raise _per_sample_refusal(loss_fn, key)


def _per_sample_refusal(loss_fn: nn.Module, key: str = "data.augment.mix.name") -> ConfigError:
    return ConfigError(f"{key}=remix weights each sample's two labels separately, which needs a loss "
                       f"that is a mean of per-sample terms; {type(loss_fn).__name__} is not (LDAMLoss "
                       f"with DRW normalises by the batch's weights); use mixup/cutmix1d or another loss")


def mixed_loss(loss_fn: nn.Module, logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The loss of a (possibly) mixed batch; a plain label tensor gives ``loss_fn(logits, y)``.

    One label weight per batch: ``lam * loss_fn(z, y_a) + (1 - lam) * loss_fn(z, y_b)`` (just
    ``loss_fn(z, y_a)`` when ``lam == 1``). Per-sample weights (Remix):
    ``mean_i [w_i l_i(y_a) + (1 - w_i) l_i(y_b)]`` with ``loss_fn.per_sample``.
    """
    if not isinstance(target, MixedTarget):
        return loss_fn(logits, target)
    if target.label_lam is not None:
        lam = float(target.label_lam)
        if lam == 1.0:
            return loss_fn(logits, target.y_a)
        if lam == 0.0:
            return loss_fn(logits, target.y_b)
        return lam * loss_fn(logits, target.y_a) + (1.0 - lam) * loss_fn(logits, target.y_b)
    if not supports_per_sample(loss_fn):
        raise _per_sample_refusal(loss_fn)
    w = target.weight_a.to(device=logits.device, dtype=torch.float32)
    la = loss_fn.per_sample(logits, target.y_a)
    lb = loss_fn.per_sample(logits, target.y_b)
    return (w * la + (1.0 - w) * lb).mean()


def mixed_correct(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Number of correct predictions, each mixed sample counted as ``w [pred = y_a] + (1 - w)
    [pred = y_b]`` (as the official mixup code's training accuracy); a float tensor."""
    pred = logits.detach().argmax(dim=1)
    if not isinstance(target, MixedTarget):
        return (pred == target).sum().float()
    w = target.weight_a.to(device=pred.device, dtype=torch.float32)
    return (w * (pred == target.y_a).float() + (1.0 - w) * (pred == target.y_b).float()).sum()
