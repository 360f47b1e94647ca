"""Class-aware re-sampling for long-tailed training (SEED.md section 1, "重采样策略").

Every sampler here draws an epoch in two steps (Kang et al. 2020, "Decoupling Representation
and Classifier"; Zhang et al. 2023, "How Re-sampling Helps for Long-Tail Learning?"):

1. the CLASS of each draw, with this epoch's class probabilities ``p_c(epoch)`` (classes with
   ``n_c = 0`` training samples get probability 0);
2. a sample uniformly within that class.

So the per-sample probability is ``p_c(epoch) / n_c``. For the power-law samplers
``p_c ∝ n_c ** alpha``:

========================  ======================================================
name                      class probabilities ``p_c(epoch)``
========================  ======================================================
``none``                  no sampler (``make_sampler`` returns ``None``: shuffle)
``inv_freq``              alpha = 0 (per-sample weight ``1/n_c`` -> uniform over classes)
``class_balanced``        alpha = 0 (alias ``class_uniform``: pick a class, then a sample)
``sqrt``                  alpha = 0.5 (Mahajan et al. 2018; LVIS repeat-factor style)
``power``                 alpha = ``alpha`` (0 = class-uniform, 1 = the natural distribution)
``progressive_power``     alpha linear from ``alpha_start`` at epoch 0 to ``alpha_end`` at
                          epoch ``total_epochs - 1`` (the seed's exponent interpolation)
``progressive_balanced``  Kang et al.'s progressively-balanced MIXTURE
                          ``(1 - lam) n_c/N + lam / K`` with ``lam = epoch / (total_epochs - 1)``
                          (see :class:`ProgressiveBalancedSampler`)
``drs``                   deferred re-sampling (Cao et al. 2019): a plain shuffle (instance-
                          balanced) before ``drs_start``, then effective-number re-sampling
                          (see :class:`DeferredResampler`)
========================  ======================================================

:meth:`ClassAwareSampler.class_probabilities_at` gives ``p_c`` of any epoch (the sampled class
prior that Balanced Softmax / logit-adjusted losses need with ``prior='sampled'``);
:func:`sampling_prior` also answers for ``none`` (no sampler: ``n_c / N``).

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

__all__ = [
    "SAMPLERS", "ClassAwareSampler", "ProgressiveBalancedSampler", "DeferredResampler", "make_sampler",
    "class_draw_probabilities", "progressive_balanced_probabilities", "effective_number_probabilities",
    "sampling_prior", "default_drs_start", "DRS_BETA",
]

#: The effective-number beta of LDAM-DRW's re-sampling (utils.py ``ImbalancedDatasetSampler``).
DRS_BETA = 0.9999

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


def progressive_balanced_probabilities(class_counts: Sequence[int], lam: float) -> np.ndarray:
    """Kang et al.'s progressively-balanced class probabilities for mixing weight ``lam``:
    ``(1 - lam) * n_c / N + lam / K`` with ``K`` the classes that have samples (0 elsewhere)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise DataError("sampler needs at least one class with training samples")
    lam = float(lam)
    p_ib = counts / counts.sum()
    p_cb = present / present.sum()
    return (1.0 - lam) * p_ib + lam * p_cb


def effective_number_probabilities(class_counts: Sequence[int], beta: float) -> np.ndarray:
    """Class probabilities of re-sampling by the inverse effective number (Cui et al. 2019), as
    LDAM-DRW's ``ImbalancedDatasetSampler`` draws: every sample of class c has weight
    ``(1 - beta) / (1 - beta ** n_c)``, so ``p_c ∝ n_c (1 - beta) / (1 - beta ** n_c)``.

    ``beta = 0`` is instance-balanced (``p_c ∝ n_c``); ``beta = 1`` is the limit
    ``(1 - beta) / (1 - beta ** n) -> 1 / n``, i.e. class-balanced. Empty classes get 0.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    beta = float(beta)
    present = counts > 0
    if not present.any():
        raise DataError("sampler needs at least one class with training samples")
    w = np.zeros_like(counts)
    n = counts[present]
    if beta >= 1.0:
        w[present] = 1.0
    elif beta <= 0.0:
        w[present] = n
    else:
        # 1 - beta**n computed as -expm1(n log(beta)): no cancellation for beta close to 1.
        w[present] = n * (1.0 - beta) / -np.expm1(n * np.log(beta))
    return w / w.sum()


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
    """Draw a class with this epoch's class probabilities, then a sample uniformly within it.

    The class probabilities of epoch ``e`` are :meth:`class_probabilities_at` ``(e)``. Here
    they are ``∝ n_c ** alpha(e)``, where ``alpha(e)`` moves linearly from ``alpha_start``
    (epoch 0) to ``alpha_end`` (epoch ``total_epochs - 1``) and stays at ``alpha_end``
    afterwards; with ``alpha_start == alpha_end`` (or ``total_epochs == 1``) it is constant
    (``alpha_start``). Subclasses with other schedules override :meth:`class_probabilities_at`
    (and :meth:`alpha_at`, which is ``None`` when the distribution is no power of ``n_c``);
    drawing, determinism in ``(seed, epoch)``, DDP sharding and ``state_dict`` are shared.

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
    def alpha_at(self, epoch: int) -> Optional[float]:
        """The exponent of epoch ``epoch`` (``None`` for schedules that are no power law)."""
        if self.total_epochs <= 1 or self.alpha_start == self.alpha_end:
            return self.alpha_start
        t = min(max(epoch / (self.total_epochs - 1), 0.0), 1.0)
        return self.alpha_start + (self.alpha_end - self.alpha_start) * t

    @property
    def alpha(self) -> Optional[float]:
        """The exponent in use for the current epoch (``None``: not a power-law schedule)."""
        return self.alpha_at(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def class_probabilities_at(self, epoch: int) -> np.ndarray:
        """Per-class draw probabilities of epoch ``epoch`` (float64, length K, sum 1; 0 for
        classes without samples): the expected class frequencies of that epoch's draw."""
        return class_draw_probabilities(self.class_counts, self.alpha_at(int(epoch)))

    def class_probabilities(self) -> np.ndarray:
        """Per-class draw probabilities of the current epoch (see :meth:`class_probabilities_at`)."""
        return self.class_probabilities_at(self.epoch)

    def shuffles_at(self, epoch: int) -> bool:
        """True when epoch ``epoch`` is a plain random permutation of the training set (every
        sample once per ``dataset_size`` draws) instead of class-then-sample draws."""
        return False

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
        n_draw = self.num_samples
        if self.shuffles_at(self.epoch):
            # Instance-balanced without replacement (a DataLoader's shuffle=True): whole
            # permutations of the training set, as many as num_samples needs.
            rounds = math.ceil(n_draw / self.dataset_size)
            idx = torch.cat([torch.randperm(self.dataset_size, generator=g) for _ in range(rounds)])[:n_draw]
            if self.total_size > n_draw:
                idx = torch.cat([idx, idx[: self.total_size - n_draw]])
            return idx
        prob, alias = _alias_table(self.class_probabilities())
        k = self.num_classes
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
        a = self.alpha
        shown = f"alpha={a:.4g}" if a is not None else "p=" + np.array2string(
            self.class_probabilities(), precision=3, threshold=8)
        return (f"{type(self).__name__}(name={self.name!r}, {shown}, "
                f"epoch={self.epoch}, num_samples={self.num_samples}, "
                f"num_classes={self.num_classes})")


class ProgressiveBalancedSampler(ClassAwareSampler):
    """Progressively-balanced sampling (Kang et al., ICLR 2020, "Decoupling Representation and
    Classifier for Long-Tailed Recognition", Sec. 3.1; official code facebookresearch/
    classifier-balancing, ``data/ClassPrioritySampler.py`` as configured by
    ``config/ImageNet_LT/feat_shift.yaml``: ``lam: null, cycle: 0, manual_only: true``).

    A MIXTURE of the instance-balanced and the class-balanced class distributions::

        p_c(e) = (1 - lam(e)) * n_c / N + lam(e) / K,     lam(e) = e / (T - 1), clipped to [0, 1]

    with ``e`` the 0-based epoch, ``T = total_epochs`` and ``K`` the classes that have samples
    (an empty class gets 0). Epoch 0 is instance-balanced and the last epoch ``T - 1`` exactly
    class-balanced; ``T = 1`` stays instance-balanced.

    Indexing follows the official code, not the paper's ``t / T``: the code's weights are
    ``np.linspace(0, 1, epochs)[e]`` and ``run_networks.py`` (epochs numbered 1..T) calls
    ``sampler.reset_weights(epoch)`` after training epoch ``epoch``, so its ``k``-th epoch
    (1-based) draws with ``lams[k - 1] = (k - 1) / (T - 1)``, which is ``lam(e)`` above for
    ``e = k - 1``. Classes are drawn with replacement, as the official priority tree draws.
    Difference kept on purpose: within a class the official sampler cycles through a shuffled
    list of the class's samples (``RandomCycleIter``), while this one draws uniformly with
    replacement (the same per-class and per-sample probabilities, vectorised and a pure
    function of ``(seed, epoch)``).
    """

    def __init__(
        self,
        labels: LabelsLike,
        *,
        total_epochs: int = 1,
        num_samples: Optional[int] = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_classes: Optional[int] = None,
        name: str = "progressive_balanced",
    ) -> None:
        super().__init__(labels, alpha_start=1.0, total_epochs=total_epochs, num_samples=num_samples,
                         seed=seed, num_replicas=num_replicas, rank=rank, num_classes=num_classes,
                         name=name)

    def mixing_weight(self, epoch: int) -> float:
        """``lam(epoch)``: the class-balanced share of epoch ``epoch``."""
        if self.total_epochs <= 1:
            return 0.0
        return min(max(int(epoch) / (self.total_epochs - 1), 0.0), 1.0)

    def alpha_at(self, epoch: int) -> Optional[float]:
        lam = self.mixing_weight(epoch)
        if lam == 0.0:
            return 1.0
        if lam == 1.0:
            return 0.0
        return None  # a mixture of n_c and 1 is no power of n_c

    def class_probabilities_at(self, epoch: int) -> np.ndarray:
        return progressive_balanced_probabilities(self.class_counts, self.mixing_weight(epoch))


class DeferredResampler(ClassAwareSampler):
    """Deferred re-sampling, DRS (Cao et al., NeurIPS 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", Sec. 4 / 5; official code github kaidic/LDAM-DRW).

    Epochs ``e < drs_start`` are a plain shuffle of the training set (instance-balanced,
    ``p_c = n_c / N``, each sample once per epoch, as the official ``DataLoader(shuffle=True)``
    with ``train_sampler = None``); from ``drs_start`` on, classes are re-sampled with
    replacement with ``p_c ∝ n_c (1 - beta) / (1 - beta ** n_c)`` (see
    :func:`effective_number_probabilities`), ``beta = 0.9999``.

    What the official code does and how this follows it: ``cifar_train.py`` has no ``'DRS'``
    train_rule (its rules are None, Resample, Reweight, DRW). Its re-sampling, ``'Resample'``,
    is ``utils.ImbalancedDatasetSampler``: per-sample weights ``(1 - beta) / (1 - beta ** n_c)``
    with ``beta = 0.9999`` (the inverse effective number of Cui et al. 2019, not exactly
    ``1 / n_c``), drawn by ``torch.multinomial(..., replacement=True)``, ``len(dataset)`` per
    epoch. Its deferral, ``'DRW'``, switches at ``idx = epoch // 160`` with 0-based epochs of
    ``--epochs 200``, i.e. from the 161st epoch on (0-based ``e >= 160``). DRS here is that
    re-sampling with that deferral; ``drs_start`` defaults to the same proportion,
    ``floor(0.8 * total_epochs)`` (160 of 200). ``beta = 1`` gives exact class-balanced
    re-sampling (``1 / n_c``). In the official script the re-sampler built inside the epoch loop
    never reaches the DataLoader (kaidic/LDAM-DRW issue #7), so 'Resample' there in fact trains
    without re-sampling; this class implements what the rule intends. The official schedule
    also decays the learning rate at epoch 160 (``adjust_learning_rate``): that is the stage's
    LR scheduler's job, not the sampler's.
    """

    def __init__(
        self,
        labels: LabelsLike,
        *,
        drs_start: Optional[int] = None,
        beta: float = DRS_BETA,
        total_epochs: int = 1,
        num_samples: Optional[int] = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_classes: Optional[int] = None,
        name: str = "drs",
    ) -> None:
        super().__init__(labels, alpha_start=1.0, total_epochs=total_epochs, num_samples=num_samples,
                         seed=seed, num_replicas=num_replicas, rank=rank, num_classes=num_classes,
                         name=name)
        self.beta = _check_alpha("drs_beta", beta)
        if drs_start is None:
            drs_start = default_drs_start(self.total_epochs)
        if isinstance(drs_start, bool) or int(drs_start) != drs_start or int(drs_start) < 0:
            raise ConfigError(f"sampler drs_start must be an integer epoch >= 0 (0-based), got {drs_start!r}")
        self.drs_start = int(drs_start)
        if self.drs_start >= self.total_epochs:
            logger.warning("sampler drs: drs_start=%d is not before the last epoch (total_epochs=%d): "
                           "this stage never re-samples", self.drs_start, self.total_epochs)

    def resamples_at(self, epoch: int) -> bool:
        """True from epoch ``drs_start`` on (the re-sampling phase)."""
        return int(epoch) >= self.drs_start

    def shuffles_at(self, epoch: int) -> bool:
        return not self.resamples_at(epoch)

    def alpha_at(self, epoch: int) -> Optional[float]:
        if not self.resamples_at(epoch):
            return 1.0
        return 0.0 if self.beta >= 1.0 else (1.0 if self.beta <= 0.0 else None)

    def class_probabilities_at(self, epoch: int) -> np.ndarray:
        if not self.resamples_at(epoch):
            return class_draw_probabilities(self.class_counts, 1.0)
        return effective_number_probabilities(self.class_counts, self.beta)


def default_drs_start(total_epochs: int) -> int:
    """The official proportion: LDAM-DRW defers re-balancing to epoch 160 of 200 (0-based), so
    ``floor(0.8 * total_epochs)`` (computed in integers)."""
    return (4 * int(total_epochs)) // 5


def sampling_prior(sampler: Optional[ClassAwareSampler], class_counts: Sequence[int],
                   epoch: Optional[int] = None) -> np.ndarray:
    """The class distribution the training loop sees at ``epoch`` (default: the sampler's
    current epoch): the sampler's :meth:`~ClassAwareSampler.class_probabilities_at`, or
    ``n_c / N`` without a sampler (``None``: a plain shuffle)."""
    if sampler is None:
        return class_draw_probabilities(class_counts, 1.0)
    return sampler.class_probabilities_at(sampler.epoch if epoch is None else int(epoch))


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


@SAMPLERS.register("progressive_balanced")
def _progressive_balanced_sampler(labels: LabelsLike, **kw: Any) -> ProgressiveBalancedSampler:
    return ProgressiveBalancedSampler(labels, **_common(kw))


@SAMPLERS.register("drs")
def _drs_sampler(labels: LabelsLike, **kw: Any) -> DeferredResampler:
    beta = DRS_BETA if kw["drs_beta"] is None else kw["drs_beta"]
    return DeferredResampler(labels, drs_start=kw["drs_start"], beta=beta, **_common(kw))


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
    drs_start: Optional[int] = None,
    drs_beta: Optional[float] = None,
) -> Optional[ClassAwareSampler]:
    """Build the sampler ``method`` (see the module docstring); ``None`` for ``'none'``.

    ``labels``: 1-D integer array (numpy or torch) with values ``0..K-1``; ``num_classes``
    (optional) declares K when the last classes have no samples. Only the alpha arguments the
    method uses are validated (each must lie in [0, 1]).

    ``drs_start`` / ``drs_beta`` (method ``'drs'`` only): the 0-based epoch from which DRS
    re-samples (``None``: ``floor(0.8 * total_epochs)``, LDAM-DRW's 160 of 200) and the
    effective-number beta of the re-sampling (``None``: 0.9999 as the official code; 1 is
    exactly class-balanced). Other methods ignore them with a warning.
    """
    canonical = SAMPLERS.canonical(str(method))
    if canonical != "drs":
        unused = [k for k, v in (("drs_start", drs_start), ("drs_beta", drs_beta)) if v is not None]
        if unused:
            logger.warning("sampler %s does not use %s; ignored (only 'drs' does)", canonical, ", ".join(unused))
    factory = SAMPLERS.get(canonical)
    return factory(labels, alpha=alpha, alpha_start=alpha_start, alpha_end=alpha_end,
                   total_epochs=total_epochs, num_samples=num_samples, seed=seed,
                   num_replicas=num_replicas, rank=rank, num_classes=num_classes,
                   drs_start=drs_start, drs_beta=drs_beta)
