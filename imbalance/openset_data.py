"""The data of an open-set run: unknown classes out of training and validation, into the test.

An open-set run has two kinds of unknowns, which may be combined:

* classes of the labelled data held out as unknown (``openset.unknown_classes``, or a protocol of
  :mod:`imbalance.openset_protocols` on the TRAINING counts after the long-tail profile): their
  training-pool and validation samples are dropped, their test samples become unknowns;
* separate unknown samples: the built-in data's extra transmitters (``data.synthetic.num_unknown``)
  or a user file whose samples are all unknown (``data.path_unknown``).

:func:`split_open_set` returns the known training, validation and test sets with the known
classes relabelled 0..K'-1 in sorted order (the data sets' convention), the training counts of
the known classes, and ONE unknown test set whose labels are all
:data:`imbalance.openset_protocols.UNKNOWN_LABEL` (-1).  Nothing of an unknown class is left in
the training or validation sets, so nothing fitted or chosen on them (weights, early stopping,
detectors, thresholds, ODIN's epsilon) can see an unknown.  The closed-set test metrics of the
run are computed on the known test set only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .data import SignalDataset
from .errors import ConfigError, DataError
from .openset_protocols import UNKNOWN_LABEL, resolve_unknown_classes

logger = logging.getLogger(__name__)

__all__ = ["RelabeledDataset", "UnknownSet", "OpenSetData", "split_open_set", "read_unknown_file"]


class RelabeledDataset(SignalDataset):
    """The samples of ``parent`` with new labels (indices into ``classes``); the signals are
    shared with the parent (no copy), reads of a lazily read parent go to it."""

    def __init__(self, parent: Any, labels: np.ndarray, classes: Sequence[Any]) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(parent):
            raise DataError(f"{len(labels)} labels for a data set of {len(parent)} samples")
        self._parent = parent
        self.x = parent.x
        self.path = parent.path
        self.transform = parent.transform
        self.num_channels = parent.num_channels
        self.length = parent.length
        self._set_labels(labels, np.asarray(list(classes)))

    def _read(self, idx_t: torch.Tensor) -> torch.Tensor:
        return self._parent.get_batch(idx_t)[0]


class UnknownSet:
    """Unknown test samples from one or more sources, as one data set of the loader interface
    (``len``, ``get_batch``, ``labels``): every label is -1.  ``sources`` names the part each
    sample comes from; ``source_labels`` holds its original label value (None when a file had
    no labels)."""

    def __init__(self, parts: Sequence[Tuple[str, Any, Optional[Sequence[Any]]]]) -> None:
        parts = [(name, ds, lab) for name, ds, lab in parts if len(ds) > 0]
        if not parts:
            raise DataError("the open set has no unknown test samples")
        self._parts = [ds for _, ds, _ in parts]
        self._offsets = np.cumsum([0] + [len(ds) for ds in self._parts])
        n = int(self._offsets[-1])
        self.labels = np.full(n, UNKNOWN_LABEL, dtype=np.int64)
        self.sources = np.concatenate([np.full(len(ds), name, dtype=object) for name, ds, _ in parts])
        self.source_labels = np.concatenate([np.asarray(list(lab) if lab is not None else [None] * len(ds),
                                                        dtype=object) for _, ds, lab in parts])
        self.num_channels = int(self._parts[0].num_channels) if hasattr(self._parts[0], "num_channels") else None
        self.length = int(self._parts[0].length) if hasattr(self._parts[0], "length") else None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def get_batch(self, idx: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(torch.as_tensor(idx).cpu().numpy(), dtype=np.int64).reshape(-1)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        out: Optional[torch.Tensor] = None
        for p in np.unique(part):
            rows = np.flatnonzero(part == p)
            xb = self._parts[p].get_batch(torch.from_numpy(idx[rows] - self._offsets[p]))[0]
            if out is None:
                out = torch.empty((len(idx),) + tuple(xb.shape[1:]), dtype=xb.dtype)
            out[torch.from_numpy(rows)] = xb
        return out, torch.full((len(idx),), UNKNOWN_LABEL, dtype=torch.long)

    def counts(self) -> Dict[str, int]:
        """Unknown samples per source."""
        names, n = np.unique(self.sources.astype(str), return_counts=True)
        return {str(a): int(b) for a, b in zip(names, n)}


@dataclass
class OpenSetData:
    """The known splits (labels 0..K'-1), the known training counts and the unknown test set."""

    train: Any
    val: Any
    test: Any
    test_unknown: UnknownSet
    classes: List[Any]
    class_counts: np.ndarray
    held_out_classes: List[Any] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def split_open_set(
    *,
    train: Any,
    val: Any,
    test: Any,
    classes: Sequence[Any],
    class_counts: Sequence[int],
    unknown_classes: Optional[Sequence[Any]] = None,
    protocol: Optional[str] = None,
    num_unknown: Optional[int] = None,
    seed: int = 0,
    extra_unknown: Sequence[Tuple[str, Any, Optional[Sequence[Any]]]] = (),
    many_thresh: float = 100,
    few_thresh: float = 20,
    grouping: str = "absolute",
) -> OpenSetData:
    """Split the closed-set splits into known splits and one unknown test set.

    ``train`` / ``val`` / ``test``: data sets with labels 0..K-1 indexing ``classes`` (the label
    values); ``class_counts``: the TRAINING counts of the K classes (after the long tail), which
    the protocols rank.  ``unknown_classes`` (label values) or ``protocol`` + ``num_unknown``
    choose classes to hold out (:func:`imbalance.openset_protocols.resolve_unknown_classes`);
    neither: no class is held out.  ``extra_unknown``: ``(source name, data set, original labels
    or None)`` of samples that are unknown as a whole (built-in extra transmitters, a user file).
    At least one source of unknowns is needed."""
    classes = list(classes)
    counts = np.asarray(class_counts, dtype=np.int64).reshape(-1)
    if len(counts) != len(classes):
        raise DataError(f"{len(counts)} class counts for {len(classes)} classes")
    if num_unknown is not None and protocol is None and not unknown_classes:
        raise ConfigError(f"openset.num_unknown={num_unknown} needs openset.protocol (one of random, head_unknown, "
                          "tail_unknown, stratified) to hold out classes of the data; extra built-in "
                          "transmitters are data.synthetic.num_unknown")
    held: List[Any] = []
    if unknown_classes or protocol is not None:
        table = {_plain(c): int(n) for c, n in zip(classes, counts)}
        held = resolve_unknown_classes(table, unknown_classes=list(unknown_classes or []) or None,
                                       protocol=protocol, num_unknown=num_unknown, seed=seed,
                                       many_thresh=many_thresh, few_thresh=few_thresh, grouping=grouping)
    if not held and not extra_unknown:
        raise ConfigError("openset.enabled=true needs unknowns: openset.unknown_classes or openset.protocol with "
                          "openset.num_unknown (classes of the data held out), data.synthetic.num_unknown "
                          "(built-in data) or data.path_unknown (a file of unknown samples)")
    is_held = np.array([_plain(c) in held for c in classes], dtype=bool)
    known_pos = np.flatnonzero(~is_held)
    if len(known_pos) < 2:
        raise ConfigError(f"the open set leaves {len(known_pos)} known class(es); at least two must stay known")
    new_index = np.full(len(classes), UNKNOWN_LABEL, dtype=np.int64)
    new_index[known_pos] = np.arange(len(known_pos))
    known_classes = [classes[i] for i in known_pos]

    def known_part(ds: Any, name: str) -> Any:
        lab = np.asarray(ds.labels)
        keep = np.flatnonzero(~is_held[lab])
        if name != "test" and len(keep) == 0:
            raise DataError(f"the {name} split has no sample of a known class")
        sub = ds.subset(keep)
        return RelabeledDataset(sub, new_index[np.asarray(sub.labels)], known_classes)

    parts: List[Tuple[str, Any, Optional[Sequence[Any]]]] = []
    if held:
        t_lab = np.asarray(test.labels)
        rows = np.flatnonzero(is_held[t_lab])
        if len(rows) == 0:
            logger.warning("open set: the test split has no sample of the held-out classes %s", held)
        parts.append(("held_out_classes", test.subset(rows), [_plain(classes[i]) for i in t_lab[rows]]))
    parts += list(extra_unknown)
    unknown = UnknownSet(parts)
    out = OpenSetData(
        train=known_part(train, "training"), val=known_part(val, "validation"), test=known_part(test, "test"),
        test_unknown=unknown, classes=known_classes, class_counts=counts[known_pos].copy(),
        held_out_classes=list(held))
    out.info = {
        "held_out_classes": [_plain(c) for c in held],
        "held_out_training_counts": {str(_plain(classes[i])): int(counts[i]) for i in np.flatnonzero(is_held)},
        "protocol": None if unknown_classes else protocol,
        "known_classes": [_plain(c) for c in known_classes],
        "n_test_known": len(out.test), "n_test_unknown": len(unknown),
        "unknown_sources": unknown.counts(),
        "n_dropped": {"training": int(len(train) - len(out.train)), "validation": int(len(val) - len(out.val))},
    }
    logger.info("open set: %d known classes (training counts %s), unknown test samples %s; held out of training "
                "and validation: %s", len(known_classes), out.class_counts.tolist(), unknown.counts(),
                [_plain(c) for c in held] or "none")
    return out


def read_unknown_file(path: str, *, num_channels: int, length: int, target_length: Optional[int], normalize: bool,
                      data_key: Optional[str] = None, label_key: Optional[str] = None
                      ) -> Tuple[Any, Optional[np.ndarray]]:
    """A file of unknown samples (``data.path_unknown``; labels optional and never used as
    classes) processed as the training data: ``(data set, raw labels or None)``."""
    from .loader import TensorPairDataset
    from .signal_io import prepare_signals, read_signals

    x, labels = read_signals(path, data_key=data_key, label_key=label_key)
    x = prepare_signals(x, num_channels=num_channels, length=length, target_length=target_length,
                        normalize=normalize, allow_resize=False, where=path)
    ds = TensorPairDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                           torch.full((len(x),), UNKNOWN_LABEL, dtype=torch.long))
    ds.num_channels, ds.length = int(x.shape[1]), int(x.shape[2])
    return ds, labels
