"""Exemplar memory for class-incremental learning (Rebuffi et al., CVPR 2017, "iCaRL").

A run that learns new classes keeps a small set of training samples of every class it has
learned (the *exemplars*), so that a later session can replay them without the old data file.

Selection (registry :data:`SELECTORS`, key ``incremental.selection``)
    ``herding``  iCaRL's herding (Algorithm 4), as the official code computes it
                 (srebuffi/iCaRL, ``iCaRL-TheanoLasagne/main_cifar_100_theano.py``; the same loop
                 in ``iCaRL-Tensorflow/main_resnet_tf.py``): features are L2-normalised, ``mu`` is
                 their mean, ``w = mu``; repeat: ``i = argmax_x <w, phi(x)>``, keep ``i`` if it is
                 not kept yet, ``w <- w + mu - phi(i)``.  With unit-norm features
                 ``argmax <(k mu - S), phi(x)>`` is exactly the paper's
                 ``argmin_x || mu - (phi(x) + S) / k ||`` (``S`` the sum of the ``k - 1`` picks), and
                 like the paper the argmax runs over ALL samples: a sample picked again is counted in
                 ``S`` again but not kept twice.  Ties go to the lowest index (``np.argmax``).
                 The official loop stops after 1000 picks; here after ``max(1000, 2 m)`` picks
                 (the same for the official m <= 500).  Where it stops short of ``m`` exemplars
                 (degenerate, e.g. identical features) the official code keeps fewer; here the
                 remaining places go to the not-yet-kept samples closest to ``mu`` (logged).
    ``random``   a seeded uniform draw without replacement (``numpy.random.default_rng(seed)``).

Each exemplar keeps its rank (0 = picked first): iCaRL's ReduceExemplarSet keeps the first
``m`` of a class, which :meth:`ExemplarMemory.reduce` does when the budget per class shrinks.

Budget: ``incremental.memory_per_class`` (fixed ``m`` per class) or ``incremental.memory_total``
(``m = floor(total / K)`` for the ``K`` classes learned so far; the official iCaRL code rounds
up, ``ceil``, which can exceed the total by up to ``K - 1``; floor keeps the stated budget).
A class with fewer than ``m`` training samples keeps all of them (the tail).

Nearest-mean-of-exemplars (NME, iCaRL's classifier): the class mean is the mean of the
exemplars' L2-normalised features, normalised again (official code); a sample goes to the class
whose mean is nearest to its normalised feature (squared Euclidean distance, the official
``cdist(..., 'sqeuclidean')``).  :class:`NMEClassifier` returns ``-distance`` as logits.  The
official code averages the features of each exemplar and of its horizontally flipped image; a
signal has no such flip here, so only the exemplar itself is used.

Files (:meth:`ExemplarMemory.save` / :meth:`ExemplarMemory.load`): ``<folder>/exemplar_memory.npz``
(``signals`` (N, C, L) float32, ``labels`` in the ORIGINAL label values, ``indices`` into the
session's training set, ``ranks``, ``sessions``, ``classes``, ``class_means`` (K, D)) and
``<folder>/exemplar_memory.json`` (budget, selection, seed, counts, shapes; for people and for
checks).  Loading needs no pickle (``allow_pickle=False``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "SELECTORS",
    "ExemplarMemory",
    "NMEClassifier",
    "NMEModel",
    "herding_selection",
    "random_selection",
    "select_exemplars",
    "per_class_quota",
    "build_memory",
    "update_memory",
    "class_means",
    "extract_features",
    "MEMORY_FILE",
    "OFFICIAL_HERDING_CAP",
]

#: File stem of a saved memory (``.npz`` arrays + ``.json`` description).
MEMORY_FILE = "exemplar_memory"
#: The official iCaRL code's cap on herding iterations per class.
OFFICIAL_HERDING_CAP = 1000
_FORMAT_VERSION = 1

SELECTORS = Registry("exemplar selection")


# ============================================================================ budget
def per_class_quota(num_classes: int, *, memory_per_class: Optional[int] = None,
                    memory_total: Optional[int] = None) -> int:
    """Exemplars per class for ``num_classes`` learned classes.

    ``memory_total`` (when not None) wins: ``floor(memory_total / num_classes)``; else
    ``memory_per_class``.  Below one per class is a ConfigError (one line)."""
    k = int(num_classes)
    if k < 1:
        raise ConfigError(f"the exemplar memory needs at least one class, got {num_classes}")
    if memory_total is not None:
        if isinstance(memory_total, bool) or not float(memory_total).is_integer():
            raise ConfigError(f"incremental.memory_total must be an integer, got {memory_total!r}")
        total = int(memory_total)
        if total < k:
            raise ConfigError(
                f"incremental.memory_total={total} gives {max(total, 0) // k} exemplars per class for "
                f"{k} classes; it must be at least {k} (one per class), or set "
                f"incremental.memory_per_class instead")
        return total // k
    if memory_per_class is None:
        raise ConfigError("set incremental.memory_per_class or incremental.memory_total (the exemplar budget)")
    if isinstance(memory_per_class, bool) or not float(memory_per_class).is_integer() or int(memory_per_class) < 1:
        raise ConfigError(
            f"incremental.memory_per_class must be an integer >= 1 (exemplars kept per class), "
            f"got {memory_per_class!r}")
    return int(memory_per_class)


# ============================================================================ selection
def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float64; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def herding_selection(features: Union[np.ndarray, torch.Tensor], m: int, *,
                      max_iter: Optional[int] = None) -> np.ndarray:
    """iCaRL herding: indices of ``min(m, n)`` samples of ONE class, in selection order.

    ``features`` (n, D) of that class (normalised here, float64).  See the module docstring for
    the rule (the official loop) and the fill-up when ``max_iter`` picks are not enough
    (``max_iter`` default ``max(1000, 2 m)``)."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features)
    if f.ndim != 2:
        raise ValueError(f"herding_selection expects features of shape (n, D), got {f.shape}")
    n = f.shape[0]
    target = min(int(m), n)
    if target <= 0:
        return np.zeros(0, dtype=np.int64)
    d = _normalise_rows(f)
    mu = d.mean(axis=0)
    cap = max(OFFICIAL_HERDING_CAP, 2 * target) if max_iter is None else int(max_iter)
    kept = np.zeros(n, dtype=bool)
    order: List[int] = []
    w = mu.copy()
    it = 0
    while len(order) < target and it < cap:
        i = int(np.argmax(d @ w))
        it += 1
        if not kept[i]:
            kept[i] = True
            order.append(i)
        w = w + mu - d[i]
    if len(order) < target:
        rest = np.flatnonzero(~kept)
        closeness = d[rest] @ mu
        fill = rest[np.argsort(-closeness, kind="stable")][: target - len(order)]
        logger.warning("herding stopped after %d iterations with %d of %d exemplars (repeated picks); "
                       "the other %d are the samples nearest to the class mean", it, len(order), target,
                       len(fill))
        order.extend(int(i) for i in fill)
    return np.asarray(order, dtype=np.int64)


def random_selection(n: int, m: int, *, seed: int = 0) -> np.ndarray:
    """``min(m, n)`` distinct indices of ``range(n)`` drawn uniformly (seeded), in draw order."""
    rng = np.random.default_rng(int(seed))
    return rng.permutation(int(n))[: min(int(m), int(n))].astype(np.int64)


def _herding_selector(features: Optional[np.ndarray], n: int, m: int, *, seed: int, max_iter: Optional[int]):
    if features is None:
        raise ConfigError("incremental.selection=herding needs the samples' features (a model); "
                          "use incremental.selection=random without one")
    return herding_selection(features, m, max_iter=max_iter)


def _random_selector(features: Optional[np.ndarray], n: int, m: int, *, seed: int, max_iter: Optional[int]):
    return random_selection(n, m, seed=seed)


SELECTORS.add("herding", _herding_selector)
SELECTORS.add("random", _random_selector)


def _label_key(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def select_exemplars(labels: Sequence[Any], per_class: int, *, features: Optional[np.ndarray] = None,
                     selection: str = "herding", seed: int = 0, classes: Optional[Sequence[Any]] = None,
                     max_iter: Optional[int] = None) -> Dict[Any, np.ndarray]:
    """For each class (``classes``, default the sorted labels present): the indices (into
    ``labels``) of its exemplars in selection order.  ``random`` draws each class with its own
    generator seeded by ``(seed, position of the class)``."""
    fn = SELECTORS.get(selection)
    y = np.asarray(labels)
    cls = list(np.unique(y)) if classes is None else list(classes)
    feats = None if features is None else (
        features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features))
    if feats is not None and feats.shape[0] != y.shape[0]:
        raise ValueError(f"{feats.shape[0]} feature rows for {y.shape[0]} labels")
    out: Dict[Any, np.ndarray] = {}
    for pos, c in enumerate(cls):
        idx = np.flatnonzero(y == c)
        if idx.size == 0:
            logger.warning("class %s has no training sample; it gets no exemplar", c)
            out[_label_key(c)] = np.zeros(0, dtype=np.int64)
            continue
        local = fn(None if feats is None else feats[idx], idx.size, per_class,
                   seed=int(np.random.SeedSequence([int(seed), pos]).generate_state(1)[0]), max_iter=max_iter)
        out[_label_key(c)] = idx[local]
    return out


# ============================================================================ features / means
@torch.no_grad()
def extract_features(model: nn.Module, signals: Union[np.ndarray, torch.Tensor], *, batch_size: int = 256,
                     device: Optional[Union[str, torch.device]] = None) -> np.ndarray:
    """``model.forward_features`` of ``signals`` (N, C, L) in eval mode (the model's mode is
    restored), as a float32 array (N, D)."""
    if not hasattr(model, "forward_features"):
        raise ConfigError(f"{type(model).__name__} has no forward_features; exemplar selection needs it")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was = model.training
    model.eval()
    try:
        x = signals if torch.is_tensor(signals) else torch.from_numpy(np.ascontiguousarray(signals))
        outs = []
        for s in range(0, x.shape[0], int(batch_size)):
            xb = x[s:s + int(batch_size)].to(device=device, dtype=dtype)
            outs.append(model.forward_features(xb).float().cpu())
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(outs).numpy()
    finally:
        model.train(was)


def class_means(features: Union[np.ndarray, torch.Tensor], labels: Sequence[Any],
                classes: Sequence[Any]) -> np.ndarray:
    """iCaRL class means (K, D) float64: per class the mean of the L2-normalised features,
    normalised again.  A class without a sample gets a row of NaN."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    y = np.asarray(labels)
    d = _normalise_rows(f)
    out = np.full((len(classes), f.shape[1]), np.nan)
    for k, c in enumerate(classes):
        sel = y == c
        if sel.any():
            mu = d[sel].mean(axis=0)
            nrm = np.linalg.norm(mu)
            out[k] = mu / nrm if nrm > 0 else mu
    return out


class NMEClassifier(nn.Module):
    """Nearest-mean-of-exemplars classifier (iCaRL): features (B, D) -> logits (B, K) equal to
    ``-|| f/|f| - mu_k ||^2`` with ``mu_k`` the (normalised) class means; argmax = nearest mean.

    Computed in the features' dtype promoted to at least float32.  A class whose mean is NaN
    (no exemplar) gets ``-inf`` (never predicted)."""

    def __init__(self, *, class_means: Union[np.ndarray, torch.Tensor]) -> None:
        super().__init__()
        m = torch.as_tensor(np.asarray(class_means) if not torch.is_tensor(class_means) else class_means)
        if m.dim() != 2:
            raise ValueError(f"class_means must be (K, D), got shape {tuple(m.shape)}")
        self.register_buffer("means", m if m.is_floating_point() else m.float())
        self.num_classes = int(m.shape[0])
        self.in_features = int(m.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(features.dtype, torch.float32)
        f = F.normalize(features.to(dt), dim=1)
        mu = self.means.to(dt)
        valid = torch.isfinite(mu).all(dim=1)
        mu = torch.where(valid[:, None], mu, torch.zeros_like(mu))
        d2 = (f * f).sum(1, keepdim=True) - 2.0 * f @ mu.t() + (mu * mu).sum(1)[None, :]
        logits = -d2.clamp_min(0.0)
        return logits.masked_fill(~valid[None, :], float("-inf"))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, in_features={self.in_features}"


class NMEModel(nn.Module):
    """A model whose head is replaced, for evaluation, by an :class:`NMEClassifier`:
    ``forward(x) = nme(model.forward_features(x))``; ``forward_features`` and ``classifier``
    (the NME) are there as on every model, so evaluation code runs unchanged."""

    def __init__(self, model: nn.Module, nme: NMEClassifier) -> None:
        super().__init__()
        self.model = model
        self.classifier = nme
        self.num_classes = nme.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.forward_features(x))


# ============================================================================ memory
def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


@dataclass
class ExemplarMemory:
    """The exemplars of the learned classes (see the module docstring).

    ``classes`` lists the original label values in the model's class order (old classes first,
    then each session's new ones).  Per exemplar: ``signals[i]`` (C, L), ``labels[i]`` (original
    value), ``indices[i]`` (its index in the training set of the session it came from, -1 if
    unknown), ``ranks[i]`` (selection order inside its class, 0 first), ``sessions[i]``.
    ``class_means`` (K, D) (rows in ``classes`` order) or None: the iCaRL means of the exemplars'
    features under the model that saved the memory."""

    signals: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    ranks: np.ndarray
    sessions: np.ndarray
    classes: np.ndarray
    class_means: Optional[np.ndarray] = None
    per_class: int = 0
    selection: str = "herding"
    seed: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signals = np.ascontiguousarray(self.signals, dtype=np.float32)
        self.labels = np.asarray(self.labels)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.ranks = np.asarray(self.ranks, dtype=np.int64)
        self.sessions = np.asarray(self.sessions, dtype=np.int64)
        self.classes = np.asarray(self.classes)
        n = self.signals.shape[0]
        for name in ("labels", "indices", "ranks", "sessions"):
            if getattr(self, name).shape != (n,):
                raise DataError(f"exemplar memory: {name} has shape {getattr(self, name).shape}, "
                                f"expected ({n},) for {n} exemplars")
        if self.signals.ndim != 3 and n:
            raise DataError(f"exemplar memory: signals must be (N, C, L), got shape {self.signals.shape}")
        if n and not np.isin(self.labels, self.classes).all():
            raise DataError("exemplar memory: some exemplar labels are not among its classes")
        if self.class_means is not None:
            self.class_means = np.asarray(self.class_means, dtype=np.float64)
            if self.class_means.shape[0] != len(self.classes):
                raise DataError(f"exemplar memory: {self.class_means.shape[0]} class means for "
                                f"{len(self.classes)} classes")

    # -------------------------------------------------------------- views
    def __len__(self) -> int:
        return int(self.signals.shape[0])

    @property
    def num_classes(self) -> int:
        return int(len(self.classes))

    def counts(self) -> Dict[Any, int]:
        """Exemplars per class (original label value -> count), in ``classes`` order."""
        return {_json_value(c): int((self.labels == c).sum()) for c in self.classes}

    def class_indices(self) -> np.ndarray:
        """The exemplars' labels as positions 0..K-1 in ``classes`` (the model's class indices)."""
        pos = {_json_value(c): k for k, c in enumerate(self.classes)}
        return np.asarray([pos[_json_value(v)] for v in self.labels], dtype=np.int64)

    def _subset(self, keep: np.ndarray, classes: Optional[np.ndarray] = None,
                class_means: Optional[np.ndarray] = None, **changes: Any) -> "ExemplarMemory":
        kw = dict(signals=self.signals[keep], labels=self.labels[keep], indices=self.indices[keep],
                  ranks=self.ranks[keep], sessions=self.sessions[keep],
                  classes=self.classes if classes is None else classes,
                  class_means=class_means, per_class=self.per_class, selection=self.selection,
                  seed=self.seed, meta=dict(self.meta))
        kw.update(changes)
        return ExemplarMemory(**kw)

    def reduce(self, per_class: int) -> "ExemplarMemory":
        """iCaRL's ReduceExemplarSet: keep the first ``per_class`` exemplars (by rank) of every
        class.  Class means are dropped (they must be recomputed with the new model)."""
        if int(per_class) < 1:
            raise ConfigError(f"cannot reduce the exemplar memory to {per_class} per class; at least 1")
        keep = np.flatnonzero(self.ranks < int(per_class))
        return self._subset(keep, per_class=int(per_class))

    def with_class_means(self, means: Union[np.ndarray, torch.Tensor]) -> "ExemplarMemory":
        m = means.detach().cpu().double().numpy() if torch.is_tensor(means) else np.asarray(means, np.float64)
        return self._subset(np.arange(len(self)), class_means=m)

    def compute_class_means(self, model: nn.Module, *, batch_size: int = 256,
                            device: Optional[Union[str, torch.device]] = None) -> "ExemplarMemory":
        """The memory with ``class_means`` recomputed from the exemplars under ``model``."""
        feats = extract_features(model, self.signals, batch_size=batch_size, device=device)
        return self.with_class_means(class_means(feats, self.labels, list(self.classes)))

    def nme_classifier(self) -> NMEClassifier:
        if self.class_means is None:
            raise ConfigError("the exemplar memory has no class means; call compute_class_means(model) first")
        return NMEClassifier(class_means=self.class_means)

    def merge(self, other: "ExemplarMemory") -> "ExemplarMemory":
        """This memory followed by ``other``'s classes (which must be new).  Means are dropped."""
        if not len(other.classes):
            return self._subset(np.arange(len(self)))
        if not len(self.classes):
            return other._subset(np.arange(len(other)))
        overlap = [c for c in other.classes.tolist() if c in set(self.classes.tolist())]
        if overlap:
            raise DataError(f"exemplar memory: classes {overlap} are in both memories")
        if len(self) and len(other) and self.signals.shape[1:] != other.signals.shape[1:]:
            raise DataError(f"exemplar memory: signals of shape {self.signals.shape[1:]} and "
                            f"{other.signals.shape[1:]} cannot be merged")
        sig = other.signals if not len(self) else (self.signals if not len(other) else
                                                     np.concatenate([self.signals, other.signals]))
        return ExemplarMemory(
            signals=sig, labels=np.concatenate([self.labels, other.labels]),
            indices=np.concatenate([self.indices, other.indices]),
            ranks=np.concatenate([self.ranks, other.ranks]),
            sessions=np.concatenate([self.sessions, other.sessions]),
            classes=np.concatenate([self.classes, other.classes]), class_means=None,
            per_class=other.per_class, selection=other.selection, seed=other.seed,
            meta={**self.meta, **other.meta})

    # -------------------------------------------------------------- files
    def save(self, folder: Union[str, Path]) -> List[Path]:
        """Write ``<folder>/exemplar_memory.npz`` and ``.json``; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / f"{MEMORY_FILE}.npz"
        arrays = dict(signals=self.signals, labels=self.labels, indices=self.indices, ranks=self.ranks,
                      sessions=self.sessions, classes=self.classes)
        if self.class_means is not None:
            arrays["class_means"] = self.class_means
        for k, v in arrays.items():
            if v.dtype == object:
                raise DataError(f"exemplar memory: {k} has Python objects as values; labels must be "
                                f"numbers or strings")
        with open(npz, "wb") as fh:
            np.savez(fh, **arrays)
        info = {
            "format_version": _FORMAT_VERSION,
            "num_exemplars": len(self),
            "classes": [_json_value(c) for c in self.classes.tolist()],
            "counts": {str(k): v for k, v in self.counts().items()},
            "per_class": int(self.per_class),
            "selection": self.selection,
            "seed": int(self.seed),
            "signal_shape": list(self.signals.shape[1:]),
            "label_dtype": str(self.labels.dtype),
            "has_class_means": self.class_means is not None,
            "feature_dim": None if self.class_means is None else int(self.class_means.shape[1]),
            "meta": self.meta,
        }
        js = folder / f"{MEMORY_FILE}.json"
        js.write_text(json.dumps(info, indent=2, default=_json_value) + "\n")
        return [npz, js]

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "ExemplarMemory":
        """Read a memory written by :meth:`save` (DataError, one line, if absent or damaged)."""
        folder = Path(folder)
        npz, js = folder / f"{MEMORY_FILE}.npz", folder / f"{MEMORY_FILE}.json"
        if not npz.is_file():
            raise DataError(f"no exemplar memory in {folder} (expected {npz.name}); the parent run "
                            f"kept none (was it trained with incremental sessions?)")
        try:
            info = json.loads(js.read_text()) if js.is_file() else {}
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the exemplar memory in {folder}: {e}") from None
        missing = [k for k in ("signals", "labels", "indices", "ranks", "sessions", "classes") if k not in arrays]
        if missing:
            raise DataError(f"exemplar memory {npz} lacks {', '.join(missing)}")
        version = info.get("format_version", _FORMAT_VERSION)
        if version > _FORMAT_VERSION:
            raise DataError(f"exemplar memory {npz} has format version {version}; this version reads "
                            f"up to {_FORMAT_VERSION}")
        return cls(signals=arrays["signals"], labels=arrays["labels"], indices=arrays["indices"],
                   ranks=arrays["ranks"], sessions=arrays["sessions"], classes=arrays["classes"],
                   class_means=arrays.get("class_means"), per_class=int(info.get("per_class", 0)),
                   selection=str(info.get("selection", "herding")), seed=int(info.get("seed", 0)),
                   meta=dict(info.get("meta", {})))


def build_memory(signals: Union[np.ndarray, torch.Tensor], labels: Sequence[Any], *, per_class: int,
                 features: Optional[np.ndarray] = None, selection: str = "herding", seed: int = 0,
                 classes: Optional[Sequence[Any]] = None, indices: Optional[Sequence[int]] = None,
                 session: int = 0, max_iter: Optional[int] = None,
                 meta: Optional[Dict[str, Any]] = None) -> ExemplarMemory:
    """Select ``per_class`` exemplars of every class in ``classes`` (default: the sorted labels
    present) from ``signals`` (N, C, L) with ``labels`` (ORIGINAL values).  ``features`` (N, D)
    are needed for herding (:func:`extract_features` of the trained model).  ``indices`` (N,)
    are the samples' indices in their data set (default ``arange(N)``)."""
    if int(per_class) < 1:
        raise ConfigError(f"incremental.memory_per_class must be >= 1, got {per_class}")
    x = signals.detach().cpu().numpy() if torch.is_tensor(signals) else np.asarray(signals)
    y = np.asarray(labels)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} signals for {y.shape[0]} labels")
    src = np.arange(y.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    cls = list(np.unique(y)) if classes is None else list(classes)
    chosen = select_exemplars(y, per_class, features=features, selection=selection, seed=seed,
                              classes=cls, max_iter=max_iter)
    order = [chosen[_label_key(c)] for c in cls]
    pick = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    ranks = np.concatenate([np.arange(len(o)) for o in order]) if order else np.zeros(0, dtype=np.int64)
    return ExemplarMemory(signals=x[pick], labels=y[pick], indices=src[pick], ranks=ranks,
                          sessions=np.full(pick.shape[0], int(session)), classes=np.asarray(cls),
                          per_class=int(per_class), selection=SELECTORS.canonical(selection),
                          seed=int(seed), meta=dict(meta or {}))


def update_memory(memory: Optional[ExemplarMemory], signals: Union[np.ndarray, torch.Tensor],
                  labels: Sequence[Any], *, memory_per_class: Optional[int] = None,
                  memory_total: Optional[int] = None, features: Optional[np.ndarray] = None,
                  selection: str = "herding", seed: int = 0, indices: Optional[Sequence[int]] = None,
                  session: int = 0, max_iter: Optional[int] = None) -> ExemplarMemory:
    """The memory after a session: the old classes reduced to the new quota (first by rank),
    then exemplars of the session's NEW classes (labels not in ``memory.classes``) selected
    from ``signals``.  Samples of classes already in the memory are not added (their exemplars
    stay those chosen when the class was learned, as in iCaRL).  Class means are not computed:
    call :meth:`ExemplarMemory.compute_class_means` with the trained model."""
    y = np.asarray(labels)
    old = [] if memory is None else memory.classes.tolist()
    new = [c for c in np.unique(y).tolist() if c not in set(old)]
    quota = per_class_quota(len(old) + len(new), memory_per_class=memory_per_class, memory_total=memory_total)
    sel = np.isin(y, new) if new else np.zeros(y.shape[0], dtype=bool)
    idx = np.arange(y.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    x = signals.detach().cpu().numpy() if torch.is_tensor(signals) else np.asarray(signals)
    added = build_memory(x[sel], y[sel], per_class=quota,
                         features=None if features is None else np.asarray(features)[sel],
                         selection=selection, seed=seed, classes=new, indices=idx[sel], session=session,
                         max_iter=max_iter)
    if memory is None:
        return added
    return memory.reduce(quota).merge(added)
