"""Signal files: formats, keys, layouts, labels and per-sample processing (public).

Formats
    ``.mat`` v5 and older (scipy), ``.mat`` v7.3 (HDF5: MATLAB writes column-major, so every
    array comes back with its axes reversed and is reversed again here; complex data is an
    HDF5 compound of ``real``/``imag``), ``.h5``/``.hdf5`` (axes reversed only for datasets
    that carry MATLAB's ``MATLAB_class`` attribute), ``.npz`` and ``.npy`` (a dict saved with
    ``np.save``, or a structured array with named fields; a plain array has no labels).
    Data keys tried in order ``X, data, signal, signals``, label keys ``Y, label, labels, y``
    (then the same names case-insensitively); ``data_key`` / ``label_key`` override them.

Layouts
    After MATLAB's reversal, the data's sample axis is the one whose length equals the number
    of labels (axis 0 preferred). ``(N, L)`` real or complex is one signal per row; ``(N, C, L)``
    and ``(N, L, C)`` are told apart by the channel axis being the shorter of the other two
    (a tie means ``(N, C, L)``). Complex data becomes channels ``[real..., imag...]``.

Used by the data sets (:mod:`imbalance.data`), prediction (:mod:`imbalance.predict`) and
evaluation on new files (:mod:`imbalance.evaluate`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "DATA_KEYS", "LABEL_KEYS", "SUPPORTED_EXTENSIONS", "format_list", "normalize_rms", "crop_or_pad",
    "check_finite", "clean_labels", "map_labels", "FileLayout", "complex_compound_fields", "to_float_channels",
    "FileContents", "pick_key", "open_signal_file", "contiguous_runs", "read_signals", "prepare_signals",
]

DATA_KEYS: Tuple[str, ...] = ("X", "data", "signal", "signals")
LABEL_KEYS: Tuple[str, ...] = ("Y", "label", "labels", "y")
SUPPORTED_EXTENSIONS: Tuple[str, ...] = (".mat", ".h5", ".hdf5", ".npz", ".npy")
H5_CACHE_BYTES = 64 * 1024 * 1024
MAX_SLICE_RUNS = 8   # more contiguous runs than this: one h5py point selection
EPS = 1e-12


# ---------------------------------------------------------------------- small helpers
def format_list(values: Sequence[Any], limit: int = 20) -> str:
    vals = [str(v) for v in values]
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", ... ({len(vals)} in all)"
    return ", ".join(vals) if vals else "(none)"


def normalize_rms(x: np.ndarray) -> np.ndarray:
    """Per-sample RMS normalisation of (N, C, L): ``x / sqrt(mean over C and L of x^2)``.

    Computed in float64 for the mean, returned float32; a zero signal stays zero."""
    if x.size == 0:
        return x.astype(np.float32, copy=False)
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=(1, 2), keepdims=True))
    rms = np.where(rms > EPS, rms, 1.0)
    return (x / rms).astype(np.float32, copy=False)


def crop_or_pad(x: np.ndarray, target_length: Optional[int]) -> np.ndarray:
    """Keep the first ``target_length`` samples, or zero-pad at the end."""
    if target_length is None or x.shape[-1] == target_length:
        return x
    if x.shape[-1] > target_length:
        return x[..., :target_length]
    out = np.zeros(x.shape[:-1] + (target_length,), dtype=x.dtype)
    out[..., : x.shape[-1]] = x
    return out


def check_finite(x: np.ndarray, where: str, base_index: Optional[np.ndarray] = None) -> None:
    """DataError '<where>: 3 NaN/Inf values, first at sample 17' if x (N, ...) has any."""
    bad = ~np.isfinite(x)
    if bad.any():
        per_sample = bad.reshape(bad.shape[0], -1).any(axis=1)
        first = int(np.argmax(per_sample))
        if base_index is not None:
            first = int(base_index[first])
        raise DataError(f"{where}: {int(bad.sum())} NaN/Inf values, first at sample {first}")


def clean_labels(raw: Any, where: str) -> np.ndarray:
    """Labels as a 1-D array: (N,), (N,1) and (1,N) accepted; bytes -> str; integral floats
    -> int64."""
    y = np.asarray(raw)
    if y.ndim > 1:
        if sum(d > 1 for d in y.shape) > 1:
            raise DataError(f"{where}: labels must be a vector, (N, 1) or (1, N); got shape {y.shape}")
    y = y.reshape(-1)
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind == "O":
        y = np.array([v.decode() if isinstance(v, bytes) else v for v in y])
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            bad = int(np.argmax(~np.isfinite(y)))
            raise DataError(f"{where}: {int((~np.isfinite(y)).sum())} NaN/Inf labels, first at sample {bad}")
        if np.all(y == np.round(y)):
            y = y.astype(np.int64)
    elif y.dtype.kind in "iu":
        y = y.astype(np.int64)
    return y


def map_labels(y: np.ndarray, classes: Optional[Sequence[Any]], where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(labels 0..K-1 int64, classes sorted original values)."""
    present = np.unique(y)
    if classes is None:
        cls = present
    else:
        cls = clean_labels(np.asarray(list(classes)), "classes")
        cls = np.unique(cls)
        try:
            missing = present[~np.isin(present, cls)]
        except TypeError:
            missing = present
        if missing.size:
            raise DataError(
                f"{where}: label value(s) {format_list(missing.tolist())} are not among the "
                f"classes {format_list(cls.tolist())}")
    labels = np.searchsorted(cls, y).astype(np.int64)
    return labels, cls


# ====================================================================== layout
class FileLayout:
    """Where the sample (N), channel (C) and time (L) axes are in the *file's* array."""

    def __init__(self, fshape: Tuple[int, ...], reversed_axes: bool, n: int, where: str, key: str) -> None:
        lshape = tuple(fshape[::-1]) if reversed_axes else tuple(fshape)
        nd = len(lshape)
        shown = "x".join(map(str, lshape))
        if nd not in (2, 3):
            raise DataError(
                f"{where}: data '{key}' has shape ({shown}); expected (N, L), (N, C, L) or (N, L, C)")
        cand = [a for a in range(nd) if lshape[a] == n]
        if not cand:
            raise DataError(
                f"{where}: data '{key}' has shape ({shown}) but there are {n} labels; "
                f"no axis of the data has length {n} (X/Y length mismatch)")
        n_ax = cand[0]
        rest = [a for a in range(nd) if a != n_ax]
        if nd == 2:
            c_ax, l_ax = None, rest[0]
        else:
            a, b = rest
            c_ax, l_ax = (a, b) if lshape[a] <= lshape[b] else (b, a)
        to_file = (lambda a: nd - 1 - a) if reversed_axes else (lambda a: a)
        self.ndim = nd
        self.logical_shape = lshape
        self.n_axis = to_file(n_ax)
        self.c_axis = None if c_ax is None else to_file(c_ax)
        self.l_axis = to_file(l_ax)
        self.n = n
        self.channels_in = 1 if c_ax is None else lshape[c_ax]
        self.length = lshape[l_ax]

    def to_ncl(self, arr: np.ndarray) -> np.ndarray:
        """File-order array (with the N and L axes possibly cut) -> (n, C, L) view."""
        if self.c_axis is None:
            return np.transpose(arr, (self.n_axis, self.l_axis))[:, None, :]
        return np.transpose(arr, (self.n_axis, self.c_axis, self.l_axis))

    def describe(self) -> str:
        names = {}
        for name, ax in (("N", self.n_axis), ("C", self.c_axis), ("L", self.l_axis)):
            if ax is not None:
                names[ax] = name
        return "(" + ", ".join(names[a] for a in range(self.ndim)) + ")"


def complex_compound_fields(dtype: np.dtype) -> Optional[Tuple[str, str]]:
    if dtype.names and len(dtype.names) == 2:
        lower = {n.lower(): n for n in dtype.names}
        for re_name, im_name in (("real", "imag"), ("r", "i"), ("re", "im")):
            if re_name in lower and im_name in lower:
                return lower[re_name], lower[im_name]
    return None


def to_float_channels(ncl: np.ndarray, compound: Optional[Tuple[str, str]]) -> np.ndarray:
    """(n, C, L) of any numeric/complex/compound dtype -> float32 (n, C', L); complex -> 2C
    channels [real parts, imag parts]."""
    if compound is not None:
        re, im = ncl[compound[0]], ncl[compound[1]]
        return np.concatenate([re, im], axis=1).astype(np.float32, copy=False)
    if np.iscomplexobj(ncl):
        return np.concatenate([ncl.real, ncl.imag], axis=1).astype(np.float32, copy=False)
    if ncl.dtype.kind not in "fiub":
        raise DataError(f"data has dtype {ncl.dtype}; expected real or complex numbers")
    return ncl.astype(np.float32, copy=False)


# ====================================================================== file access
class FileContents:
    """Opened file: keys, the data array (numpy, memmap or h5py Dataset) and raw labels."""

    def __init__(self) -> None:
        self.kind = ""           # 'mat5', 'hdf5', 'npz', 'npy'
        self.keys: List[str] = []
        self.data: Any = None
        self.labels: Any = None
        self.reversed = False
        self.lazy_ok = False
        self.h5file: Any = None
        self.data_key = ""
        self.label_key = ""


def pick_key(keys: Sequence[str], wanted: Optional[str], defaults: Sequence[str], what: str,
              where: str, exists: Callable[[str], bool], required: bool = True) -> Optional[str]:
    """``wanted`` (an error if absent), else the first of ``defaults`` present (exact, then
    case-insensitive), else an error naming the keys found (or None when not ``required``)."""
    if wanted is not None:
        if exists(wanted):
            return wanted
        raise DataError(f"{where}: {what} key '{wanted}' not found; keys found: {format_list(keys)}")
    for k in defaults:
        if k in keys:
            return k
    lower = {k.lower(): k for k in keys}
    for k in defaults:
        if k.lower() in lower:
            return lower[k.lower()]
    if not required:
        return None
    raise DataError(f"{where}: no {what} key among {', '.join(defaults)}; keys found: {format_list(keys)}")


def open_signal_file(path: str, data_key: Optional[str], label_key: Optional[str], lazy: bool,
          labels_required: bool = True) -> FileContents:
    """Open a signal file. With ``labels_required=False`` (prediction on unlabelled signals) a
    file without a label key, or a .npy holding one plain array, is accepted: ``labels`` is None."""
    where = path
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"data path is a folder, not a file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{where}: unsupported file type '{ext}'; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    fc = FileContents()
    import h5py

    def pick(exists: Callable[[str], bool]) -> None:
        fc.data_key = pick_key(fc.keys, data_key, DATA_KEYS, "data", where, exists)
        lk = pick_key(fc.keys, label_key, LABEL_KEYS, "label", where, exists, required=labels_required)
        if labels_required and lk == fc.data_key:
            raise DataError(f"{where}: the label key '{lk}' is also the data key; name the labels with data.label_key")
        fc.label_key = "" if lk is None or lk == fc.data_key else lk

    def in_keys(k: str) -> bool:
        return k in fc.keys

    if ext in (".mat", ".h5", ".hdf5") and h5py.is_hdf5(path):
        fc.kind, fc.lazy_ok = "hdf5", True
        try:
            f = h5py.File(path, "r", rdcc_nbytes=H5_CACHE_BYTES)
        except OSError as e:
            raise DataError(f"{where}: cannot open HDF5 file ({e})") from None
        fc.h5file = f
        fc.keys = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
        pick(lambda k: k in f and isinstance(f[k], h5py.Dataset))
        fc.data = f[fc.data_key]
        fc.reversed = ext == ".mat" or "MATLAB_class" in fc.data.attrs
        if fc.label_key:
            lab = f[fc.label_key][()]
            fc.labels = lab.T if (ext == ".mat" or "MATLAB_class" in f[fc.label_key].attrs) else lab
        return fc
    if ext in (".h5", ".hdf5"):
        raise DataError(f"{where}: not a readable HDF5 file")
    if ext == ".mat":
        import scipy.io
        try:
            d = scipy.io.loadmat(path)
        except Exception as e:  # scipy raises many types for corrupt files
            raise DataError(f"{where}: cannot read MATLAB file ({type(e).__name__}: {e})") from None
        fc.kind = "mat5"
        fc.keys = [k for k in d if not k.startswith("__")]
        get: Callable[[str], Any] = d.__getitem__
    elif ext == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataError(f"{where}: cannot read .npz file ({type(e).__name__}: {e})") from None
        fc.kind = "npz"
        fc.keys = list(z.files)
        get = z.__getitem__
    else:
        # .npy: a structured array (fields = keys), a pickled dict, or (unlabelled) one array
        try:
            arr = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
        except ValueError:  # object array: a dict saved with np.save (the user's own file)
            arr = np.load(path, allow_pickle=True)
        except Exception as e:
            raise DataError(f"{where}: cannot read .npy file ({type(e).__name__}: {e})") from None
        fc.kind = "npy"
        if arr.dtype.names and complex_compound_fields(arr.dtype) is None:
            fc.keys = list(arr.dtype.names)
            get = lambda k: arr[k]  # noqa: E731
            fc.lazy_ok = isinstance(arr, np.memmap)
        elif arr.dtype == object and arr.shape == () and isinstance(arr.item(), dict):
            dd = arr.item()
            fc.keys = [str(k) for k in dd]
            get = lambda k: np.asarray(dd[k])  # noqa: E731
        elif not labels_required:
            fc.data_key, fc.data = "(array)", arr
            return fc
        else:
            raise DataError(
                f"{where}: a .npy file holding one plain array {arr.shape} has no labels; save a dict "
                f"{{'X': ..., 'Y': ...}} with np.save, or use .npz")
    pick(in_keys)
    fc.data = get(fc.data_key)
    fc.labels = np.asarray(get(fc.label_key)) if fc.label_key else None
    return fc


def contiguous_runs(sorted_idx: np.ndarray) -> List[Tuple[int, int]]:
    """[start, stop) runs of consecutive integers in a sorted unique index array."""
    if sorted_idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_idx.size]])
    return [(int(sorted_idx[a]), int(sorted_idx[b - 1]) + 1) for a, b in zip(starts, stops)]


# ---------------------------------------------------------------------- whole files, labels optional
def read_signals(path: str, *, data_key: Optional[str] = None,
                 label_key: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(x, labels)`` of a signal file: x float32 (N, C, L) before length/normalisation
    processing, labels the raw label values (1-D) or None when the file has none.

    Uses the loader's key rules, MATLAB axis reversal, layout detection and complex ->
    channel conversion (``imbalance.data``); without labels the sample axis is the first."""
    where = path
    if not os.path.exists(path):
        raise DataError(f"input file not found: {path}")
    fc = open_signal_file(path, data_key, label_key, lazy=False, labels_required=False)
    try:
        dk, arr, labels, reversed_axes = fc.data_key, fc.data[()], fc.labels, fc.reversed
    finally:
        if fc.h5file is not None:
            fc.h5file.close()
    arr = np.asarray(arr)
    if labels is not None:
        labels = clean_labels(labels, where)
        n = len(labels)
    else:
        shape = arr.shape[::-1] if reversed_axes else arr.shape
        if len(shape) not in (2, 3):
            raise DataError(f"{where}: data '{dk}' has shape {tuple(shape)}; expected (N, L), (N, C, L) or (N, L, C)")
        n = int(shape[0])
    lay = FileLayout(tuple(arr.shape), reversed_axes, n, where, dk)
    x = to_float_channels(lay.to_ncl(arr), complex_compound_fields(arr.dtype))
    check_finite(x, where)
    log.info("%s: %d signals, data '%s' %s -> (N, %d, %d)%s", path, x.shape[0], dk, lay.describe(), x.shape[1],
             x.shape[2], ", with labels" if labels is not None else ", no labels")
    return np.ascontiguousarray(x, dtype=np.float32), labels


def prepare_signals(x: np.ndarray, *, num_channels: int, length: int, target_length: Optional[int],
                    normalize: bool, allow_resize: bool, where: str) -> np.ndarray:
    """The source run's per-sample processing: its ``target_length`` crop/pad, then a check
    against the trained shape (crop/pad to it only with ``allow_resize``), then RMS
    normalisation (``imbalance.data.normalize_rms``)."""
    if x.shape[1] != num_channels:
        raise DataError(f"{where}: signals have {x.shape[1]} channels but the model was trained on {num_channels} "
                        f"(complex data counts as 2: I and Q)")
    if target_length is not None:
        x = crop_or_pad(x, int(target_length))
    if x.shape[2] != length:
        if not allow_resize:
            raise DataError(f"{where}: signals are {x.shape[2]} samples long but the model was trained on {length}; "
                            f"pass --allow-resize to crop/pad them to {length}")
        log.warning("%s: signals of %d samples cropped/padded to the trained length %d", where, x.shape[2], length)
        x = crop_or_pad(x, int(length))
    return normalize_rms(x) if normalize else np.ascontiguousarray(x, dtype=np.float32)
