"""Time-series data sets: UCR/UEA archives, ``.ts``/``.arff``/``.tsv`` files and signal files
with a mask, brought to one length with an observation mask, for the data layer.

Where the series come from (:func:`read_series`)
    ``source='ucr:<Name>'`` / ``'uea:<Name>'``: the official split of an archive data set
    (:func:`imbalance.archives.load_archive`, offline, aeon's readers); a ``.ts``/``.arff``/
    ``.tsv`` path: :func:`imbalance.archives.read_series_file`; any other signal file
    (``.mat``, ``.h5``, ``.npz``, ``.npy``): the data layer's reader
    (:func:`imbalance.signal_io.read_signals`) plus, when the file holds one, a ``mask``
    (N, L) key (1 = a sample of the series) or else a ``lengths`` (N,) key (the series fill
    the first ``lengths[i]`` samples), as :func:`imbalance.archives.export_archive` writes them:
    each series is then cut back to its own samples.

Per-series processing (:func:`prepare_series`), in this order
    1. ``normalize``: over each series' OWN samples (never over padding): ``rms`` divides by
       the root mean square over channels and time (the data layer's ``data.normalize``, which
       keeps the relation between channels); ``zscore`` subtracts each channel's mean and
       divides by its standard deviation (1 when it is 0), as the UCR/UEA deep-learning
       baselines do (hfawaz/dl-4-tsc and hfawaz/InceptionTime ``utils/utils.py``: ``std_[std_
       == 0] = 1.0``).
    2. one length ``L``: ``target_length``, or the longest TRAINING series (never less than
       :data:`imbalance.layers.MIN_LENGTH`); a longer series keeps its first L samples, a
       shorter one is zero-padded at the end (:func:`imbalance.archives.to_fixed_length`); the
       mask is True on the series' samples.

The mask channel
    With ``mask_channel=True`` the mask is appended as the LAST channel (1.0 / 0.0), so the
    batches of the training loop carry it unchanged; a mask-aware model (``mask_aware``, the
    models of :mod:`imbalance.tsc_models`) splits it off and pools over the series' samples
    only. :class:`MaskChannelAugment` applies the geometric augmentations (time shift, crop)
    to the signal and the mask together and the value augmentations (amplitude, noise) to the
    signal only. :func:`mask_channel_wanted` decides: ``'auto'`` adds it when some series is
    padded and the model is mask-aware; ``True`` whenever the model is (an error otherwise);
    ``False`` never (padding is then pooled as zeros).

Validation carved from the training split (:func:`carve_validation`)
    Stratified: class c sends ``round(n_c * val_ratio)`` (half up) of its samples, at least
    ``min_per_class``, to validation and keeps at least one for training. A class with
    ``n_c <= min_per_class`` samples cannot give that many: it stays entirely in training,
    absent from validation (one warning names it), and the validation mAcc, early stopping and
    the tau search average over the classes that are present. With ``min_per_class=1`` and
    every class of at least 2 samples, the split equals :func:`imbalance.data.stratified_split`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .archives import SERIES_EXTENSIONS, load_archive, read_series_file, series_lengths, to_fixed_length
from .augment import Compose, RandomAmplitude, RandomCropOrPad, RandomGaussianNoise, RandomTimeShift
from .errors import ConfigError, DataError
from .layers import MIN_LENGTH
from .signal_io import read_signals

logger = logging.getLogger(__name__)

__all__ = ["NORMALIZE_MODES", "MASK_MODES", "SeriesSplit", "SeriesBundle", "read_series", "normalize_series",
           "prepare_series", "carve_validation", "mask_channel_wanted", "append_mask_channel",
           "uses_series_loader", "load_series_data", "MaskChannelAugment", "file_mask", "series_inputs"]

NORMALIZE_MODES: Tuple[str, ...] = ("rms", "zscore")
MASK_MODES: Tuple[Any, ...] = ("auto", True, False)
SeriesCollection = Union[np.ndarray, List[np.ndarray]]


# ====================================================================== reading
@dataclass
class SeriesSplit:
    """One split as read: ``X`` (N, C, L) or a list of (C, L_i), the original labels ``y``,
    the data set's sorted class values ``classes`` (None: take them from ``y``) and where it
    came from."""

    X: SeriesCollection
    y: np.ndarray
    classes: Optional[np.ndarray]
    where: str
    path: str


def _aux_key(path: str, key: str) -> Optional[np.ndarray]:
    """The array ``key`` of a .mat / .h5 / .npz / .npy(dict) file, or None when absent."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".mat", ".h5", ".hdf5"):
            import h5py
            if h5py.is_hdf5(path):
                with h5py.File(path, "r") as f:
                    if key not in f:
                        return None
                    arr = np.asarray(f[key][()])
                    return arr.T if (ext == ".mat" or "MATLAB_class" in f[key].attrs) else arr
            if ext != ".mat":
                return None
            import scipy.io
            names = {name for name, _, _ in scipy.io.whosmat(path)}
            return np.asarray(scipy.io.loadmat(path, variable_names=[key])[key]) if key in names else None
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(z[key]) if key in z.files else None
        if ext == ".npy":
            arr = np.load(path, allow_pickle=True)
            if arr.dtype == object and arr.shape == () and isinstance(arr.item(), dict):
                d = arr.item()
                return np.asarray(d[key]) if key in d else None
            if arr.dtype.names and key in arr.dtype.names:
                return np.asarray(arr[key])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot read '{key}' ({type(e).__name__}: {e})") from None
    return None


def file_mask(path: str, n: int, length: int) -> Optional[np.ndarray]:
    """The observation mask (N, L) bool stored in a signal file (``mask``, else ``lengths``:
    the first ``lengths[i]`` samples), or None when it has neither."""
    m = _aux_key(path, "mask")
    if m is not None:
        m = np.asarray(m)
        if m.shape == (length, n) and m.shape != (n, length):
            m = m.T
        if m.shape != (n, length):
            raise DataError(f"{path}: 'mask' has shape {m.shape}; expected ({n}, {length}) like the data")
        return m.astype(bool)
    lengths = _aux_key(path, "lengths")
    if lengths is None:
        return None
    lengths = np.asarray(lengths).reshape(-1).astype(np.int64)
    if lengths.shape[0] != n or lengths.min(initial=0) < 0 or lengths.max(initial=0) > length:
        raise DataError(f"{path}: 'lengths' must hold {n} values in 0..{length}")
    return np.arange(length)[None, :] < lengths[:, None]


def read_series(*, source: Optional[str] = None, split: str = "train", path: Optional[str] = None,
                archive_dir: Optional[str] = None, data_key: Optional[str] = None,
                label_key: Optional[str] = None) -> SeriesSplit:
    """One split: from an archive ``source`` (``split`` train/test) or a file ``path``."""
    if source is not None:
        X, y, info = load_archive(source, split=split, archive_dir=archive_dir)
        return SeriesSplit(X=X, y=np.asarray(y), classes=np.asarray(info["class_values"]),
                           where=f"{info['source']} ({split}, {info['origin']})", path=str(info["path"]))
    if path is None:
        raise ConfigError("read_series needs a source or a path")
    ext = os.path.splitext(path)[1].lower()
    if ext in SERIES_EXTENSIONS:
        X, y = read_series_file(path)
        return SeriesSplit(X=X, y=np.asarray(y), classes=None, where=path, path=path)
    x, labels = read_signals(path, data_key=data_key, label_key=label_key)
    if labels is None:
        raise DataError(f"{path}: no label key among Y, label, labels, y; name it with data.label_key")
    mask = file_mask(path, x.shape[0], x.shape[2])
    if mask is not None and not mask.all():
        X: SeriesCollection = [x[i][:, mask[i]] for i in range(x.shape[0])]
    else:
        X = x
    return SeriesSplit(X=X, y=np.asarray(labels), classes=None, where=path, path=path)


# ====================================================================== processing
def normalize_series(X: SeriesCollection, mode: Optional[str]) -> SeriesCollection:
    """Each series normalised over its own samples (module docstring); ``mode`` None: as is.
    NaN/Inf values (missing values of some archive sets) raise DataError."""
    if mode is not None and mode not in NORMALIZE_MODES:
        raise ConfigError(f"data.normalize_mode={mode!r} is not valid; valid values: {', '.join(NORMALIZE_MODES)}")
    series = list(X) if not isinstance(X, np.ndarray) else X
    out = []
    for i, s in enumerate(series):
        a = np.asarray(s, dtype=np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"series {i} has {int((~np.isfinite(a)).sum())} missing or infinite values; use a copy "
                            "without missing values (e.g. the archive's <Name>_nmv variant) or fill them first")
        if mode == "rms":
            rms = np.sqrt(np.mean(a * a)) if a.size else 0.0
            a = a / rms if rms > 0 else a
        elif mode == "zscore":
            mu = a.mean(axis=-1, keepdims=True) if a.shape[-1] else 0.0
            sd = a.std(axis=-1, keepdims=True) if a.shape[-1] else 1.0
            sd = np.where(sd == 0, 1.0, sd)
            a = (a - mu) / sd
        out.append(a)
    if isinstance(X, np.ndarray):
        return np.stack(out) if out else np.asarray(X, dtype=np.float64)
    return out


def prepare_series(X: SeriesCollection, *, length: int, normalize: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """``(x (N, C, length) float32, mask (N, length) bool)``: normalised, then cropped / zero-padded
    at the end."""
    return to_fixed_length(normalize_series(X, normalize), int(length))


def append_mask_channel(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N, C, L)`` and ``(N, L)`` -> ``(N, C + 1, L)`` with the mask (1.0 / 0.0) last."""
    return np.concatenate([x, mask[:, None, :].astype(x.dtype)], axis=1)


def mask_channel_wanted(setting: Any, *, padded: bool, model_name: str, mask_aware: bool) -> bool:
    """Whether the data carries the mask channel (``data.mask``: auto / true / false)."""
    s = str(setting).lower()
    if s not in ("auto", "true", "false"):
        raise ConfigError(f"data.mask={setting!r} is not valid; valid values: auto, true, false")
    if s == "false":
        return False
    if s == "true":
        if not mask_aware:
            raise ConfigError(f"data.mask=true but {model_name} has no mask-aware pooling; use a model that has "
                              f"(InceptionTime, FCN, ResNetTSC) or data.mask=auto")
        return True
    if padded and not mask_aware:
        logger.info("data: %s has no mask-aware pooling; the padding of shorter series is pooled as zeros",
                    model_name)
    return padded and mask_aware


#: a class that gives fewer validation series than this is named in a warning (carve_validation)
FEW_VALIDATION = 3


def carve_validation(labels: Sequence[int], val_ratio: float, *, min_per_class: int = 1,
                     seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``, sorted: a stratified validation split (module docstring)."""
    r = float(val_ratio)
    if not 0.0 < r < 1.0:
        raise ConfigError(f"data.val_ratio must be in (0, 1), got {val_ratio!r}")
    if isinstance(min_per_class, bool) or int(min_per_class) != min_per_class or int(min_per_class) < 1:
        raise ConfigError(f"data.val_min_per_class must be an integer >= 1, got {min_per_class!r}")
    m = int(min_per_class)
    lab = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    tr, va, kept, few = [], [], [], []
    classes, counts = np.unique(lab, return_counts=True)
    for c, n in zip(classes, counts):
        idx = rng.permutation(np.flatnonzero(lab == c))
        if n <= m:
            kept.append((c, int(n)))
            tr.append(idx)
            continue
        n_val = min(max(int(np.floor(n * r + 0.5)), m), n - 1)
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
        if n_val < FEW_VALIDATION:
            few.append((c, n_val))
    if few:
        logger.warning("validation split: %s; a validation accuracy that moves in steps this coarse cannot rank "
                       "epochs or tau - for a set this small train on every series with data.val_ratio=0 "
                       "(experiment=tsc_tiny_data)",
                       ", ".join(f"class {c} gives {k} series" for c, k in few[:5]) + (" ..." if len(few) > 5 else ""))
    if kept:
        logger.warning("validation split: %s kept entirely for training (a class needs more than %d samples to "
                       "give %d to validation); validation metrics average over the other classes",
                       ", ".join(f"class {c} ({n} samples)" for c, n in kept), m, m)
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(tr), cat(va)


# ====================================================================== augmentation
class MaskChannelAugment:
    """A batch augmentation for inputs whose last channel is the mask: geometric transforms
    (RandomTimeShift, RandomCropOrPad) move signal and mask together, value transforms
    (RandomAmplitude, RandomGaussianNoise, any other) see the signal channels only; the
    transforms run in their order with one generator."""

    GEOMETRIC = (RandomTimeShift, RandomCropOrPad)

    def __init__(self, inner: Compose) -> None:
        self.inner = inner

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        gen = generator if generator is not None else self.inner.generator
        sig, m = x[:, :-1], x[:, -1:]
        for t in self.inner.transforms:
            if isinstance(t, self.GEOMETRIC):
                both = t(torch.cat([sig, m], dim=1), generator=gen)
                sig, m = both[:, :-1], both[:, -1:]
            elif isinstance(t, (RandomAmplitude, RandomGaussianNoise, Compose)):
                sig = t(sig, generator=gen)
            else:
                sig = t(sig)
        return torch.cat([sig, m], dim=1)

    def __repr__(self) -> str:
        return f"MaskChannelAugment({self.inner!r})"


# ====================================================================== a trained model's inputs
def series_inputs(path: str, *, num_channels: int, length: int, normalize: bool, normalize_mode: str,
                  mask_channel: bool, data_key: Optional[str] = None,
                  label_key: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(x (N, num_channels, length) float32, labels or None)`` of a series file for a model
    trained on series data: the run's normalisation over each series' own samples, its length
    (longer series keep their first samples), and the mask channel when the model takes one."""
    ext = os.path.splitext(path)[1].lower()
    if ext in SERIES_EXTENSIONS:
        X, labels = read_series_file(path)
    else:
        x, labels = read_signals(path, data_key=data_key, label_key=label_key)
        mask = file_mask(path, x.shape[0], x.shape[2])
        X = [x[i][:, mask[i]] for i in range(x.shape[0])] if mask is not None and not mask.all() else x
    x, mask = prepare_series(X, length=length, normalize=normalize_mode if normalize else None)
    if mask_channel:
        x = append_mask_channel(x, mask)
    if x.shape[1] != num_channels:
        raise DataError(f"{path}: series have {x.shape[1] - int(mask_channel)} channels but the model was trained "
                        f"on {num_channels - int(mask_channel)}")
    return x, (None if labels is None else np.asarray(labels))


# ====================================================================== the data layer's entry
def uses_series_loader(*, source: Optional[str], path_train: Optional[str], normalize_mode: str) -> bool:
    """Whether the run's data go through this module: an archive source, a ``.ts``/``.arff``/
    ``.tsv`` file, z-score normalisation, or a signal file that stores a mask (or lengths)."""
    if source is not None:
        return True
    if path_train is None:
        return False
    if os.path.splitext(path_train)[1].lower() in SERIES_EXTENSIONS or normalize_mode == "zscore":
        return True
    if not os.path.isfile(path_train):
        return False  # the data layer reports the missing file
    return _aux_key(path_train, "mask") is not None or _aux_key(path_train, "lengths") is not None


@dataclass
class SeriesBundle:
    """What :func:`load_series_data` returns: the three splits as arrays (``x`` with the mask
    channel when ``mask_channel``), their labels (original values), the classes, the length and
    a description."""

    x: Dict[str, np.ndarray]
    y: Dict[str, np.ndarray]
    classes: np.ndarray
    length: int
    num_signal_channels: int
    mask_channel: bool
    info: Dict[str, Any] = field(default_factory=dict)


def load_series_data(*, source: Optional[str], archive_dir: Optional[str], path_train: Optional[str],
                     path_val: Optional[str], path_test: Optional[str], target_length: Optional[int],
                     normalize: bool, normalize_mode: str, mask: Any, model_name: str, mask_aware: bool,
                     data_key: Optional[str] = None, label_key: Optional[str] = None) -> SeriesBundle:
    """Read, normalise and bring to one length the splits of a run (``val`` only when
    ``path_val`` names a file; otherwise the caller carves it from ``train``)."""
    if source is not None and (path_train or path_val or path_test):
        raise ConfigError("data.source and data.path_train/path_val/path_test name two data sources; set one "
                          "(data.source=ucr:<Name> reads the official train/test split)")
    if source is None and path_test is None:
        raise ConfigError("data.path_test is null; name the test file (e.g. data.path_test=data/test.ts)")
    mode = normalize_mode if normalize else None
    if mode is not None and mode not in NORMALIZE_MODES:
        raise ConfigError(f"data.normalize_mode={normalize_mode!r} is not valid; valid values: "
                          f"{', '.join(NORMALIZE_MODES)}")
    kw = dict(archive_dir=archive_dir, data_key=data_key, label_key=label_key)
    splits = {"train": read_series(source=source, split="train", path=path_train, **kw),
              "test": read_series(source=source, split="test", path=path_test, **kw)}
    if path_val is not None:
        splits["val"] = read_series(path=path_val, **kw)
    tr = splits["train"]
    classes = tr.classes if tr.classes is not None else np.unique(tr.y)
    lengths = {k: series_lengths(s.X) for k, s in splits.items()}
    longest = int(lengths["train"].max()) if lengths["train"].size else 0
    length = int(target_length) if target_length is not None else max(longest, MIN_LENGTH)
    if target_length is None and longest < MIN_LENGTH:
        logger.info("data: the longest training series has %d samples; padded to the models' minimum of %d",
                    longest, MIN_LENGTH)
    prepared = {k: prepare_series(s.X, length=length, normalize=mode) for k, s in splits.items()}
    padded = any(not m.all() for _, m in prepared.values())
    with_mask = mask_channel_wanted(mask, padded=padded, model_name=model_name, mask_aware=mask_aware)
    channels = {int(x.shape[1]) for x, _ in prepared.values()}
    if len(channels) > 1:
        raise DataError(f"the splits have different channel counts {sorted(channels)}")
    n_ch = channels.pop()
    if n_ch + int(with_mask) > length:
        raise DataError(f"{n_ch + int(with_mask)} channels but only {length} samples per series; the data layer reads "
                        f"the shorter axis as channels, so set data.target_length >= {n_ch + int(with_mask)}")
    xs = {k: (append_mask_channel(x, m) if with_mask else x) for k, (x, m) in prepared.items()}
    cropped = {k: int((lengths[k] > length).sum()) for k in splits}
    info = {"where": {k: s.where for k, s in splits.items()}, "paths": {k: s.path for k, s in splits.items()}, "length": length, "longest_train": longest,
            "lengths": {k: (int(v.min()), int(np.median(v)), int(v.max())) for k, v in lengths.items()},
            "cropped": cropped, "padded": padded, "mask_channel": with_mask, "normalize": mode}
    for k, n in cropped.items():
        if n:
            logger.info("data: %d %s series longer than %d samples keep their first %d", n, k, length, length)
    logger.info("data: %s: series of %s samples (train min/median/max), length %d, %s%s",
                splits["train"].where, "/".join(map(str, info["lengths"]["train"])), length,
                f"normalised per series ({mode})" if mode else "not normalised",
                ", mask channel appended" if with_mask else "")
    return SeriesBundle(x=xs, y={k: s.y for k, s in splits.items()}, classes=np.asarray(classes), length=length,
                        num_signal_channels=n_ch, mask_channel=with_mask, info=info)
