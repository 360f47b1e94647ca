"""Data layer: signal data sets from files or arrays, splits, long tail, augmentations.

Files (``ADSBSignalDataset``)
    The formats, data/label keys and array layouts of :mod:`imbalance.signal_io` (``.mat`` v5
    and v7.3, ``.h5``/``.hdf5``, ``.npz``, ``.npy``; complex data becomes I/Q channels). Labels of
    any values map to 0..K-1 in sorted order (``classes`` holds the original values; integral
    floats become ints).

Per-sample processing (in this order)
    ``target_length``: keep the first ``target_length`` samples of a longer signal, pad a
    shorter one with zeros at the end (random crops are the ``RandomCropOrPad`` augmentation).
    ``normalize``: divide each signal by its RMS over all channels and time,
    ``x / sqrt(mean_{c,t} x[c,t]^2)``, which keeps the I/Q relation (a common scale); an
    all-zero signal stays zero.

Memory
    ``in_memory=True`` holds one contiguous float32 tensor ``x`` (N, C, L); ``get_batch(idx)``
    is ``x[idx]`` (one gather, no per-sample ``__getitem__`` + collate).  ``in_memory=False``
    reads HDF5 files (``.mat`` v7.3, ``.h5``) and ``.npy`` (memory-mapped) lazily: a batch's
    rows are read in sorted order, merged into contiguous runs, then put back in the asked
    order; memory stays at a few batches, so files larger than RAM train.  Formats that cannot
    be read lazily (``.mat`` v5, ``.npz``) are loaded into memory with a warning.

Checks
    Missing file, missing keys (the keys found are listed), label count not matching any axis
    of the data, NaN/Inf values (count and first sample; lazily: per batch read) all raise
    :class:`DataError` with one line.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import (  # re-exported: the SEED names live in data
    AUGMENT_KEYS,
    Compose,
    RandomAmplitude,
    RandomCropOrPad,
    RandomGaussianNoise,
    RandomTimeShift,
    build_augmentation,
)
from .errors import ConfigError, DataError
from .signal_io import (  # noqa: F401  (DATA_KEYS ... are public here too)
    DATA_KEYS,
    H5_CACHE_BYTES,
    LABEL_KEYS,
    MAX_SLICE_RUNS,
    SUPPORTED_EXTENSIONS,
    FileLayout,
    check_finite,
    clean_labels,
    complex_compound_fields,
    contiguous_runs,
    crop_or_pad,
    map_labels,
    normalize_rms,
    open_signal_file,
    to_float_channels,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ADSBSignalDataset",
    "ArraySignalDataset",
    "SignalDataset",
    "make_long_tailed_indices",
    "stratified_split",
    "stratified_subset",
    "normalize_rms",
    "DATA_KEYS",
    "LABEL_KEYS",
    "SUPPORTED_EXTENSIONS",
    "RandomTimeShift",
    "RandomAmplitude",
    "RandomGaussianNoise",
    "RandomCropOrPad",
    "Compose",
    "build_augmentation",
    "AUGMENT_KEYS",
]

IndexLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


def _as_index_tensor(idx: IndexLike) -> torch.Tensor:
    if isinstance(idx, torch.Tensor):
        return idx.long().reshape(-1)
    return torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1))


# ====================================================================== data sets
class SignalDataset(Dataset):
    """Common interface of the signal data sets (see module docstring).

    Attributes: ``labels`` (int64 numpy, 0..K-1), ``classes`` (original label values, sorted),
    ``class_counts`` (int64, length K), ``num_classes``, ``num_channels``, ``length``,
    ``path`` (or None), ``x`` (contiguous float32 tensor (N, C, L) when in memory, else None),
    ``transform`` (applied by ``ds[i]`` only; ``get_batch`` returns untransformed batches).
    """

    labels: np.ndarray
    classes: np.ndarray
    num_channels: int
    length: int
    path: Optional[str]
    x: Optional[torch.Tensor]
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]]

    def _set_labels(self, labels: np.ndarray, classes: np.ndarray) -> None:
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.classes = classes
        self._labels_t = torch.from_numpy(self.labels)

    @property
    def num_classes(self) -> int:
        return int(len(self.classes))

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        if self.x is not None:
            xi = self.x[i]
        else:
            xi = self.get_batch(torch.tensor([int(i)]))[0][0]
        if self.transform is not None:
            xi = self.transform(xi)
        return xi, int(self.labels[i])

    def get_batch(self, idx: IndexLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(xb (B, C, L) float32, yb (B,) int64)`` for indices ``idx``; no transform."""
        idx_t = _as_index_tensor(idx)
        if self.x is not None:
            return self.x[idx_t], self._labels_t[idx_t]
        return self._read(idx_t), self._labels_t[idx_t]

    def _read(self, idx_t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, indices: IndexLike) -> "SignalDataset":
        """A data set of the given rows with the same interface: labels/class_counts of the
        subset, classes/num_classes unchanged.  In memory it holds its own contiguous copy."""
        idx_t = _as_index_tensor(indices)
        n = len(self)
        if idx_t.numel() and (int(idx_t.min()) < -n or int(idx_t.max()) >= n):
            raise IndexError(f"subset index out of range for a data set of {n} samples")
        idx_t = torch.remainder(idx_t, max(n, 1))
        if self.x is not None:
            return ArraySignalDataset._from_processed(
                self.x[idx_t].contiguous(), self.labels[idx_t.numpy()], self.classes,
                path=self.path, transform=self.transform)
        return _LazySubset(self, idx_t)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, n={len(self)}, classes={self.num_classes}, "
                f"channels={self.num_channels}, length={self.length}, in_memory={self.in_memory})")


class ArraySignalDataset(SignalDataset):
    """Signal data set from arrays (the built-in synthetic data uses it).

    ``x``: (N, C, L), (N, L, C) or (N, L) real or complex, numpy or torch; ``y``: N labels of
    any values.  Processing as for files: complex -> channels, ``target_length`` crop/pad,
    per-sample RMS ``normalize``, NaN/Inf check."""

    def __init__(self, x: Union[np.ndarray, torch.Tensor], y: Union[np.ndarray, torch.Tensor, Sequence[Any]], *,
                 classes: Optional[Sequence[Any]] = None, target_length: Optional[int] = None,
                 normalize: bool = True, transform: Optional[Callable] = None,
                 path: Optional[str] = None) -> None:
        where = path or "arrays"
        if target_length is not None and int(target_length) < 1:
            raise ConfigError(f"target_length must be a positive integer or null, got {target_length!r}")
        xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        yc = clean_labels(ya, where)
        lay = FileLayout(tuple(xa.shape), False, len(yc), where, "x")
        arr = to_float_channels(lay.to_ncl(xa), complex_compound_fields(xa.dtype))
        arr = crop_or_pad(arr, None if target_length is None else int(target_length))
        check_finite(arr, where)
        arr = normalize_rms(arr) if normalize else arr
        labels, cls = map_labels(yc, classes, where)
        self._init(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), labels, cls, path, transform)

    def _init(self, x: torch.Tensor, labels: np.ndarray, classes: np.ndarray, path: Optional[str],
              transform: Optional[Callable]) -> None:
        self.x = x
        self.path = path
        self.transform = transform
        self.num_channels = int(x.shape[1])
        self.length = int(x.shape[2])
        self._set_labels(labels, classes)

    @classmethod
    def _from_processed(cls, x: torch.Tensor, labels: np.ndarray, classes: np.ndarray, *,
                        path: Optional[str], transform: Optional[Callable]) -> "ArraySignalDataset":
        obj = cls.__new__(cls)
        obj._init(x, labels, classes, path, transform)
        return obj


class ADSBSignalDataset(SignalDataset):
    """A signal data set read from a file (see the module docstring for formats, keys,
    layouts, processing and errors).

    ``classes``: map labels with this class list (e.g. the training file's ``classes``)
    instead of the file's own label values; a label not in it raises DataError."""

    def __init__(self, path: str, target_length: Optional[int] = None, normalize: bool = True,
                 in_memory: bool = True, data_key: Optional[str] = None, label_key: Optional[str] = None,
                 transform: Optional[Callable] = None, *, classes: Optional[Sequence[Any]] = None) -> None:
        path = os.fspath(path)
        if target_length is not None and int(target_length) < 1:
            raise ConfigError(f"data.target_length must be a positive integer or null, got {target_length!r}")
        self.path = path
        self.transform = transform
        self.normalize = bool(normalize)
        self.target_length = None if target_length is None else int(target_length)
        fc = open_signal_file(path, data_key, label_key, lazy=not in_memory)
        self.data_key, self.label_key, self.file_kind = fc.data_key, fc.label_key, fc.kind
        yc = clean_labels(fc.labels, path)
        lay = FileLayout(tuple(fc.data.shape), fc.reversed, len(yc), path, fc.data_key)
        self._layout = lay
        self._compound = complex_compound_fields(fc.data.dtype)
        is_complex = self._compound is not None or np.iscomplexobj(np.empty(0, dtype=fc.data.dtype))
        self.num_channels = lay.channels_in * (2 if is_complex else 1)
        self.length = self.target_length if self.target_length is not None else lay.length
        labels, cls = map_labels(yc, classes, path)
        self._set_labels(labels, cls)
        self._h5 = None
        self._h5_pid = None
        self._mapped = None
        self._array = None
        if in_memory or not fc.lazy_ok:
            if not in_memory:
                logger.warning("%s: %s files cannot be read lazily; loading it into memory", path, fc.kind)
            arr = self._convert(np.asarray(fc.data[()] if fc.kind == "hdf5" else fc.data), None)
            self.x = torch.from_numpy(np.ascontiguousarray(arr))
            if fc.h5file is not None:
                fc.h5file.close()
        else:
            self.x = None
            if fc.kind == "hdf5":
                fc.h5file.close()   # reopened per process on first read (fork-safe)
            else:
                self._array = fc.data   # np.memmap (structured field view)
        logger.info("%s: %d samples, %d classes, data '%s' %s%s -> (N, %d, %d), %s",
                    path, len(self), self.num_classes, self.data_key, lay.describe(),
                    " complex" if is_complex else "", self.num_channels, self.length,
                    "in memory" if self.x is not None else "lazy")

    # -- conversion of file-order rows to processed (n, C, L) float32 ----------------------
    def _convert(self, arr: np.ndarray, rows: Optional[np.ndarray]) -> np.ndarray:
        out = to_float_channels(self._layout.to_ncl(arr), self._compound)
        out = crop_or_pad(out, self.target_length)
        check_finite(out, self.path, rows)
        return normalize_rms(out) if self.normalize else np.ascontiguousarray(out, dtype=np.float32)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_h5_pid"] = None
        state["_mapped"] = None
        return state

    def _dataset(self):
        """The lazily read array of this process: a numpy memmap (``.npy``, or an HDF5 dataset
        stored contiguous and unfiltered, mapped at its byte offset), else the h5py Dataset."""
        if self._array is not None:
            return self._array
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py
            self._h5 = h5py.File(self.path, "r", rdcc_nbytes=H5_CACHE_BYTES)
            self._h5_pid = os.getpid()
            dset = self._h5[self.data_key]
            self._mapped = None
            try:
                offset = dset.id.get_offset()
                plain = dset.chunks is None and dset.compression is None and not dset.external
                if plain and offset is not None and dset.size > 0 and dset.dtype.kind in "fiucV":
                    self._mapped = np.memmap(self.path, dtype=dset.dtype, mode="r", offset=offset,
                                             shape=dset.shape)
            except Exception:  # pragma: no cover - fall back to h5py reads
                self._mapped = None
        return self._mapped if self._mapped is not None else self._h5[self.data_key]

    def _read(self, idx_t: torch.Tensor) -> torch.Tensor:
        """Lazy rows: sort + unique, read along the sample axis in increasing order (contiguous
        runs as slices; many runs as one h5py point selection; memory-mapped data by one
        gather), keep only the first ``target_length`` time samples, convert, then restore
        the asked order (duplicates included)."""
        idx = idx_t.numpy()
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a data set of {n} samples")
        idx = np.remainder(idx, max(n, 1))
        uniq, inverse = np.unique(idx, return_inverse=True)
        lay = self._layout
        src = self._dataset()
        sel: List[Any] = [slice(None)] * lay.ndim
        if self.target_length is not None and self.target_length < lay.length:
            sel[lay.l_axis] = slice(0, self.target_length)
        if isinstance(src, np.ndarray):
            raw = np.take(src[tuple(sel)], uniq, axis=lay.n_axis)
        else:
            runs = contiguous_runs(uniq)
            if len(runs) > MAX_SLICE_RUNS:
                sel[lay.n_axis] = uniq
                raw = np.asarray(src[tuple(sel)])
            elif runs:
                parts = []
                for a, b in runs:
                    sel[lay.n_axis] = slice(a, b)
                    parts.append(np.asarray(src[tuple(sel)]))
                raw = np.concatenate(parts, axis=lay.n_axis) if len(parts) > 1 else parts[0]
            else:
                sel[lay.n_axis] = slice(0, 0)
                raw = np.asarray(src[tuple(sel)])
        out = self._convert(raw, uniq)
        if uniq.size != idx.size or not np.array_equal(uniq, idx):
            out = out[inverse.reshape(-1)]
        return torch.from_numpy(np.ascontiguousarray(out))

    def close(self) -> None:
        """Close the lazily opened HDF5 file (it reopens on the next read)."""
        self._mapped = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


class _LazySubset(SignalDataset):
    """Rows ``indices`` of a lazily read data set (reads go to the parent)."""

    def __init__(self, parent: SignalDataset, indices: torch.Tensor) -> None:
        self._parent = parent
        self._indices = indices.long().clone()
        self.x = None
        self.path = parent.path
        self.transform = parent.transform
        self.num_channels = parent.num_channels
        self.length = parent.length
        self._set_labels(parent.labels[self._indices.numpy()], parent.classes)

    def _read(self, idx_t: torch.Tensor) -> torch.Tensor:
        return self._parent.get_batch(self._indices[idx_t])[0]


# ====================================================================== splits
def make_long_tailed_indices(labels: Union[np.ndarray, Sequence[int]], num_classes: int,
                             imbalance_ratio: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a long-tailed subset (Cao et al. 2019, LDAM, exponential profile).

    Class c keeps ``int(n_max * imbalance_ratio ** (-c / (K - 1)))`` samples, at least 1,
    drawn at random (``seed``) from its samples; n_max is the largest class count; a class
    with fewer samples than its quota keeps all it has.  Class 0 is the head.  K = 1 keeps all.
    """
    ratio = float(imbalance_ratio)
    if not np.isfinite(ratio) or ratio < 1.0:
        raise ConfigError(f"data.imbalance_ratio must be a number >= 1, got {imbalance_ratio!r}")
    k = int(num_classes)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if k < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes!r}")
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise DataError(f"labels must lie in 0..{k - 1} for num_classes={k}, found {lab.min()}..{lab.max()}")
    counts = np.bincount(lab, minlength=k)
    n_max = int(counts.max()) if lab.size else 0
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(k):
        quota = n_max if k == 1 else int(n_max * ratio ** (-c / (k - 1)))
        quota = min(max(quota, 1), int(counts[c]))
        idx_c = np.flatnonzero(lab == c)
        keep.append(rng.permutation(idx_c)[:quota])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def stratified_split(labels: Union[np.ndarray, Sequence[int]], val_ratio: float,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``, both sorted: class c sends ``round(n_c * val_ratio)`` (half
    up) of its samples, chosen at random, to validation, but at least 1, and leaves at least 1
    in training.  A class with fewer than 2 samples cannot be split (DataError)."""
    r = float(val_ratio)
    if not (0.0 < r < 1.0):
        raise ConfigError(f"data.val_ratio must be in (0, 1), got {val_ratio!r}")
    lab = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    tr, va = [], []
    classes, counts = np.unique(lab, return_counts=True)
    small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < 2]
    if small:
        desc = ", ".join(f"class {c} has {n}" for c, n in small)
        raise DataError(f"cannot take a stratified validation split: {desc} sample(s) (need >= 2 per class; "
                        f"set data.path_val or lower create_imbalance's ratio)")
    for c, n in zip(classes, counts):
        idx = rng.permutation(np.flatnonzero(lab == c))
        n_val = int(np.floor(n * r + 0.5))
        n_val = min(max(n_val, 1), n - 1)
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(tr), cat(va)


def stratified_subset(labels: Union[np.ndarray, Sequence[int]], max_samples: int, seed: int = 0) -> np.ndarray:
    """At most ``max_samples`` sorted indices with every class kept in proportion (``floor`` of
    its share, at least one sample each; the whole set when it is small enough). One
    implementation for the saved features (``predictions.npz``) and the t-SNE figures."""
    lab = np.asarray(labels).reshape(-1)
    n = len(lab)
    if n <= max_samples:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    idx = []
    classes, counts = np.unique(lab, return_counts=True)
    quota = np.maximum(1, np.floor(counts * max_samples / n)).astype(int)
    for c, q in zip(classes, quota):
        members = np.flatnonzero(lab == c)
        idx.append(rng.choice(members, size=min(q, len(members)), replace=False))
    out = np.concatenate(idx)
    return np.sort(out[:max_samples])
