"""Which classes are unknown in an open-set experiment, and splitting data into known/unknown.

Open-set recognition under a long tail: some classes of the data are held out as *unknown*.
They are removed from training AND validation entirely; only the test split keeps their
samples, which a detector must reject.  Which classes are held out matters under a long tail
(a held-out head class is many samples of one kind; a held-out tail class is rare), so the
choice is a protocol:

=============  ====================================================================================
protocol       unknown classes (``num_unknown`` of them, label values, returned sorted)
=============  ====================================================================================
random         drawn uniformly without replacement with ``np.random.default_rng(seed)``
head_unknown   the most frequent classes (training counts; ties: the smaller label value first)
tail_unknown   the rarest classes (training counts; ties: the larger label value first), i.e. the
               last ``num_unknown`` classes of the head-first order used by ``head_unknown``
stratified     spread over the groups many / medium / few (Kang et al. 2020 thresholds on the
               training counts, as :func:`imbalance.analysis.assign_groups`): the non-empty groups
               take turns (many, medium, few, many, ...) until ``num_unknown`` are chosen, a group
               that has given all its classes is skipped, and inside a group the classes are
               drawn at random with ``seed``
=============  ====================================================================================

``class_counts`` are the counts the classes have (or would have) in TRAINING, i.e. after the
long-tail profile: that is what makes a class head or tail.  At least two known classes must
remain, so ``1 <= num_unknown <= K - 2``.

:func:`resolve_unknown_classes` is the config-facing entry (an explicit list
``openset.unknown_classes`` wins over a protocol); :func:`split_known_unknown` and
:func:`relabel_known` split and relabel label arrays.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .analysis import GROUP_NAMES, assign_groups
from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "UNKNOWN_LABEL",
    "choose_unknown_classes",
    "resolve_unknown_classes",
    "split_known_unknown",
    "relabel_known",
]

#: Label value given to unknown samples by :func:`relabel_known` (and expected by the metrics).
UNKNOWN_LABEL = -1

CountsLike = Union[Mapping[Any, int], Sequence[int], np.ndarray]


def _counts_table(class_counts: CountsLike) -> Tuple[np.ndarray, np.ndarray]:
    """(label values, counts) from a mapping {label: count} or a sequence (index = label)."""
    if isinstance(class_counts, Mapping):
        labels = np.asarray(list(class_counts.keys()))
        counts = np.asarray([int(v) for v in class_counts.values()], dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        labels, counts = labels[order], counts[order]
    else:
        counts = np.asarray(class_counts, dtype=np.int64).reshape(-1)
        labels = np.arange(len(counts), dtype=np.int64)
    if (counts < 0).any():
        raise ConfigError(f"class counts must be >= 0, got {counts.tolist()}")
    return labels, counts


def _head_order(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices from the most frequent class to the rarest (ties: smaller label first)."""
    return np.lexsort((labels, -counts))


def _random(labels, counts, n, rng, groups):
    return rng.choice(len(labels), size=n, replace=False)


def _head(labels, counts, n, rng, groups):
    return _head_order(labels, counts)[:n]


def _tail(labels, counts, n, rng, groups):
    return _head_order(labels, counts)[len(labels) - n:]


def _stratified(labels, counts, n, rng, groups):
    pools = {g: list(rng.permutation(np.flatnonzero(groups == g))) for g in GROUP_NAMES}
    order = [g for g in GROUP_NAMES if pools[g]]
    chosen = []
    while len(chosen) < n:
        for g in order:
            if pools[g] and len(chosen) < n:
                chosen.append(pools[g].pop(0))
    return np.asarray(chosen, dtype=np.int64)


_PROTOCOL_FNS: Dict[str, Callable] = {
    "random": _random,
    "head_unknown": _head,
    "tail_unknown": _tail,
    "stratified": _stratified,
}
#: The protocol names (config ``openset.protocol``).
PROTOCOLS: Tuple[str, ...] = tuple(_PROTOCOL_FNS)


def choose_unknown_classes(
    class_counts: CountsLike,
    protocol: str,
    num_unknown: int,
    seed: int = 0,
    many_thresh: float = 100,
    few_thresh: float = 20,
    *,
    grouping: str = "absolute",
) -> list:
    """The label values of the ``num_unknown`` classes held out as unknown (sorted).

    ``class_counts``: training count per class, as a sequence (index = label value) or a
    mapping {label value: count}.  ``protocol``: one of :data:`PROTOCOLS` (module docstring).
    ``seed`` is used by ``random`` and ``stratified`` only; ``many_thresh`` / ``few_thresh`` /
    ``grouping`` by ``stratified`` only (groups of :func:`imbalance.analysis.assign_groups`).
    """
    if protocol not in _PROTOCOL_FNS:
        raise ConfigError(f"openset.protocol={protocol!r} is not valid; valid protocols: "
                          f"{', '.join(PROTOCOLS)}")
    labels, counts = _counts_table(class_counts)
    k = len(labels)
    if isinstance(num_unknown, bool) or not isinstance(num_unknown, (int, np.integer)):
        raise ConfigError(f"openset.num_unknown must be an integer, got {num_unknown!r}")
    n = int(num_unknown)
    if not 1 <= n <= k - 2:
        raise ConfigError(f"openset.num_unknown={n} is not valid with {k} classes; give 1..{k - 2} "
                          f"(at least two classes must stay known)")
    rng = np.random.default_rng(int(seed))
    groups = np.asarray(assign_groups(counts, grouping=grouping, many_thresh=many_thresh,
                                      few_thresh=few_thresh)[0], dtype=object)
    if protocol == "stratified" and len(set(groups.tolist())) < 2:
        logger.warning("openset.protocol=stratified: every class is in the %s group (many n > %g, "
                       "few n < %g); the unknown classes are drawn from it at random",
                       groups[0], many_thresh, few_thresh)
    idx = _PROTOCOL_FNS[protocol](labels, counts, n, rng, groups)
    chosen = sorted(labels[np.asarray(idx, dtype=np.int64)].tolist())
    logger.info("open set: protocol %s holds out %d of %d classes as unknown: %s", protocol, n, k, chosen)
    return chosen


def resolve_unknown_classes(
    class_counts: CountsLike,
    *,
    unknown_classes: Optional[Sequence[Any]] = None,
    protocol: Optional[str] = None,
    num_unknown: Optional[int] = None,
    seed: int = 0,
    many_thresh: float = 100,
    few_thresh: float = 20,
    grouping: str = "absolute",
) -> list:
    """Config-facing choice: the explicit list ``unknown_classes`` (label values; each must be a
    class of ``class_counts``) if given, else :func:`choose_unknown_classes` with ``protocol``
    and ``num_unknown``.  Giving both a list and a protocol is an error (one would be ignored)."""
    labels, counts = _counts_table(class_counts)
    if unknown_classes is not None and len(list(unknown_classes)) > 0:
        if protocol is not None:
            raise ConfigError("give either openset.unknown_classes or openset.protocol, not both")
        chosen = []
        for v in unknown_classes:
            try:
                hit = np.flatnonzero(labels == v)
            except (TypeError, ValueError):
                hit = np.zeros(0, dtype=np.int64)
            if hit.size == 0:
                raise ConfigError(f"openset.unknown_classes: {v!r} is not a class label; valid labels: "
                                  f"{', '.join(str(c) for c in labels.tolist())}")
            chosen.append(labels[hit[0]].item())
        chosen = sorted(set(chosen))
        if len(labels) - len(chosen) < 2:
            raise ConfigError(f"openset.unknown_classes leaves {len(labels) - len(chosen)} known "
                              f"class(es); at least two must stay known")
        return chosen
    if protocol is None:
        raise ConfigError("open set needs openset.unknown_classes (a list of labels) or openset.protocol "
                          f"(one of {', '.join(PROTOCOLS)})")
    if num_unknown is None:
        raise ConfigError(f"openset.protocol={protocol} needs openset.num_unknown")
    table = {lab: int(c) for lab, c in zip(labels.tolist(), counts.tolist())}
    return choose_unknown_classes(table, protocol, num_unknown, seed, many_thresh, few_thresh,
                                  grouping=grouping)


def split_known_unknown(labels: Any, unknown: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray]:
    """``(known_idx, unknown_idx)``: indices (int64, ascending) of the samples whose label is
    not / is in ``unknown``.  Use ``known_idx`` for train and validation, both for test."""
    y = np.asarray(labels).reshape(-1)
    is_unknown = np.isin(y, np.asarray(list(unknown), dtype=y.dtype if len(unknown) else None))
    return np.flatnonzero(~is_unknown).astype(np.int64), np.flatnonzero(is_unknown).astype(np.int64)


def relabel_known(labels: Any, unknown: Sequence[Any], *, classes: Optional[Sequence[Any]] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Map known label values to 0..K'-1 (sorted order, the data sets' convention) and unknown
    ones to :data:`UNKNOWN_LABEL` (-1).  ``classes``: every label value of the data (default:
    the values present in ``labels``); the known classes are ``classes`` minus ``unknown``.
    Returns ``(new_labels int64, known_classes)``; a label in neither set is a ConfigError."""
    y = np.asarray(labels).reshape(-1)
    all_classes = np.unique(y) if classes is None else np.unique(np.asarray(list(classes)))
    unk = np.asarray(list(unknown), dtype=all_classes.dtype) if len(unknown) else all_classes[:0]
    known = all_classes[~np.isin(all_classes, unk)]
    out = np.full(y.shape, UNKNOWN_LABEL, dtype=np.int64)
    pos = np.searchsorted(known, y)
    pos_c = np.clip(pos, 0, max(len(known) - 1, 0))
    is_known = (len(known) > 0) & (known[pos_c] == y) if len(known) else np.zeros(y.shape, bool)
    out[is_known] = pos_c[is_known]
    stray = ~is_known & ~np.isin(y, unk)
    if stray.any():
        raise ConfigError(f"labels {np.unique(y[stray]).tolist()} are neither known classes nor unknown "
                          f"classes; known: {known.tolist()}, unknown: {unk.tolist()}")
    return out, known
