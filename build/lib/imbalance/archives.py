"""UCR/UEA time-series classification archives and ``.ts``/``.arff``/``.tsv`` files, offline.

Sources
    ``ucr:<Name>`` (univariate, the UCR archive) and ``uea:<Name>`` (multivariate, the UEA
    archive) name the official train/test split of a data set.  It is looked up, with no
    network, in this order:

    1. ``archive_dir`` (config ``data.archive_dir``) laid out as the archives are distributed:
       ``<archive_dir>/<Name>/<Name>_TRAIN.ts`` and ``..._TEST.ts`` (or ``.arff``, or the UCR
       2018 archive's ``.tsv``); a ``<Name>_eq`` / ``<Name>_nmv`` variant (equal-length /
       no-missing-values copies shipped in the same folder) is also found in ``<Name>/``;
    2. the copies bundled with aeon (``aeon/datasets/data``: ACSF1, ArrowHead, BasicMotions,
       GunPoint, ItalyPowerDemand, JapaneseVowels, OSULeaf, PickupGestureWiimoteZ, ...);
    3. the copies bundled with sktime, when sktime is installed (adds PLAID); it is located,
       never imported.

    aeon's downloaders (``load_classification`` and friends, which fetch a missing name from
    the internet) are never called: only its file readers ``load_from_ts_file``,
    ``load_from_arff_file`` and ``load_from_tsv_file`` are.  A name found nowhere fails with
    one line listing the names available offline and the ``data.archive_dir`` hint.  Both
    splits are read in the same format (the first of ``.ts``, ``.arff``, ``.tsv`` present for
    both), because aeon's ``.ts`` reader lower-cases class labels and the others do not.

Labels
    aeon returns labels as strings.  They become ``int64`` when every label (and every class
    value in the ``.ts`` header) is an integer, ``int64`` also when all are integral numbers
    written as floats (``'1.0'``), ``float64`` when all are numbers, else strings (lower-cased,
    as aeon's ``.ts`` reader gives them, so that a ``.ts`` and an ``.arff`` copy agree).  Numeric
    conversion matters: the data layer maps labels to 0..K-1 in *sorted* order, and the strings
    ``'10' < '2'`` would sort PLAID's classes out of numeric order.  Original values are kept
    (a data set labelled 1..K stays 1..K; the data layer maps them).

Variable length
    :func:`to_fixed_length` turns a list of ``(C, L_i)`` series (or an equal-length array) into
    ``(N, C, L)`` float32 plus a boolean mask ``(N, L)`` that is True on real samples and False
    on padding.  ``target_length=None`` pads to the longest series given; the data layer should
    pass the *training* split's longest length for every split (:func:`load_archive`'s
    ``info['max_length']``), so that train and test share L.  Longer series are cropped as
    ``crop`` says (``end``: keep the first L samples, as the data layer's ``target_length``
    does; ``start``: keep the last L; ``center``: keep the middle); shorter ones are padded
    with ``pad_value`` as ``pad`` says (``end``, ``start``, ``center``).

Export
    :func:`export_archive` writes a source's two splits as ``train.mat``/``test.mat`` (or
    ``.npz``) with keys ``X`` (N, C, L) float32, ``Y`` (N, 1), ``mask`` (N, L) uint8 and
    ``lengths`` (N,), so the same data can be handed over as files (``data.path_train``).

Requires the optional extra ``pip install .[archives]`` (aeon); without it every reader
raises :class:`ConfigError` saying so.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError, DataError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHIVES",
    "SERIES_EXTENSIONS",
    "CROP_MODES",
    "PAD_MODES",
    "EXPORT_FORMATS",
    "parse_source",
    "is_archive_source",
    "available_datasets",
    "bundled_dirs",
    "load_archive",
    "read_series_file",
    "convert_labels",
    "series_lengths",
    "to_fixed_length",
    "export_archive",
    "main",
]

SeriesCollection = Union[np.ndarray, List[np.ndarray]]

SERIES_EXTENSIONS: Tuple[str, ...] = (".ts", ".arff", ".tsv")
CROP_MODES: Tuple[str, ...] = ("end", "start", "center")
PAD_MODES: Tuple[str, ...] = ("end", "start", "center")
SPLITS: Tuple[str, ...] = ("train", "test")
_VARIANT_SUFFIXES: Tuple[str, ...] = ("_eq", "_nmv")
_INSTALL_HINT = "install the optional extra: pip install .[archives] (or pip install aeon)"


# ====================================================================== archive kinds
class ArchiveKind:
    """An archive prefix: its name, what it holds, and whether its sets are multivariate."""

    def __init__(self, *, name: str, title: str, multivariate: bool) -> None:
        self.name = name
        self.title = title
        self.multivariate = multivariate

    def check_channels(self, name: str, n_channels: int) -> None:
        """ConfigError when a univariate archive is asked for a multivariate set or back."""
        if self.multivariate == (n_channels > 1):
            return
        other = "uea" if n_channels > 1 else "ucr"
        what = f"multivariate ({n_channels} channels)" if n_channels > 1 else "univariate (1 channel)"
        raise ConfigError(
            f"{self.name}:{name} is {what} but {self.name}: is the {self.title}; "
            f"use data.source={other}:{name}")


ARCHIVES = Registry("archive")
ARCHIVES.add("ucr", ArchiveKind(name="ucr", title="univariate UCR archive", multivariate=False))
ARCHIVES.add("uea", ArchiveKind(name="uea", title="multivariate UEA archive", multivariate=True))


def is_archive_source(source: Any) -> bool:
    """True when ``source`` is a string with a registered archive prefix (``ucr:``, ``uea:``)."""
    if not isinstance(source, str) or ":" not in source:
        return False
    return source.split(":", 1)[0].strip().lower() in ARCHIVES.names()


def parse_source(source: str) -> Tuple[str, str]:
    """``'ucr:ArrowHead' -> ('ucr', 'ArrowHead')``; the prefix is case-insensitive.

    A string without ``:``, an empty name or a name with a path separator raises ConfigError;
    an unknown prefix raises UnknownNameError listing the valid ones."""
    if not isinstance(source, str) or ":" not in source:
        raise ConfigError(
            f"data.source must look like ucr:<Name> or uea:<Name> (e.g. ucr:ArrowHead), got {source!r}")
    prefix, name = source.split(":", 1)
    kind = ARCHIVES.get(prefix.strip().lower()).name
    name = name.strip()
    if not name:
        raise ConfigError(f"data.source {source!r} names no data set; write {kind}:<Name>, e.g. {kind}:ArrowHead")
    if any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
        raise ConfigError(
            f"data.source {source!r}: the name must be a data set name, not a path; put the folder "
            f"in data.archive_dir")
    return kind, name


# ====================================================================== aeon access
def _aeon_datasets():
    """``aeon.datasets`` (its readers), or ConfigError with the install hint."""
    try:
        import aeon.datasets as ads
    except ImportError:
        raise ConfigError(f"reading UCR/UEA archives and .ts/.arff files needs aeon; {_INSTALL_HINT}") from None
    return ads


def _package_data_dir(package: str, *parts: str) -> Optional[str]:
    """``<package folder>/<parts...>`` if the package is installed and the folder exists.

    Uses ``importlib.util.find_spec`` on the top-level package, which locates it without
    running its code (sktime is never imported)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, *parts)
        if os.path.isdir(path):
            return path
    return None


def bundled_dirs() -> List[Tuple[str, str]]:
    """``[(origin, folder), ...]`` of installed bundled archive copies: aeon's, then sktime's."""
    out = []
    for origin, parts in (("aeon", ("datasets", "data")), ("sktime", ("datasets", "data"))):
        path = _package_data_dir(origin, *parts)
        if path is not None:
            out.append((origin, path))
    return out


def _header(path: str) -> Dict[str, str]:
    """The ``@key value`` lines of a ``.ts`` header, keys lower-cased (only to tell a
    classification file from a regression one when listing names; aeon reads the data)."""
    out: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                s = line.strip()
                if not s.startswith("@"):  # comments ('#', '%'): aeon skips them too
                    continue
                key, _, value = s[1:].partition(" ")
                if key.lower() == "data":
                    break
                out[key.lower()] = value.strip()
    except OSError:
        pass
    return out


def _is_classification_ts(path: str) -> bool:
    h = {k: v.lower() for k, v in _header(path).items()}
    return h.get("classlabel", "").startswith("true") and not h.get("targetlabel", "").startswith("true")


def _split_files(folder: str, name: str) -> Optional[Dict[str, str]]:
    """``{'train': path, 'test': path}`` in the first extension present for both splits."""
    for ext in SERIES_EXTENSIONS:
        paths = {s: os.path.join(folder, f"{name}_{s.upper()}{ext}") for s in SPLITS}
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    return None


def _candidate_folders(root: str, name: str) -> List[str]:
    folders = [os.path.join(root, name)]
    for suf in _VARIANT_SUFFIXES:
        if name.endswith(suf) and len(name) > len(suf):
            folders.append(os.path.join(root, name[: -len(suf)]))
    return folders


def _names_in(root: str) -> List[str]:
    """Classification data sets (both splits present) under an archive folder."""
    names = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return names
    for entry in entries:
        folder = os.path.join(root, entry)
        if not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            for ext in SERIES_EXTENSIONS:
                suffix = "_TRAIN" + ext
                if not fname.endswith(suffix):
                    continue
                nm = fname[: -len(suffix)]
                if nm != entry and not any(nm == entry + s for s in _VARIANT_SUFFIXES):
                    continue
                files = _split_files(folder, nm)
                if files is None or nm in names:
                    continue
                if files["train"].endswith(".ts") and not _is_classification_ts(files["train"]):
                    continue
                names.append(nm)
    return names


def available_datasets(archive_dir: Optional[str] = None) -> Dict[str, List[str]]:
    """Names of the classification data sets available offline, by origin:
    ``{'archive_dir': [...], 'aeon': [...], 'sktime': [...]}`` (only origins that exist)."""
    out: Dict[str, List[str]] = {}
    if archive_dir is not None and os.path.isdir(os.fspath(archive_dir)):
        out["archive_dir"] = _names_in(os.fspath(archive_dir))
    for origin, root in bundled_dirs():
        out[origin] = _names_in(root)
    return out


def _locate(kind: str, name: str, archive_dir: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """(origin, split files) for a name, or DataError listing what is available offline."""
    roots: List[Tuple[str, str]] = []
    if archive_dir is not None:
        adir = os.path.abspath(os.path.expanduser(os.fspath(archive_dir)))
        if not os.path.isdir(adir):
            raise ConfigError(f"data.archive_dir is not a folder: {adir}")
        roots.append(("archive_dir", adir))
    roots.extend(bundled_dirs())
    for origin, root in roots:
        for folder in _candidate_folders(root, name):
            files = _split_files(folder, name)
            if files is not None:
                return origin, files
    avail = available_datasets(archive_dir)
    everything = sorted({n for names in avail.values() for n in names}, key=str.lower)
    close = difflib.get_close_matches(name, everything, n=1, cutoff=0.6)
    if not close:
        close = [n for n in everything if n.lower() == name.lower()]
    listed = "; ".join(f"{o}: {', '.join(n) if n else '(none)'}" for o, n in avail.items()) or "(none)"
    hint = f" (did you mean {kind}:{close[0]}?)" if close else ""
    where = f"neither in data.archive_dir={archive_dir} nor in" if archive_dir is not None else "in"
    raise DataError(
        f"{kind}:{name} is not available offline: no {name}/{name}_TRAIN.ts|.arff|.tsv with its "
        f"_TEST file {where} the bundled copies{hint}; available: {listed}; for other UCR/UEA sets "
        f"download the archive and set data.archive_dir to the folder holding <Name>/<Name>_TRAIN.ts")


# ====================================================================== reading
def _try_number(values: np.ndarray) -> Optional[np.ndarray]:
    try:
        return np.asarray(values.astype(np.float64))
    except (TypeError, ValueError):
        return None


def convert_labels(labels: Any) -> np.ndarray:
    """Labels as aeon reads them (strings; numbers from ``.tsv``) -> the framework's values.

    All integral numbers (``'3'``, ``'3.0'``, ``3``) -> int64; all finite numbers -> float64;
    otherwise stripped, lower-cased strings (aeon's ``.ts`` reader lower-cases, so a ``.ts``
    and an ``.arff`` copy of a data set agree).  Convert the labels of both splits (and the
    header's class list) in one call so that they get one type."""
    y = np.asarray(labels).reshape(-1)
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind == "O":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y], dtype=str)
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "U":
        y = np.char.strip(y)
        nums = _try_number(y)
        if nums is None or not np.isfinite(nums).all():
            return np.char.lower(y)
    else:
        nums = y.astype(np.float64)
    if np.isfinite(nums).all() and np.all(nums == np.round(nums)):
        return nums.astype(np.int64)
    return nums


def _class_values_of(meta: Dict[str, Any]) -> List[str]:
    return [str(v) for v in meta.get("class_values", []) or []]


def _trim_trailing_nan(X: np.ndarray) -> SeriesCollection:
    """UCR 2018 ``.tsv``: a variable-length series is padded with NaN at its end.  Cut each
    series after its last sample that is finite in some channel (a list when lengths differ)."""
    if X.shape[-1] == 0 or not np.isnan(X[:, :, -1]).any():
        return X
    finite_any = ~np.isnan(X).all(axis=1)                       # (N, L)
    last = X.shape[-1] - np.argmax(finite_any[:, ::-1], axis=1)  # length of each series
    last = np.where(finite_any.any(axis=1), last, 0)
    if np.all(last == last[0]):
        return X[:, :, : int(last[0])]
    return [X[i, :, : int(n)] for i, n in enumerate(last)]


def _read(path: str) -> Tuple[SeriesCollection, np.ndarray, Dict[str, Any]]:
    """(X raw float64, labels as aeon gives them, meta) for a .ts/.arff/.tsv file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"series file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"series path is a folder, not a file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in SERIES_EXTENSIONS:
        raise DataError(f"{path}: unsupported series file type '{ext}'; supported: {', '.join(SERIES_EXTENSIONS)}")
    ads = _aeon_datasets()
    meta: Dict[str, Any] = {}
    try:
        if ext == ".ts":
            X, y, meta = ads.load_from_ts_file(path, return_meta_data=True)
        elif ext == ".arff":
            X, y = ads.load_from_arff_file(path)
        else:
            X, y = ads.load_from_tsv_file(path)
            X = _trim_trailing_nan(np.asarray(X, dtype=np.float64))
    except Exception as e:  # aeon raises OSError/ValueError/IndexError for malformed files
        msg = " ".join(str(e).split())
        raise DataError(f"{path}: aeon could not read this {ext} file ({type(e).__name__}: {msg})") from None
    if ext == ".ts" and meta.get("targetlabel") and not meta.get("classlabel"):
        raise DataError(f"{path}: this .ts file holds a regression target (@targetLabel true), not class labels")
    if ext == ".ts" and not meta.get("classlabel", True):
        raise DataError(f"{path}: this .ts file has no class labels (@classLabel false)")
    if isinstance(X, np.ndarray) and X.ndim == 2:
        X = X[:, None, :]
    if len(X) != len(y):
        raise DataError(f"{path}: {len(X)} series but {len(y)} labels")
    return X, np.asarray(y), meta


def read_series_file(path: str, *, return_info: bool = False):
    """``(X, y)`` from a ``.ts``, ``.arff`` or ``.tsv`` file through aeon's readers.

    X: float64 ``(N, C, L)`` when all series have one length, else a list of ``(C, L_i)``
    arrays; y: labels converted by :func:`convert_labels` (together with the ``.ts``
    header's class values).  ``return_info=True`` adds a dict as :func:`load_archive`'s
    (``path, n_cases, n_channels, equal_length, min_length, max_length, n_nan,
    class_values``: the header's classes with the labels seen).  Unreadable files raise
    DataError with one line."""
    X, y_raw, meta = _read(path)
    header = _class_values_of(meta)
    if header:
        conv = convert_labels(np.concatenate([np.asarray(y_raw).astype(str), np.asarray(header, dtype=str)]))
    else:
        conv = convert_labels(y_raw)
    y = conv[: len(y_raw)]
    if not return_info:
        return X, y
    info = {"path": os.fspath(path), **_describe(X), "class_values": np.unique(conv)}
    return X, y, info


def _describe(X: SeriesCollection) -> Dict[str, Any]:
    lengths = series_lengths(X)
    if isinstance(X, np.ndarray):
        n_channels = int(X.shape[1])
    else:
        n_channels = int(np.asarray(X[0]).shape[0]) if len(X) else 0
    return {
        "n_cases": int(len(X)), "n_channels": n_channels,
        "equal_length": bool(lengths.size == 0 or np.all(lengths == lengths[0])),
        "min_length": int(lengths.min()) if lengths.size else 0,
        "max_length": int(lengths.max()) if lengths.size else 0,
        "n_nan": int(sum(int(np.isnan(np.asarray(x, dtype=np.float64)).sum()) for x in X)),
    }


def series_lengths(X: SeriesCollection) -> np.ndarray:
    """Length of each series, (N,) int64."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        return np.full(X.shape[0], X.shape[-1] if X.ndim >= 2 else 0, dtype=np.int64)
    return np.array([np.asarray(x).shape[-1] for x in X], dtype=np.int64)


def load_archive(source: str, *, split: str, archive_dir: Optional[str] = None
                 ) -> Tuple[SeriesCollection, np.ndarray, Dict[str, Any]]:
    """One split of an archive data set, offline.

    Returns ``(X, y, info)``: X float64 ``(N, C, L)`` or a list of ``(C, L_i)`` arrays
    (unequal lengths), y the original labels (see :func:`convert_labels`), and ``info``:
    ``source, kind, name, split, path, origin ('archive_dir'|'aeon'|'sktime'), n_cases,
    n_channels, equal_length, min_length, max_length, class_values`` (the sorted classes of
    the data set: the header's list with any label seen in either split, the same for
    train and test, to pass as the data set's ``classes``) and ``n_nan`` (missing values)."""
    kind, name = parse_source(source)
    sp = str(split).lower()
    if sp not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    origin, files = _locate(kind, name, archive_dir)
    X, y_raw, meta = _read(files[sp])
    # the header's class list (.ts), else the other split's labels, take part in the label
    # type and the class list, so that train and test convert alike and share their classes
    header = _class_values_of(meta)
    other_raw: np.ndarray = np.asarray(y_raw)[:0]
    if not header:
        _, other_raw, _ = _read(files["test" if sp == "train" else "train"])
    parts = [np.asarray(y_raw), np.asarray(other_raw)] + ([np.asarray(header)] if header else [])
    if any(part.dtype.kind in "USO" for part in parts):
        parts = [part.astype(str) for part in parts]
    conv = convert_labels(np.concatenate(parts))
    y, seen = conv[: len(y_raw)], conv[: len(y_raw) + len(other_raw)]
    header_conv = conv[len(y_raw) + len(other_raw):]
    unknown = np.setdiff1d(seen, header_conv) if header_conv.size else header_conv
    if unknown.size:
        logger.warning("%s: labels %s are not in the file header's class list %s",
                       source, unknown.tolist()[:10], header)
    class_values = np.unique(conv)
    desc = _describe(X)
    ARCHIVES.get(kind).check_channels(name, desc["n_channels"])
    info = {"source": f"{kind}:{name}", "kind": kind, "name": name, "split": sp,
            "path": files[sp], "origin": origin, **desc, "class_values": class_values}
    n_nan, n_channels = desc["n_nan"], desc["n_channels"]
    if n_nan:
        logger.warning("%s (%s): %d missing values (NaN); the data layer refuses NaN", source, sp, n_nan)
    logger.info("%s %s: %d series, %d channel(s), length %s, %d classes, from %s (%s)",
                info["source"], sp, info["n_cases"], n_channels,
                info["max_length"] if info["equal_length"] else f"{info['min_length']}..{info['max_length']}",
                len(class_values), files[sp], origin)
    return X, y, info


# ====================================================================== fixed length
def _window(n: int, target: int, mode: str) -> int:
    """Offset of a length-``target`` window in ``n`` samples (crop) or of ``n`` samples in
    ``target`` (pad), for ``mode`` = end | start | center (the extra sample goes at the end)."""
    gap = abs(n - target)
    if mode == "end":
        return 0
    if mode == "start":
        return gap
    return gap // 2


def to_fixed_length(X: SeriesCollection, target_length: Optional[int] = None, *, pad_value: float = 0.0,
                    crop: str = "end", pad: str = "end") -> Tuple[np.ndarray, np.ndarray]:
    """Series of equal or unequal length -> ``(x (N, C, L) float32, mask (N, L) bool)``.

    ``X``: an array ``(N, C, L)`` / ``(N, L)`` or a sequence of ``(C, L_i)`` / ``(L_i,)``
    arrays (same C).  ``L = target_length``, or the longest series when None.  A longer
    series is cropped: ``crop='end'`` keeps its first L samples, ``'start'`` its last L,
    ``'center'`` the middle L (one extra sample off the end when the surplus is odd).  A
    shorter one is placed ``pad='end'`` (padding after it), ``'start'`` (before) or
    ``'center'`` and the rest filled with ``pad_value``.  ``mask[i, t]`` is True where
    ``x[i, :, t]`` is a sample of the series, False on padding."""
    if crop not in CROP_MODES:
        raise ConfigError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if pad not in PAD_MODES:
        raise ConfigError(f"pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
    if target_length is not None and (isinstance(target_length, bool) or int(target_length) != target_length
                                      or int(target_length) < 1):
        raise ConfigError(f"target_length must be a positive integer or null, got {target_length!r}")
    if isinstance(X, np.ndarray) and X.dtype != object:
        arr = X[:, None, :] if X.ndim == 2 else X
        if arr.ndim != 3:
            raise DataError(f"series array must be (N, C, L) or (N, L), got shape {X.shape}")
        series = list(arr)
    else:
        series = []
        for i, s in enumerate(X):
            a = np.asarray(s)
            if a.ndim == 1:
                a = a[None, :]
            if a.ndim != 2:
                raise DataError(f"series {i} must be (C, L) or (L,), got shape {a.shape}")
            series.append(a)
    if not series:
        raise DataError("no series to convert (an empty split)")
    chans = {s.shape[0] for s in series}
    if len(chans) > 1:
        raise DataError(f"series have different channel counts {sorted(chans)}; all must have the same")
    lengths = np.array([s.shape[1] for s in series], dtype=np.int64)
    L = int(target_length) if target_length is not None else int(lengths.max())
    if L < 1:
        raise DataError("every series is empty (length 0); set data.target_length")
    C = series[0].shape[0]
    out = np.full((len(series), C, L), pad_value, dtype=np.float32)
    mask = np.zeros((len(series), L), dtype=bool)
    for i, s in enumerate(series):
        n = s.shape[1]
        if n >= L:
            a = _window(n, L, crop)
            out[i] = s[:, a: a + L]
            mask[i] = True
        else:
            a = _window(n, L, pad)
            out[i, :, a: a + n] = s
            mask[i, a: a + n] = True
    return out, mask


# ====================================================================== export
def _write_mat(path: str, arrays: Dict[str, np.ndarray]) -> None:
    import scipy.io
    scipy.io.savemat(path, arrays, do_compression=True)


def _write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    np.savez_compressed(path, **arrays)


EXPORT_FORMATS = Registry("export format")
EXPORT_FORMATS.add("mat", _write_mat)
EXPORT_FORMATS.add("npz", _write_npz)


def _file_labels(y: np.ndarray, classes: np.ndarray, fmt: str) -> Dict[str, np.ndarray]:
    """Y for a file.  Numbers are kept (an (N, 1) float64 column in .mat, as MATLAB writes
    them).  Strings in .mat (a char matrix pads them with blanks) become 1-based codes in the
    sorted class order, with the names in ``classes``: the data layer's 0..K-1 mapping is the
    same as for the names.  ``.npz`` keeps strings as they are."""
    if fmt == "mat":
        if y.dtype.kind in "iuf":
            return {"Y": y.astype(np.float64).reshape(-1, 1)}
        codes = np.searchsorted(classes, y).astype(np.float64) + 1.0
        names = np.empty((len(classes), 1), dtype=object)
        for i, c in enumerate(classes):
            names[i, 0] = str(c)
        return {"Y": codes.reshape(-1, 1), "classes": names}
    return {"Y": y, "classes": classes}


def export_archive(source: str, out_dir: str, *, fmt: str = "mat", archive_dir: Optional[str] = None,
                   target_length: Optional[int] = None, crop: str = "end", pad: str = "end",
                   pad_value: float = 0.0) -> Dict[str, str]:
    """Write both splits of ``source`` to ``out_dir/train.<fmt>`` and ``out_dir/test.<fmt>``.

    Keys: ``X`` (N, C, L) float32 (no normalisation), ``Y`` (see :func:`_file_labels`),
    ``mask`` (N, L) uint8 (1 = real sample), ``lengths`` (N,) int64 original lengths.  L is
    ``target_length``, or the longest *training* series for both splits.  Returns
    ``{'train': path, 'test': path}``."""
    writer = EXPORT_FORMATS.get(fmt)
    Xtr, ytr, itr = load_archive(source, split="train", archive_dir=archive_dir)
    Xte, yte, ite = load_archive(source, split="test", archive_dir=archive_dir)
    L = int(target_length) if target_length is not None else itr["max_length"]
    classes = itr["class_values"]
    if itr["n_channels"] > L:
        logger.warning("%s: %d channels > length %d: a reader that takes the shorter axis as channels "
                       "(the data layer's layout rule) will read X transposed", source, itr["n_channels"], L)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, X, y in (("train", Xtr, ytr), ("test", Xte, yte)):
        x, mask = to_fixed_length(X, L, crop=crop, pad=pad, pad_value=pad_value)
        arrays = {"X": x, "mask": mask.astype(np.uint8), "lengths": series_lengths(X)}
        arrays.update(_file_labels(y, classes, fmt))
        path = os.path.join(out_dir, f"{split}.{fmt}")
        writer(path, arrays)
        paths[split] = path
        logger.info("wrote %s: X %s, %d classes", path, x.shape, len(classes))
    return paths


# ====================================================================== command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m imbalance.archives",
        description="UCR/UEA archive data sets available offline: list them, or export one as "
                    "train/test files for data.path_train / data.path_test.")
    p.add_argument("source", nargs="?", help="ucr:<Name> or uea:<Name> to export (omit to list)")
    p.add_argument("--out", help="output folder for the export (created if missing)")
    p.add_argument("--format", default="mat", choices=EXPORT_FORMATS.names())
    p.add_argument("--archive-dir", default=None, help="folder holding <Name>/<Name>_TRAIN.ts ...")
    p.add_argument("--target-length", type=int, default=None)
    a = p.parse_args(argv)
    out: Callable[[str], Any] = lambda s: sys.stdout.write(s + "\n")  # noqa: E731
    try:
        if a.source is None:
            for origin, names in available_datasets(a.archive_dir).items():
                out(f"{origin}: {', '.join(names) if names else '(none)'}")
            return 0
        if not a.out:
            p.error("--out is required to export")
        paths = export_archive(a.source, a.out, fmt=a.format, archive_dir=a.archive_dir,
                               target_length=a.target_length)
    except (ConfigError, DataError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    for split, path in paths.items():
        out(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
