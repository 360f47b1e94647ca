"""Class-aware re-sampling for long-tailed training (SEED.md section 1, "重采样策略").

Every sampler here draws an epoch in two steps (Kang et al. 2020, "Decoupling Representation
and Classifier"; Zhang et al. 2023, "How Re-sampling Helps for Long-Tail Learning?"):

1. the CLASS of each draw, with probability proportional to ``n_c ** alpha``
   (``n_c`` = training samples of class ``c``); classes with ``n_c = 0`` get probability 0;
2. a sample uniformly within that class.

So the per-sample probability is ``n_c ** alpha / n_c`` (up to a constant):

=====================  =========================================================
name                   alpha
=====================  =========================================================
``none``               no sampler (``make_sampler`` returns ``None``: shuffle)
``inv_freq``           0  (per-sample weight ``1/n_c`` -> uniform over classes)
``class_balanced``     0  (alias ``class_uniform``: pick a class, then a sample)
``sqrt``               0.5 (Mahajan et al. 2018; LVIS repeat-factor style)
``power``              ``alpha`` (0 = class-uniform, 1 = the natural distribution)
``progressive_power``  linear from ``alpha_start`` at epoch 0 to ``alpha_end`` at
                       epoch ``total_epochs - 1`` (Kang et al. 2020), advanced by
                       :meth:`ClassAwareSampler.set_epoch`
=====================  =========================================================

Draws are a pure function of ``(seed, epoch)``: resuming at epoch ``e`` reproduces epoch ``e``.
Drawing is vectorised (no Python loop over samples): the classes come from Walker's alias
method (Vose's table over the K class probabilities: O(1) per draw, exact), and the position
inside the class from a per-class offset table into the label-sorted sample indices. With ``num_replicas > 1`` every rank makes
the same global draw of ``ceil(num_samples / num_replicas) * num_replicas`` indices and takes
positions ``rank::num_replicas``, so the shards are disjoint slices of one draw.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from .errors import ConfigError, DataError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "ClassAwareSampler", "make_sampler", "class_draw_probabilities"]

SAMPLERS = Registry("sampler")

LabelsLike = Union[np.ndarray, torch.Tensor, Sequence[int]]


def _check_alpha(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sampler {name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ConfigError(f"sampler {name}={value!r} is outside the valid range [0, 1]")
    return v


def _as_labels(labels: LabelsLike, num_classes: Optional[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise DataError(f"sampler labels must be a 1-D array, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise DataError("sampler labels are empty: the training set has no samples")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError("sampler labels must be integers 0..K-1")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise DataError(f"sampler labels must be integers 0..K-1, found {int(arr.min())}")
    if num_classes is not None and arr.max() >= num_classes:
        raise DataError(
            f"sampler label {int(arr.max())} is out of range for num_classes={num_classes}"
        )
    return arr


def class_draw_probabilities(class_counts: Sequence[int], alpha: float) -> np.ndarray:
    """Per-class draw probabilities ``n_c**alpha / sum_k n_k**alpha`` (0 where ``n_c = 0``)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    w = np.zeros_like(counts)
    present = counts > 0
    w[present] = counts[present] ** float(alpha)
    total = w.sum()
    if total <= 0:
        raise DataError("sampler needs at least one class with training samples")
    return w / total


def _alias_table(probs: np.ndarray):
    """Vose's alias table for ``probs`` -> (keep probability, alias) with classes of
    probability 0 never drawn (keep 0, alias a class with positive probability)."""
    k = len(probs)
    scaled = np.asarray(probs, dtype=np.float64) * k
    keep = np.ones(k, dtype=np.float64)
    alias = np.arange(k, dtype=np.int64)
    zero = scaled <= 0
    # Zero-probability columns first, so that they are paired while large columns remain.
    small = [int(i) for i in np.flatnonzero(zero)] + [int(i) for i in np.flatnonzero(~zero & (scaled < 1.0))]
    small.reverse()  # pop() from the end -> zero columns come out first
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    p = scaled.tolist()
    while small and large:
        s, l = small.pop(), large.pop()
        keep[s] = p[s]
        alias[s] = l
        p[l] = p[l] - (1.0 - p[s])
        (small if p[l] < 1.0 else large).append(l)
    # Leftovers (round-off) keep themselves, except columns of probability 0.
    best = int(np.argmax(scaled))
    keep[zero] = 0.0
    alias[zero & (alias == np.arange(k))] = best
    return keep, alias


class ClassAwareSampler(Sampler[int]):
    """Draw a class with probability ``∝ n_c ** alpha(epoch)``, then a sample within it.

    ``alpha(epoch)`` moves linearly from ``alpha_start`` (epoch 0) to ``alpha_end`` (epoch
    ``total_epochs - 1``) and stays at ``alpha_end`` afterwards; with ``alpha_start ==
    alpha_end`` (or ``total_epochs == 1``) it is constant (``alpha_start``).

    :meth:`epoch_indices` returns this epoch's indices for this rank as a LongTensor (what the
    pipeline's batch loader uses); ``__iter__`` yields the same indices as Python ints.
    """

    def __init__(
        self,
        labels: LabelsLike,
        *,
        alpha_start: float,
        alpha_end: Optional[float] = None,
        total_epochs: int = 1,
        num_samples: Optional[int] = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_classes: Optional[int] = None,
        name: str = "power",
    ) -> None:
        self.name = name
        self.alpha_start = _check_alpha("alpha_start" if alpha_end is not None else "alpha",
                                        alpha_start)
        self.alpha_end = self.alpha_start if alpha_end is None else _check_alpha("alpha_end",
                                                                                 alpha_end)
        if int(total_epochs) != total_epochs or int(total_epochs) < 1:
            raise ConfigError(f"sampler total_epochs must be an integer >= 1, got {total_epochs!r}")
        self.total_epochs = int(total_epochs)
        if int(num_replicas) < 1:
            raise ConfigError(f"sampler num_replicas must be >= 1, got {num_replicas!r}")
        if not 0 <= int(rank) < int(num_replicas):
            raise ConfigError(f"sampler rank must be in [0, {int(num_replicas) - 1}], got {rank!r}")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)

        lab = _as_labels(labels, num_classes)
        k = int(num_classes) if num_classes is not None else int(lab.max()) + 1
        self.num_classes = k
        counts = np.bincount(lab, minlength=k).astype(np.int64)
        self.class_counts = counts
        self.dataset_size = int(lab.size)
        if num_samples is None:
            num_samples = self.dataset_size
        if int(num_samples) != num_samples or int(num_samples) < 1:
            raise ConfigError(f"sampler num_samples must be an integer >= 1, got {num_samples!r}")
        self.num_samples = int(num_samples)
        self.per_replica = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.per_replica * self.num_replicas

        # Label-sorted sample indices and each class's start offset in that order.
        self._sorted_idx = torch.from_numpy(np.argsort(lab, kind="stable").astype(np.int64))
        self._counts_t = torch.from_numpy(counts)
        offsets = np.zeros(k, dtype=np.int64)
        offsets[1:] = np.cumsum(counts)[:-1]
        self._offsets_t = torch.from_numpy(offsets)
        self.epoch = 0

    # ------------------------------------------------------------------ schedule
    def alpha_at(self, epoch: int) -> float:
        if self.total_epochs <= 1 or self.alpha_start == self.alpha_end:
            return self.alpha_start
        t = min(max(epoch / (self.total_epochs - 1), 0.0), 1.0)
        return self.alpha_start + (self.alpha_end - self.alpha_start) * t

    @property
    def alpha(self) -> float:
        """The exponent in use for the current epoch."""
        return self.alpha_at(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def class_probabilities(self) -> np.ndarray:
        """Current per-class draw probabilities (sum to 1; 0 for classes without samples)."""
        return class_draw_probabilities(self.class_counts, self.alpha)

    # ------------------------------------------------------------------ drawing
    def _generator(self) -> torch.Generator:
        # A pure function of (seed, epoch); SeedSequence mixes them so that (seed, epoch) pairs
        # such as (0, 1) and (1, 0) do not share a stream.
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch & 0xFFFFFFFF,
                                        0x5A3D]).generate_state(2, dtype=np.uint32)
        g = torch.Generator()
        g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        return g

    def global_indices(self) -> torch.Tensor:
        """All ``total_size`` indices of this epoch (every rank draws the same ones).

        The draw is the single-process draw of ``num_samples`` indices, padded by wrapping to a
        multiple of ``num_replicas``, so that the ranks' shards together are exactly what one
        process would train on."""
        g = self._generator()
        prob, alias = _alias_table(self.class_probabilities())
        k = self.num_classes
        n_draw = self.num_samples
        # Walker's alias method: column j uniform, keep j with probability prob[j], else alias[j].
        # The integer and fractional parts of u*K are independent uniforms (float64).
        u = torch.rand(n_draw, generator=g, dtype=torch.float64).mul_(k)
        col = u.long().clamp_(max=k - 1)
        frac = u.sub_(col)
        cls = torch.where(frac < torch.from_numpy(prob)[col], col, torch.from_numpy(alias)[col])
        # Uniform position inside the class, via the class's offset into the sorted indices.
        n = self._counts_t[cls]
        v = torch.rand(n_draw, generator=g, dtype=torch.float64)
        pos = torch.minimum(v.mul_(n).long(), n - 1)
        idx = self._sorted_idx[self._offsets_t[cls] + pos]
        if self.total_size > n_draw:
            idx = torch.cat([idx, idx[: self.total_size - n_draw]])
        return idx

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's indices for this rank (LongTensor of length ``len(self)``)."""
        idx = self.global_indices()
        if self.num_replicas > 1:
            idx = idx[self.rank :: self.num_replicas]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return self.per_replica

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, int]:
        return {"epoch": int(self.epoch), "seed": int(self.seed)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if "seed" in state:
            self.seed = int(state["seed"])

    def __repr__(self) -> str:
        return (f"ClassAwareSampler(name={self.name!r}, alpha={self.alpha:.4g}, "
                f"epoch={self.epoch}, num_samples={self.num_samples}, "
                f"num_classes={self.num_classes})")


# ---------------------------------------------------------------------- registry
def _common(kw: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("total_epochs", "num_samples", "seed", "num_replicas", "rank", "num_classes")
    return {k: kw[k] for k in keys}


@SAMPLERS.register("none")
def _none_sampler(labels: LabelsLike, **kw: Any) -> None:
    return None


@SAMPLERS.register("inv_freq")
def _inv_freq_sampler(labels: LabelsLike, **kw: Any) -> ClassAwareSampler:
    return ClassAwareSampler(labels, alpha_start=0.0, name="inv_freq", **_common(kw))


@SAMPLERS.register("class_balanced", aliases=("class_uniform",))
def _class_balanced_sampler(labels: LabelsLike, **kw: Any) -> ClassAwareSampler:
    return ClassAwareSampler(labels, alpha_start=0.0, name="class_balanced", **_common(kw))


@SAMPLERS.register("sqrt")
def _sqrt_sampler(labels: LabelsLike, **kw: Any) -> ClassAwareSampler:
    return ClassAwareSampler(labels, alpha_start=0.5, name="sqrt", **_common(kw))


@SAMPLERS.register("power")
def _power_sampler(labels: LabelsLike, **kw: Any) -> ClassAwareSampler:
    return ClassAwareSampler(labels, alpha_start=kw["alpha"], name="power", **_common(kw))


@SAMPLERS.register("progressive_power")
def _progressive_sampler(labels: LabelsLike, **kw: Any) -> ClassAwareSampler:
    return ClassAwareSampler(labels, alpha_start=kw["alpha_start"], alpha_end=kw["alpha_end"],
                             name="progressive_power", **_common(kw))


def make_sampler(
    labels: LabelsLike,
    method: str,
    alpha: float = 0.5,
    alpha_start: float = 0.5,
    alpha_end: float = 0.0,
    total_epochs: int = 1,
    num_samples: Optional[int] = None,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    num_classes: Optional[int] = None,
) -> Optional[ClassAwareSampler]:
    """Build the sampler ``method`` (see the module docstring); ``None`` for ``'none'``.

    ``labels``: 1-D integer array (numpy or torch) with values ``0..K-1``; ``num_classes``
    (optional) declares K when the last classes have no samples. Only the alpha arguments the
    method uses are validated (each must lie in [0, 1]).
    """
    factory = SAMPLERS.get(str(method))
    return factory(labels, alpha=alpha, alpha_start=alpha_start, alpha_end=alpha_end,
                   total_epochs=total_epochs, num_samples=num_samples, seed=seed,
                   num_replicas=num_replicas, rank=rank, num_classes=num_classes)
