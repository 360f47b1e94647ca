"""From the ``data:`` section to the data sets of a run (the data half of :mod:`imbalance.builders`).

:func:`build_data` reads the built-in ADS-B data, signal files (``data.path_*``) or time-series
archives and files (``data.source``, ``.ts``/``.arff``/``.tsv``: :mod:`imbalance.series_data`),
splits validation off, makes the training split long-tailed, keeps the base session of
class-incremental sessions and holds out the unknown classes of an open-set run. The order of
these steps is the order in which random numbers are drawn.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config_checks import auto_batch_size, parse_batch_size, validation_is_training
from .errors import ConfigError, DataError
from .runtime import resolve_path

log = logging.getLogger("imbalance.builders")

__all__ = ["DataBundle", "build_data", "build_series_sets", "open_set_data", "build_augmentation", "class_names_for",
           "validation_is_training", "resolve_batch_size"]


@dataclass
class DataBundle:
    train: Any
    val: Any
    test: Any
    classes: List[Any]
    class_counts: np.ndarray
    num_channels: int
    length: int
    files: Dict[str, str] = field(default_factory=dict)
    train_pool: Any = None  # the training data before the long-tailed subset (for reference)
    test_unknown: Any = None  # open set: the unknown test samples (labels -1); test holds the known ones
    openset: Optional[Dict[str, Any]] = None  # open set: held-out classes, sources, sample counts
    mask_channel: bool = False  # the last channel is the observation mask (imbalance.series_data)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def resolve_batch_size(cfg: DictConfig, n_train: int) -> int:
    """``data.batch_size=auto`` becomes ``int(min(N / 10, 16))`` for the N training samples, written
    back into ``cfg`` (so every loader, results.json and the checkpoints see the number); an
    integer is returned as it is."""
    value = parse_batch_size(cfg.data.batch_size)
    if value == "auto":
        value = auto_batch_size(n_train)
        cfg.data.batch_size = value
        log.info("data: data.batch_size=auto -> %d (int(min(N / 10, 16)) for N = %d training samples)", value, n_train)
    return int(value)


def build_series_sets(cfg: DictConfig, paths: Dict[str, Optional[str]]) -> tuple:
    """``(train, val or None, test, mask_channel, files)`` of a time-series run: an archive
    (``data.source``), ``.ts``/``.arff``/``.tsv`` files or signal files with a mask
    (:mod:`imbalance.series_data`)."""
    from .data import ArraySignalDataset
    from .models import MODELS
    from .series_data import load_series_data

    d = cfg.data
    b = load_series_data(source=d.source, archive_dir=resolve_path(d.archive_dir), path_train=paths["path_train"],
                         path_val=paths["path_val"], path_test=paths["path_test"], target_length=d.target_length,
                         normalize=bool(d.normalize), normalize_mode=d.normalize_mode, mask=d.mask,
                         model_name=MODELS.canonical(cfg.model.name),
                         mask_aware=bool(getattr(MODELS.get(cfg.model.name), "mask_aware", False)),
                         data_key=d.data_key, label_key=d.label_key)
    sets = {k: ArraySignalDataset(b.x[k], b.y[k], classes=b.classes, normalize=False, path=b.info["where"][k])
            for k in b.x}
    files = {f"path_{k}": p for k, p in b.info["paths"].items()}
    return sets["train"], sets.get("val"), sets["test"], b.mask_channel, files


def build_data(cfg: DictConfig) -> DataBundle:
    from . import data as D
    from .series_data import carve_validation, uses_series_loader

    dcfg = cfg.data
    paths = {k: resolve_path(dcfg[k]) for k in ("path_train", "path_val", "path_test")}
    common = dict(target_length=dcfg.target_length, normalize=bool(dcfg.normalize))
    mask_channel, files = False, {k: v for k, v in paths.items() if v}
    builtin_unknown = None  # open set: the built-in data's extra transmitters
    if uses_series_loader(source=dcfg.source, path_train=paths["path_train"], normalize_mode=dcfg.normalize_mode):
        full, val, test, mask_channel, files = build_series_sets(cfg, paths)
    elif paths["path_train"] is None:
        if paths["path_val"] or paths["path_test"]:
            raise ConfigError("data.path_val / data.path_test need data.path_train (null means the built-in data)")
        from .synthetic import builtin_dataset

        s = dcfg.synthetic
        extra = {} if s.difficulty is None else {"difficulty": float(s.difficulty)}
        if cfg.openset.enabled and int(s.num_unknown) > 0:
            extra.update(num_unknown=int(s.num_unknown), unknown_per_class=s.unknown_per_class)
        sets = builtin_dataset(
            num_classes=int(s.num_classes), train_per_class=int(s.train_per_class), val_per_class=0,
            test_per_class=int(s.test_per_class), length=int(s.length), sample_rate=float(s.sample_rate),
            snr_db=tuple(s.snr_db), seed=int(s.seed), **extra,
        )
        full = D.ArraySignalDataset(*sets["train"], **common)
        test = D.ArraySignalDataset(*sets["test"], classes=full.classes, **common)
        val, builtin_unknown = None, sets.get("test_unknown")
        log.info("data: built-in synthetic ADS-B emitters: %d classes, %d training-pool and %d test bursts "
                 "of %d samples", full.num_classes, len(full), len(test), full.length)
    else:
        kw = dict(common, in_memory=bool(dcfg.in_memory), data_key=dcfg.data_key, label_key=dcfg.label_key)
        full = D.ADSBSignalDataset(paths["path_train"], **kw)
        val = D.ADSBSignalDataset(paths["path_val"], classes=full.classes, **kw) if paths["path_val"] else None
        if paths["path_test"] is None:
            raise ConfigError("data.path_test is null; name the test file (e.g. data.path_test=data/test.mat)")
        test = D.ADSBSignalDataset(paths["path_test"], classes=full.classes, **kw)
        log.info("data: %s (%d samples, %d classes, %d channels x %d), test %s (%d samples)",
                 paths["path_train"], len(full), full.num_classes, full.num_channels, full.length,
                 paths["path_test"], len(test))
    for name, ds in (("test", test), ("validation", val)):
        if ds is not None and (ds.num_channels != full.num_channels or ds.length != full.length):
            raise DataError(
                f"{name} signals are {ds.num_channels} x {ds.length} but training signals are "
                f"{full.num_channels} x {full.length}; set data.target_length to make the lengths agree"
            )

    seed = int(cfg.seed)
    pool = full
    no_carve = val is None and validation_is_training(cfg)
    if val is None and not no_carve:
        rest_idx, val_idx = carve_validation(full.labels, float(dcfg.val_ratio),
                                             min_per_class=int(dcfg.val_min_per_class), seed=seed)
        val = full.subset(val_idx)
        pool = full.subset(rest_idx)
    train = pool
    if cfg.create_imbalance:
        lt = D.make_long_tailed_indices(pool.labels, full.num_classes, float(dcfg.imbalance_ratio), seed=seed)
        train = pool.subset(lt)
    if no_carve:  # config_checks refused every choice that would be made on it
        val = train.subset(np.arange(len(train)))
        log.warning("data: data.val_ratio=0: no validation carve; every training series trains and the "
                    "'validation' metrics are those of the training split (nothing is chosen on them)")
    classes = list(full.classes)
    if paths["path_train"] is None and dcfg.source is None and dcfg.synthetic.sessions:  # class-incremental: the base session only
        from .incremental import session_classes

        classes = session_classes(classes, list(dcfg.synthetic.sessions))[0]  # the first len(classes) labels
        train, val, test = (ds.subset(np.flatnonzero(ds.labels < len(classes))) for ds in (train, val, test))
        log.info("data: base session of data.synthetic.sessions=%s: classes %s", list(dcfg.synthetic.sessions), classes)
    counts = np.bincount(np.asarray(train.labels), minlength=len(classes)).astype(np.int64)
    bundle = DataBundle(train=train, val=val, test=test, classes=classes, class_counts=counts,
                        num_channels=int(full.num_channels), length=int(full.length),
                        files=files, train_pool=pool, mask_channel=mask_channel)
    if cfg.openset.enabled:
        bundle = open_set_data(cfg, bundle, builtin_unknown=builtin_unknown, common=common)
    resolve_batch_size(cfg, len(bundle.train))
    log.info("data: train %d (class counts %s), val %d, test %d%s", len(bundle.train), bundle.class_counts.tolist(),
             len(bundle.val), len(bundle.test),
             f" + {len(bundle.test_unknown)} unknown" if bundle.test_unknown is not None else "")
    return bundle


def open_set_data(cfg: DictConfig, bundle: DataBundle, *, builtin_unknown: Any, common: Dict[str, Any]) -> DataBundle:
    """``openset:``: classes held out of training and validation (a list or a protocol on the
    training counts), the built-in extra transmitters and ``data.path_unknown``, as the known
    splits plus one unknown test set (:func:`imbalance.openset_data.split_open_set`)."""
    from .data import ArraySignalDataset
    from .openset_data import read_unknown_file, split_open_set

    o, e = cfg.openset, cfg.experiment
    extra = []
    if builtin_unknown is not None:
        ds = ArraySignalDataset(*builtin_unknown, **common)
        extra.append(("builtin_transmitters", ds, [ds.classes[i] for i in ds.labels]))
    path = resolve_path(cfg.data.path_unknown)
    if path is not None:
        ds, labels = read_unknown_file(path, num_channels=bundle.num_channels, length=bundle.length,
                                       target_length=cfg.data.target_length, normalize=bool(cfg.data.normalize),
                                       data_key=cfg.data.data_key, label_key=cfg.data.label_key)
        extra.append(("path_unknown", ds, None if labels is None else list(labels)))
        bundle.files["path_unknown"] = path
    unknown = OmegaConf.to_container(o.unknown_classes, resolve=True) if o.unknown_classes is not None else None
    split = split_open_set(train=bundle.train, val=bundle.val, test=bundle.test, classes=bundle.classes,
                           class_counts=bundle.class_counts, unknown_classes=unknown, protocol=o.protocol,
                           num_unknown=o.num_unknown, seed=int(o.seed), extra_unknown=extra,
                           many_thresh=float(e.many_thresh), few_thresh=float(e.few_thresh), grouping=e.grouping)
    bundle.train, bundle.val, bundle.test, bundle.test_unknown = split.train, split.val, split.test, split.test_unknown
    bundle.classes, bundle.class_counts, bundle.openset = split.classes, split.class_counts, split.info
    bundle.train_pool = None  # it holds the held-out classes: nothing may read it
    return bundle


def build_augmentation(cfg: DictConfig, data: Optional[DataBundle] = None) -> Any:
    """``data.augment`` (batch mixing is separate: :func:`imbalance.builders.build_extras`); on
    series data with a mask channel the mask moves with shifts and crops, never scaled or noised."""
    from .data import build_augmentation as build

    spec = OmegaConf.to_container(cfg.data.augment, resolve=True) or {}
    spec.pop("mix", None)  # batch mixing: build_mix
    aug = build(spec)
    if aug is not None and data is not None and data.mask_channel:
        from .series_data import MaskChannelAugment

        aug = MaskChannelAugment(aug)
    return aug


def class_names_for(cfg: DictConfig, classes: Sequence[Any]) -> Optional[List[str]]:
    names = cfg.visualization.class_names
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != len(classes):
        raise ConfigError(f"visualization.class_names has {len(names)} names but the data has {len(classes)} classes")
    return names
